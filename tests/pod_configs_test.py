"""Shipped configs on TPU slices of 8 to 256 chips, unmodified: eval batches
of any size are padded to the mesh, with exact counts.

The slice tests lay the mesh over libtpu's compile-only devices (`.[aot]`).
"""
import importlib.util
import pathlib

import jax
import pytest

from mrl_jax import aot
from mrl_jax import optim
from mrl_jax import sharding
from mrl_jax import train
from mrl_jax.data import pipeline
from mrl_jax.evaluators import classification
from conftest import FOLDER_CONFIGS

CONFIG_DIR = pathlib.Path(__file__).resolve().parents[1] / "configs"
CONFIGS = sorted(p.stem for p in CONFIG_DIR.glob("*.py"))
# 8, 16, 64 and 256 chips, over the four generations aot.CHIPS knows.
TOPOLOGIES = ("v5e:2x4", "v6e:4x4", "v4:4x4x4", "v5p:4x8x8", "v5e:16x16")
needs_libtpu = pytest.mark.skipif(
    importlib.util.find_spec("libtpu") is None,
    reason="libtpu not installed: pip install '.[aot]'")


def _shipped_config(name, config_module, image_tree):
  # image_folder reads its classes and image size from a folder; the other
  # folder configs need a root too.
  arg = f"root={image_tree}" if name in FOLDER_CONFIGS else None
  return config_module(name).get_config(arg)


def test_padded_batch_size_rounds_up_to_the_batch_shards():
  mesh = sharding.make_mesh((("data", 4), ("fsdp", 2)))
  assert [sharding.padded_batch_size(b, mesh) for b in (1, 8, 60, 1000)] == [
      8, 8, 64, 1000]
  model_parallel = sharding.make_mesh((("data", 2), ("model", 4)))
  assert sharding.padded_batch_size(1001, model_parallel) == 1002


@pytest.mark.parametrize("eval_batch", [0, -8])
def test_bad_eval_batch_size_is_one_line(eval_batch, config_module):
  config = config_module("default").get_config("smoke")
  config.eval_batch_size = eval_batch
  with pytest.raises(ValueError, match="config.eval_batch_size=.* must be an "
                     "integer >= 1"):
    train.setup(config)


@needs_libtpu
@pytest.mark.parametrize("topology", TOPOLOGIES)
@pytest.mark.parametrize("name", CONFIGS)
def test_shipped_config_sets_up_on_slice(name, topology, config_module,
                                         image_tree):
  config = _shipped_config(name, config_module, image_tree)
  devices = aot.topology_devices(topology)
  if config.batch_size % len(devices):
    # A training batch smaller than (or not a multiple of) the chips cannot
    # be split; that is the config's batch, never the eval batch.
    with pytest.raises(ValueError, match=r"^config\.batch_size="):
      train.setup(config, devices)
    return
  s = train.setup(config, devices)
  padded = sharding.padded_batch_size(config.eval_batch_size, s.mesh)
  assert padded % len(devices) == 0
  assert config.eval_batch_size <= padded < config.eval_batch_size + len(
      devices)


@pytest.fixture(scope="module", name="smoke")
def fixture_smoke(config_module):
  """The default smoke config, its setup and an initialised state."""
  config = config_module("default").get_config("smoke")
  s = train.setup(config)
  tx = optim.build_optimizer(config.optimizer, 1, 1)
  source = pipeline.open_source(config.data, "test[:100]")
  init, rng, target = train.abstract_train_state(
      s, config, tx, pipeline.example_spec(config.data, source))
  shardings = jax.tree.map(lambda t: t.sharding, target)
  state = jax.jit(init, out_shardings=shardings)(rng)
  eval_step = train._jit_eval_step(s, shardings)  # pylint: disable=protected-access
  return config, s, source, state, eval_step


def _evaluate(smoke, eval_batch):
  config, s, source, state, eval_step = smoke
  batches = pipeline.eval_batches(config.data, source, eval_batch,
                                  sharding.batch_sharding(s.mesh))
  return classification.evaluate(eval_step, state, batches, s.nesting_dims)


def test_eval_counts_are_exact_for_any_eval_batch(smoke):
  # 8 devices: 64 divides them, 60 and 13 are padded to 64 and 16 per step.
  dividing = _evaluate(smoke, 64)
  assert dividing["num_examples"] == 100
  for eval_batch in (60, 13):
    padded = _evaluate(smoke, eval_batch)
    assert padded["num_examples"] == 100
    assert padded["top1"] == dividing["top1"]
    assert padded["top5"] == dividing["top5"]
    for dim, loss in dividing["loss"].items():
      assert padded["loss"][dim] == pytest.approx(loss, rel=1e-5)
