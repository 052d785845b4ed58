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
    ("name", "lamb", "config.optimizer.name"),
    ("schedule", "step", "config.optimizer.schedule"),
])
def test_bad_optimizer_config(field, value, match):
  with pytest.raises(ValueError, match=match):
    optim.build_optimizer(_cfg(**{field: value}), 10, 1)
