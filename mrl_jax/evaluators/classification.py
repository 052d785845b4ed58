"""Linear classification with the trained heads: top-1/top-5 per nesting dim."""
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import numpy as np

Batch = dict[str, jax.Array]


def sum_over_batches(eval_step: Callable[[Any, Batch], Batch], state: Any,
                     batches: Iterable[Batch]) -> dict[str, np.ndarray]:
  """Runs `eval_step` over `batches`; its outputs summed, as float64."""
  totals = None
  for batch in batches:
    sums = eval_step(state, batch)
    totals = sums if totals is None else jax.tree.map(lambda a, b: a + b,
                                                         totals, sums)
  return jax.tree.map(lambda x: np.asarray(x, np.float64), totals)


def evaluate(eval_step: Callable[[Any, Batch], Batch], state: Any,
             batches: Iterable[Batch],
             nesting_dims: Sequence[int]) -> dict[str, Any]:
  """Runs `eval_step` over `batches` and turns the sums into fractions
  (`summarize`)."""
  return summarize(sum_over_batches(eval_step, state, batches),
                   int(state.step), nesting_dims)


def summarize(totals: dict[str, np.ndarray], step: int,
              nesting_dims: Sequence[int]) -> dict[str, Any]:
  """Summed eval-step outputs -> fractions per dim.

  Returns:
    {"task", "step", "nesting", "num_examples", "top1": {"<dim>": fraction},
     "top5": {...}, "loss": {...}}; the format of eval_summary.json.
  """
  count = max(float(totals["count"]), 1.0)
  per_dim = lambda key: {str(d): float(v / count)
                         for d, v in zip(nesting_dims, totals[key])}
  return {"task": "classification", "step": step,
          "nesting": [int(d) for d in nesting_dims],
          "num_examples": int(totals["count"]), "top1": per_dim("top1"),
          "top5": per_dim("top5"), "loss": per_dim("loss")}


def as_scalars(summary: dict[str, Any], split: str) -> dict[str, float]:
  """Flat metric names, e.g. {"val/top1/d=8": 0.9, ...}."""
  return {f"{split}/{metric}/d={dim}": value
          for metric in ("top1", "top5", "loss")
          for dim, value in summary[metric].items()}


def format_table(summary: dict[str, Any], name: str = "") -> str:
  """A per-dim accuracy table for humans (then one per summary["extra_eval"]
  set)."""
  lines = [f"eval{' of ' + name if name else ''} at step {summary['step']} on "
           f"{summary['num_examples']} examples",
           f"{'dim':>6}  {'top-1':>7}  {'top-5':>7}"]
  for dim in summary["nesting"]:
    lines.append(f"{dim:>6}  {summary['top1'][str(dim)]:>7.4f}  "
                 f"{summary['top5'][str(dim)]:>7.4f}")
  for label, extra in summary.get("extra_eval", {}).items():
    lines.append(format_table(extra, label))
  return "\n".join(lines)
