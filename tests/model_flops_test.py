"""Analytic MAC counts: hand-counted small programs and published models."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import pytest

from mrl_jax import config_lib
from mrl_jax import model_flops
from mrl_jax.models import classifier


def sds(*shape):
  return jax.ShapeDtypeStruct(shape, jnp.float32)


def test_matmul_einsum_and_scan_counts():
  # [3, 5] @ [5, 7]: 3*7 outputs, 5 multiply-adds each.
  assert model_flops.forward_macs(jnp.matmul, sds(3, 5), sds(5, 7)) == 105
  # Batched attention-style einsum: batch 2, heads 4, 6x6 scores over 8.
  assert model_flops.forward_macs(
      lambda q, k: jnp.einsum("bqhd,bkhd->bhqk", q, k),
      sds(2, 6, 4, 8), sds(2, 6, 4, 8)) == 2 * 4 * 6 * 6 * 8

  def scanned(x, w):  # 3 iterations of a [4,4] @ [4,4]
    return jax.lax.scan(lambda c, _: (c @ w, None), x, None, length=3)[0]
  assert model_flops.forward_macs(scanned, sds(4, 4), sds(4, 4)) == 3 * 64
  # Elementwise work is not counted.
  assert model_flops.forward_macs(jnp.tanh, sds(100, 100)) == 0


@pytest.mark.parametrize("groups", [1, 2])
def test_conv_counts(groups):
  conv = nn.Conv(features=6, kernel_size=(3, 3), strides=(2, 2),
                 padding="SAME", feature_group_count=groups)
  x = sds(2, 9, 9, 4)
  variables = jax.eval_shape(conv.init, jax.random.key(0), x)
  # Output 2 x 5 x 5 x 6; each output sums 3 x 3 x (4 / groups) products.
  expected = 2 * 5 * 5 * 6 * 3 * 3 * (4 // groups)
  assert model_flops.forward_macs(conv.apply, variables, x) == expected


@pytest.mark.parametrize("name,published_gmacs", [
    # timm's benchmark table (infer_gmacs at 224 px, 1000-class FF head);
    # shared/notes/performance.md section 2.
    ("resnet50", 4.11), ("vit_b16", 17.58)])
def test_backbones_match_published_counts(name, published_gmacs):
  config = ml_collections.ConfigDict({
      "model": config_lib.model_section(name),
      "mrl": config_lib.mrl_section("ff"), "data": {"num_classes": 1000}})
  model = classifier.build_model(config)
  variables = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)),
                         train=False))
  macs = model_flops.model_macs(model, variables, (224, 224, 3))
  assert macs / 1e9 == pytest.approx(published_gmacs, rel=0.01)
