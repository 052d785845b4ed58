"""ALIGN-style two towers: an image backbone and a text encoder, each
projected to one shared width d.

The towers return *raw* embeddings: MRL's contrastive loss normalises each
prefix z[:, :m] on its own (the paper: "the presence of normalization on
the representation needs to be handled independently for each of the
nesting dimension"), so normalising the full vector here would be wrong for
every m < d.

Parameters: `image_tower` (any registered backbone), `text_tower` (a
registered text encoder; its sentence embedding is `Bert.pool`'s),
`image_projection` and `text_projection` (Dense to d,
`projected_tower.projection`). `tower_variables` takes one tower and its
projection out, as encoder bundles store them.

A locked tower (LiT, `TwoTower.locked`) always runs in inference mode (its
BatchNorm statistics are not updated, no dropout) and its features are cut
off from the gradient, so the backward pass skips it; its projection still
trains.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mrl_jax.models import projected_tower
from mrl_jax.mrl import contrastive

Dtype = Any
SIDES = ("image", "text")
LOCKABLE = SIDES  # either tower can be locked


def _held(features: jax.Array, locked: bool) -> jax.Array:
  # No cotangent flows into a locked tower: XLA drops its backward pass.
  return jax.lax.stop_gradient(features) if locked else features


class TwoTower(nn.Module):
  """images [B, H, W, C] and token ids [B, L] -> (z_image, z_text), [B, d].

  Attributes:
    image_tower: images -> [B, D_image] (a registry backbone).
    text_tower: (input_ids, segment_ids, input_mask) -> BertOutput.
    embed_dim: d, the shared width both towers are projected to.
    dtype: compute dtype of the projections; parameters stay float32.
    locked: None, or the tower ("image" / "text") whose parameters are
      held fixed (LOCKABLE).
  """
  image_tower: nn.Module
  text_tower: nn.Module
  embed_dim: int
  dtype: Dtype = jnp.float32
  locked: str | None = None

  def setup(self):
    if self.embed_dim < 1:
      raise ValueError(f"two-tower embed_dim={self.embed_dim} must be >= 1")
    self.image_projection = projected_tower.projection(self.embed_dim,
                                                       self.dtype)
    self.text_projection = projected_tower.projection(self.embed_dim,
                                                      self.dtype)

  @property
  def embedding_dim(self) -> int:
    """d, the width of both towers' embeddings."""
    return self.embed_dim

  def encode_image(self, images: jax.Array, *, train: bool) -> jax.Array:
    """[B, H, W, C] -> raw image embeddings [B, d]."""
    locked = self.locked == "image"
    features = self.image_tower(images, train=train and not locked)
    return self.image_projection(_held(features, locked))

  def encode_text(self, input_ids: jax.Array, input_mask: jax.Array, *,
                  train: bool) -> jax.Array:
    """[B, L] ids and 0/1 padding mask -> raw text embeddings [B, d]."""
    locked = self.locked == "text"
    out = self.text_tower(input_ids, None, input_mask,
                          train=train and not locked)
    return self.text_projection(_held(out.embedding, locked))

  def __call__(self, images: jax.Array, input_ids: jax.Array,
               input_mask: jax.Array, *,
               train: bool) -> tuple[jax.Array, jax.Array]:
    return (self.encode_image(images, train=train),
            self.encode_text(input_ids, input_mask, train=train))


class ContrastiveTwoTower(nn.Module):
  """TwoTower plus the contrastive loss's learnable scalars.

  Returns (z_image [B, d], z_text [B, d], loss_params) with loss_params
  {"log_temperature": [] or [G]} (+ {"bias"} for the sigmoid loss),
  initialised as ALIGN / SigLIP do (`mrl.contrastive.initial_params`).

  Attributes:
    towers: the TwoTower.
    kind: "softmax" (ALIGN) or "sigmoid" (SigLIP).
    num_temperatures: None for one temperature shared by every nesting dim
      (ALIGN), G for one per dim.
    nesting_dims: the dims the loss scores (the model itself is the same
      for any list).
  """
  towers: TwoTower
  kind: str = "softmax"
  num_temperatures: int | None = None
  nesting_dims: tuple[int, ...] = ()

  @nn.compact
  def __call__(self, images: jax.Array, input_ids: jax.Array,
               input_mask: jax.Array, *, train: bool):
    z_image, z_text = self.towers(images, input_ids, input_mask, train=train)
    init = contrastive.initial_params(self.kind, self.num_temperatures)
    loss_params = {name: self.param(
                       name, lambda _, v=value: jnp.asarray(v, jnp.float32))
                   for name, value in init.items()}
    return z_image, z_text, loss_params

  def encode_image(self, images: jax.Array, *, train: bool) -> jax.Array:
    return self.towers.encode_image(images, train=train)

  def encode_text(self, input_ids: jax.Array, input_mask: jax.Array, *,
                  train: bool) -> jax.Array:
    return self.towers.encode_text(input_ids, input_mask, train=train)


def tower_variables(variables: dict[str, Any], side: str) -> dict[str, Any]:
  """One tower's variables in a ContrastiveTwoTower's, as a
  `projected_tower.ProjectedTower` of that tower takes them.

  Args:
    variables: {"params", "batch_stats"} of a ContrastiveTwoTower.
    side: "image" or "text".
  Returns:
    {"params": {"tower", "projection"}} (+ {"batch_stats": {"tower"}} when
    the tower has batch statistics).
  """
  towers = variables["params"]["towers"]
  out = {"params": {"tower": towers[f"{side}_tower"],
                    "projection": towers[f"{side}_projection"]}}
  stats = (variables.get("batch_stats") or {}).get("towers", {}).get(
      f"{side}_tower")
  if stats:
    out["batch_stats"] = {"tower": stats}
  return out
