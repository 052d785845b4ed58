"""Mixup (Zhang et al., 2018) on global training batches, on device.

As in big_vision: one weight per batch, lam ~ Beta(alpha, alpha) folded to
lam = max(lam, 1 - lam) so each example stays the dominant one, and example
i is mixed with example i - 1 (the batch rolled by one). Labels become soft:
lam * y_i + (1 - lam) * y_{i-1}, with integer labels one-hot first. The
weight is drawn from (seed, step), so a resumed run mixes exactly as an
uninterrupted one.

Config: `config.data.mixup_alpha` (e.g. 0.2; absent or 0: no mixup), so it
can be switched on from the command line: `--config.data.mixup_alpha=0.2`.
"""
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections

Batch = dict[str, jax.Array]
# Keeps mixup's random stream apart from the other users of config.seed.
_STREAM = 0x6D6978


def validate(alpha: float | None) -> None:
  """Raises a one-line ValueError for a bad config.data.mixup_alpha."""
  if not isinstance(alpha, (int, float, type(None))) or isinstance(
      alpha, bool) or (alpha or 0) < 0:
    raise ValueError(f"config.data.mixup_alpha must be a number >= 0 (0: no "
                     f"mixup), got {alpha!r}")


def mix(batch: Batch, rng: jax.Array, alpha: float,
        num_classes: int) -> Batch:
  """Mixes `batch` with itself rolled by one example.

  Args:
    batch: "image" [B, H, W, C], "label" int [B] or float [B, num_classes].
    rng: key for the batch's mixing weight.
    alpha: Beta(alpha, alpha) parameter.
    num_classes: one-hot width for integer labels.
  Returns:
    the batch with "image" float32 [B, H, W, C], "label" float32
    [B, num_classes]; other entries unchanged.
  """
  lam = jax.random.beta(rng, alpha, alpha)
  lam = jnp.maximum(lam, 1.0 - lam)
  labels = batch["label"]
  if labels.ndim == 1:
    labels = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  mixed = lambda x: lam * x + (1.0 - lam) * jnp.roll(x, 1, axis=0)
  return {**batch, "image": mixed(batch["image"].astype(jnp.float32)),
          "label": mixed(labels.astype(jnp.float32))}


def make(cfg: ml_collections.ConfigDict, seed: int,
         sharding: jax.sharding.Sharding
         ) -> Callable[[Batch, int], Batch] | None:
  """fn(batch, step) mixing per config.data.mixup_alpha; None when off."""
  if not cfg.get("mixup_alpha"):
    return None
  alpha, num_classes = float(cfg.mixup_alpha), cfg.num_classes

  @jax.jit
  def fn(batch: Batch, step: jax.Array) -> Batch:
    rng = jax.random.fold_in(jax.random.key(seed ^ _STREAM), step)
    out = mix(batch, rng, alpha, num_classes)
    return jax.lax.with_sharding_constraint(out, sharding)

  return lambda batch, step: fn(batch, jnp.asarray(step, jnp.int32))
