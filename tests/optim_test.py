"""Optimizer, schedule and weight-decay mask from config."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from mrl_jax import optim


def _cfg(**kw):
  base = dict(name="sgd", learning_rate=0.4, momentum=0.9, weight_decay=1e-4,
              warmup_epochs=2, warmup_init_factor=1e-4, schedule="linear")
  base.update(kw)
  return ml_collections.ConfigDict(base)


def test_official_schedule_warmup_then_linear_decay_to_zero():
  sched = optim.build_schedule(_cfg(), total_steps=40, steps_per_epoch=1)
  np.testing.assert_allclose(sched(0), 0.4e-4, rtol=1e-3)  # float32
  np.testing.assert_allclose(sched(1), 0.4e-4 + (0.4 - 0.4e-4) / 2, rtol=1e-5)
  np.testing.assert_allclose(sched(2), 0.4, rtol=1e-6)
  np.testing.assert_allclose(sched(21), 0.2, rtol=1e-5)
  np.testing.assert_allclose(sched(40), 0.0, atol=1e-7)


def test_no_weight_decay_on_batchnorm_and_biases():
  params = {"conv": {"kernel": jnp.ones((3, 3, 1, 2))},
            "bn": {"scale": jnp.ones(2), "bias": jnp.ones(2)},
            "dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}}
  zero_grads = jax.tree.map(jnp.zeros_like, params)
  tx = optim.build_optimizer(_cfg(warmup_epochs=0, schedule="constant",
                                  momentum=0.0, weight_decay=0.5), 10, 1)
  updates, _ = tx.update(zero_grads, tx.init(params), params)
  # Coupled decay: update = -lr * wd * p for kernels, nothing for 1-d params.
  np.testing.assert_allclose(updates["conv"]["kernel"], -0.4 * 0.5)
  np.testing.assert_allclose(updates["dense"]["kernel"], -0.4 * 0.5)
  for leaf in (updates["bn"]["scale"], updates["bn"]["bias"],
               updates["dense"]["bias"]):
    np.testing.assert_array_equal(leaf, 0.0)


def test_adamw_mask_and_clipping():
  params = {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}
  tx = optim.build_optimizer(
      _cfg(name="adamw", warmup_epochs=0, schedule="constant",
           weight_decay=0.1, grad_clip_norm=1.0), 10, 1)
  updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params),
                         tx.init(params), params)
  np.testing.assert_allclose(updates["w"], -0.4 * 0.1, rtol=1e-6)
  np.testing.assert_array_equal(updates["b"], 0.0)
  assert optax.tree.norm(updates) > 0


@pytest.mark.parametrize("field,value,match", [
    ("name", "lamb", "config.optimizer.name to one of sgd, adamw, adafactor"),
    ("schedule", "step", "config.optimizer.schedule"),
])
def test_bad_optimizer_config(field, value, match):
  with pytest.raises(ValueError, match=match) as e:
    optim.build_optimizer(_cfg(**{field: value}), 10, 1)
  assert "\n" not in str(e.value)


def _adafactor(**kw):
  """The ALIGN-MRL recipe: Adafactor, linear decay from 1e-3, no warm-up."""
  base = dict(name="adafactor", learning_rate=1e-3, weight_decay=0.0,
              schedule="linear", warmup_steps=0)
  base.update(kw)
  return ml_collections.ConfigDict(base)


def _adafactor_step(cfg, params, total_steps=10):
  tx = optim.build_optimizer(cfg, total_steps, 1)
  grads = jax.tree.map(jnp.ones_like, params)
  state = tx.init(params)
  updates, state = tx.update(grads, state, params)
  return optax.apply_updates(params, updates), state


def test_adafactor_factors_second_moments_and_keeps_no_momentum():
  params = {"w": jnp.ones((256, 128)), "b": jnp.ones(128)}
  new, state = _adafactor_step(_adafactor(), params)
  # Gradient 1 everywhere: the RMS-normalised step is exactly lr (absolute,
  # not scaled by the parameters' RMS).
  np.testing.assert_allclose(new["w"], 1.0 - 1e-3, rtol=1e-6)
  np.testing.assert_allclose(new["b"], 1.0 - 1e-3, rtol=1e-6)
  # The [256, 128] matrix keeps a row and a column statistic, not a full one.
  factored = [s for s in jax.tree.leaves(state) if s.ndim == 1]
  assert {s.shape for s in factored} >= {(256,), (128,)}
  assert max(s.size for s in jax.tree.leaves(state)) < 256 * 128
  _, unfactored = _adafactor_step(_adafactor(factored=False), params)
  assert max(s.size for s in jax.tree.leaves(unfactored)) == 256 * 128


def test_adafactor_momentum_and_weight_decay_options():
  params = {"w": jnp.ones((4, 4)), "b": jnp.ones(4)}
  _, state = _adafactor_step(_adafactor(momentum=0.9,
                                        state_dtype="bfloat16"), params)
  assert any(s.dtype == jnp.bfloat16 for s in jax.tree.leaves(state))
  new, _ = _adafactor_step(_adafactor(weight_decay=0.5), params)
  # Decay lr_t x wd x p on kernels only, as AdamW's.
  np.testing.assert_allclose(new["w"], 1.0 - 1e-3 - 1e-3 * 0.5, rtol=1e-6)
  np.testing.assert_allclose(new["b"], 1.0 - 1e-3, rtol=1e-6)


def test_adafactor_linear_decay_reaches_zero_at_total_steps():
  cfg = _adafactor()
  sched = optim.build_schedule(cfg, total_steps=100, steps_per_epoch=1)
  np.testing.assert_allclose(sched(0), 1e-3, rtol=1e-6)
  np.testing.assert_allclose(sched(50), 5e-4, rtol=1e-5)
  np.testing.assert_allclose(sched(100), 0.0, atol=1e-12)
  # The optimizer follows it: no step left at total_steps.
  tx = optim.build_optimizer(cfg, 100, 1)
  params = {"w": jnp.ones((4, 4))}
  state = tx.init(params)
  step = jax.jit(tx.update)
  for _ in range(100):
    _, state = step(jax.tree.map(jnp.ones_like, params), state, params)
  updates, _ = step(jax.tree.map(jnp.ones_like, params), state, params)
  np.testing.assert_array_equal(updates["w"], 0.0)


def test_adafactor_trains_least_squares():
  tx = optim.build_optimizer(_adafactor(learning_rate=0.05,
                                        schedule="constant"), 200, 1)
  start, end, _, _ = _fit_least_squares(tx, 200)
  assert end < 0.1 * start


@pytest.mark.parametrize("momentum", [1.0, -0.1])
def test_adafactor_bad_momentum_is_one_line(momentum):
  with pytest.raises(ValueError, match=r"config.optimizer.momentum=.* is "
                     r"outside \[0, 1\)") as e:
    optim.build_optimizer(_adafactor(momentum=momentum), 10, 1)
  assert "\n" not in str(e.value)


def _fit_least_squares(tx, steps):
  """`steps` updates of a Dense layer on a fixed random least-squares
  problem: (start loss, end loss, params, optimizer state)."""
  gen = np.random.default_rng(0)
  x = jnp.asarray(gen.normal(size=(64, 8)), jnp.float32)
  y = x @ jnp.asarray(gen.normal(size=(8, 2)), jnp.float32)
  params = {"dense": {"kernel": jnp.zeros((8, 2)), "bias": jnp.zeros(2)}}
  loss = lambda p: jnp.mean((x @ p["dense"]["kernel"] + p["dense"]["bias"]
                             - y) ** 2)

  @jax.jit
  def step(p, s):
    updates, s = tx.update(jax.grad(loss)(p), s, p)
    return optax.apply_updates(p, updates), s

  state = tx.init(params)
  start = float(loss(params))
  for _ in range(steps):
    params, state = step(params, state)
  return start, float(loss(params)), params, state


@pytest.mark.parametrize("name,moment", [("sgd", "trace"), ("adamw", "mu")])
def test_bfloat16_optimizer_state_trains_with_float32_weights(name, moment):
  """state_dtype=bfloat16: the momentum / first moment is bf16, weights f32.

  Least squares on a fixed random problem: the loss still goes down.
  """
  tx = optim.build_optimizer(
      _cfg(name=name, learning_rate=0.05, warmup_epochs=0,
           schedule="constant", state_dtype="bfloat16"), 100, 10)
  start, end, params, state = _fit_least_squares(tx, 50)
  moments = [leaf for path, leaf in jax.tree_util.tree_flatten_with_path(
      state)[0] if any(getattr(k, "name", None) == moment for k in path)]
  assert moments and all(m.dtype == jnp.bfloat16 for m in moments)
  if name == "adamw":  # the second moment keeps float32
    nus = [leaf for path, leaf in jax.tree_util.tree_flatten_with_path(
        state)[0] if any(getattr(k, "name", None) == "nu" for k in path)]
    assert nus and all(n.dtype == jnp.float32 for n in nus)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  assert end < 0.1 * start


def test_unknown_state_dtype_raises():
  with pytest.raises(ValueError, match="config.optimizer.state_dtype"):
    optim.build_optimizer(_cfg(state_dtype="float16"), 10, 1)
