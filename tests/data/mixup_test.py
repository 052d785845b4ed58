"""Mixup: numerics against numpy, determinism per (seed, step), in the
resumable training stream, and config errors."""
import jax
import ml_collections
import numpy as np
import pytest

from mrl_jax import sharding
from mrl_jax.data import mixup
from mrl_jax.data import pipeline

NUM_CLASSES = 10


def _numpy_mixup(images, labels, lam):
  onehot = np.eye(NUM_CLASSES)[labels]
  mix = lambda x: lam * x + (1 - lam) * np.roll(x, 1, axis=0)
  return mix(images), mix(onehot)


def _batch(seed=0, n=8):
  rng = np.random.default_rng(seed)
  # Distinct neighbouring labels, so each row shows lam on its own class.
  labels = np.arange(n) % NUM_CLASSES
  return {"image": rng.normal(size=(n, 4, 4, 3)).astype(np.float32),
          "label": labels.astype(np.int32)}


def test_mix_equals_numpy():
  batch = _batch()
  out = mixup.mix(batch, jax.random.key(3), 0.4, NUM_CLASSES)
  labels = np.asarray(out["label"])
  lam = labels[0, batch["label"][0]]
  assert 0.5 <= lam <= 1.0
  want_images, want_labels = _numpy_mixup(batch["image"], batch["label"], lam)
  np.testing.assert_allclose(out["image"], want_images, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(labels, want_labels, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(labels.sum(1), 1.0, rtol=1e-6)


def test_multi_hot_labels_are_mixed_too():
  batch = _batch()
  hot = np.zeros((8, NUM_CLASSES), np.float32)
  hot[:, 0] = 1
  hot[::2, 1] = 1
  out = mixup.mix({**batch, "label": hot}, jax.random.key(1), 1.0, NUM_CLASSES)
  labels = np.asarray(out["label"])
  np.testing.assert_allclose(labels[:, 0], 1.0, rtol=1e-6)  # in both
  lam = labels[0, 1]  # even rows hold class 1, odd rows take it from i - 1
  assert 0.5 <= lam <= 1.0
  np.testing.assert_allclose(labels[::2, 1], lam, rtol=1e-6)
  np.testing.assert_allclose(labels[1::2, 1], 1 - lam, rtol=1e-6)


def test_weight_is_a_function_of_seed_and_step():
  cfg = ml_collections.ConfigDict({"mixup_alpha": 0.2,
                                   "num_classes": NUM_CLASSES})
  mesh = sharding.make_mesh((("data", -1),))
  fn = mixup.make(cfg, 0, sharding.batch_sharding(mesh))
  batch = _batch()
  first = np.asarray(fn(batch, 5)["label"])
  np.testing.assert_array_equal(first, np.asarray(fn(batch, 5)["label"]))
  assert not np.array_equal(first, np.asarray(fn(batch, 6)["label"]))
  other_seed = mixup.make(cfg, 1, sharding.batch_sharding(mesh))
  assert not np.array_equal(first, np.asarray(other_seed(batch, 5)["label"]))
  for off in ({}, {"mixup_alpha": 0.0}):
    assert mixup.make(ml_collections.ConfigDict(off), 0,
                      sharding.batch_sharding(mesh)) is None


@pytest.mark.parametrize("alpha", [-1.0, "0.2", True])
def test_bad_alpha_is_a_one_line_error(alpha):
  with pytest.raises(ValueError, match="mixup_alpha must be a number >= 0"):
    mixup.validate(alpha)
  for good in (None, 0, 0.2):
    mixup.validate(good)


def test_training_stream_is_mixed_sharded_and_resumable(config_module):
  cfg = config_module("default").get_config("smoke").data
  cfg.mixup_alpha = 0.2
  pipeline.validate(cfg)
  mesh = sharding.make_mesh((("data", -1),))
  source = pipeline.open_source(cfg, cfg.train_split)

  def take(start, n):
    it = pipeline.train_batches(cfg, source, 32, 0, start,
                                sharding.batch_sharding(mesh))
    return [next(it) for _ in range(n)]

  full = take(0, 4)
  labels = np.asarray(full[0]["label"])
  assert labels.shape == (32, NUM_CLASSES)
  np.testing.assert_allclose(labels.sum(1), 1.0, rtol=1e-6)
  assert (labels.max(1) < 1).any()  # soft, not one-hot
  assert full[0]["image"].sharding.spec == jax.sharding.PartitionSpec("data")
  for a, b in zip(full[2:], take(2, 2)):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])
