"""The ordered-class-pair task on a tiny generated eval split: how the
composites are drawn, their features, and 1-NN / probe accuracy per prefix;
plus --mode=pairs's runner on an export laid out as export/embedding_writer.py writes it."""
import json
import os

import ml_collections
import numpy as np
import pytest

from mrl_jax import embedding_eval
from mrl_jax.evaluators import pair_task

NUM_CLASSES = 3
PER_CLASS = 8


def _labels():
  return np.repeat(np.arange(NUM_CLASSES), PER_CLASS)


def test_pairs_cover_every_ordered_pair_with_disjoint_sources():
  labels = _labels()
  pairs = pair_task.build_pairs(labels, NUM_CLASSES, database_per_pair=2,
                                queries_per_pair=3, seed=1)
  for side, per_pair in (("database", 2), ("queries", 3)):
    left, right, y = pairs[side]
    assert len(left) == len(right) == len(y) == NUM_CLASSES ** 2 * per_pair
    np.testing.assert_array_equal(y, NUM_CLASSES * labels[left]
                                  + labels[right])
    np.testing.assert_array_equal(np.bincount(y),
                                  np.full(NUM_CLASSES ** 2, per_pair))
    for p in range(NUM_CLASSES ** 2):  # each side drawn without replacement
      rows = y == p
      assert len(set(left[rows])) == len(set(right[rows])) == per_pair
  db_sources = set(pairs["database"][0]) | set(pairs["database"][1])
  q_sources = set(pairs["queries"][0]) | set(pairs["queries"][1])
  assert not db_sources & q_sources  # no query half is in the database


def test_pairs_are_deterministic_given_the_seed():
  labels = _labels()
  draw = lambda seed: pair_task.build_pairs(labels, NUM_CLASSES, 2, 2, seed)
  for a, b in zip(draw(0)["queries"], draw(0)["queries"]):
    np.testing.assert_array_equal(a, b)
  assert any(not np.array_equal(a, b)
             for a, b in zip(draw(0)["queries"], draw(1)["queries"]))


def test_bad_counts_name_the_setting():
  with pytest.raises(ValueError, match="queries_per_pair=5.*lower config"
                     ".pairs.queries_per_pair"):
    pair_task.build_pairs(_labels(), NUM_CLASSES, 2, 5)  # 4 sources a side
  with pytest.raises(ValueError, match="database_per_pair=0; set config"
                     ".pairs.database_per_pair"):
    pair_task.build_pairs(_labels(), NUM_CLASSES, 0, 2)


def test_composite_images_put_left_beside_right():
  images = np.arange(4 * 2 * 3 * 1).reshape(4, 2, 3, 1)
  out = pair_task.composite_images(images, np.array([0, 3]), np.array([1, 1]))
  assert out.shape == (2, 2, 6, 1)
  np.testing.assert_array_equal(out[1, :, :3], images[3])
  np.testing.assert_array_equal(out[1, :, 3:], images[1])


def test_pair_features_normalise_each_half_prefix():
  z = np.array([[3., 4., 9.], [0., 2., 7.]])
  got = pair_task.pair_features(z, np.array([0]), np.array([1]), dim=2)
  np.testing.assert_allclose(got, [[0.6, 0.8, 0., 1.]])


def _embeddings(labels, rng):
  """[N, 4]: dim 0 is the same for every image (a 1-dim prefix carries no
  class), dims 1-3 are a noisy one-hot of the class."""
  z = np.zeros((len(labels), 4), np.float32)
  z[:, 0] = 1.0
  z[np.arange(len(labels)), 1 + labels] = 5.0
  return z + 0.05 * rng.normal(size=z.shape).astype(np.float32)


def test_accuracy_follows_what_each_prefix_carries():
  labels = np.repeat(np.arange(NUM_CLASSES), 40)
  z = _embeddings(labels, np.random.default_rng(0))
  got = pair_task.evaluate(z, labels, (1, 4), NUM_CLASSES,
                           database_per_pair=10, queries_per_pair=5,
                           steps=50)
  assert (got["num_classes"], got["num_database"], got["num_queries"]) == (
      9, 90, 45)
  # 4 dims separate the 3 classes on each side, so all 9 pairs.
  assert got["pairs/knn_top1/d=4"] == got["pairs/linear_top1/d=4"] == 1.0
  # The constant 1-dim prefix leaves 9 classes at chance (1/9).
  assert got["pairs/knn_top1/d=1"] < 0.3
  assert got["pairs/linear_top1/d=1"] < 0.3


def _write_split(directory, embeddings, labels, nesting):
  """The layout export/embedding_writer.py writes: metadata.json plus npz shards."""
  os.makedirs(directory)
  with open(os.path.join(directory, "metadata.json"), "w") as f:
    json.dump({"model": "toy", "step": 7, "nesting": list(nesting),
               "dtype": "float16", "head": "mrl"}, f)
  np.savez(os.path.join(directory, "shard-p000-00000.npz"),
           embeddings=embeddings.astype(np.float16), labels=labels)


def test_pairs_mode_writes_its_summary(tmp_path):
  labels = np.repeat(np.arange(NUM_CLASSES), 40)
  z = _embeddings(labels, np.random.default_rng(0))
  config = ml_collections.ConfigDict({
      "data": {"name": "toy", "eval_split": "test", "num_classes": 3},
      "pairs": {"database_per_pair": 10, "queries_per_pair": 5,
                "steps": 50}})
  _write_split(tmp_path / "embeddings" / "toy" / "test", z, labels, (1, 4))
  got = embedding_eval.pairs(config, str(tmp_path))
  with open(tmp_path / "pairs_summary.json") as f:
    assert json.load(f) == got
  assert (got["step"], got["nesting"]) == (7, [1, 4])
  assert got["pairs/knn_top1/d=4"] == 1.0


def test_pairs_mode_rejects_bad_counts_before_reading(tmp_path):
  config = ml_collections.ConfigDict({
      "data": {"name": "toy", "eval_split": "test", "num_classes": 3},
      "pairs": {"queries_per_pair": 0}})
  with pytest.raises(ValueError, match="queries_per_pair=0"):
    embedding_eval.pairs(config, str(tmp_path))  # no export there at all
