"""Adaptive classification (MRL-AC): a confidence cascade over nesting dims.

Reproduces the protocol of the official notebook
(RAIVNLab/MRL, model_analysis/Model_Cascades.ipynb):

1. Per seed, a random subset of the evaluation examples (10K of the 50K
   ImageNet val images; `holdout` here) is used to fit one max-softmax
   threshold per consecutive pair of nesting dims (`fit_thresholds`).
2. On the remaining examples, each example is predicted by the first dim whose
   max softmax is strictly above that dim's threshold, or by the early-stop
   cap dim if none is (`cascade`).
3. Accuracy, expected dim sum_m m * P(stop at m), and the thresholds are
   averaged over the seeds (`evaluate`).

Inputs are softmax probabilities [G, N, C] (G nesting dims). The official
numbers use flip test-time augmentation: the logits of the image and of its
horizontal flip are *summed* per dim and then soft-maxed
(`softmax_per_dim(logits, flip_logits)` does exactly that). Probabilities
averaged over the two views, or a softmax of averaged logits, are accepted
too, but they are less confident, so their thresholds and expected dims are
not comparable with the paper's.

Outputs follow evaluators/classification.py: fractions (not percentages) in
dicts keyed by str(dim).
"""
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mrl_jax.mrl import metrics

# The notebook's grid: np.linspace(0.1, 1, 100).
DEFAULT_GRID = np.linspace(0.1, 1.0, 100)
# --mode=adaptive's settings (config.adaptive overrides them). The notebook's
# protocol: thresholds fitted on a random 20% (10K of ImageNet's 50K),
# evaluated on the rest, 30 seeds; flip-TTA logits. `tolerance`: how far
# below the full dim's accuracy a cascade may be to count as matching it.
DEFAULTS = {"holdout": 0.2, "seeds": 30, "tta": True, "tolerance": 0.0}


def softmax_per_dim(logits: Any, flip_logits: Any = None) -> np.ndarray:
  """Softmax over classes for every nesting dim.

  Args:
    logits: [G, N, C] logits of all nesting dims.
    flip_logits: optional [G, N, C] logits of the horizontally flipped images.
      As in the official `evaluate_model_nesting(tta=True)` they are added to
      `logits` before the softmax (a sum, not a mean: the sharper softmax is
      what the published thresholds were fitted on).

  Returns:
    [G, N, C] float32 probabilities.
  """
  x = jnp.asarray(logits, jnp.float32)
  if flip_logits is not None:
    x = x + jnp.asarray(flip_logits, jnp.float32)
  return np.asarray(jax.nn.softmax(x, axis=-1))


def confidence_and_prediction(probs: Any) -> tuple[np.ndarray, np.ndarray]:
  """Max softmax and arg-max class per dim: ([G, N] float64, [G, N] int)."""
  probs = np.asarray(probs)
  # float64 so that comparisons with the (float64) grid are exact.
  return probs.max(-1).astype(np.float64), probs.argmax(-1)


def _pair_correct_counts(conf_small: np.ndarray, small_ok: np.ndarray,
                         big_ok: np.ndarray, grid: np.ndarray) -> np.ndarray:
  """Correct predictions of one pair's two-stage cascade at every threshold.

  Args:
    conf_small: [n] max softmax of the smaller dim.
    small_ok: [n] bool, the smaller dim's prediction is right.
    big_ok: [n] bool, the larger dim's prediction is right.
    grid: [T] thresholds.

  Returns:
    [T] int counts of sum_i (small_ok if conf_small > t else big_ok).
  """
  # Start from "always the larger dim" and add the change for every example
  # above t; sorting makes this O(n log n) instead of O(T * n).
  gain = small_ok.astype(np.int64) - big_ok.astype(np.int64)
  order = np.argsort(conf_small, kind="stable")
  suffix = np.concatenate([np.cumsum(gain[order][::-1])[::-1], [0]])
  first_above = np.searchsorted(conf_small[order], grid, side="right")
  return int(big_ok.sum()) + suffix[first_above]


def _fit(conf: np.ndarray, pred: np.ndarray, labels: np.ndarray,
         grid: np.ndarray) -> np.ndarray:
  """fit_thresholds on precomputed ([G, n], [G, n]) confidences/predictions."""
  correct = pred == labels[None, :]
  thresholds = []
  for i in range(conf.shape[0] - 1):
    counts = _pair_correct_counts(conf[i], correct[i], correct[i + 1], grid)
    thresholds.append(grid[counts == counts.max()].min())
  return np.asarray(thresholds, np.float64)


def fit_thresholds(probs: Any, labels: Any,
                   grid: Any = DEFAULT_GRID) -> np.ndarray:
  """Greedy per-pair max-softmax thresholds, as in the official notebook.

  For each consecutive pair of dims (m_i, m_{i+1}) and each threshold t of
  `grid`, the pairwise accuracy is that of a two-stage cascade on these
  examples alone: predict with m_i where max-softmax(m_i) > t (strictly, as
  the notebook's `confidence_d1 > t`), else with m_{i+1}. The kept threshold
  is the smallest t attaining the maximum pairwise accuracy. Each pair is
  fitted independently of the others (the cascade is not optimised jointly).
  With the default grid, t = 1.0 means "never stop at m_i".

  The notebook compares float accuracies 100 * correct / n; comparing the
  integer counts, as here, selects the same thresholds.

  Args:
    probs: [G, N, C] softmax probabilities (may be flip-TTA; see module doc).
    labels: [N] integer class ids.
    grid: [T] candidate thresholds.

  Returns:
    [G - 1] float64 thresholds; entry i is applied to dim i's confidence.
  """
  conf, pred = confidence_and_prediction(probs)
  return _fit(conf, pred, np.asarray(labels),
              np.asarray(grid, np.float64))


def _stop_index(conf: np.ndarray, thresholds: np.ndarray,
                cap_index: int) -> np.ndarray:
  """[N] index of the first dim < cap_index above its threshold, else cap."""
  if cap_index == 0:  # argmax over an empty axis would raise
    return np.zeros(conf.shape[1], np.int64)
  above = conf[:cap_index] > thresholds[:cap_index, None]  # [cap, N]
  return np.where(above.any(0), above.argmax(0), cap_index)


def _check_cap(cap_index: int | None, num_dims: int) -> int:
  cap = num_dims - 1 if cap_index is None else int(cap_index)
  if not 0 <= cap < num_dims:
    raise ValueError(f"cap_index={cap_index} outside [0, {num_dims - 1}]")
  return cap


def cascade(probs: Any, thresholds: Any,
            cap_index: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Runs the threshold cascade.

  Example n stops at the first dim index j < cap_index with
  max-softmax[j, n] > thresholds[j], or at cap_index if there is none, and is
  predicted by that dim's arg-max class.

  Args:
    probs: [G, N, C] softmax probabilities.
    thresholds: [G - 1] thresholds (from `fit_thresholds`).
    cap_index: index of the early-stop cap dim, the largest dim ever used;
      None = the last dim (G - 1). 0 means "always the smallest dim".

  Returns:
    (predictions [N] int, stop_index [N] int in [0, cap_index]).
  """
  conf, pred = confidence_and_prediction(probs)
  thresholds = np.asarray(thresholds, np.float64)
  if thresholds.shape != (conf.shape[0] - 1,):
    raise ValueError(f"thresholds {thresholds.shape} for {conf.shape[0]} "
                     "dims; expected one per consecutive pair")
  stop = _stop_index(conf, thresholds, _check_cap(cap_index, conf.shape[0]))
  return pred[stop, np.arange(conf.shape[1])], stop


def expected_dim(stop_index: Any, nesting_dims: Sequence[int],
                 cumulative: bool = False) -> float:
  """Expected dim of a cascade: sum_i cost_i * P(stop at i).

  Args:
    stop_index: [N] indices into nesting_dims where each example stopped.
    nesting_dims: [G] dims.
    cumulative: False: cost_i = nesting_dims[i] (the notebook's and paper's
      expected dimensionality). True: cost_i = sum(nesting_dims[:i + 1]), the
      dims actually read when every smaller head was evaluated first (the
      paper's "counting cumulative head cost" variant).
  """
  dims = np.asarray(nesting_dims, np.float64)
  cost = np.cumsum(dims) if cumulative else dims
  stop_index = np.asarray(stop_index)
  fractions = np.bincount(stop_index, minlength=len(dims)) / len(stop_index)
  return float(fractions @ cost)


def _num_fit(holdout: float | int, n: int) -> int:
  """Size of the threshold-fitting subset: a fraction (float) or a count."""
  if isinstance(holdout, float):
    if not 0.0 < holdout < 1.0:
      raise ValueError(f"holdout fraction {holdout} not in (0, 1)")
    count = int(round(holdout * n))
  else:
    count = int(holdout)
  if not 0 < count < n:
    raise ValueError(f"holdout={holdout} gives {count} fitting examples of "
                     f"{n}; need at least one for fitting and one for eval")
  return count


def _seed_list(seeds: int | Sequence[int]) -> list[int]:
  if isinstance(seeds, int):
    return list(range(seeds))
  return [int(s) for s in seeds]


def _one_seed(conf: np.ndarray, pred: np.ndarray, labels: np.ndarray,
              dims: Sequence[int], cap_indices: Sequence[int], num_fit: int,
              grid: np.ndarray, seed: int) -> dict[str, Any]:
  """Fits thresholds on a random subset, evaluates every cap on the rest.

  Args:
    conf, pred: [G, N] max softmax and arg-max class per dim.
    labels: [N] classes.
    dims: [G] nesting dims.
    cap_indices: indices into dims of the early-stop caps.
    num_fit: size of the fitting subset.
    grid: [T] candidate thresholds.
    seed: seeds the split.

  Returns:
    {"thresholds": [G-1], "accuracy", "expected_dim", "expected_cost":
     [len(caps)], "stop_fraction": [len(caps), G], "dim_accuracy": [G]}.
  """
  n = conf.shape[1]
  # The notebook's np.random.choice(50000, 10000, replace=False), with a
  # seeded Generator so that results are reproducible.
  fit_idx = np.random.default_rng(seed).choice(n, num_fit, replace=False)
  eval_mask = np.ones(n, bool)
  eval_mask[fit_idx] = False
  thresholds = _fit(conf[:, fit_idx], pred[:, fit_idx], labels[fit_idx], grid)
  conf_e, pred_e = conf[:, eval_mask], pred[:, eval_mask]
  labels_e = labels[eval_mask]
  columns = np.arange(conf_e.shape[1])
  out = {"thresholds": thresholds, "accuracy": [], "expected_dim": [],
         "expected_cost": [], "stop_fraction": [],
         "dim_accuracy": (pred_e == labels_e).mean(1)}
  for cap in cap_indices:
    stop = _stop_index(conf_e, thresholds, cap)
    out["accuracy"].append((pred_e[stop, columns] == labels_e).mean())
    out["expected_dim"].append(expected_dim(stop, dims))
    out["expected_cost"].append(expected_dim(stop, dims, cumulative=True))
    out["stop_fraction"].append(
        np.bincount(stop, minlength=len(dims)) / len(stop))
  return out


def evaluate(probs: Any, labels: Any, nesting_dims: Sequence[int],
             holdout: float | int = 0.2, seeds: int | Sequence[int] = 30,
             caps: Sequence[int] | None = None,
             grid: Any = DEFAULT_GRID) -> dict[str, Any]:
  """MRL-AC over random fit/eval splits, averaged over seeds.

  Args:
    probs: [G, N, C] softmax probabilities, one row per nesting dim (flip-TTA
      as in the paper; see the module docstring).
    labels: [N] integer class ids.
    nesting_dims: [G] dims, ascending, matching probs' first axis.
    holdout: size of the random threshold-fitting subset, as a fraction
      (float, 0.2 = the notebook's 10K of 50K) or a count (int); the rest is
      the evaluation part.
    seeds: number of seeds (seeds 0..n-1) or an explicit list; seed s draws its
      split with np.random.default_rng(s), so results do not depend on global
      random state.
    caps: early-stop cap dims (each in nesting_dims); default every dim. The
      notebook's table starts at the second dim; the first is the trivial
      "always the smallest dim" cascade.
    grid: [T] candidate thresholds.

  Returns:
    {"nesting", "num_examples", "num_fit", "num_eval", "seeds",
     "thresholds": {"<dim_i>": mean threshold for leaving dim_i},
     "thresholds_std",
     "accuracy", "accuracy_std", "expected_dim", "expected_dim_std",
     "expected_cost", "expected_cost_std": {"<cap dim>": value},
     "stop_fraction": {"<cap dim>": {"<dim>": mean P(stop at dim)}},
     "dim_accuracy": {"<dim>": mean accuracy of that dim alone on the eval
       parts}}.
    Std values are over seeds (population std, as the notebook's np.std).
  """
  conf, pred = confidence_and_prediction(probs)
  labels = np.asarray(labels)
  dims = [int(d) for d in nesting_dims]
  if conf.shape[0] != len(dims) or labels.shape != (conf.shape[1],):
    raise ValueError(f"probs {np.shape(probs)}, labels {labels.shape} and "
                     f"{len(dims)} nesting dims do not match")
  if any(a >= b for a, b in zip(dims, dims[1:])):
    raise ValueError(f"nesting dims {dims} must be strictly ascending")
  caps = dims if caps is None else [int(c) for c in caps]
  if not set(caps) <= set(dims):
    raise ValueError(f"caps {caps} not all in nesting dims {dims}")
  cap_indices = [dims.index(c) for c in caps]
  num_fit = _num_fit(holdout, conf.shape[1])
  seed_list = _seed_list(seeds)
  if not seed_list:
    raise ValueError("need at least one seed")
  runs = [_one_seed(conf, pred, labels, dims, cap_indices, num_fit,
                    np.asarray(grid, np.float64), s) for s in seed_list]
  stacked = {key: np.asarray([r[key] for r in runs]) for key in runs[0]}
  mean, std = ({k: v.mean(0) for k, v in stacked.items()},
               {k: v.std(0) for k, v in stacked.items()})
  by_cap = lambda x: {str(c): float(v) for c, v in zip(caps, x)}
  summary = {
      "nesting": dims, "num_examples": int(conf.shape[1]),
      "num_fit": num_fit, "num_eval": int(conf.shape[1]) - num_fit,
      "seeds": seed_list,
      "thresholds": {str(d): float(v)
                     for d, v in zip(dims, mean["thresholds"])},
      "thresholds_std": {str(d): float(v)
                         for d, v in zip(dims, std["thresholds"])},
      "stop_fraction": {str(c): {str(d): float(p) for d, p in zip(dims, row)}
                        for c, row in zip(caps, mean["stop_fraction"])},
      "dim_accuracy": {str(d): float(v)
                       for d, v in zip(dims, mean["dim_accuracy"])},
  }
  for key in ("accuracy", "expected_dim", "expected_cost"):
    summary[key], summary[f"{key}_std"] = by_cap(mean[key]), by_cap(std[key])
  return summary


def smallest_matching(summary: dict[str, Any], tolerance: float = 0.0,
                      target: float | None = None,
                      cost: str = "expected_dim") -> float | None:
  """Smallest expected dim whose cascade is as accurate as a target.

  Args:
    summary: the output of `evaluate`.
    tolerance: accuracies >= target - tolerance count as matching (fractions:
      0.001 = 0.1 points).
    target: accuracy to match; default the full (largest) dim's own accuracy
      on the same evaluation parts, summary["dim_accuracy"]. Pass e.g. an
      FF-512 accuracy to reproduce the paper's comparison.
    cost: "expected_dim" or "expected_cost" (cumulative head cost).

  Returns:
    The smallest summary[cost] over caps whose mean accuracy matches, or None
    if no cap does.
  """
  if target is None:
    target = summary["dim_accuracy"][str(max(summary["nesting"]))]
  matching = [summary[cost][cap] for cap, acc in summary["accuracy"].items()
              if acc >= target - tolerance]
  return min(matching) if matching else None


def as_scalars(summary: dict[str, Any], split: str) -> dict[str, float]:
  """Flat metric names keyed by cap dim, e.g. {"val/ac_accuracy/d=16": ...}."""
  return {metrics.metric_name(split, f"ac_{key}", int(cap)): value
          for key in ("accuracy", "expected_dim", "expected_cost")
          for cap, value in summary[key].items()}
