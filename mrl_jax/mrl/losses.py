"""Nested losses: one cross-entropy per nesting dim, from logits [G, B, C].

Eq. 1 of the paper: loss = sum_m c_m * mean_i L(W_m z_i[:m], y_i). As in the
official code, each dim's loss is a batch mean and dims are summed, not
averaged (so G dims give the backbone ~G x the gradient of an FF model).

Per-example functions return [G, B] (no reduction), optax-style; the reduction
with relative importance c_m and an example mask is `weighted_nested_loss`.
"""
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import optax

NestedLossFn = Callable[[jax.Array, jax.Array], jax.Array]


def nested_softmax_cross_entropy(logits: jax.Array, labels: jax.Array,
                                 label_smoothing: float = 0.0) -> jax.Array:
  """Softmax cross-entropy for every nesting dim (single-label data).

  Args:
    logits: [G, B, C].
    labels: integer class ids [B], or target distributions [B, C].
    label_smoothing: eps; targets become (1 - eps) * onehot + eps / C, as in
      torch's `CrossEntropyLoss(label_smoothing=eps)`.
  Returns:
    per-example losses [G, B].
  """
  num_classes = logits.shape[-1]
  targets = (jax.nn.one_hot(labels, num_classes) if labels.ndim == 1
             else labels.astype(jnp.float32))
  if label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)
  return jax.vmap(lambda lg: optax.softmax_cross_entropy(lg, targets))(logits)


def nested_sigmoid_cross_entropy(logits: jax.Array,
                                 labels: jax.Array) -> jax.Array:
  """Sigmoid cross-entropy for every nesting dim (multi-label, JFT-style).

  Args:
    logits: [G, B, C].
    labels: multi-hot targets [B, C] in {0, 1} (or soft targets in [0, 1]).
  Returns:
    per-example losses [G, B], summed over classes (big_vision's convention).
  """
  targets = labels.astype(jnp.float32)
  def one_dim(lg):
    return optax.sigmoid_binary_cross_entropy(lg, targets).sum(axis=-1)
  return jax.vmap(one_dim)(logits)


def weighted_nested_loss(
    per_example: jax.Array, relative_importance: Sequence[float],
    mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Reduces per-example nested losses to the training objective.

  Args:
    per_example: [G, B] losses.
    relative_importance: c_m, G non-negative weights.
    mask: optional [B] weights (1 = real example, 0 = padding).
  Returns:
    (total, per_dim): total = sum_g c_g * per_dim[g]; per_dim [G] is the
    (masked) batch mean of each dim's loss.
  """
  if mask is None:
    per_dim = per_example.mean(axis=-1)
  else:
    mask = mask.astype(per_example.dtype)
    per_dim = (per_example * mask).sum(-1) / jnp.maximum(mask.sum(), 1.0)
  weights = jnp.asarray(relative_importance, per_example.dtype)
  return jnp.sum(weights * per_dim), per_dim


def get_loss_fn(name: str, label_smoothing: float = 0.0) -> NestedLossFn:
  """Returns fn(logits [G, B, C], labels) -> [G, B] for config.loss.name."""
  if name == "softmax":
    return lambda lg, y: nested_softmax_cross_entropy(lg, y, label_smoothing)
  if name == "sigmoid":
    if label_smoothing:
      raise ValueError("label smoothing is only defined for the softmax loss; "
                       "set config.loss.label_smoothing=0 for sigmoid")
    return nested_sigmoid_cross_entropy
  raise ValueError(f"unknown loss {name!r}; set config.loss.name to 'softmax' "
                   "(single-label) or 'sigmoid' (multi-label)")
