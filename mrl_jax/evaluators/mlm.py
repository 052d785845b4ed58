"""Masked-LM accuracy and loss per nesting dim (the paper's Table 7
quantity), from the sums of the MLM eval step (tasks/mlm.py)."""
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from mrl_jax.evaluators import classification


def evaluate(eval_step: Callable[..., dict[str, Any]], state: Any,
             batches: Iterable[dict[str, Any]],
             nesting_dims: Sequence[int]) -> dict[str, Any]:
  """Runs the MLM eval step over `batches` (`summarize`)."""
  return summarize(
      classification.sum_over_batches(eval_step, state, batches),
      int(state.step), nesting_dims)


def summarize(totals: dict[str, np.ndarray], step: int,
              nesting_dims: Sequence[int]) -> dict[str, Any]:
  """Summed eval-step outputs -> per-dim means over the masked predictions.

  Args:
    totals: "correct" [G] and "loss" [G] summed over real predictions,
      "predictions" [] their number, "count" [] the real sequences.
  Returns:
    {"task": "mlm", "step", "nesting", "num_examples" (sequences),
     "num_predictions", "mlm_accuracy": {"<dim>": fraction},
     "mlm_loss": {"<dim>": mean cross-entropy}}; eval_summary.json.
  """
  predictions = max(float(totals["predictions"]), 1.0)
  per_dim = lambda key: {str(d): float(v / predictions)
                         for d, v in zip(nesting_dims, totals[key])}
  return {"task": "mlm", "step": step,
          "nesting": [int(d) for d in nesting_dims],
          "num_examples": int(totals["count"]),
          "num_predictions": int(totals["predictions"]),
          "mlm_accuracy": per_dim("correct"), "mlm_loss": per_dim("loss")}


def as_scalars(summary: dict[str, Any], split: str) -> dict[str, float]:
  """Flat metric names, e.g. {"val/mlm_accuracy/d=12": 0.41, ...}."""
  return {f"{split}/{metric}/d={dim}": value
          for metric in ("mlm_accuracy", "mlm_loss")
          for dim, value in summary[metric].items()}


def format_table(summary: dict[str, Any], name: str = "") -> str:
  """A per-dim MLM accuracy / loss table for humans."""
  lines = [f"masked-LM eval{' of ' + name if name else ''} at step "
           f"{summary['step']} on {summary['num_examples']} sequences "
           f"({summary['num_predictions']} masked tokens)",
           f"{'dim':>6}  {'MLM acc':>8}  {'MLM loss':>8}"]
  for dim in summary["nesting"]:
    lines.append(f"{dim:>6}  {summary['mlm_accuracy'][str(dim)]:>8.4f}  "
                 f"{summary['mlm_loss'][str(dim)]:>8.4f}")
  return "\n".join(lines)
