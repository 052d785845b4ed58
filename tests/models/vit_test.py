"""ViT: timm parameter counts, token and pos-embed shapes, forward, registry."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mrl_jax.models import registry
from mrl_jax.models import vit


def _images(size: int, batch: int = 1) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)


class _WithClassifier(nn.Module):
  """Backbone + Dense(1000), the timm model whose params we count."""
  backbone: nn.Module

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    return nn.Dense(1000)(self.backbone(x, train=train))


def _abstract_init(model: nn.Module, images: jax.ShapeDtypeStruct):
  """Variables as ShapeDtypeStructs: traces init without computing it."""
  return jax.eval_shape(
      lambda x: model.init(jax.random.key(0), x, train=False), images)


def _num_params(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _timm_count(width: int, depth: int, patch: int, image: int = 224) -> int:
  """Parameter count of timm's vit_*_patch{patch}_{image} with its head.

  patch embed p*p*3*w + w; cls token w; pos embed (1 + N) * w; per block
  12 w^2 + 13 w (qkv 3w^2+3w, proj w^2+w, fc1 4w^2+4w, fc2 4w^2+w, two
  LayerNorms 4w); final LayerNorm 2w; head 1000 w + 1000.
  """
  num_patches = (image // patch) ** 2
  return (patch * patch * 3 * width + width + width
          + (1 + num_patches) * width + depth * (12 * width**2 + 13 * width)
          + 2 * width + 1000 * width + 1000)


# Totals of timm's vit_{tiny,small,base,large}_patch{16,32}_224; the formula
# above reproduces each, e.g. ViT-B/16: 590,592 + 768 + 151,296
# + 12 * 7,087,872 + 1,536 + 769,000 = 86,567,656.
@pytest.mark.parametrize("name,width,depth,patch,expected", [
    ("vit_ti16", 192, 12, 16, 5_717_416),
    ("vit_s16", 384, 12, 16, 22_050_664),
    ("vit_b16", 768, 12, 16, 86_567_656),
    ("vit_l16", 1024, 24, 16, 304_326_632),
    ("vit_b32", 768, 12, 32, 88_224_232),
])
def test_param_count_matches_timm(name, width, depth, patch, expected):
  assert _timm_count(width, depth, patch) == expected
  model = _WithClassifier(registry.build_backbone(name))
  variables = _abstract_init(model, _images(224))
  assert set(variables) == {"params"}
  assert _num_params(variables["params"]) == expected


@pytest.mark.parametrize("name,width,depth,heads,patch", [
    ("vit_ti16", 192, 12, 3, 16), ("vit_s16", 384, 12, 6, 16),
    ("vit_b16", 768, 12, 12, 16), ("vit_l16", 1024, 24, 16, 16),
    ("vit_ti32", 192, 12, 3, 32), ("vit_s32", 384, 12, 6, 32),
    ("vit_b32", 768, 12, 12, 32), ("vit_l32", 1024, 24, 16, 32),
    ("vit_mu", 32, 1, 2, 4)])
def test_variant_hyperparameters(name, width, depth, heads, patch):
  model = registry.build_backbone(name)
  assert (model.width, model.depth, model.num_heads, model.patch_size) == (
      width, depth, heads, patch)
  assert model.mlp_dim == (64 if name == "vit_mu" else 4 * width)
  assert model.embedding_dim == width


def test_param_names_and_pos_embed_follow_input_size():
  params = _abstract_init(vit.VARIANTS["vit_b16"](), _images(224))["params"]
  assert params["pos_embed"].shape == (1, 197, 768)  # 1 + 14 * 14 tokens
  assert params["cls_token"].shape == (1, 1, 768)
  assert params["patch_embed"]["kernel"].shape == (16, 16, 3, 768)
  assert set(params["block_0"]) == {"norm1", "attn", "norm2", "mlp"}
  assert set(params["block_0"]["mlp"]) == {"fc1", "fc2"}
  assert set(params["block_0"]["attn"]) == {"query", "key", "value", "out"}
  assert "bias" in params["block_0"]["attn"]["query"]
  assert "norm" in params and "block_11" in params and "block_12" not in params
  small = _abstract_init(vit.VARIANTS["vit_mu"](), _images(28))["params"]
  assert small["pos_embed"].shape == (1, 1 + 7 * 7, 32)


def test_other_resolution_than_init_is_an_error():
  model = vit.VARIANTS["vit_mu"]()
  variables = _abstract_init(model, _images(32))
  with pytest.raises(Exception, match="pos_embed"):
    jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables,
                   _images(28))


def test_bfloat16_compute_keeps_float32_params():
  model = vit.VARIANTS["vit_mu"](dtype=jnp.bfloat16)
  variables = _abstract_init(model, _images(32, 2))
  assert {x.dtype for x in jax.tree.leaves(variables)} == {np.dtype("float32")}
  out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False),
                       variables, _images(32, 2))
  assert out.shape == (2, 32) and out.dtype == jnp.bfloat16


def test_unknown_pool_raises():
  with pytest.raises(ValueError, match="pool"):
    _abstract_init(vit.VARIANTS["vit_mu"](pool="max"), _images(32))


def _random_variables(abstract, seed: int = 0):
  """Numpy values for abstract variables (kernels ~ N(0, 1 / fan_in)).

  Real init is skipped on purpose: compiling jax.random for every kernel
  shape costs XLA:CPU seconds; the forward pass is what is tested here.
  """
  rng = np.random.default_rng(seed)
  def fill(path, x):
    name = jax.tree_util.keystr(path)
    if name.endswith("['kernel']"):
      fan_in = np.prod(x.shape[:-1])
      return (rng.standard_normal(x.shape) / np.sqrt(fan_in)).astype(x.dtype)
    if name.endswith("['scale']"):
      return np.ones(x.shape, x.dtype)
    return (0.02 * rng.standard_normal(x.shape)).astype(x.dtype)
  return jax.tree_util.tree_map_with_path(fill, abstract)


@pytest.fixture(name="mu_outputs", scope="module")
def fixture_mu_outputs():
  """vit_mu (dropout 0.1) outputs on [2, 32, 32, 3], from one compile."""
  token = vit.VARIANTS["vit_mu"](dropout_rate=0.1)
  gap = vit.VARIANTS["vit_mu"](dropout_rate=0.1, pool="gap")
  images = np.random.default_rng(1).standard_normal((2, 32, 32, 3))
  variables = _random_variables(_abstract_init(token, _images(32, 2)))

  @jax.jit
  def run(v, x):
    # The RBG key compiles much faster on CPU than the default threefry.
    key = jax.random.key(0, impl="unsafe_rbg")
    drop = lambda i: {"dropout": jax.random.fold_in(key, i)}
    return {
        "eval": token.apply(v, x, train=False),
        "eval_again": token.apply(v, x, train=False),
        "train": token.apply(v, x, train=True, rngs=drop(1)),
        "train_other_rng": token.apply(v, x, train=True, rngs=drop(2)),
        "gap": gap.apply(v, x, train=False),
    }

  return jax.tree.map(np.asarray, run(variables, images.astype(np.float32)))


def test_mu_forward_shapes_and_finite(mu_outputs):
  for name, out in mu_outputs.items():
    assert out.shape == (2, 32), name
    assert np.isfinite(out).all(), name


def test_mu_eval_is_deterministic_and_train_uses_dropout(mu_outputs):
  np.testing.assert_array_equal(mu_outputs["eval"], mu_outputs["eval_again"])
  assert not np.allclose(mu_outputs["train"], mu_outputs["eval"])
  assert not np.allclose(mu_outputs["train"], mu_outputs["train_other_rng"])


def test_gap_pool_differs_from_class_token(mu_outputs):
  # Same params (one tree for both pools), different read-out.
  assert not np.allclose(mu_outputs["gap"], mu_outputs["eval"])


def test_train_without_dropout_needs_no_rng():
  model = vit.VARIANTS["vit_mu"]()
  variables = _abstract_init(model, _images(32, 2))
  out = jax.eval_shape(lambda v, x: model.apply(v, x, train=True), variables,
                       _images(32, 2))
  assert out.shape == (2, 32)


def test_registry_builds_vit_b16_with_overrides():
  model = registry.build_backbone("vit_b16", dropout_rate=0.1)
  assert isinstance(model, vit.ViT)
  assert (model.width, model.dropout_rate, model.pool) == (768, 0.1, "token")


def test_registry_unknown_name_lists_names():
  with pytest.raises(ValueError, match="unknown model 'vit_h14'") as err:
    registry.build_backbone("vit_h14")
  for name in ("vit_b16", "vit_mu", "resnet50"):
    assert name in str(err.value)


@pytest.mark.slow  # compile-heavy
def test_remat_gives_the_same_gradients():
  """Rematerialised blocks recompute activations: same values, same grads."""
  plain = registry.build_backbone("vit_mu")
  images = jnp.linspace(-1, 1, 2 * 8 * 8 * 3).reshape(2, 8, 8, 3)
  params = plain.init(jax.random.key(0), images, train=False)["params"]

  def loss_fn(model):
    return lambda p: jnp.sum(model.apply({"params": p}, images,
                                         train=True) ** 2)

  want_loss, want = jax.jit(jax.value_and_grad(loss_fn(plain)))(params)
  # Recomputation may fuse differently: compare to the gradients' scale.
  scale = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(want))
  for policy in ("full", "dots_no_batch"):
    rematted = plain.clone(remat=policy)
    grad_fn = jax.value_and_grad(loss_fn(rematted))
    loss, got = jax.jit(grad_fn)(params)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(
        a, b, rtol=1e-4, atol=1e-5 * scale), got, want)
    # It really rematerialises: the gradient's jaxpr has a remat primitive.
    assert "remat" in str(jax.make_jaxpr(grad_fn)(params)), policy


def test_remat_config_errors(config_module):
  from mrl_jax.models import classifier  # pylint: disable=import-outside-toplevel
  config = config_module("vit_b16_imagenet").get_config("smoke")
  config.model.remat = "everything"
  with pytest.raises(ValueError, match="unknown remat 'everything'"):
    classifier.build_model(config)
  config.model.remat = "full"
  assert classifier.build_model(config).backbone.remat == "full"
  config = config_module("resnet50_imagenet").get_config("smoke")
  config.model.remat = "full"
  with pytest.raises(ValueError, match="supported by ViT and BERT models only"):
    classifier.build_model(config)
