"""Per-nesting-dim accuracy counts from logits [G, B, C].

Counts (not means) so that sums over batches and devices give exact
fractions at the end, whatever the padding.
"""
import jax
import jax.numpy as jnp


def topk_correct(logits: jax.Array, labels: jax.Array, k: int) -> jax.Array:
  """[G, B] float: 1 where the true class is among the top-k logits.

  Args:
    logits: [G, B, C].
    labels: integer class ids [B], or multi-hot [B, C]; for multi-hot, "correct"
      means the top-1 class is a positive (prec@1, the usual JFT metric), and
      k > 1 means any of the top-k is a positive.
  """
  k = min(k, logits.shape[-1])
  _, top = jax.lax.top_k(logits, k)  # [G, B, k]
  if labels.ndim == 1:
    hits = top == labels[None, :, None]
  else:
    positives = jnp.broadcast_to(labels[None].astype(bool), logits.shape)
    hits = jnp.take_along_axis(positives, top, axis=-1)
  return hits.any(axis=-1).astype(jnp.float32)


def metric_name(split: str, metric: str, dim: int) -> str:
  """Greppable per-dim metric names, e.g. `val/top1/d=64`."""
  return f"{split}/{metric}/d={dim}"
