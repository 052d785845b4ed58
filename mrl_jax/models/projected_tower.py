"""One tower of a two-tower model on its own: the tower, then its Dense
projection to the shared width d.

two_tower.py builds its projections with `projection`, and an encoder
bundle loads each tower of a two-tower model as a `ProjectedTower` (with
`two_tower.tower_variables` as its variables), so both compute the same
raw embedding. This module imports no loss or optimizer code: bundles load
it without the trainer.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mrl_jax.models import bert

Dtype = Any
_INIT = nn.initializers.truncated_normal(0.02)


def projection(embed_dim: int, dtype: Dtype, name: str | None = None
               ) -> nn.Dense:
  """The Dense that maps a tower's features to d (parameters float32)."""
  return nn.Dense(embed_dim, dtype=dtype, param_dtype=jnp.float32,
                  kernel_init=_INIT, name=name)


class ProjectedTower(nn.Module):
  """inputs -> raw embeddings [B, d]: a tower, then `projection`.

  Params {"tower": the tower's, "projection": the Dense's}.

  Attributes:
    tower: an image backbone (images [B, H, W, C] -> [B, D]) or a text
      encoder ((input_ids, segment_ids, input_mask) [B, L] -> BertOutput,
      whose pooled `embedding` is projected).
    embed_dim: d.
    dtype: compute dtype of the projection.
  """
  tower: nn.Module
  embed_dim: int
  dtype: Dtype = jnp.float32

  @property
  def embedding_dim(self) -> int:
    return self.embed_dim

  @nn.compact
  def __call__(self, *inputs: Any, train: bool) -> jax.Array:
    features = self.tower(*inputs, train=train)
    if isinstance(features, bert.BertOutput):
      features = features.embedding
    return projection(self.embed_dim, self.dtype, "projection")(features)
