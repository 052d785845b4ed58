"""ANN shortlists (FAISS HNSW / IVF on a prefix) + exact re-rank vs exact
adaptive retrieval on clustered synthetic data."""
import os
import sys

import numpy as np
import pytest

from mrl_jax import errors
from mrl_jax import search
from mrl_jax.search import ann

N, D, Q = 5000, 64, 40
DS, K, DR, KK = 16, 100, 64, 10


def _clustered(rng, n, centres):
  labels = rng.integers(0, len(centres), n)
  # Variance falls with the dim, as in MRL embeddings.
  scale = np.linspace(1.0, 0.2, centres.shape[1])
  return (centres[labels] + 0.7 * scale * rng.standard_normal(
      (n, centres.shape[1]))).astype(np.float32)


_RNG = np.random.default_rng(0)
_CENTRES = _RNG.standard_normal((50, D))
DB = _clustered(_RNG, N, _CENTRES)
QUERIES = _clustered(_RNG, Q, _CENTRES)
META = {"model": "resnet18", "step": 7, "dataset": "synthetic",
        "split": "train", "nesting": [8, 16, 32, 64]}


@pytest.fixture(scope="module")
def index():
  return search.build_index(DB, normalize=True)


@pytest.fixture(scope="module")
def exact(index):
  """Exact shortlist ids [Q, K] and exact adaptive ids [Q, k]."""
  _, shortlist = search.search(index, QUERIES, DS, K)
  _, ids = search.adaptive_search(index, QUERIES, DS, K, DR, KK)
  return np.asarray(shortlist), np.asarray(ids)


def _recall(got, want):
  return np.mean([len(set(g) & set(w)) / len(w) for g, w in zip(got, want)])


def test_hnsw_with_a_wide_search_equals_exact_adaptive(index, exact):
  hnsw = ann.build(DB, "hnsw", DS, m=16, ef_construction=80)
  shortlist = hnsw.shortlist(QUERIES, K, ef_search=1000)
  assert _recall(shortlist, exact[0]) == 1.0
  _, ids = ann.shortlist_search(index, hnsw, QUERIES, K, [(DR, KK)],
                                ef_search=1000)
  np.testing.assert_array_equal(np.asarray(ids), exact[1])


def test_hnsw_at_the_minimum_ef_search_is_approximate_but_close(exact):
  hnsw = ann.build(DB, "hnsw", DS, m=8, ef_construction=40)
  recall = _recall(hnsw.shortlist(QUERIES, K, ef_search=K), exact[0])
  assert 0.8 < recall <= 1.0, recall


def test_ivf_scanning_every_list_equals_the_exact_shortlist(index, exact):
  ivf = ann.build(DB, "ivf", DS, nlist=20, nprobe=2)
  shortlist = ivf.shortlist(QUERIES, K, nprobe=20)
  for got, want in zip(shortlist, exact[0]):
    assert set(got) == set(want)
  _, ids = ann.shortlist_search(index, ivf, QUERIES, K, [(DR, KK)], nprobe=20)
  np.testing.assert_array_equal(np.asarray(ids), exact[1])
  # Fewer lists scanned: approximate, and no better than all of them.
  assert _recall(ivf.shortlist(QUERIES, K, nprobe=1), exact[0]) < 1.0


def test_ivf_pq_shortlist_recall(index, exact):
  ivfpq = ann.build(DB, "ivf", DS, nlist=8, nprobe=8, pq_m=8, pq_bits=6)
  _, ids = ann.shortlist_search(index, ivfpq, QUERIES, K, [(DR, KK)])
  recall = _recall(np.asarray(ids), exact[1])
  assert 0.8 < recall <= 1.0, recall


def test_funnel_on_an_ann_shortlist_equals_the_exact_funnel(index):
  ivf = ann.build(DB, "ivf", DS, nlist=10, nprobe=10)
  stages = [(32, 50), (DR, KK)]
  _, got = ann.shortlist_search(index, ivf, QUERIES, K, stages)
  _, want = search.funnel_search(index, QUERIES, [(DS, K)] + stages)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_save_load_round_trip_and_provenance(tmp_path, index):
  built = ann.build(DB, "hnsw", DS, m=8, metadata=META)
  path = ann.save(built, str(tmp_path))
  assert path == os.path.join(tmp_path, "hnsw-d16.faiss")
  assert sorted(os.listdir(tmp_path)) == ["hnsw-d16.faiss",
                                          "hnsw-d16.faiss.json"]
  loaded = ann.load(path, ann.provenance(N, D, META))
  assert (loaded.kind, loaded.dim, loaded.params) == (
      "hnsw", DS, {"m": 8, "ef_construction": 40})
  np.testing.assert_array_equal(loaded.shortlist(QUERIES, K, ef_search=200),
                                built.shortlist(QUERIES, K, ef_search=200))
  with pytest.raises(ValueError, match=r"other embeddings \(step 7 != 8\); "
                     "delete it"):
    ann.load(path, ann.provenance(N, D, {**META, "step": 8}))
  with pytest.raises(ValueError, match="num_rows 5000 != 4999"):
    ann.load(path, ann.provenance(N - 1, D, META))
  with pytest.raises(ValueError, match="embedding_dim 64 != 128"):
    ann.load(path, ann.provenance(N, 128, META))
  with pytest.raises(errors.RunError, match="cannot read the ANN index"):
    ann.load(str(tmp_path / "ivf-d16.faiss"), ann.provenance(N, D, META))


def test_shortlist_of_other_rows_is_rejected(index):
  small = ann.build(DB[:100], "hnsw", DS, m=8)
  with pytest.raises(ValueError, match="100 rows, the database 5000"):
    ann.shortlist_search(index, small, QUERIES, 50, [(DR, KK)])


def test_bad_input_is_one_line_before_any_work(index, tmp_path):
  hnsw = ann.build(DB[:500], "hnsw", DS, m=8)
  with pytest.raises(ValueError, match="ef_search=50 < shortlist K=100"):
    hnsw.shortlist(QUERIES, K, ef_search=50)
  with pytest.raises(ValueError, match=r"K=5 and re-rank sizes \[10\] must "
                     "not increase"):
    ann.shortlist_search(index, hnsw, QUERIES, 5, [(DR, 10)])
  with pytest.raises(ValueError, match="D_s=65 is above the embeddings' dim "
                     "64"):
    ann.build(DB, "hnsw", 65)
  with pytest.raises(ValueError, match="prefix dim 128 is above"):
    ann.check_stages(K, [(128, KK)], DS, D)
  with pytest.raises(ValueError, match="unknown ANN kind 'lsh'"):
    ann.build(DB, "lsh", DS)
  with pytest.raises(ValueError, match="pq_m=5 must divide D_s=16"):
    ann.build(DB, "ivf", DS, pq_m=5)
  with pytest.raises(ValueError, match="nprobe=30 must be in"):
    ann.build(DB[:500], "ivf", DS, nlist=10, nprobe=2).shortlist(QUERIES, K, nprobe=30)


def test_missing_faiss_names_the_extra(monkeypatch, tmp_path):
  monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss fails
  with pytest.raises(errors.RunError, match=r"pip install -e '\.\[ann\]'"):
    ann.build(DB, "hnsw", DS)
  assert not os.listdir(tmp_path)
