"""ImageNet train and eval pipelines under tfds.testing.mock_data (no data).

The full-size recipe (224 crops) from configs/resnet50_imagenet.py, read
through the same module as every other dataset, must give global batches of
the right shape, sharded over the 8 fake devices' data axis, normalised with
the ImageNet mean/std (checked against numpy on the same crops without the
normalize op).
"""
import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from mrl_jax import sharding
from mrl_jax.data import pipeline

MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])
BATCH = 16


@pytest.fixture(name="cfg")
def fixture_cfg(config_module, tmp_path):
  cfg = config_module("resnet50_imagenet").get_config().data
  cfg.data_dir = str(tmp_path)  # empty: every example is mock
  return cfg


def _without_normalize(cfg, key):
  raw = cfg.copy_and_resolve_references()
  raw[key] = cfg[key].replace("|normalize('imagenet')", "")
  assert raw[key] != cfg[key]
  return raw


def _first_batch(cfg, split, train):
  mesh = sharding.make_mesh((("data", -1),))
  batch_sharding = sharding.batch_sharding(mesh)
  with tfds.testing.mock_data(num_examples=BATCH):
    source = pipeline.open_source(cfg, split)
    batches = (pipeline.train_batches(cfg, source, BATCH, 0, 0, batch_sharding)
               if train else
               pipeline.eval_batches(cfg, source, BATCH, batch_sharding))
    return next(batches)


def _check_sharded(batch):
  for key, value in batch.items():
    assert value.sharding.spec == jax.sharding.PartitionSpec("data"), key
    assert len(value.addressable_shards) == 8
    for shard in value.addressable_shards:
      assert shard.data.shape[0] == BATCH // 8


@pytest.mark.parametrize("train, split, key", [
    (True, "train", "train_preprocess"),
    (False, "validation", "eval_preprocess")])
@pytest.mark.slow  # compile-heavy
def test_imagenet_batches_shaped_sharded_normalised(cfg, train, split, key):
  batch = _first_batch(cfg, split, train)
  # Train crops follow the resolution schedule: 160 px in epoch 0.
  size = 160 if train else 224
  assert batch["image"].shape == (BATCH, size, size, 3)
  assert batch["image"].dtype == np.float32
  assert batch["label"].shape == (BATCH,)
  labels = np.asarray(batch["label"])
  assert ((labels >= 0) & (labels < 1000)).all()
  if not train:
    np.testing.assert_array_equal(batch["mask"], np.ones(BATCH))
  _check_sharded(batch)
  # Same crops (same seeds), pixel values 0..255: normalise with numpy.
  raw = np.asarray(_first_batch(_without_normalize(cfg, key), split,
                                train)["image"], np.float64)
  assert raw.min() >= 0 and raw.max() <= 255 and raw.max() > 1
  np.testing.assert_allclose(batch["image"], (raw / 255 - MEAN) / STD,
                             atol=1e-4)
