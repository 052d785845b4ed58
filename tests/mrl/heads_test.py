"""Heads: MRL / MRL-E / FF-k against an independent numpy loop over prefixes."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mrl_jax.mrl import heads

DIMS = (2, 4, 8, 16)


def _init(head, z):
  return head.init(jax.random.key(0), z)


@pytest.fixture(name="z")
def fixture_z():
  return jax.random.normal(jax.random.key(1), (5, 16))


def test_mrl_head_matches_numpy_loop(z):
  head = heads.build_head("mrl", 16, 7, DIMS)
  params = _init(head, z)["params"]
  got = np.asarray(head.apply({"params": params}, z))
  zn = np.asarray(z, np.float64)
  for g, m in enumerate(DIMS):
    p = params[f"nesting_classifier_{g}"]
    assert p["kernel"].shape == (m, 7)
    want = zn[:, :m] @ np.asarray(p["kernel"]) + np.asarray(p["bias"])
    np.testing.assert_allclose(got[g], want, rtol=1e-5, atol=1e-5)


def test_mrl_heads_have_independent_biases(z):
  head = heads.build_head("mrl", 16, 7, DIMS)
  params = jax.tree.map(lambda x: x, _init(head, z)["params"])
  params["nesting_classifier_1"]["bias"] = jnp.ones(7)
  out = head.apply({"params": params}, z)
  base = head.apply({"params": _init(head, z)["params"]}, z)
  changed = np.abs(np.asarray(out - base)).max(axis=(1, 2)) > 0
  np.testing.assert_array_equal(changed, [False, True, False, False])


def test_mrl_e_matches_numpy_loop_and_shares_bias(z):
  head = heads.build_head("mrl_e", 16, 7, DIMS)
  params = _init(head, z)["params"]
  assert set(params) == {"nesting_classifier_0"}
  kernel = np.asarray(params["nesting_classifier_0"]["kernel"], np.float64)
  bias = np.asarray(params["nesting_classifier_0"]["bias"], np.float64)
  got = np.asarray(head.apply({"params": params}, z))
  zn = np.asarray(z, np.float64)
  for g, m in enumerate(DIMS):
    np.testing.assert_allclose(got[g], zn[:, :m] @ kernel[:m] + bias,
                               rtol=1e-5, atol=1e-5)


def test_mrl_e_equals_mrl_with_tied_weights(z):
  mrl, mrl_e = (heads.build_head(t, 16, 7, DIMS) for t in ("mrl", "mrl_e"))
  e_params = _init(mrl_e, z)["params"]
  shared = e_params["nesting_classifier_0"]
  tied = {f"nesting_classifier_{g}": {"kernel": shared["kernel"][:m],
                                      "bias": shared["bias"]}
          for g, m in enumerate(DIMS)}
  np.testing.assert_allclose(mrl.apply({"params": tied}, z),
                             mrl_e.apply({"params": e_params}, z),
                             rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("head_type", ["mrl", "mrl_e"])
def test_fused_equals_masked(head_type, z):
  fused = heads.build_head(head_type, 16, 7, DIMS, implementation="fused")
  masked = heads.build_head(head_type, 16, 7, DIMS, implementation="masked")
  params = _init(fused, z)
  np.testing.assert_allclose(jax.jit(fused.apply)(params, z),
                             jax.jit(masked.apply)(params, z),
                             rtol=1e-5, atol=1e-5)
  # Gradients agree too (the masked path is the definition).
  def loss(p, head):
    return jnp.sum(jnp.sin(head.apply(p, z)))
  g_fused = jax.grad(loss)(params, fused)
  g_masked = jax.grad(loss)(params, masked)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5),
               g_fused, g_masked)


def test_ff_k_reads_only_first_k_features(z):
  head = heads.build_head("ff", 16, 7, ff_dim=4)
  params = _init(head, z)["params"]
  assert params["fc"]["kernel"].shape == (4, 7)
  out = head.apply({"params": params}, z)
  assert out.shape == (1, 5, 7)
  z2 = z.at[:, 4:].set(100.0)
  np.testing.assert_allclose(head.apply({"params": params}, z2), out)


def test_default_nesting_halves_to_8():
  head = heads.build_head("mrl", 2048, 10)
  assert head.nesting_dims == (8, 16, 32, 64, 128, 256, 512, 1024, 2048)
  assert heads.build_head("ff", 64, 10).nesting_dims == (64,)


@pytest.mark.parametrize("dims,match", [
    ((), "empty"),
    ((8, 4, 16), "not strictly increasing"),
    ((8, 8, 16), "not strictly increasing"),
    ((0, 8, 16), "non-positive"),
    ((8, 16, 32), "exceeds the embedding dim 16"),
    ((8.0, 16), "non-integer"),
])
def test_bad_nesting_lists_are_rejected(dims, match):
  with pytest.raises(ValueError, match=match) as err:
    heads.build_head("mrl", 16, 10, dims)
  assert "\n" not in str(err.value)
  assert "config.mrl.nesting_dims" in str(err.value)


def test_bad_head_settings_are_rejected():
  with pytest.raises(ValueError, match="config.mrl.head"):
    heads.build_head("mrl2", 16, 10)
  with pytest.raises(ValueError, match="config.mrl.ff_dim"):
    heads.build_head("ff", 16, 10, ff_dim=32)
  with pytest.raises(ValueError, match="config.mrl.implementation"):
    heads.build_head("mrl", 16, 10, implementation="fast")
