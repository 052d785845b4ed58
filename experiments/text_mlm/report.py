r"""Collects the text MLM reproduction's summaries into tables, the paper's
claim check and plots (experiments/text_mlm/reproduce.sh runs it last).

  .venv/bin/python experiments/text_mlm/report.py --root=workdirs/text_mlm \
      --out=experiments/text_mlm

Reads ROOT/<model>/{eval,knn,probe,baselines}_summary.json for the models
mrl_e, mrl, mrl_e_pn (MRL-E with per-prefix LayerNorm), ff8, ff32 and ff128;
anything missing is reported as missing (never guessed), unless --keep
names an earlier results.json to take it from (models run at another
time with the same recipe: `MODELS=ff32 bash reproduce.sh` adds one model
to the committed table without rerunning the others). Writes
OUT/results.md, OUT/results.json, OUT/mlm_accuracy_vs_dim.png and
OUT/lexnames_vs_dim.png.
"""
import json
import os
import sys
from typing import Any

from absl import app
from absl import flags
import matplotlib
matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# experiments/report_files.py
# pylint: disable-next=wrong-import-position
from report_files import load_summary, write_results

FLAGS = flags.FLAGS

DIMS = (8, 16, 32, 64, 128)
NESTED = {"mrl_e": "MRL-E", "mrl": "MRL", "mrl_e_pn": "MRL-E, prefix norm"}
FF_DIMS = (8, 32, 128)
# The paper's claim (section 4.3): MLM accuracy within 0.5% of FF per dim.
CLAIM_GAP = 0.005


def _define_flags() -> None:
  flags.DEFINE_string("root", "workdirs/text_mlm", "Workdirs of the models.")
  flags.DEFINE_string("out", "experiments/text_mlm", "Output directory.")
  flags.DEFINE_string(
      "keep", None, "An earlier results.json: numbers missing under --root "
      "(workdirs deleted, or models not rerun) are taken from it.")


def collect(root: str) -> dict[str, Any]:
  """{"mlm": {series: {dim: accuracy}}, "knn": ..., "probe": ...}."""
  mlm, knn, probe = {}, {}, {}
  for name in NESTED:
    ev = load_summary(root, name, "eval").get("mlm_accuracy", {})
    mlm[name] = {d: ev[str(d)] for d in DIMS if str(d) in ev}
    nn, lin = (load_summary(root, name, "knn"),
               load_summary(root, name, "probe"))
    knn[name] = {d: nn[f"knn/top1/d={d}"] for d in DIMS
                 if f"knn/top1/d={d}" in nn}
    probe[name] = {d: lin[f"probe/top1@all/d={d}"] for d in DIMS
                   if f"probe/top1@all/d={d}" in lin}
  mlm["ff"] = {}
  for k in FF_DIMS:
    ev = load_summary(root, f"ff{k}", "eval").get("mlm_accuracy", {})
    if str(k) in ev:
      mlm["ff"][k] = ev[str(k)]
  base = load_summary(root, "ff128", "baselines")
  for method in ("truncate", "svd"):
    knn[f"ff128_{method}"] = {d: base[f"{method}/knn_top1/d={d}"]
                              for d in DIMS
                              if f"{method}/knn_top1/d={d}" in base}
    probe[f"ff128_{method}"] = {d: base[f"{method}/linear_top1/d={d}"]
                                for d in DIMS
                                if f"{method}/linear_top1/d={d}" in base}
  return {"mlm": mlm, "knn": knn, "probe": probe,
          "steps": {name: load_summary(root, name, "eval").get("step")
                    for name in (*NESTED, *(f"ff{k}" for k in FF_DIMS))}}


def fill_from(r: dict[str, Any], earlier: dict[str, Any]) -> dict[str, Any]:
  """r with every number it lacks taken from an earlier collect() result
  (as read back from results.json: dims are strings there)."""
  for kind in ("mlm", "knn", "probe"):
    for series, table in earlier.get(kind, {}).items():
      mine = r[kind].setdefault(series, {})
      for d, value in table.items():
        mine.setdefault(int(d), value)
  for name, step in earlier.get("steps", {}).items():
    if r["steps"].get(name) is None:
      r["steps"][name] = step
  return r


def _cell(table: dict[int, float], d: int) -> str:
  return f"{100 * table[d]:.2f}" if d in table else "missing"


def claims(r: dict[str, Any]) -> list[str]:
  """'holds' / 'FAILS' / 'missing' for MRL-E and MRL against FF-k."""
  lines = []
  for name in ("mrl_e", "mrl"):
    for k in FF_DIMS:
      nested, ff = r["mlm"][name].get(k), r["mlm"]["ff"].get(k)
      if nested is None or ff is None:
        verdict = "missing"
      else:
        gap = ff - nested
        side = "below" if gap > 0 else "above"
        verdict = (f"{'holds' if gap <= CLAIM_GAP else 'FAILS'} "
                   f"({100 * abs(gap):.2f} points {side} FF-{k})")
      lines.append(f"- {NESTED[name]} at {k} dims within 0.5 points of "
                   f"FF-{k}: {verdict}")
  return lines


def markdown(r: dict[str, Any]) -> str:
  head = "| model | " + " | ".join(str(d) for d in DIMS) + " |"
  rule = "|---" * (len(DIMS) + 1) + "|"
  rows = ["## MLM accuracy on the validation split (%)", "", head, rule]
  for name, label in NESTED.items():
    rows.append(f"| {label} | " + " | ".join(_cell(r["mlm"][name], d)
                                             for d in DIMS) + " |")
  rows.append("| FF-k | " + " | ".join(
      _cell(r["mlm"]["ff"], d) if d in FF_DIMS else "" for d in DIMS) + " |")
  rows += ["", "## The paper's claim", "", *claims(r)]
  for kind, title in (("knn", "WordNet lexnames, 1-NN top-1 (%)"),
                      ("probe", "WordNet lexnames, linear probe top-1 (%)")):
    rows += ["", f"## {title}", "", head, rule]
    labels = {**NESTED, "ff128_truncate": "FF-128, first m dims",
              "ff128_svd": "FF-128, SVD to m dims"}
    for series, label in labels.items():
      rows.append(f"| {label} | " + " | ".join(
          _cell(r[kind].get(series, {}), d) for d in DIMS) + " |")
  return "\n".join(rows) + "\n"


def plot(r: dict[str, Any], out_dir: str) -> None:
  fig, ax = plt.subplots(figsize=(5, 3.5))
  for name, label in NESTED.items():
    table = r["mlm"][name]
    ax.plot(sorted(table), [100 * table[d] for d in sorted(table)], "o-",
            label=label)
  ff = r["mlm"]["ff"]
  ax.plot(sorted(ff), [100 * ff[d] for d in sorted(ff)], "ks", label="FF-k")
  ax.set(xscale="log", xlabel="dims", ylabel="MLM accuracy (%)",
         title="Nested MLM, BERT-Tiny")
  ax.set_xticks(DIMS, [str(d) for d in DIMS])
  ax.legend()
  fig.tight_layout()
  fig.savefig(os.path.join(out_dir, "mlm_accuracy_vs_dim.png"), dpi=120)
  plt.close(fig)
  fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
  for ax, kind in zip(axes, ("knn", "probe")):
    for series, table in r[kind].items():
      ax.plot(sorted(table), [100 * table[d] for d in sorted(table)], "o-",
              label=NESTED.get(series, series.replace("ff128_", "FF-128 ")))
    ax.set(xscale="log", xlabel="dims", ylabel="top-1 (%)",
           title=f"lexnames, {'1-NN' if kind == 'knn' else 'linear probe'}")
    ax.set_xticks(DIMS, [str(d) for d in DIMS])
  axes[0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(os.path.join(out_dir, "lexnames_vs_dim.png"), dpi=120)
  plt.close(fig)


def main(argv) -> None:
  del argv
  r = collect(FLAGS.root)
  if FLAGS.keep:
    with open(FLAGS.keep) as f:
      r = fill_from(r, json.load(f))
  write_results(FLAGS.out, r, markdown(r))
  plot(r, FLAGS.out)
  print(markdown(r))


if __name__ == "__main__":
  _define_flags()
  app.run(main)
