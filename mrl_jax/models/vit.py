"""Vision Transformer backbones (ViT-Ti/S/B/L with 16x16 or 32x32 patches).

Reference: Dosovitskiy et al., "An Image is Worth 16x16 Words: Transformers
for Image Recognition at Scale" (ICLR 2021), in the form of timm's
`vit_{tiny,small,base,large}_patch{16,32}_224`: conv patch embedding, a
learned class token, learned position embeddings, pre-LN encoder blocks
(LayerNorm eps 1e-6, MHSA with qkv biases, GELU MLP) and a final LayerNorm.
The MRL paper's ViT-B/16 reads the class token after that final LayerNorm.

Parameter names follow timm where a rename suffices: patch_embed, cls_token,
pos_embed, block_{i}/{norm1,attn,norm2,mlp/fc1,mlp/fc2}, norm. timm's fused
`attn.qkv` maps onto attn/{query,key,value} by a split and reshape.
"""
import functools
from collections.abc import Callable
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from mrl_jax import sharding

Dtype = Any

_LN_EPS = 1e-6
_KERNEL_INIT = nn.initializers.xavier_uniform()

# Rematerialisation of encoder blocks: which values the backward pass may
# keep (the rest it recomputes). "full" keeps only each block's input.
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class Mlp(nn.Module):
  """Dense(mlp_dim) -> GELU -> Dense(width): [B, N, width] -> [B, N, width]."""
  mlp_dim: int
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    dense = functools.partial(nn.Dense, dtype=self.dtype,
                              param_dtype=jnp.float32,
                              kernel_init=_KERNEL_INIT)
    y = dense(self.mlp_dim, name="fc1")(x)
    # Exact (erf) GELU as in timm / torch nn.GELU, not flax's tanh default.
    y = nn.gelu(y, approximate=False)
    y = nn.Dropout(self.dropout_rate, deterministic=not train)(y)
    y = dense(x.shape[-1], name="fc2")(y)
    return nn.Dropout(self.dropout_rate, deterministic=not train)(y)


class EncoderBlock(nn.Module):
  """Pre-LN block: x += MHSA(LN(x)); x += MLP(LN(x)). [B, N, D] -> [B, N, D]."""
  num_heads: int
  mlp_dim: int
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    norm = functools.partial(nn.LayerNorm, epsilon=_LN_EPS, dtype=self.dtype,
                             param_dtype=jnp.float32)
    y = norm(name="norm1")(x)
    # No dropout on the attention weights (ViT uses 0.0 there); softmax in
    # float32 keeps bfloat16 training stable.
    y = nn.MultiHeadDotProductAttention(
        num_heads=self.num_heads, dtype=self.dtype, param_dtype=jnp.float32,
        kernel_init=_KERNEL_INIT, deterministic=True,
        force_fp32_for_softmax=True, name="attn")(y, y)
    x = x + nn.Dropout(self.dropout_rate, deterministic=not train)(y)
    y = norm(name="norm2")(x)
    return x + Mlp(self.mlp_dim, self.dropout_rate, self.dtype,
                   name="mlp")(y, train)


class ViT(nn.Module):
  """ViT encoder: images [B, H, W, C] -> representation [B, width].

  The position embedding has shape [1, 1 + num_patches, width] with
  num_patches = (H // patch_size) * (W // patch_size) taken from the images
  seen at init, so one module serves 224x224 and tiny test images; applying
  it at another resolution than the one it was initialised at is an error.

  Attributes:
    patch_size: side of the square patches (kernel and stride of the embed).
    width: token width D; also the embedding dim.
    depth: number of encoder blocks.
    num_heads: attention heads per block.
    mlp_dim: hidden width of each block's MLP (4 * width in the paper).
    pool: "token" = class token after the final LayerNorm (paper, MRL);
      "gap" = mean of the patch tokens after the final LayerNorm. The class
      token stays in the sequence either way, so both share one param tree.
    dropout_rate: dropout after the position embedding, attention and MLP
      layers in train mode (needs the 'dropout' rng when > 0).
    dtype: compute dtype; parameters stay float32.
    remat: a REMAT_POLICIES name: recompute block activations in the
      backward pass instead of storing them ("none": store them all).
  """
  patch_size: int = 16
  width: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_dim: int = 3072
  pool: Literal["token", "gap"] = "token"
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32
  remat: str = "none"

  @property
  def embedding_dim(self) -> int:
    return self.width

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    """Returns the representation [B, width] of images [B, H, W, C]."""
    if self.pool not in ("token", "gap"):
      raise ValueError(f"pool must be 'token' or 'gap', got {self.pool!r}")
    if self.remat not in REMAT_POLICIES:
      raise ValueError(f"unknown remat {self.remat!r}; set config.model.remat "
                       f"to one of {', '.join(REMAT_POLICIES)}")
    block = EncoderBlock
    if self.remat != "none":
      # static_argnums counts self: `train` (a Python bool) is argument 2.
      block = nn.remat(EncoderBlock, policy=REMAT_POLICIES[self.remat],
                       static_argnums=(2,))
    p = self.patch_size
    x = nn.Conv(self.width, (p, p), strides=(p, p), padding="VALID",
                dtype=self.dtype, param_dtype=jnp.float32,
                name="patch_embed")(x)
    b, h, w, d = x.shape
    x = x.reshape(b, h * w, d)
    cls = self.param("cls_token", nn.initializers.zeros, (1, 1, d))
    x = jnp.concatenate(
        [jnp.broadcast_to(cls.astype(x.dtype), (b, 1, d)), x], axis=1)
    # timm initialises the position embedding with std 0.02.
    pos = self.param("pos_embed", nn.initializers.normal(0.02),
                     (1, 1 + h * w, d))
    x = x + pos.astype(x.dtype)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    # Tokens stay split by example between blocks (sharding.constrain_batch).
    x = sharding.constrain_batch(x)
    for i in range(self.depth):
      x = block(self.num_heads, self.mlp_dim, self.dropout_rate, self.dtype,
                name=f"block_{i}")(x, train)
      x = sharding.constrain_batch(x)
    x = nn.LayerNorm(epsilon=_LN_EPS, dtype=self.dtype,
                     param_dtype=jnp.float32, name="norm")(x)
    if self.pool == "token":
      return x[:, 0]
    return jnp.mean(x[:, 1:], axis=1)


def _variant(patch_size: int, width: int, depth: int,
             num_heads: int) -> Callable[..., ViT]:
  """Constructor of a paper-sized ViT (MLP width 4 * width)."""
  return functools.partial(ViT, patch_size=patch_size, width=width,
                           depth=depth, num_heads=num_heads,
                           mlp_dim=4 * width)


# (width, depth, heads) per size, from the paper and timm.
_SIZES = {"ti": (192, 12, 3), "s": (384, 12, 6), "b": (768, 12, 12),
          "l": (1024, 24, 16)}

VARIANTS = {
    f"vit_{size}{patch}": _variant(patch, *_SIZES[size])
    for size in _SIZES for patch in (16, 32)
}
# Tiny CPU test variant (big_vision's "mu" size, 4x4 patches).
VARIANTS["vit_mu"] = functools.partial(
    ViT, patch_size=4, width=32, depth=1, num_heads=2, mlp_dim=64)
