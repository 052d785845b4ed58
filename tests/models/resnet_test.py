"""ResNet: torchvision parameter counts, padding, shapes, BN state, registry."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mrl_jax.models import registry
from mrl_jax.models import resnet

_IMAGES_224 = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)


class _WithClassifier(nn.Module):
  """Backbone + Dense(1000), the torchvision model whose params we count."""
  backbone: nn.Module

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    return nn.Dense(1000)(self.backbone(x, train=train))


def _abstract_init(model: nn.Module, images=_IMAGES_224, **kwargs):
  """Variables as ShapeDtypeStructs: traces init without computing it."""
  return jax.eval_shape(
      lambda x: model.init(jax.random.key(0), x, train=False, **kwargs),
      images)


def _num_params(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


# Totals of torchvision.models.resnet{18,...,152}() (fc included). For ResNet-50
# by hand: stem 9,408 + 128; stages 215,808 / 1,219,584 / 7,098,368 /
# 14,964,736 (convs + BN); fc 2,048 * 1,000 + 1,000 = 2,049,000.
@pytest.mark.parametrize("name,expected", [
    ("resnet18", 11_689_512),
    ("resnet34", 21_797_672),
    ("resnet50", 25_557_032),
    ("resnet101", 44_549_160),
    ("resnet152", 60_192_808),
])
def test_param_count_matches_torchvision(name, expected):
  variables = _abstract_init(_WithClassifier(registry.build_backbone(name)))
  assert _num_params(variables["params"]) == expected


@pytest.mark.parametrize("name,dim", [
    ("resnet18", 512), ("resnet34", 512), ("resnet50", 2048),
    ("resnet101", 2048), ("resnet152", 2048), ("resnet_mu", 64)])
def test_embedding_dim(name, dim):
  assert registry.build_backbone(name).embedding_dim == dim


def test_param_names_mirror_torchvision():
  params = _abstract_init(resnet.VARIANTS["resnet50"]())["params"]
  assert {"conv1", "bn1", "layer1_0", "layer4_2"} <= set(params)
  assert set(params["layer1_0"]) == {
      "conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "downsample_conv",
      "downsample_bn"}
  assert "downsample_conv" not in params["layer1_1"]
  assert params["layer2_0"]["conv2"]["kernel"].shape == (3, 3, 128, 128)
  assert set(params["bn1"]) == {"scale", "bias"}


def _conv_and_pool_paddings(jaxpr):
  """Yields (primitive name, padding, window) of every conv / pool in jaxpr."""
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "conv_general_dilated":
      window = eqn.invars[1].aval.shape[:2]  # HWIO kernel
      yield name, tuple(eqn.params["padding"]), window
    elif name.startswith("reduce_window"):
      yield name, tuple(eqn.params["padding"]), eqn.params["window_dimensions"]
    for param in eqn.params.values():
      sub = getattr(param, "jaxpr", param)
      if hasattr(sub, "eqns"):
        yield from _conv_and_pool_paddings(sub)


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_every_conv_and_pool_pads_symmetrically_like_torch(name):
  # 'SAME' would pad (2, 3) for the 7x7/2 stem and (0, 1) for every 3x3/2
  # layer at 224; torchvision pads k // 2 on both sides.
  model = registry.build_backbone(name)
  variables = _abstract_init(model)
  jaxpr = jax.make_jaxpr(lambda v, x: model.apply(v, x, train=False))(
      variables, _IMAGES_224)
  found = list(_conv_and_pool_paddings(jaxpr.jaxpr))
  convs = [f for f in found if f[0] == "conv_general_dilated"]
  pools = [f for f in found if f[0].startswith("reduce_window")]
  paths = jax.tree_util.tree_leaves_with_path(variables["params"])
  assert len(convs) == sum("conv" in jax.tree_util.keystr(p) for p, _ in paths)
  for _, padding, window in convs:
    assert padding == tuple((k // 2, k // 2) for k in window), padding
  assert [p[1:] for p in pools] == [
      (((0, 0), (1, 1), (1, 1), (0, 0)), (1, 3, 3, 1))]


def test_feature_map_sizes_at_224_match_torchvision():
  model = registry.build_backbone("resnet50")
  inter = _abstract_init(model, capture_intermediates=True,
                         mutable=True)["intermediates"]
  size = lambda path: inter[path[0]][path[1]]["__call__"][0].shape[1:3]
  assert inter["bn1"]["__call__"][0].shape == (1, 112, 112, 64)  # stem
  assert size(("layer1_0", "conv1")) == (56, 56)  # after the max-pool
  assert inter["layer1_2"]["__call__"][0].shape == (1, 56, 56, 256)
  assert inter["layer2_3"]["__call__"][0].shape == (1, 28, 28, 512)
  assert inter["layer3_5"]["__call__"][0].shape == (1, 14, 14, 1024)
  assert inter["layer4_2"]["__call__"][0].shape == (1, 7, 7, 2048)
  assert inter["__call__"][0].shape == (1, 2048)


def _random_variables(abstract, seed: int = 0):
  """Numpy values for abstract variables (kernels ~ N(0, 1 / fan_in)).

  Real init is skipped on purpose: XLA:CPU takes ~2 s to compile jax.random
  for each 4-D kernel shape, which would dominate these tests.
  """
  rng = np.random.default_rng(seed)
  def fill(path, x):
    name = jax.tree_util.keystr(path)
    if name.endswith("['kernel']"):
      fan_in = np.prod(x.shape[:-1])
      return (rng.standard_normal(x.shape) / np.sqrt(fan_in)).astype(x.dtype)
    if name.endswith(("['var']", "['scale']")):
      return np.ones(x.shape, x.dtype)
    return (0.02 * rng.standard_normal(x.shape)).astype(x.dtype)
  return jax.tree_util.tree_map_with_path(fill, abstract)


@pytest.fixture(name="mu_outputs", scope="module")
def fixture_mu_outputs():
  """resnet_mu eval and train outputs on [2, 32, 32, 3], from one compile."""
  model = resnet.VARIANTS["resnet_mu"]()
  images = np.random.default_rng(1).standard_normal((2, 32, 32, 3))
  variables = _random_variables(_abstract_init(
      model, jax.ShapeDtypeStruct(images.shape, jnp.float32)))

  @jax.jit
  def run(v, x):
    out_train, updates = model.apply(v, x, train=True, mutable=["batch_stats"])
    return model.apply(v, x, train=False), out_train, updates

  return variables, run(variables, images.astype(np.float32))


def test_mu_forward_eval(mu_outputs):
  _, (out_eval, _, _) = mu_outputs
  assert out_eval.shape == (2, 64)
  assert np.isfinite(np.asarray(out_eval)).all()


def test_mu_forward_train_updates_batch_stats(mu_outputs):
  variables, (out_eval, out_train, updates) = mu_outputs
  assert out_train.shape == (2, 64)
  assert np.isfinite(np.asarray(out_train)).all()
  # Batch statistics differ from the running ones, so the outputs differ.
  assert not np.allclose(np.asarray(out_train), np.asarray(out_eval))
  old, new = variables["batch_stats"], updates["batch_stats"]
  assert set(old["bn1"]) == {"mean", "var"}
  assert jax.tree.structure(old) == jax.tree.structure(new)
  for before, after in zip(jax.tree.leaves(old), jax.tree.leaves(new)):
    assert not np.allclose(np.asarray(before), np.asarray(after))


def test_zero_init_residual_zeroes_only_the_last_bn_scale():
  @jax.jit
  def init_blocks(x):
    # Tiny single blocks under one compile; the RBG key compiles much faster
    # on CPU than the default threefry.
    key = jax.random.key(0, impl="unsafe_rbg")
    return {(cls.__name__, zero): cls(4, 2, zero).init(key, x, train=False)
            for cls in (resnet.BasicBlock, resnet.BottleneckBlock)
            for zero in (True, False)}

  inits = init_blocks(jnp.zeros((1, 4, 4, 4)))
  for (name, zero), variables in inits.items():
    last_bn = "bn2" if name == "BasicBlock" else "bn3"
    scales = {k: np.asarray(v["scale"]) for k, v in variables["params"].items()
              if "bn" in k}
    assert len(scales) == (3 if name == "BasicBlock" else 4)
    for bn, scale in scales.items():
      want = 0.0 if zero and bn == last_bn else 1.0
      np.testing.assert_array_equal(scale, want, err_msg=f"{name} {bn}")


def test_bfloat16_compute_keeps_float32_params():
  model = resnet.VARIANTS["resnet_mu"](dtype=jnp.bfloat16)
  images = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
  variables = _abstract_init(model, images)
  assert {x.dtype for x in jax.tree.leaves(variables)} == {np.dtype("float32")}
  out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False),
                       variables, images)
  assert out.dtype == jnp.bfloat16


def test_registry_builds_resnet50_with_overrides():
  model = registry.build_backbone("resnet50", dtype=jnp.bfloat16)
  assert isinstance(model, resnet.ResNet)
  assert model.block == "bottleneck" and model.dtype == jnp.bfloat16
  assert "resnet_mu" in registry.available_models()


def test_registry_unknown_name_lists_names():
  with pytest.raises(ValueError, match="unknown model 'resnet51'") as err:
    registry.build_backbone("resnet51")
  assert "resnet50" in str(err.value) and "vit_b16" in str(err.value)


def _blur_numpy(x: np.ndarray) -> np.ndarray:
  """Reference BlurPool blur: per channel, zero-pad 1, correlate with
  outer([1, 2, 1], [1, 2, 1]) / 16, stride 1. x: [B, H, W, C]."""
  taps = np.array([1.0, 2.0, 1.0])
  kernel = np.outer(taps, taps) / 16
  padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  h, w = x.shape[1:3]
  out = np.zeros_like(x, dtype=np.float64)
  for di in range(3):
    for dj in range(3):
      out += kernel[di, dj] * padded[:, di:di + h, dj:dj + w, :]
  return out


def test_blur_matches_numpy_reference():
  x = np.random.default_rng(0).standard_normal((2, 7, 6, 5)).astype(np.float32)
  np.testing.assert_allclose(np.asarray(resnet.blur(jnp.asarray(x))),
                             _blur_numpy(x), rtol=1e-6, atol=1e-6)
  kernel = resnet.blur_filter(3)
  assert kernel.shape == (3, 3, 1, 3)
  np.testing.assert_array_equal(kernel[:, :, 0, 2],
                                [[1 / 16, 2 / 16, 1 / 16],
                                 [2 / 16, 4 / 16, 2 / 16],
                                 [1 / 16, 2 / 16, 1 / 16]])


def test_blurpool_resnet50_blurs_exactly_the_official_convs():
  plain = resnet.VARIANTS["resnet50"]()
  blurred = resnet.VARIANTS["resnet50"](blurpool=True)
  variables = _abstract_init(plain)
  # No new parameters: the blur filter is a constant (a buffer in torch).
  assert (jax.tree.structure(_abstract_init(blurred)) ==
          jax.tree.structure(variables))
  jaxpr = jax.make_jaxpr(lambda v, x: blurred.apply(v, x, train=False))(
      variables, _IMAGES_224)
  eqns = []
  def collect(jp):
    for eqn in jp.eqns:
      if eqn.primitive.name == "conv_general_dilated":
        eqns.append(eqn)
      for param in eqn.params.values():
        sub = getattr(param, "jaxpr", param)
        if hasattr(sub, "eqns"):
          collect(sub)
  collect(jaxpr.jaxpr)
  depthwise = [(e.params["feature_group_count"], e.params["window_strides"],
                e.invars[0].aval.shape[1]) for e in eqns
               if e.params["feature_group_count"] > 1]
  # layer{2,3,4}.0.conv2 (inputs 128/256/512 channels at 56/28/14 px) and
  # layer{2,3,4}.0.downsample.0 (inputs 256/512/1024 at the same sizes).
  assert sorted(depthwise) == sorted([
      (128, (1, 1), 56), (256, (1, 1), 56), (256, (1, 1), 28),
      (512, (1, 1), 28), (512, (1, 1), 14), (1024, (1, 1), 14)])
  out = jax.eval_shape(lambda v, x: blurred.apply(v, x, train=False),
                       variables, _IMAGES_224)
  assert out.shape == (1, 2048)
