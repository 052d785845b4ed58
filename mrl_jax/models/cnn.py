"""A small CNN for 28x28 inputs (the Fashion-MNIST default run).

Stages of 3x3 conv + BatchNorm + ReLU; each stage after the first starts with
a stride-2 conv (XLA:CPU runs full-resolution, many-channel convolutions
slowly, so resolution drops before width grows), then a linear projection to
the d-dim representation with BatchNorm + ReLU (as a ResNet's pooled features
are post-activation). Sized so that Fashion-MNIST trains in minutes on 2 CPU
cores.
"""
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


class SmallCNN(nn.Module):
  """images [B, H, W, C] -> representation [B, embed_dim].

  Attributes:
    widths: channels per stage; stage i > 0 halves the resolution.
    embed_dim: d, the size of the nested representation.
    dtype: compute dtype (params stay float32).
  """
  widths: tuple[int, ...] = (16, 32, 64)
  embed_dim: int = 128
  dtype: Any = jnp.float32

  @property
  def embedding_dim(self) -> int:
    return self.embed_dim

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    norm = functools.partial(nn.BatchNorm, use_running_average=not train,
                             momentum=0.9, epsilon=1e-5, dtype=self.dtype)
    conv = functools.partial(nn.Conv, kernel_size=(3, 3),
                             padding=((1, 1), (1, 1)), use_bias=False,
                             dtype=self.dtype)
    x = x.astype(self.dtype)
    for stage, width in enumerate(self.widths):
      stride = 1 if stage == 0 else 2
      x = nn.relu(norm(name=f"bn{stage}_0")(
          conv(width, strides=(stride, stride), name=f"conv{stage}_0")(x)))
      if stage:
        x = nn.relu(norm(name=f"bn{stage}_1")(
            conv(width, name=f"conv{stage}_1")(x)))
    x = x.reshape(x.shape[0], -1)
    x = nn.Dense(self.embed_dim, use_bias=False, dtype=self.dtype,
                 name="project")(x)
    return nn.relu(norm(name="project_bn")(x))


VARIANTS = {
    "small_cnn": SmallCNN,
    "cnn_mu": functools.partial(SmallCNN, widths=(4, 8), embed_dim=16),
}
