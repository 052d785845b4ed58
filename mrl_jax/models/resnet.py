"""ResNet v1.5 backbones with torchvision's layout.

Reference: He et al., "Deep Residual Learning for Image Recognition" (CVPR
2016), as built by `torchvision.models.resnet` ("v1.5": a bottleneck block
strides on its 3x3 conv, not on its first 1x1 conv). The MRL paper trains
ResNet-50 in this form and releases torchvision state_dicts.

Padding is explicit and symmetric (k // 2 on every side) wherever torchvision
pads. 'SAME' pads (0, 1) for a stride-2 layer on an even input while torch
pads (1, 1), which shifts every feature map and breaks weight parity.

Parameter names follow the torchvision state_dict, so an import is a rename
(plus OIHW -> HWIO for conv kernels):
  conv1, bn1                          <- conv1, bn1
  layer{i}_{j}/conv{k}, .../bn{k}     <- layer{i}.{j}.conv{k}, .bn{k}
  layer{i}_{j}/downsample_{conv,bn}   <- layer{i}.{j}.downsample.{0,1}
BatchNorm running statistics live in the 'batch_stats' collection.

`blurpool=True` adds BlurPool (Zhang, "Making Convolutional Networks
Shift-Invariant Again", ICML 2019) as the official MRL/FFCV recipe applies it:
every conv with stride > 1 and at least 16 input channels first blurs its
input with the fixed depthwise [1, 2, 1] x [1, 2, 1] / 16 filter (stride 1,
padding 1), then runs unchanged. In ResNet-50 those are layer{2,3,4}.0.conv2
and layer{2,3,4}.0.downsample.0 (not the 3-channel stem). The filter is a
constant, not a parameter: the official code registers it as a buffer.
"""
import functools
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mrl_jax import sharding

Dtype = Any

# torchvision: kaiming_normal_(mode="fan_out", nonlinearity="relu").
_CONV_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


# BlurPool wraps strided convs with at least this many input channels (FFCV).
BLURPOOL_MIN_CHANNELS = 16


def blur_filter(channels: int) -> np.ndarray:
  """The fixed BlurPool kernel [3, 3, 1, channels] (HWIO, depthwise).

  Each channel gets outer([1, 2, 1], [1, 2, 1]) / 16; torch stores the same
  values as a [channels, 1, 3, 3] buffer.
  """
  taps = np.array([1.0, 2.0, 1.0], np.float32)
  kernel = np.outer(taps, taps) / 16.0
  return np.tile(kernel[:, :, None, None], (1, 1, 1, channels))


def blur(x: jax.Array) -> jax.Array:
  """Depthwise 3x3 blur of x [B, H, W, C], stride 1, zero padding 1."""
  channels = x.shape[-1]
  return jax.lax.conv_general_dilated(
      x, jnp.asarray(blur_filter(channels), x.dtype), window_strides=(1, 1),
      padding=((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"),
      feature_group_count=channels)


def _conv(features: int, kernel: int, strides: int, name: str, dtype: Dtype,
          blurpool: bool = False) -> Callable[[jax.Array], jax.Array]:
  """Bias-free conv with torchvision's symmetric padding of kernel // 2.

  With `blurpool`, a strided conv reading >= 16 channels blurs its input
  first; the kernel keeps its name, so the parameter tree does not change.
  """
  pad = kernel // 2
  conv = nn.Conv(features, (kernel, kernel), strides=(strides, strides),
                 padding=((pad, pad), (pad, pad)), use_bias=False,
                 dtype=dtype, param_dtype=jnp.float32, kernel_init=_CONV_INIT,
                 name=name)

  def apply(x: jax.Array) -> jax.Array:
    if blurpool and strides > 1 and x.shape[-1] >= BLURPOOL_MIN_CHANNELS:
      x = blur(x.astype(dtype))
    return conv(x)
  return apply


def _norm(train: bool, name: str, dtype: Dtype,
          zero_scale: bool = False) -> nn.BatchNorm:
  """BatchNorm with torch's defaults (torch momentum 0.1 = flax 0.9)."""
  return nn.BatchNorm(use_running_average=not train, momentum=0.9,
                      epsilon=1e-5, dtype=dtype, param_dtype=jnp.float32,
                      scale_init=(nn.initializers.zeros if zero_scale
                                  else nn.initializers.ones),
                      name=name)


def _shortcut(x: jax.Array, features: int, strides: int, train: bool,
              dtype: Dtype, blurpool: bool) -> jax.Array:
  """Identity, or a 1x1 conv + BN projection when the shape changes."""
  if strides == 1 and x.shape[-1] == features:
    return x
  y = _conv(features, 1, strides, "downsample_conv", dtype, blurpool)(x)
  return _norm(train, "downsample_bn", dtype)(y)


class BasicBlock(nn.Module):
  """Two 3x3 convs plus a shortcut (ResNet-18/34).

  Maps [B, H, W, C_in] to [B, H / strides, W / strides, filters].
  """
  filters: int
  strides: int = 1
  zero_init_residual: bool = False
  blurpool: bool = False
  dtype: Dtype = jnp.float32

  expansion: ClassVar[int] = 1

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    conv = functools.partial(_conv, dtype=self.dtype, blurpool=self.blurpool)
    norm = functools.partial(_norm, train, dtype=self.dtype)
    y = nn.relu(norm("bn1")(conv(self.filters, 3, self.strides, "conv1")(x)))
    y = conv(self.filters, 3, 1, "conv2")(y)
    y = norm("bn2", zero_scale=self.zero_init_residual)(y)
    return nn.relu(y + _shortcut(x, self.filters, self.strides, train,
                                 self.dtype, self.blurpool))


class BottleneckBlock(nn.Module):
  """1x1 reduce, 3x3 (strided, v1.5), 1x1 expand x4, plus a shortcut.

  Maps [B, H, W, C_in] to [B, H / strides, W / strides, 4 * filters].
  """
  filters: int
  strides: int = 1
  zero_init_residual: bool = False
  blurpool: bool = False
  dtype: Dtype = jnp.float32

  expansion: ClassVar[int] = 4

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    conv = functools.partial(_conv, dtype=self.dtype, blurpool=self.blurpool)
    norm = functools.partial(_norm, train, dtype=self.dtype)
    out = self.filters * self.expansion
    y = nn.relu(norm("bn1")(conv(self.filters, 1, 1, "conv1")(x)))
    y = nn.relu(norm("bn2")(conv(self.filters, 3, self.strides, "conv2")(y)))
    y = norm("bn3", zero_scale=self.zero_init_residual)(
        conv(out, 1, 1, "conv3")(y))
    return nn.relu(y + _shortcut(x, out, self.strides, train, self.dtype,
                                 self.blurpool))


_BLOCKS = {"basic": BasicBlock, "bottleneck": BottleneckBlock}


class ResNet(nn.Module):
  """ResNet v1.5 trunk: images [B, H, W, C] -> pooled features [B, d].

  d = embedding_dim = 8 * width * expansion (512 for ResNet-18/34 and 2048
  for ResNet-50/101/152 at width 64). There is no classifier: the MRL head
  reads the pooled features.

  Attributes:
    stage_sizes: blocks per stage, e.g. (3, 4, 6, 3) for ResNet-50.
    block: "basic" (two 3x3 convs) or "bottleneck" (1x1, 3x3, 1x1).
    width: channels of the stem and first stage; stage i has width * 2**i
      (times the expansion for bottlenecks). 64 in the paper.
    zero_init_residual: zero the last BN scale of every block, so each block
      starts as the identity (torchvision's option of the same name).
    blurpool: blur before every strided conv with >= 16 input channels, as
      the official MRL ResNet-50 (module docstring). No new parameters.
    dtype: compute dtype; parameters stay float32.
  """
  stage_sizes: Sequence[int]
  block: Literal["basic", "bottleneck"] = "bottleneck"
  width: int = 64
  zero_init_residual: bool = False
  blurpool: bool = False
  dtype: Dtype = jnp.float32

  @property
  def embedding_dim(self) -> int:
    return 8 * self.width * _BLOCKS[self.block].expansion

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    """Returns globally average-pooled features [B, d] for images [B, H, W, C].

    At 224x224 the feature maps are 112 (stem), 56 (pool, stage 1), 28, 14
    and 7, as in torchvision.
    """
    if self.block not in _BLOCKS:
      raise ValueError(f"block must be one of {sorted(_BLOCKS)}, got "
                       f"{self.block!r}")
    block_cls = _BLOCKS[self.block]
    x = _conv(self.width, 7, 2, "conv1", self.dtype, self.blurpool)(x)
    x = nn.relu(_norm(train, "bn1", self.dtype)(x))
    # Padding pads with -inf, like torch's MaxPool2d(3, 2, padding=1).
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for i, num_blocks in enumerate(self.stage_sizes):
      for j in range(num_blocks):
        # Stage 1 keeps the resolution: the max-pool already halved it.
        strides = 2 if i > 0 and j == 0 else 1
        x = block_cls(filters=self.width * 2**i, strides=strides,
                      zero_init_residual=self.zero_init_residual,
                      blurpool=self.blurpool, dtype=self.dtype,
                      name=f"layer{i + 1}_{j}")(x, train)
        # Feature maps stay split by example (sharding.constrain_batch).
        x = sharding.constrain_batch(x)
    return jnp.mean(x, axis=(1, 2))


_basic = functools.partial(ResNet, block="basic")
_bottleneck = functools.partial(ResNet, block="bottleneck")

VARIANTS = {
    "resnet18": functools.partial(_basic, stage_sizes=(2, 2, 2, 2)),
    "resnet34": functools.partial(_basic, stage_sizes=(3, 4, 6, 3)),
    "resnet50": functools.partial(_bottleneck, stage_sizes=(3, 4, 6, 3)),
    "resnet101": functools.partial(_bottleneck, stage_sizes=(3, 4, 23, 3)),
    "resnet152": functools.partial(_bottleneck, stage_sizes=(3, 8, 36, 3)),
    # Tiny CPU test variant: d = 64.
    "resnet_mu": functools.partial(_basic, stage_sizes=(1, 1, 1, 1), width=8),
}
