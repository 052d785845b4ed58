"""Classification heads over nested prefixes of one embedding z [B, d].

Every head returns logits for all of its nesting dims at once, stacked
[G, B, C] (G = number of nesting dims), from one backbone pass: we slice the
embedding, never the network.

* MRL:   one independent Linear(m, C) per nesting dim, each with its own bias;
         params `nesting_classifier_{i}` (the official PyTorch names).
* MRL-E: one Linear(d, C); dim m uses the first m rows of the kernel, and the
         bias is shared by all dims (official semantics). Params
         `nesting_classifier_0`.
* FF-k:  the baseline: one Linear(k, C) on the first k features (G = 1);
         params `fc`.

Two implementations compute the same logits: `masked` is the direct reading
of the definition (vmap over the nesting axis with prefix masks, static
shapes); `fused` does the minimum of work (per-dim slices for MRL, one
d x C matmul split into column blocks plus a cumulative sum for MRL-E). Tests
check they agree; training uses `fused`.
"""
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mrl_jax.mrl import nesting as nesting_lib

HEAD_TYPES = ("mrl", "mrl_e", "ff")
IMPLEMENTATIONS = ("fused", "masked")


def prefix_masks(nesting_dims: Sequence[int], dim: int) -> jax.Array:
  """Masks [G, d] with mask[g, j] = 1 iff j < nesting_dims[g]."""
  return (jnp.arange(dim)[None, :] <
          jnp.asarray(nesting_dims)[:, None]).astype(jnp.float32)


def mrl_logits_masked(z: jax.Array, kernels: Sequence[jax.Array],
                      biases: Sequence[jax.Array]) -> jax.Array:
  """MRL logits by vmap over nesting dims with prefix masks.

  Args:
    z: embedding [B, d].
    kernels: G kernels, kernel g of shape [m_g, C].
    biases: G biases of shape [C].
  Returns:
    logits [G, B, C]; logits[g] = z[:, :m_g] @ kernels[g] + biases[g].
  """
  d = z.shape[-1]
  dims = [k.shape[0] for k in kernels]
  padded = jnp.stack([jnp.pad(k, ((0, d - k.shape[0]), (0, 0)))
                      for k in kernels])  # [G, d, C]
  def one_dim(mask, kernel, bias):
    return (z * mask) @ kernel + bias
  return jax.vmap(one_dim)(prefix_masks(dims, d), padded, jnp.stack(biases))


def mrl_logits_fused(z: jax.Array, kernels: Sequence[jax.Array],
                     biases: Sequence[jax.Array]) -> jax.Array:
  """Same as `mrl_logits_masked`, with sum(m) x C multiply-adds per example."""
  return jnp.stack([z[:, :k.shape[0]] @ k + b for k, b in zip(kernels, biases)])


def mrl_e_logits_masked(z: jax.Array, kernel: jax.Array, bias: jax.Array,
                        nesting_dims: Sequence[int]) -> jax.Array:
  """MRL-E logits: logits[g] = z[:, :m_g] @ kernel[:m_g] + bias.

  Args:
    z: embedding [B, d].
    kernel: shared kernel [d, C].
    bias: shared bias [C].
    nesting_dims: G ascending dims.
  Returns:
    logits [G, B, C].
  """
  masks = prefix_masks(nesting_dims, z.shape[-1])
  return jax.vmap(lambda mask: (z * mask) @ kernel + bias)(masks)


def mrl_e_logits_fused(z: jax.Array, kernel: jax.Array, bias: jax.Array,
                       nesting_dims: Sequence[int]) -> jax.Array:
  """Same as `mrl_e_logits_masked` for the cost of one d x C head.

  Each block of features z[:, m_{g-1}:m_g] contributes to every prefix that
  contains it, so prefix logits are a cumulative sum of block logits.
  """
  starts = (0,) + tuple(nesting_dims[:-1])
  blocks = jnp.stack([z[:, a:b] @ kernel[a:b]
                      for a, b in zip(starts, nesting_dims)])
  return jnp.cumsum(blocks, axis=0) + bias


class _Linear(nn.Module):
  """Declares one linear layer's params and returns them (no compute)."""
  in_dim: int
  num_classes: int

  @nn.compact
  def __call__(self) -> tuple[jax.Array, jax.Array]:
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (self.in_dim, self.num_classes))
    bias = self.param("bias", nn.initializers.zeros, (self.num_classes,))
    return kernel, bias


class NestedHead(nn.Module):
  """MRL / MRL-E / FF-k head. Maps z [B, d] to logits [G, B, C] (float32).

  Attributes:
    head_type: "mrl", "mrl_e" or "ff".
    nesting_dims: ascending prefix sizes; for "ff" a single k.
    num_classes: C.
    implementation: "fused" (fast) or "masked" (reference).
  """
  head_type: str
  nesting_dims: tuple[int, ...]
  num_classes: int
  implementation: str = "fused"

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    # Logits and losses in float32 even under bf16 compute: the head is ~0.05%
    # of ResNet-50's FLOPs, and softmax over 1000+ classes wants the range.
    z = z.astype(jnp.float32)
    dims, masked = self.nesting_dims, self.implementation == "masked"
    if self.head_type == "mrl":
      params = [_Linear(m, self.num_classes, name=f"nesting_classifier_{i}")()
                for i, m in enumerate(dims)]
      kernels, biases = zip(*params)
      fn = mrl_logits_masked if masked else mrl_logits_fused
      return fn(z, kernels, biases)
    if self.head_type == "mrl_e":
      kernel, bias = _Linear(z.shape[-1], self.num_classes,
                             name="nesting_classifier_0")()
      fn = mrl_e_logits_masked if masked else mrl_e_logits_fused
      return fn(z, kernel, bias, dims)
    (k,) = dims
    kernel, bias = _Linear(k, self.num_classes, name="fc")()
    return (z[:, :k] @ kernel + bias)[None]


def build_head(head_type: str, embedding_dim: int, num_classes: int,
               nesting_dims: Sequence[int] | None = None,
               ff_dim: int | None = None,
               implementation: str = "fused") -> NestedHead:
  """Validates the head settings and returns the head.

  Args:
    head_type: "mrl", "mrl_e" or "ff".
    embedding_dim: d, the backbone's representation size.
    num_classes: C.
    nesting_dims: for MRL/MRL-E; None means halving from d down to 8.
    ff_dim: k for FF-k; None means d (the standard full-feature model).
    implementation: "fused" or "masked".
  Raises:
    ValueError: one line naming the bad setting and the fix.
  """
  if head_type not in HEAD_TYPES:
    raise ValueError(f"unknown head {head_type!r}; set config.mrl.head to one "
                     f"of {HEAD_TYPES}")
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"unknown head implementation {implementation!r}; set "
                     f"config.mrl.implementation to one of {IMPLEMENTATIONS}")
  if head_type == "ff":
    k = embedding_dim if ff_dim is None else ff_dim
    if not 0 < k <= embedding_dim:
      raise ValueError(f"FF-k dim {k} must be in 1..{embedding_dim} (the "
                       "embedding dim); fix config.mrl.ff_dim")
    dims = (k,)
  elif nesting_dims is None:
    dims = nesting_lib.default_nesting(embedding_dim)
    if len(dims) < 2:  # MRL with one dim is FF-d under another name
      raise ValueError(
          f"embedding dim {embedding_dim} gives the one-entry default nesting "
          f"list {dims} (it halves from d down to 8); set "
          f"--config.mrl.nesting_dims (e.g. '(2, 4, {embedding_dim})') or use "
          "a dim that halves at least once (e.g. 16)")
  else:
    dims = nesting_lib.validate_nesting(nesting_dims, embedding_dim)
  return NestedHead(head_type, dims, num_classes, implementation)
