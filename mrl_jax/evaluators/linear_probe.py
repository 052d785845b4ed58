"""Linear probes on frozen embedding prefixes (few-shot or full), per dim.

A fresh softmax-regression head is fitted on z[:, :m] for every nesting dim
m, with the backbone frozen: the paper's transfer / few-shot / long-tail
protocol, and the "fit a linear head" of the SVD and random-feature
baselines (evaluators/baselines.py).

Features: each prefix is L2-normalised separately (the MRL convention, as in
k-NN), so every dim and every method is probed on the same scale and one
regularisation strength suits all. Objective, per dim:

    mean_i CE(W x_i + b, y_i) + l2 * ||W||^2      (bias not regularised)

strictly convex for l2 > 0, so the fitted head is the unique minimiser and
can be checked against any other solver (tests use numpy gradient descent).
It is minimised by full-batch L-BFGS (optax.lbfgs) for a fixed number of
steps, with a backtracking line search: it reaches the same objective as
optax's default zoom search here and compiles in half the time.

All dims are fitted in one compiled call: prefix m is the full-width feature
vector with the columns >= m zeroed, and a zero column gets zero gradient
and zero decay, so its weights stay at their zero initialisation and the
result equals a fit on z[:, :m] alone (tested). Memory: G x N x d floats.
"""
from collections.abc import Sequence
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mrl_jax.mrl import metrics

NORM_FLOOR = 1e-12
DEFAULT_L2 = 1e-4
DEFAULT_STEPS = 200
# --mode=probe's settings (config.probe overrides them). shots: examples per
# class, 0 = every train example.
DEFAULTS = {"shots": (1, 5, 10, 0), "seeds": 3, "l2": DEFAULT_L2,
            "steps": DEFAULT_STEPS}


def prefix_features(embeddings: Any, dims: Sequence[int]) -> np.ndarray:
  """[N, d] raw embeddings -> [G, N, max(dims)]: per-prefix L2-normalised
  z[:, :m], zero-padded to the widest dim."""
  z = np.asarray(embeddings, np.float32)
  width = max(dims)
  if width > z.shape[1]:
    raise ValueError(f"dims {list(dims)} exceed the embedding dim "
                     f"{z.shape[1]}")
  out = np.zeros((len(dims), len(z), width), np.float32)
  for g, m in enumerate(dims):
    prefix = z[:, :m]
    norms = np.linalg.norm(prefix, axis=1, keepdims=True)
    out[g, :, :m] = prefix / np.maximum(norms, NORM_FLOOR)
  return out


def _objective(params: dict[str, jax.Array], x: jax.Array, y: jax.Array,
               l2: float) -> jax.Array:
  logits = x @ params["w"] + params["b"]
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
  return ce + l2 * jnp.sum(params["w"] ** 2)


@functools.partial(jax.jit, static_argnames=("num_classes", "steps"))
def _fit_batched(x: jax.Array, y: jax.Array, num_classes: int, l2: float,
                 steps: int) -> dict[str, jax.Array]:
  """x [G, N, D], y [N] -> {"w": [G, D, C], "b": [G, C]}."""

  def fit_one(xg):
    fun = functools.partial(_objective, x=xg, y=y, l2=l2)
    opt = optax.lbfgs(linesearch=optax.scale_by_backtracking_linesearch(
        max_backtracking_steps=15, store_grad=True))
    value_and_grad = optax.value_and_grad_from_state(fun)
    params = {"w": jnp.zeros((xg.shape[1], num_classes), jnp.float32),
              "b": jnp.zeros((num_classes,), jnp.float32)}

    def step(carry, _):
      params, state = carry
      value, grad = value_and_grad(params, state=state)
      updates, state = opt.update(grad, state, params, value=value,
                                  grad=grad, value_fn=fun)
      return (optax.apply_updates(params, updates), state), None

    (params, _), _ = jax.lax.scan(step, (params, opt.init(params)), None,
                                  length=steps)
    return params

  return jax.vmap(fit_one)(x)


def fit(features: Any, labels: Any, num_classes: int, *,
        l2: float = DEFAULT_L2,
        steps: int = DEFAULT_STEPS) -> dict[str, np.ndarray]:
  """Softmax regression on already-prepared features, one head per group.

  Args:
    features: [G, N, D] (e.g. from `prefix_features`) or [N, D].
    labels: [N] integer classes in [0, num_classes).
    num_classes: C.
    l2: weight-decay strength (> 0 keeps separable data bounded).
    steps: L-BFGS iterations.

  Returns:
    {"w": [G, D, C], "b": [G, C]} (no G axis for [N, D] features).
  """
  x = np.asarray(features, np.float32)
  y = np.asarray(labels)
  single = x.ndim == 2
  x = x[None] if single else x
  if x.ndim != 3 or y.shape != (x.shape[1],):
    raise ValueError(f"features {np.shape(features)} and labels {y.shape} "
                     "do not match; need [G, N, D] or [N, D] and [N]")
  if y.min() < 0 or y.max() >= num_classes:
    raise ValueError(f"labels outside [0, {num_classes}); set num_classes")
  if l2 < 0 or steps < 1:
    raise ValueError(f"need l2 >= 0 and steps >= 1, got {l2}, {steps}")
  params = jax.tree.map(np.asarray, _fit_batched(
      jnp.asarray(x), jnp.asarray(y, jnp.int32), num_classes, float(l2),
      int(steps)))
  return jax.tree.map(lambda a: a[0], params) if single else params


def predict(params: dict[str, np.ndarray], features: Any) -> np.ndarray:
  """[G, N] predicted classes of features [G, N, D] under heads [G, D, C]."""
  logits = np.einsum("gnd,gdc->gnc", np.asarray(features, np.float32),
                     params["w"]) + params["b"][:, None, :]
  return logits.argmax(-1)


def sample_per_class(labels: Any, shots: int, seed: int) -> np.ndarray:
  """Sorted indices of `shots` random examples of every class in labels.

  Raises:
    ValueError: if a class has fewer than `shots` examples.
  """
  labels = np.asarray(labels)
  rng = np.random.default_rng(seed)
  picks = []
  for c in np.unique(labels):
    members = np.flatnonzero(labels == c)
    if len(members) < shots:
      raise ValueError(f"class {c} has {len(members)} examples, fewer than "
                       f"{shots} shots; lower the shot count")
    picks.append(rng.choice(members, shots, replace=False))
  return np.sort(np.concatenate(picks))


def metric_key(shots: int, dim: int) -> str:
  """"probe/top1@5shot/d=8"; shots = 0 (every train example) -> "top1@all"."""
  return metrics.metric_name(
      "probe", f"top1@{shots}shot" if shots else "top1@all", dim)


def evaluate(train_embeddings: Any, train_labels: Any, test_embeddings: Any,
             test_labels: Any, dims: Sequence[int], num_classes: int, *,
             shots: Sequence[int] = (0,), seeds: int = 1,
             l2: float = DEFAULT_L2,
             steps: int = DEFAULT_STEPS) -> dict[str, Any]:
  """Top-1 of linear probes on frozen prefixes, per shot count and dim.

  Args:
    train_embeddings: [N, d] raw embeddings the probes are fitted on.
    train_labels: [N] integer classes.
    test_embeddings: [Q, d]; test_labels [Q].
    dims: prefix dims m.
    num_classes: C.
    shots: examples per class to fit on; 0 = every train example.
    seeds: few-shot draws averaged per shot count (a 0-shot entry is fitted
      once: it is deterministic).
    l2, steps: see `fit`.

  Returns:
    {"nesting", "shots", "seeds", "l2", "steps",
     "probe/top1@<n>shot/d=<m>" (or "probe/top1@all/d=<m>"): mean top-1,
     "probe/top1@<n>shot_std/d=<m>": std over seeds}.
  """
  dims = [int(m) for m in dims]
  train_x = prefix_features(train_embeddings, dims)
  test_x = prefix_features(test_embeddings, dims)
  train_y, test_y = np.asarray(train_labels), np.asarray(test_labels)
  out: dict[str, Any] = {"nesting": dims, "shots": [int(n) for n in shots],
                         "seeds": int(seeds), "l2": float(l2),
                         "steps": int(steps)}
  for n in out["shots"]:
    accs = []
    for seed in range(1 if n == 0 else seeds):
      idx = (np.arange(len(train_y)) if n == 0
             else sample_per_class(train_y, n, seed))
      params = fit(train_x[:, idx], train_y[idx], num_classes, l2=l2,
                   steps=steps)
      accs.append((predict(params, test_x) == test_y[None]).mean(1))
    accs = np.asarray(accs)  # [seeds, G]
    for g, m in enumerate(dims):
      out[metric_key(n, m)] = float(accs[:, g].mean())
      if n:
        name = metric_key(n, m).replace("shot/", "shot_std/")
        out[name] = float(accs[:, g].std())
  return out
