r"""Collects the reproduction's summaries into a table, a claims check and
plots (experiments/fashion_mnist/reproduce.sh runs it last).

  .venv/bin/python experiments/fashion_mnist/report.py --root=workdirs/repro \
      --out=experiments/fashion_mnist

Reads ROOT/<model>/{eval,knn,retrieval,adaptive,probe,baselines,pairs}_
summary.json for the models mrl, mrl_e, ff1..ff128 and the low-dim models
mrl_min1, mrl_e_min1 (nested down to 1 dim), and OUT/search_bench.json;
anything missing is reported as missing (never guessed). Writes
OUT/results.md, OUT/results.json, OUT/accuracy_vs_dim.png,
OUT/adaptive_classification.png and OUT/adaptive_retrieval.png; once a
model or baseline was measured at 1-4 dims, also OUT/results_lowdim.md,
OUT/results_lowdim.json and OUT/lowdim_accuracy_vs_dim.png.
"""
from collections.abc import Sequence
import json
import os
from typing import Any

from absl import app
from absl import flags
import matplotlib
matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position

FLAGS = flags.FLAGS


def _define_flags() -> None:
  # Only when run as a script: tests import this module next to other
  # experiment scripts that define absl flags of the same names.
  flags.DEFINE_string("root", "workdirs/repro", "Workdirs of the 7 models.")
  flags.DEFINE_string("out", "experiments/fashion_mnist", "Output directory.")

DIMS = (8, 16, 32, 64, 128)
FF = {d: f"ff{d}" for d in DIMS}
# The low-dim operating point: 10 classes need ~3.3 bits, so the paper's
# hard regime (ImageNet at 8 dims) is 1-4 dims here.
LOW_DIMS = (1, 2, 4) + DIMS
SMALL_DIMS = (1, 2, 4)
# Every evaluator but the trained heads L2-normalises each prefix (the
# paper's protocol), and a 1-dim prefix of a post-ReLU embedding normalises
# to 1 for every image: those comparisons start at 2 dims.
NORMALISED_SMALL_DIMS = (2, 4)
NORMALISED_NOTE = (
    "1-NN, the probes, the pair task and the SVD / random-feature heads "
    "L2-normalise each prefix (the paper's protocol); a 1-dim prefix of the "
    "post-ReLU embedding normalises to 1 (or stays 0), so at most one bit "
    "is left and they are near chance at 1 dim by construction (SVD keeps "
    "the sign); their claims are checked from 2 dims. The trained heads see "
    "the raw prefix.")
# Low-dim section's series -> workdir; "mrl_8" is the standard MRL model
# (nested down to 8), to show what the extra 1-4 dim heads cost above 8.
LOW_MODELS = {"mrl": "mrl_min1", "mrl_e": "mrl_e_min1", "mrl_8": "mrl"}


def _load(path: str) -> dict[str, Any] | None:
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def collect(root: str, out_dir: str) -> dict[str, Any]:
  """{"linear": {method: {dim: top1}}, "knn": {...}, "adaptive": ...}."""
  summary = lambda name, kind: _load(os.path.join(root, name,
                                                  f"{kind}_summary.json"))
  linear, knn = {}, {}
  for name in ("mrl", "mrl_e"):
    ev, nn = summary(name, "eval"), summary(name, "knn")
    linear[name] = {d: ev["top1"][str(d)] for d in DIMS} if ev else {}
    knn[name] = {d: nn[f"knn/top1/d={d}"] for d in DIMS} if nn else {}
  linear["ff"], knn["ff"] = {}, {}
  for d, name in FF.items():
    ev, nn = summary(name, "eval"), summary(name, "knn")
    if ev:
      linear["ff"][d] = ev["top1"][str(d)]
    if nn:
      knn["ff"][d] = nn[f"knn/top1/d={d}"]
  base = summary("ff128", "baselines") or {}
  for method in ("svd", "random"):
    linear[method] = {d: base[f"{method}/linear_top1/d={d}"] for d in DIMS
                      if f"{method}/linear_top1/d={d}" in base}
    knn[method] = {d: base[f"{method}/knn_top1/d={d}"] for d in DIMS
                   if f"{method}/knn_top1/d={d}" in base}
  return {"linear": linear, "knn": knn,
          "adaptive": {n: summary(n, "adaptive") for n in ("mrl", "mrl_e")},
          "probe": summary("mrl", "probe"),
          "retrieval": summary("mrl", "retrieval"),
          "search_bench": _load(os.path.join(out_dir, "search_bench.json"))}


def _per_dim(summary: dict[str, Any] | None, key: str,
             dims: Sequence[int]) -> dict[int, float]:
  """{d: summary[key.format(d=d)]} for the dims the summary has."""
  return {d: summary[key.format(d=d)] for d in dims
          if summary and key.format(d=d) in summary}


def collect_lowdim(root: str) -> dict[str, Any]:
  """The low-dim section: {"linear" | "knn" | "pairs_knn" | "pairs_linear":
  {series: {dim: top1}}, "adaptive", "probe"} over LOW_DIMS."""
  summary = lambda name, kind: _load(os.path.join(root, name,
                                                  f"{kind}_summary.json"))
  keys = {"linear": "{d}", "knn": "knn/top1/d={d}",
          "pairs_knn": "pairs/knn_top1/d={d}",
          "pairs_linear": "pairs/linear_top1/d={d}"}

  def read(name: str, kind: str, dims: Sequence[int]) -> dict[int, float]:
    if kind == "linear":  # the trained heads, from the training's eval
      return _per_dim((summary(name, "eval") or {}).get("top1"), keys[kind],
                      dims)
    return _per_dim(summary(name, kind.partition("_")[0]), keys[kind], dims)

  r = {kind: {series: read(name, kind, LOW_DIMS)
              for series, name in LOW_MODELS.items()} for kind in keys}
  for kind in keys:  # FF-k: dim k of model ffk
    r[kind]["ff"] = {}
    for d in LOW_DIMS:
      r[kind]["ff"].update(read(f"ff{d}", kind, (d,)))
  base = summary("ff128", "baselines")
  for method in ("svd", "random"):
    r["linear"][method] = _per_dim(base, method + "/linear_top1/d={d}",
                                   LOW_DIMS)
    r["knn"][method] = _per_dim(base, method + "/knn_top1/d={d}", LOW_DIMS)
  r["adaptive"] = summary("mrl_min1", "adaptive")
  r["probe"] = summary("mrl_min1", "probe")
  return r


def has_lowdim(lo: dict[str, Any]) -> bool:
  """Whether any model or baseline was measured at 1-4 dims."""
  return any(d in table for kind in ("linear", "knn")
             for table in lo[kind].values() for d in SMALL_DIMS)


def _cell(table: dict[int, float], d: int) -> str:
  return f"{100 * table[d]:.2f}" if d in table else "missing"


def _table(rows: dict[str, dict[int, float]], title: str,
           dims: Sequence[int] = DIMS) -> list[str]:
  lines = [f"### {title}", "", "| dim | " + " | ".join(rows) + " |",
           "|---:|" + "---:|" * len(rows)]
  for d in dims:
    lines.append(f"| {d} | " + " | ".join(_cell(t, d) for t in rows.values())
                 + " |")
  return lines + [""]


def claims(r: dict[str, Any]) -> list[str]:
  """The paper's claims, each marked holds / fails / not measured."""
  mrl, ff = r["linear"]["mrl"], r["linear"]["ff"]
  out = []
  both = [d for d in DIMS if d in mrl and d in ff]
  if both:
    gaps = {d: 100 * (mrl[d] - ff[d]) for d in both}
    ok = all(g >= -0.5 for g in gaps.values())
    out.append(f"- MRL within 0.5 points of (or above) FF-k at every k: "
               f"{'holds' if ok else 'FAILS'} on k = {both} (MRL - FF, "
               "points: " + ", ".join(f"{d}: {g:+.2f}" for d, g in
                                       gaps.items()) + ")"
               + ("" if len(both) == len(DIMS) else
                  f"; FF-k missing for k = "
                  f"{[d for d in DIMS if d not in ff]}"))
    small = [d for d in (8, 16) if d in both]
    if small:
      ok = all(gaps[d] > 0 for d in small)
      out.append(f"- MRL above FF at the smallest dims {small}: "
                 f"{'holds' if ok else 'FAILS'}")
  for method in ("svd", "random"):
    base = r["linear"][method]
    if 8 in base and 8 in mrl:
      gap = 100 * (mrl[8] - base[8])
      out.append(f"- {method} far below MRL at 8 dims (linear head): "
                 f"{'holds' if gap > 5 else 'FAILS'} ({100 * base[8]:.2f} vs "
                 f"{100 * mrl[8]:.2f}, {gap:.2f} points below)")
  ac = r["adaptive"]["mrl"]
  if ac:
    full = ac["dim_accuracy"][str(max(ac["nesting"]))]
    match = ac["smallest_expected_dim_matching_full_dim"]
    if match is None:
      best = max(ac["accuracy"], key=ac["accuracy"].get)
      out.append(f"- Adaptive classification reaches the full-dim accuracy "
                 f"({100 * full:.2f}, flip-TTA): FAILS at every cap; the "
                 f"best cascade (cap {best}) gets "
                 f"{100 * ac['accuracy'][best]:.2f} "
                 f"({100 * (ac['accuracy'][best] - full):+.2f} points) at "
                 f"an expected dim of {ac['expected_dim'][best]:.1f}")
    else:
      out.append(f"- Adaptive classification reaches the full-dim accuracy "
                 f"({100 * full:.2f}, flip-TTA) at an expected dim of "
                 f"{match:.1f} = {match / max(ac['nesting']):.2f} of "
                 f"{max(ac['nesting'])}: holds")
  for bench in _retrieval_benches(r):
    for a in bench["adaptive"]:
      if a["Ds"] == 16:
        ok = a["mAP@10_minus_exact_points"] >= -0.1
        out.append(
            f"- Adaptive retrieval (D_s=16, K={bench['shortlist_k']}, "
            f"D_r={bench['dim']}, {bench['rows']:,} rows) matches exact "
            f"{bench['dim']}-d mAP@10: {'holds' if ok else 'FAILS'} "
            f"({100 * a['mAP@10']:.2f} vs "
            f"{100 * bench['exact_mAP@10']:.2f}); {a['speedup']:.1f}x "
            f"faster (FLOP ratio {a['flop_ratio']:.1f}x)")
  exact = (r["search_bench"] or {}).get("exact")
  if exact:
    ratio, rounds = exact["jax_over_faiss"], exact["jax_over_faiss_per_round"]
    out.append(
        f"- Exact {exact['dim']}-d search ({exact['rows']:,} rows, "
        f"{exact['queries']} queries) at least FAISS IndexFlatIP's "
        f"throughput: {'holds' if ratio >= 1 else 'FAILS'} ({ratio:.2f}x; "
        f"same-round ratios {min(rounds):.2f}-{max(rounds):.2f}x; JAX at "
        f"{exact['jax_fraction_of_sgemm']:.2f} and FAISS at "
        f"{exact['faiss_fraction_of_sgemm']:.2f} of a bare sgemm's speed)")
  return out or ["- nothing measured yet"]


def _retrieval_benches(r: dict[str, Any]) -> list[dict[str, Any]]:
  """search_bench.json's adaptive-retrieval runs, one per database."""
  return (r["search_bench"] or {}).get("adaptive") or []


def _adaptive_lines(name: str, ac: dict[str, Any] | None) -> list[str]:
  """The cascade's table (accuracy and expected dims per cap)."""
  if not ac:
    return []
  lines = [f"### Adaptive classification ({name}, flip-TTA, "
           f"{len(ac['seeds'])} seeds, thresholds on {ac['num_fit']}, "
           f"evaluated on {ac['num_eval']})", "",
           "| cap | accuracy | expected dim | expected cost (cumulative) |",
           "|---:|---:|---:|---:|"]
  for cap in ac["accuracy"]:
    lines.append(f"| {cap} | {100 * ac['accuracy'][cap]:.2f} | "
                 f"{ac['expected_dim'][cap]:.1f} | "
                 f"{ac['expected_cost'][cap]:.1f} |")
  return lines + [""]


def _probe_lines(probe: dict[str, Any] | None, model: str) -> list[str]:
  """The few-shot probe's table (shots per class x dims)."""
  if not probe:
    return []
  lines = [f"### Few-shot linear probe on frozen {model} prefixes "
           f"(mean of {probe['seeds']} draws)", "",
           "| shots/class | " + " | ".join(map(str, probe["nesting"]))
           + " |", "|---:|" + "---:|" * len(probe["nesting"])]
  for n in probe["shots"]:
    key = f"top1@{n}shot" if n else "top1@all"
    lines.append(f"| {n or 'all'} | " + " | ".join(
        f"{100 * probe[f'probe/{key}/d={d}']:.2f}"
        for d in probe["nesting"]) + " |")
  return lines + [""]


def lowdim_claims(lo: dict[str, Any]) -> list[str]:
  """The paper's claims restated at 1-4 dims, each holds / FAILS, with the
  numbers; only what was measured."""
  out = []
  what = {"linear": "linear", "knn": "1-NN",
          "pairs_knn": "100-class pair task, 1-NN",
          "pairs_linear": "100-class pair task, linear probe"}
  for kind, label in what.items():
    small = SMALL_DIMS if kind == "linear" else NORMALISED_SMALL_DIMS
    mrl, ff = lo[kind]["mrl"], lo[kind]["ff"]
    both = [d for d in small if d in mrl and d in ff]
    if both:
      gaps = ", ".join(f"{d}: {100 * mrl[d]:.2f} vs {100 * ff[d]:.2f} "
                       f"({100 * (mrl[d] - ff[d]):+.2f})" for d in both)
      ok = all(mrl[d] > ff[d] for d in both)
      out.append(f"- MRL above FF-k at {both} dims ({label}): "
                 f"{'holds' if ok else 'FAILS'} ({gaps})")
    mrl_e = lo[kind]["mrl_e"]
    both = [d for d in small if d in mrl_e and d in ff]
    if both:
      out.append(f"- MRL-E vs FF-k at {both} dims ({label}): " + ", ".join(
          f"{d}: {100 * mrl_e[d]:.2f} vs {100 * ff[d]:.2f} "
          f"({100 * (mrl_e[d] - ff[d]):+.2f})" for d in both))
  for kind in ("linear", "knn"):
    mrl = lo[kind]["mrl"]
    for method in ("svd", "random"):
      base = lo[kind][method]  # fitted on normalised prefixes
      both = [d for d in NORMALISED_SMALL_DIMS if d in mrl and d in base]
      if both:
        ok = all(mrl[d] - base[d] > 0.05 for d in both)
        out.append(
            f"- {method} on FF-128 far (> 5 points) below MRL at {both} dims "
            f"({what[kind]}): {'holds' if ok else 'FAILS'} (" + ", ".join(
                f"{d}: {100 * base[d]:.2f} vs {100 * mrl[d]:.2f}"
                for d in both) + ")")
  mrl, mrl_8 = lo["linear"]["mrl"], lo["linear"]["mrl_8"]
  both = [d for d in DIMS if d in mrl and d in mrl_8]
  if both:
    ok = all(mrl[d] - mrl_8[d] >= -0.005 for d in both)
    out.append(
        "- Nesting down to 1 costs at most 0.5 points at 8-128 dims (vs MRL "
        f"nested down to 8, linear): {'holds' if ok else 'FAILS'} (" +
        ", ".join(f"{d}: {100 * (mrl[d] - mrl_8[d]):+.2f}" for d in both)
        + ")")
  ac = lo["adaptive"]
  if ac:
    full = ac["dim_accuracy"][str(max(ac["nesting"]))]
    match = ac["smallest_expected_dim_matching_full_dim"]
    best = max(ac["accuracy"], key=ac["accuracy"].get)
    out.append(
        f"- Adaptive classification from 1 dim up reaches the full-dim "
        f"accuracy ({100 * full:.2f}, flip-TTA): "
        + (f"holds at an expected dim of {match:.1f}" if match is not None
           else f"FAILS; the best cascade (cap {best}) gets "
           f"{100 * ac['accuracy'][best]:.2f} at an expected dim of "
           f"{ac['expected_dim'][best]:.1f}"))
  return out or ["- nothing measured yet"]


def lowdim_markdown(lo: dict[str, Any]) -> str:
  """results_lowdim.md: the low-dim tables and the claims at 1-4 dims."""
  names = {"mrl": "MRL", "mrl_e": "MRL-E", "ff": "FF-k", "svd": "SVD",
           "random": "Rand. FS", "mrl_8": "MRL (8-128)"}
  lines = ["# Fashion-MNIST reproduction: the low-dim operating point, "
           "nesting (1, 2, 4, ..., 128)", "",
           "Written by report.py; numbers are top-1 in % on the 10k test "
           "images.", "",
           "MRL and MRL-E trained with `min_dim=1`; FF-k one model per k; "
           "SVD / random features on FF-128; MRL (8-128) is the standard "
           "MRL model above.", ""]
  titles = {"linear": "Linear classification, low dims (trained heads)",
            "knn": "1-NN, low dims (database = 60k train)",
            "pairs_knn": "100-class pair task, 1-NN (d = per-half prefix)",
            "pairs_linear": "100-class pair task, linear probe (d = "
                            "per-half prefix)"}
  for kind, title in titles.items():
    rows = {label: lo[kind][k] for k, label in names.items()
            if lo[kind].get(k)}
    if rows:
      lines += _table(rows, title, LOW_DIMS)
  lines += _adaptive_lines("mrl_min1", lo["adaptive"])
  lines += _probe_lines(lo["probe"], "MRL (min_dim=1)")
  return "\n".join(lines + ["## The paper's claims at 1-4 dims", "",
                            NORMALISED_NOTE, ""] + lowdim_claims(lo) + [""])


def report_markdown(r: dict[str, Any]) -> str:
  lines = ["# Fashion-MNIST reproduction: results", "",
           "Written by report.py; numbers are top-1 in % on the 10k test "
           "images.", ""]
  lines += _table({"MRL": r["linear"]["mrl"], "MRL-E": r["linear"]["mrl_e"],
                   "FF-k": r["linear"]["ff"], "SVD": r["linear"]["svd"],
                   "Rand. FS": r["linear"]["random"]},
                  "Linear classification (trained heads; SVD / random "
                  "features: fitted softmax head on FF-128)")
  lines += _table({"MRL": r["knn"]["mrl"], "MRL-E": r["knn"]["mrl_e"],
                   "FF-k": r["knn"]["ff"], "SVD": r["knn"]["svd"],
                   "Rand. FS": r["knn"]["random"]},
                  "1-NN (database = 60k train, per-prefix L2-normalised)")
  for name, ac in r["adaptive"].items():
    lines += _adaptive_lines(name, ac)
  lines += _probe_lines(r["probe"], "MRL")
  for bench in _retrieval_benches(r):
    lines += [f"### Adaptive retrieval ({bench['model']} {bench['head']} "
              f"model, d={bench['dim']}; database {bench['database']}: "
              f"{bench['rows']:,} rows, {bench['queries']:,} queries, "
              f"K={bench['shortlist_k']}, D_r={bench['dim']})", "",
              "| D_s | mAP@10 | vs exact (points) | seconds | speed-up | "
              "FLOP ratio |", "|---:|---:|---:|---:|---:|---:|",
              f"| exact {bench['dim']} | {100 * bench['exact_mAP@10']:.2f} "
              f"| 0 | {bench['exact_seconds']:.3f} | 1.0 | 1.0 |"]
    for a in bench["adaptive"]:
      lines.append(f"| {a['Ds']} | {100 * a['mAP@10']:.2f} | "
                   f"{a['mAP@10_minus_exact_points']:+.2f} | "
                   f"{a['seconds']:.3f} | {a['speedup']:.1f} | "
                   f"{a['flop_ratio']:.1f} |")
    lines.append("")
  lines += ["## The paper's claims at this scale", ""] + claims(r) + [""]
  return "\n".join(lines)


def _plot_series(ax, series: dict[str, dict[int, float]], title: str,
                 ticks: Sequence[int] = DIMS) -> None:
  for i, (label, table) in enumerate(series.items()):
    dims = sorted(table)
    if dims:  # one colour per series in every panel, measured or not
      ax.plot(dims, [100 * table[d] for d in dims], marker="o",
              color=f"C{i}", label=label)
  ax.set_xscale("log", base=2)
  ax.set_xticks(ticks, [str(d) for d in ticks])
  ax.set_xlabel("representation size (dims)")
  ax.set_ylabel("top-1 (%)")
  ax.set_title(title)
  ax.grid(alpha=0.3)
  if ax.get_legend_handles_labels()[0]:  # a panel may have no data yet
    ax.legend()


def _save(fig, out_dir: str, name: str) -> str:
  """Writes `fig` as out_dir/name, closes it, returns the path."""
  path = os.path.join(out_dir, name)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def plot(r: dict[str, Any], out_dir: str) -> list[str]:
  """Writes the PNGs that have data; returns their paths."""
  paths = []
  names = {"mrl": "MRL", "mrl_e": "MRL-E", "ff": "FF-k", "svd": "SVD",
           "random": "Rand. FS"}
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  for ax, kind, title in zip(axes, ("linear", "knn"),
                             ("linear classification", "1-NN")):
    _plot_series(ax, {names[k]: v for k, v in r[kind].items()}, title)
  paths.append(_save(fig, out_dir, "accuracy_vs_dim.png"))
  if any(r["adaptive"].values()):
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, ac in r["adaptive"].items():
      if ac:
        caps = list(ac["accuracy"])
        ax.plot([ac["expected_dim"][c] for c in caps],
                [100 * ac["accuracy"][c] for c in caps], marker="o",
                label=f"{names[name]} cascade")
        ax.plot([int(d) for d in ac["dim_accuracy"]],
                [100 * v for v in ac["dim_accuracy"].values()], ls="--",
                marker="x", label=f"{names[name]} fixed dim")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("expected dims")
    ax.set_ylabel("top-1 (%, flip-TTA)")
    ax.set_title("adaptive classification")
    ax.grid(alpha=0.3)
    ax.legend()
    paths.append(_save(fig, out_dir, "adaptive_classification.png"))
  lo = r["lowdim"]
  if has_lowdim(lo):
    names["mrl_8"] = "MRL (8-128)"
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    titles = {"linear": "linear classification", "knn": "1-NN",
              "pairs_knn": "100-class pairs, 1-NN",
              "pairs_linear": "100-class pairs, linear probe"}
    for ax, (kind, title) in zip(axes.flat, titles.items()):
      _plot_series(ax, {label: lo[kind].get(k, {})
                        for k, label in names.items()}, title, LOW_DIMS)
    paths.append(_save(fig, out_dir, "lowdim_accuracy_vs_dim.png"))
  benches = _retrieval_benches(r)
  if benches:
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for i, bench in enumerate(benches):
      color = f"C{i}"  # one colour per database in both panels
      ds = [a["Ds"] for a in bench["adaptive"]]
      rows = f"{bench['rows']:,} rows"
      ax1.plot(ds, [100 * a["mAP@10"] for a in bench["adaptive"]],
               marker="o", color=color,
               label=f"adaptive, {rows} (K={bench['shortlist_k']}, "
               f"D_r={bench['dim']})")
      ax1.axhline(100 * bench["exact_mAP@10"], color=color, ls="--",
                  label=f"exact {bench['dim']}-d, {rows}")
      ax2.plot(ds, [a["speedup"] for a in bench["adaptive"]], marker="o",
               color=color, label=f"measured, {rows}")
      ax2.plot(ds, [a["flop_ratio"] for a in bench["adaptive"]], ls="--",
               color=color, label=f"FLOP ratio, {rows}")
    ax1.set_xlabel("shortlist dim D_s")
    ax1.set_ylabel("mAP@10 (%)")
    ax2.set_xlabel("shortlist dim D_s")
    ax2.set_ylabel("speed-up over exact search (x)")
    for ax in (ax1, ax2):
      ax.set_xscale("log", base=2)
      ax.set_xticks(ds, [str(d) for d in ds])
      ax.grid(alpha=0.3)
      ax.legend()
    paths.append(_save(fig, out_dir, "adaptive_retrieval.png"))
  return paths


def _write_text(path: str, text: str) -> None:
  with open(path, "w") as f:
    f.write(text)


def write(root: str, out_dir: str) -> dict[str, Any]:
  """collect + results.md + results.json + plots, and, once a model or
  baseline was measured at 1-4 dims, results_lowdim.md + .json; returns
  the collection (the low-dim one under "lowdim")."""
  os.makedirs(out_dir, exist_ok=True)
  r = collect(root, out_dir)
  _write_text(os.path.join(out_dir, "results.md"), report_markdown(r))
  _write_text(os.path.join(out_dir, "results.json"),
              json.dumps(r, indent=1))
  r["lowdim"] = collect_lowdim(root)
  if has_lowdim(r["lowdim"]):
    _write_text(os.path.join(out_dir, "results_lowdim.md"),
                lowdim_markdown(r["lowdim"]))
    _write_text(os.path.join(out_dir, "results_lowdim.json"),
                json.dumps(r["lowdim"], indent=1))
  r["plots"] = plot(r, out_dir)
  return r


def main(argv: Sequence[str]) -> None:
  del argv
  r = write(FLAGS.root, FLAGS.out)
  print(report_markdown(r))
  if has_lowdim(r["lowdim"]):
    print(lowdim_markdown(r["lowdim"]))
  print("\n".join(r["plots"]))


if __name__ == "__main__":
  _define_flags()
  app.run(main)
