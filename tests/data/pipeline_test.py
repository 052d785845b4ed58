"""The training stream is a function of (seed, step): resume-exact."""
import jax
import numpy as np
import pytest

from mrl_jax import sharding
from mrl_jax.data import pipeline

@pytest.fixture(scope="module", name="cfg")
def fixture_cfg(config_module):
  return config_module("default").get_config("smoke").data


def _take(cfg, start, n, seed=0, batch=32):
  mesh = sharding.make_mesh((("data", -1),))
  source = pipeline.open_source(cfg, cfg.train_split)
  it = pipeline.train_batches(cfg, source, batch, seed, start,
                              sharding.batch_sharding(mesh))
  return [jax.tree.map(np.asarray, next(it)) for _ in range(n)]


def test_resumed_stream_continues_exactly(cfg):
  # 1024 examples / 32 = 32 steps per epoch: cross an epoch boundary too.
  full = _take(cfg, 0, 36)
  for start in (5, 31, 33):
    resumed = _take(cfg, start, 36 - start)
    for a, b in zip(full[start:], resumed):
      np.testing.assert_array_equal(a["image"], b["image"])
      np.testing.assert_array_equal(a["label"], b["label"])


def test_epochs_and_seeds_reshuffle(cfg):
  batches = _take(cfg, 0, 33)
  assert not np.array_equal(batches[0]["label"], batches[32]["label"])
  other_seed = _take(cfg, 0, 1, seed=1)
  assert not np.array_equal(batches[0]["label"], other_seed[0]["label"])


def test_batches_are_sharded_over_data_axis(cfg):
  mesh = sharding.make_mesh((("data", -1),))
  source = pipeline.open_source(cfg, cfg.train_split)
  batch = next(pipeline.train_batches(cfg, source, 32, 0, 0,
                                      sharding.batch_sharding(mesh)))
  assert batch["image"].shape == (32, 28, 28, 1)
  assert batch["image"].sharding.spec == jax.sharding.PartitionSpec("data")
  assert len(batch["image"].addressable_shards) == 8


def test_eval_batches_pad_and_mask(cfg):
  mesh = sharding.make_mesh((("data", -1),))
  source = pipeline.open_source(cfg, "test[:100]")
  batches = list(pipeline.eval_batches(cfg, source, 64,
                                       sharding.batch_sharding(mesh)))
  masks = np.concatenate([np.asarray(b["mask"]) for b in batches])
  assert len(batches) == 2 and masks.sum() == 100 and masks[:100].all()


def test_batch_not_divisible_by_devices_is_an_error():
  mesh = sharding.make_mesh((("data", -1),))
  with pytest.raises(ValueError, match="config.batch_size=12 is not divisible"
                     " by the 8 batch shards"):
    sharding.check_batch_size(12, mesh, "batch_size")


def test_bad_split_and_missing_dataset_are_errors(cfg, tmp_path):
  with pytest.raises(ValueError, match="bad split"):
    pipeline.open_source(cfg, "validation")
  missing = cfg.copy_and_resolve_references()
  missing.name = "mnist"
  missing.data_dir = str(tmp_path)
  with pytest.raises(ValueError, match="not prepared in"):
    pipeline.open_source(missing, "train")
