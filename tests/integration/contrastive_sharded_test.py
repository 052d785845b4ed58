"""The sharded nested contrastive loss equals the single-device one.

8 fake CPU devices; the jitted value_and_grad is traced under the mesh as
the train step does (`sharding.traced_under_mesh`), with the batch laid out
by `sharding.batch_sharding`.
"""
import re

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np
import pytest

from mrl_jax import sharding
from mrl_jax.mrl import contrastive

B, D = 16, 8
DIMS = (2, 4, 8)
C = (1.0, 0.5, 2.0)
MESHES = {
    "dp": (("data", 8),),
    "data_fsdp_model": (("data", 2), ("fsdp", 2), ("model", 2)),
}


def _args(kind):
  rng = np.random.default_rng(0)
  img = rng.normal(size=(B, D))
  txt = img + 1.5 * rng.normal(size=(B, D))
  log_t = np.array([-1.0, -0.5, 0.3])  # one per dim
  bias = np.array(-1.5)  # shared
  return tuple(jnp.asarray(x, jnp.float32) for x in (img, txt, log_t, bias))


def _value_and_grad(loss_fn, kind):
  def objective(img, txt, log_t, bias):
    return loss_fn(img, txt, DIMS, log_temperature=log_t,
                   relative_importance=C, kind=kind,
                   bias=bias if kind == "sigmoid" else None)
  return jax.value_and_grad(objective, argnums=(0, 1, 2, 3), has_aux=True)


def _sharded_step(mesh, kind, features_split=False):
  """The jitted sharded value_and_grad; embeddings split by rows over the
  batch axes, and their features over `model` if features_split (a
  tensor-parallel projection's output)."""
  embeddings = sharding.batch_sharding(mesh)
  if features_split:
    embeddings = NamedSharding(mesh, P(sharding.batch_axes(mesh), "model"))
  return jax.jit(sharding.traced_under_mesh(
      _value_and_grad(contrastive.sharded_nested_contrastive_loss, kind),
      mesh), in_shardings=(embeddings, embeddings, None, None))


@pytest.mark.parametrize("kind", ["softmax", "sigmoid"])
@pytest.mark.parametrize("mesh_name,features_split", [
    ("dp", False), ("data_fsdp_model", False), ("data_fsdp_model", True)])
def test_loss_metrics_and_gradients_equal_one_device(mesh_name,
                                                     features_split, kind):
  args = _args(kind)
  (want, want_metrics), want_grads = jax.jit(_value_and_grad(
      contrastive.nested_contrastive_loss, kind))(*args)
  mesh = sharding.make_train_mesh(MESHES[mesh_name])
  (got, metrics), grads = _sharded_step(mesh, kind, features_split)(*args)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  for name, value in want_metrics.items():
    np.testing.assert_allclose(metrics[name], value, rtol=1e-6, atol=1e-7)
  assert 0 < want_metrics["accuracy"].min() < 1  # rows are really ranked
  for a, b in zip(grads, want_grads):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert np.abs(grads[0]).max() > 0 and np.abs(grads[2]).max() > 0


@pytest.mark.parametrize("features_split", [False, True])
@pytest.mark.parametrize("kind,towers", [("softmax", 2), ("sigmoid", 1)])
def test_only_embeddings_are_gathered(kind, towers, features_split):
  """The compiled step all-gathers [B, d] embeddings, one per tower it needs
  as columns (sigmoid scores image rows against text columns only), and
  nothing else: gathering scores or gradients would add all-gathers.
  Features split over model are first gathered over model, [B / 4, d] per
  tower (the rows of every batch shard)."""
  mesh = sharding.make_train_mesh(MESHES["data_fsdp_model"])
  step = _sharded_step(mesh, kind, features_split)
  hlo = step.lower(*_args(kind)).compile().as_text()
  shapes = re.findall(r"= (f32\[[\d,]*\])\S* all-gather\(", hlo)
  assert len(re.findall(r"all-gather\(", hlo)) == len(shapes)
  want = [f"f32[{B},{D}]"] * towers
  if features_split:
    want = [f"f32[{B // 4},{D}]"] * 2 + want
  assert sorted(shapes) == sorted(want)
  # The gathered embeddings' gradients go back as a reduce-scatter.
  assert re.search(rf"= f32\[{B // 4},{D}\]\S* reduce-scatter\(", hlo)
