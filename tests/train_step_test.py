"""The pure train/eval steps on a tiny model."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mrl_jax import train_step as step_lib
from mrl_jax.models import classifier
from mrl_jax.models import registry
from mrl_jax.mrl import heads
from mrl_jax.mrl import losses

DIMS = (4, 8, 16)


def _setup(dtype=jnp.float32):
  model = classifier.MRLClassifier(
      registry.build_backbone("cnn_mu", dtype=dtype),
      heads.build_head("mrl", 16, 10, DIMS))
  tx = optax.sgd(0.1, momentum=0.9)
  state = step_lib.create_train_state(model, tx, jax.random.key(0, impl="rbg"),
                                      (28, 28, 1))
  step = jax.jit(step_lib.make_train_step(
      model, tx, losses.get_loss_fn("softmax", 0.1), (1.0, 1.0, 1.0), seed=0))
  batch = {"image": jnp.linspace(-1, 1, 8 * 784).reshape(8, 28, 28, 1),
           "label": jnp.arange(8) % 10}
  return model, state, step, batch


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_train_step_updates_and_reports_every_dim(dtype):
  _, state, step, batch = _setup(dtype)
  new, metrics = step(state, batch)
  assert int(new.step) == 1 and int(new.nonfinite_step) == -1
  assert metrics["loss_per_dim"].shape == (3,)
  assert metrics["accuracy_per_dim"].shape == (3,)
  np.testing.assert_allclose(metrics["loss"], metrics["loss_per_dim"].sum(),
                             rtol=1e-6)
  # Master weights stay float32 under bf16 compute.
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(new.params))
  moved = jax.tree.map(lambda a, b: bool((a != b).any()), new.params,
                       state.params)
  assert all(jax.tree.leaves(moved))


def test_nonfinite_step_is_skipped_and_recorded():
  _, state, step, batch = _setup()
  state, _ = step(state, batch)
  bad = {**batch, "image": batch["image"].at[0, 0, 0, 0].set(jnp.inf)}
  after_bad, metrics = step(state, bad)
  assert not np.isfinite(metrics["loss"])
  assert int(after_bad.nonfinite_step) == 1  # the update from step 1
  jax.tree.map(np.testing.assert_array_equal, after_bad.params, state.params)
  jax.tree.map(np.testing.assert_array_equal, after_bad.batch_stats,
               state.batch_stats)
  # Later good batches do not clear the record or move the weights.
  later, _ = step(after_bad, batch)
  assert int(later.nonfinite_step) == 1
  jax.tree.map(np.testing.assert_array_equal, later.params, state.params)


def test_eval_step_ignores_padding():
  model, state, _, batch = _setup()
  eval_step = jax.jit(step_lib.make_eval_step(
      model, losses.get_loss_fn("softmax")))
  mask = jnp.array([1, 1, 1, 1, 1, 0, 0, 0], jnp.float32)
  sums = eval_step(state, {**batch, "mask": mask})
  assert float(sums["count"]) == 5
  logits, _ = model.apply({"params": state.params,
                           "batch_stats": state.batch_stats},
                          batch["image"][:5], train=False)
  want = (np.asarray(logits).argmax(-1) == np.asarray(batch["label"][:5]))
  np.testing.assert_allclose(sums["top1"], want.sum(-1))


def test_grad_accumulation_batchnorm_semantics():
  """k microbatches with BatchNorm: each normalised with its own statistics.

  The loss is the mean of the microbatch losses, the gradient the mean of
  their gradients (plain SGD makes the update that gradient), and the
  running statistics are updated once per microbatch, in order.
  """
  model, state, _, batch = _setup()
  tx = optax.sgd(0.1)
  state = state.replace(opt_state=tx.init(state.params))
  make = lambda k: jax.jit(step_lib.make_train_step(
      model, tx, losses.get_loss_fn("softmax", 0.1), (1.0, 1.0, 1.0), seed=0,
      grad_accum_steps=k))
  accumulated, metrics = make(2)(state, batch)
  one = make(1)
  micro = [jax.tree.map(lambda x, i=i: x[i::2], batch) for i in range(2)]
  first, m0 = one(state, micro[0])
  second, m1 = one(state.replace(batch_stats=first.batch_stats), micro[1])
  np.testing.assert_allclose(metrics["loss"], (m0["loss"] + m1["loss"]) / 2,
                             rtol=1e-6)
  mean_params = jax.tree.map(lambda a, b: (a + b) / 2, first.params,
                             second.params)
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5,
                                 atol=1e-7), accumulated.params, mean_params)
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-6),
               accumulated.batch_stats, second.batch_stats)
