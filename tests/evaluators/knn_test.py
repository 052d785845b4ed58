"""k-NN per nesting dim against brute-force numpy, per-prefix normalisation,
vote tie-breaking and the exported-split entry point."""
import json
import os

import numpy as np
import pytest

from mrl_jax.evaluators import knn

DIMS = (2, 4, 8, 16)
K = 5
# Block sizes that divide neither the 37 queries nor the 203 rows (the
# neighbour search itself is tested in tests/search_test.py).
BLOCKS = {"query_batch_size": 8, "chunk_rows": 5}


def _np_neighbours(database, queries, dim, k):
  """Brute force: per-prefix normalise, full L2 distances, stable argsort."""
  def unit(x):
    p = x[:, :dim].astype(np.float64)
    return p / np.linalg.norm(p, axis=1, keepdims=True)
  db, q = unit(database), unit(queries)
  dist = ((q[:, None, :] - db[None, :, :]) ** 2).sum(-1)  # [Q, N]
  return np.argsort(dist, axis=1, kind="stable")[:, :k]


def _np_vote(labels):
  """Majority vote over a row, ties to the class met first (nearest)."""
  out = []
  for row in labels:
    counts = {}
    for lab in row:
      counts[lab] = counts.get(lab, 0) + 1
    best = max(counts.values())
    out.append(next(lab for lab in row if counts[lab] == best))
  return np.asarray(out)


@pytest.fixture(name="data")
def fixture_data():
  rng = np.random.default_rng(0)
  database = rng.normal(size=(203, 16)).astype(np.float32)
  queries = rng.normal(size=(37, 16)).astype(np.float32)
  return (database, rng.integers(0, 4, 203), queries, rng.integers(0, 4, 37))


def test_evaluate_matches_brute_force_accuracy(data):
  database, db_labels, queries, q_labels = data
  got = knn.evaluate(database, db_labels, queries, q_labels, DIMS,
                     ks=(1, K), **BLOCKS)
  for dim in DIMS:
    ids = _np_neighbours(database, queries, dim, K)
    top1 = np.mean(db_labels[ids[:, 0]] == q_labels)
    vote5 = np.mean(_np_vote(db_labels[ids]) == q_labels)
    assert got[f"knn/top1/d={dim}"] == pytest.approx(top1)
    assert got[f"knn/vote5/d={dim}"] == pytest.approx(vote5)
  assert got["nesting"] == list(DIMS)
  assert (got["num_database"], got["num_queries"]) == (203, 37)


def test_prefix_normalised_separately():
  # Query and row a agree in the first 2 dims, but a's norm is dominated by
  # its third coordinate; row b is merely close to the query.
  queries = np.array([[1.0, 0.0, 0.0, 0.0]], np.float32)
  database = np.array([[1.0, 0.0, 10.0, 0.0],   # a, class 0
                       [0.9, 0.5, 0.0, 0.0]],   # b, class 1
                      np.float32)
  labels = np.array([0, 1])
  # a's 2-d prefix points exactly at the query. Normalising the full vectors before slicing would have picked b.
  full = database / np.linalg.norm(database, axis=1, keepdims=True)
  assert np.argmin(((full[:, :2] - queries[:, :2]) ** 2).sum(1)) == 1
  assert np.argmax(full[:, :2] @ queries[0, :2]) == 1
  got = knn.evaluate(database, labels, queries, np.array([0]), (2, 4),
                     ks=(1,))
  assert (got["knn/top1/d=2"], got["knn/top1/d=4"]) == (1.0, 0.0)


def test_majority_vote_ties_go_to_nearest():
  labels = np.array([[2, 1, 1, 2],    # 2-2 tie: 2 holds the nearest
                     [3, 1, 1, 2],    # clear majority: 1
                     [3, 1, 2, 0],    # all tied: the 1-NN class
                     [5, 4, 4, 5]])   # tie again, nearest first
  np.testing.assert_array_equal(knn.majority_vote(labels), [2, 1, 3, 5])
  np.testing.assert_array_equal(knn.majority_vote(labels, chunk=3),
                                [2, 1, 3, 5])
  np.testing.assert_array_equal(knn.majority_vote(labels[:, :1]),
                                labels[:, 0])


def test_tied_scores_prefer_the_lower_index():
  # Rows 0, 2 and 3 have the same 2-d direction as the query: the vote over
  # 3 neighbours then sees classes 0, 2, 3 in id order (1-NN = row 0).
  database = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [2.0, 0.0]],
                      np.float32)
  got = knn.evaluate(database, np.array([5, 1, 6, 7]), database[:1],
                     np.array([5]), (2,), ks=(1, 3))
  assert got["knn/top1/d=2"] == 1.0 and got["knn/vote3/d=2"] == 1.0


def test_bad_inputs():
  x = np.ones((3, 4), np.float32)
  with pytest.raises(ValueError):
    knn.evaluate(x, np.ones((3, 2)), x, np.zeros(3), (2,))  # multi-hot
  with pytest.raises(ValueError):
    knn.evaluate(x, np.zeros(3), x, np.zeros(3), (8,))  # dim > d


def _write_split(directory, embeddings, labels, nesting, step=7):
  """The layout export/embedding_writer.py writes: metadata.json plus npz shards."""
  os.makedirs(directory)
  with open(os.path.join(directory, "metadata.json"), "w") as f:
    json.dump({"model": "toy", "step": step, "nesting": list(nesting),
               "dtype": "float16"}, f)
  half = len(embeddings) // 2
  for i, part in enumerate((slice(0, half), slice(half, None))):
    np.savez(os.path.join(directory, f"shard-p000-{i:05d}.npz"),
             embeddings=embeddings[part].astype(np.float16),
             labels=labels[part])


def test_evaluate_exported(tmp_path, data):
  database, db_labels, queries, q_labels = data
  nesting = (4, 16)
  _write_split(tmp_path / "train", database, db_labels, nesting)
  _write_split(tmp_path / "val", queries, q_labels, nesting)
  got = knn.evaluate_exported(str(tmp_path / "train"), str(tmp_path / "val"),
                              ks=(1, K), **BLOCKS)
  want = knn.evaluate(database.astype(np.float16), db_labels,
                      queries.astype(np.float16), q_labels, nesting,
                      ks=(1, K), **BLOCKS)
  assert {k: v for k, v in got.items() if k not in ("model", "step")} == want
  assert set(got) >= {"knn/top1/d=4", "knn/vote5/d=4", "knn/top1/d=16",
                      "knn/vote5/d=16"}
  assert (got["model"], got["step"]) == ("toy", 7)
  _write_split(tmp_path / "other", queries, q_labels, nesting, step=8)
  with pytest.raises(ValueError):
    knn.evaluate_exported(str(tmp_path / "train"), str(tmp_path / "other"))
