r"""Collects the openclipart two-tower reproduction's summaries into tables,
the paper's claim checks and plots (reproduce.sh runs it last).

  .venv/bin/python experiments/openclipart_align/report.py \
      --root=workdirs/openclipart_align --out=experiments/openclipart_align

Reads ROOT/mrl/{eval,knn}_summary.json (the eval's extra_eval holds the
zero-shot on Fashion-MNIST) (nested loss on both towers) and
ROOT/ff/{eval,baselines}_summary.json (the plain two-tower model, scored at
its first m dims: the paper's baseline); anything missing is reported as missing (never
guessed). Writes OUT/results.md, OUT/results.json and OUT/align_vs_dim.png.
"""
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

MODELS = {"mrl": "MRL", "ff": "plain, first m dims"}
FMNIST = "fashion_mnist/zero_shot/top1"  # eval_summary.json's extra_eval
# eval_summary.json metrics (per dim), then the image tower's 1-NN.
METRICS = {"i2t/recall@1": "image->text Recall@1",
           "i2t/recall@5": "image->text Recall@5",
           "t2i/recall@1": "text->image Recall@1",
           "t2i/recall@5": "text->image Recall@5",
           "zero_shot/top1": "zero-shot top-1, 22 categories",
           FMNIST: "zero-shot top-1 on Fashion-MNIST, 10 classes",
           "cosine/span": "cosine span (matching - random pairs)",
           "knn/top1": "image tower 1-NN top-1, 22 categories"}
PERCENT = {m for m in METRICS if m != "cosine/span"}


def _define_flags() -> None:
  flags.DEFINE_string("root", "workdirs/openclipart_align",
                      "Workdirs of the models.")
  flags.DEFINE_string("out", "experiments/openclipart_align",
                      "Output directory.")


def collect(root: str) -> dict[str, Any]:
  """{"metrics": {metric: {model: {dim: value}}}, "steps": {model: step}}."""
  metrics: dict[str, dict[str, dict[int, float]]] = {m: {} for m in METRICS}
  steps = {}
  for name in MODELS:
    ev = load_summary(root, name, "eval")
    steps[name] = ev.get("step")
    extra = ev.get("extra_eval", {}).get("fashion_mnist", {})
    for metric in METRICS:
      table = (extra.get("zero_shot/top1", {}) if metric == FMNIST
               else ev.get(metric, {}))
      metrics[metric][name] = {int(d): v for d, v in table.items()}
  # The flat 1-NN summaries: "knn/top1/d=8", "truncate/knn_top1/d=8".
  for name, kind, prefix in (("mrl", "knn", "knn/top1/d="),
                             ("ff", "baselines", "truncate/knn_top1/d=")):
    metrics["knn/top1"][name] = {
        int(k[len(prefix):]): v
        for k, v in load_summary(root, name, kind).items()
        if k.startswith(prefix)}
  return {"metrics": metrics, "steps": steps}


def _cell(metric: str, table: dict[int, float], d: int) -> str:
  if d not in table:
    return "missing"
  return f"{100 * table[d]:.2f}" if metric in PERCENT else f"{table[d]:.3f}"


def dims_of(r: dict[str, Any]) -> list[int]:
  return sorted({d for per_model in r["metrics"].values()
                 for table in per_model.values() for d in table})


def claims(r: dict[str, Any]) -> list[str]:
  """The paper's ALIGN-MRL claims, each 'holds' / 'FAILS' / 'missing'."""
  dims = dims_of(r)
  if not dims:
    return ["- no results yet"]
  small, full = dims[0], dims[-1]
  lines = []

  def gap(metric: str, d: int) -> float | None:
    mrl = r["metrics"][metric].get("mrl", {}).get(d)
    ff = r["metrics"][metric].get("ff", {}).get(d)
    return None if mrl is None or ff is None else mrl - ff

  for metric, d, text, test in (
      ("knn/top1", small, "image-tower 1-NN above the plain model's",
       lambda g: g > 0),
      ("zero_shot/top1", small, "zero-shot top-1 above the plain model's",
       lambda g: g > 0),
      ("cosine/span", small, "cosine span larger than the plain model's",
       lambda g: g > 0),
      ("i2t/recall@1", full, "image->text Recall@1 within 1 point of the "
       "plain model's (nesting costs little at full width)",
       lambda g: g >= -0.01)):
    g = gap(metric, d)
    unit = 100 if metric in PERCENT else 1
    verdict = ("missing" if g is None else
               f"{'holds' if test(g) else 'FAILS'} (MRL - plain = "
               f"{unit * g:+.2f})")
    lines.append(f"- at {d} dims, MRL's {text}: {verdict}")
  return lines


def markdown(r: dict[str, Any]) -> str:
  dims = dims_of(r)
  head = "| model | " + " | ".join(str(d) for d in dims) + " |"
  rule = "|---" * (len(dims) + 1) + "|"
  rows = ["## The paper's claims, checked here", "", *claims(r)]
  for metric, title in METRICS.items():
    unit = " (%)" if metric in PERCENT else ""
    rows += ["", f"## {title}{unit}", "", head, rule]
    for name, label in MODELS.items():
      table = r["metrics"][metric].get(name, {})
      rows.append(f"| {label} | " + " | ".join(
          _cell(metric, table, d) for d in dims) + " |")
  return "\n".join(rows) + "\n"


def plot(r: dict[str, Any], out_dir: str) -> None:
  """One panel per metric: MRL vs the plain model's first m dims."""
  dims = dims_of(r)
  panels = ("i2t/recall@1", "t2i/recall@1", "zero_shot/top1", FMNIST,
            "knn/top1", "cosine/span")
  fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.4))
  for ax, metric in zip(axes, panels):
    for name, label in MODELS.items():
      table = r["metrics"][metric].get(name, {})
      scale = 100 if metric in PERCENT else 1
      ax.plot(sorted(table), [scale * table[d] for d in sorted(table)],
              "o-", label=label)
    ax.set(xscale="log", xlabel="dims", title=METRICS[metric], ylabel=(
        "%" if metric in PERCENT else "cosine"))
    ax.title.set_fontsize(8)
    if dims:
      ax.set_xticks(dims, [str(d) for d in dims])
  axes[0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(os.path.join(out_dir, "align_vs_dim.png"), dpi=110)
  plt.close(fig)


def main(argv) -> None:
  del argv
  r = collect(FLAGS.root)
  write_results(FLAGS.out, r, markdown(r))
  plot(r, FLAGS.out)
  print(markdown(r))


if __name__ == "__main__":
  _define_flags()
  app.run(main)
