r"""Collects the reproduction's summaries into a table, a claims check and
plots (experiments/fashion_mnist/reproduce.sh runs it last).

  .venv/bin/python experiments/fashion_mnist/report.py --root=workdirs/repro \
      --out=experiments/fashion_mnist

Reads ROOT/<model>/{eval,knn,retrieval,adaptive,probe,baselines}_summary.json
for the models mrl, mrl_e, ff8..ff128 and OUT/search_bench.json; anything
missing is reported as missing (never guessed). Writes OUT/results.md,
OUT/results.json, OUT/accuracy_vs_dim.png, OUT/adaptive_classification.png
and OUT/adaptive_retrieval.png.
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


def _cell(table: dict[int, float], d: int) -> str:
  return f"{100 * table[d]:.2f}" if d in table else "missing"


def _table(rows: dict[str, dict[int, float]], title: str) -> list[str]:
  lines = [f"### {title}", "", "| dim | " + " | ".join(rows) + " |",
           "|---:|" + "---:|" * len(rows)]
  for d in DIMS:
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
    if not ac:
      continue
    lines += [f"### Adaptive classification ({name}, flip-TTA, "
              f"{len(ac['seeds'])} seeds, thresholds on {ac['num_fit']}, "
              f"evaluated on {ac['num_eval']})", "",
              "| cap | accuracy | expected dim | expected cost (cumulative) |",
              "|---:|---:|---:|---:|"]
    for cap in ac["accuracy"]:
      lines.append(f"| {cap} | {100 * ac['accuracy'][cap]:.2f} | "
                   f"{ac['expected_dim'][cap]:.1f} | "
                   f"{ac['expected_cost'][cap]:.1f} |")
    lines.append("")
  probe = r["probe"]
  if probe:
    lines += ["### Few-shot linear probe on frozen MRL prefixes "
              f"(mean of {probe['seeds']} draws)", "",
              "| shots/class | " + " | ".join(map(str, probe["nesting"]))
              + " |", "|---:|" + "---:|" * len(probe["nesting"])]
    for n in probe["shots"]:
      key = f"top1@{n}shot" if n else "top1@all"
      lines.append(f"| {n or 'all'} | " + " | ".join(
          f"{100 * probe[f'probe/{key}/d={d}']:.2f}"
          for d in probe["nesting"]) + " |")
    lines.append("")
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


def _plot_series(ax, series: dict[str, dict[int, float]], title: str) -> None:
  for label, table in series.items():
    dims = sorted(table)
    if dims:
      ax.plot(dims, [100 * table[d] for d in dims], marker="o", label=label)
  ax.set_xscale("log", base=2)
  ax.set_xticks(DIMS, [str(d) for d in DIMS])
  ax.set_xlabel("representation size (dims)")
  ax.set_ylabel("top-1 (%)")
  ax.set_title(title)
  ax.grid(alpha=0.3)
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


def write(root: str, out_dir: str) -> dict[str, Any]:
  """collect + results.md + results.json + plots; returns the collection."""
  os.makedirs(out_dir, exist_ok=True)
  r = collect(root, out_dir)
  with open(os.path.join(out_dir, "results.md"), "w") as f:
    f.write(report_markdown(r))
  with open(os.path.join(out_dir, "results.json"), "w") as f:
    json.dump(r, f, indent=1)
  r["plots"] = plot(r, out_dir)
  return r


def main(argv: Sequence[str]) -> None:
  del argv
  r = write(FLAGS.root, FLAGS.out)
  print(report_markdown(r))
  print("\n".join(r["plots"]))


if __name__ == "__main__":
  _define_flags()
  app.run(main)
