"""Retrieval metrics: golden values, a per-query loop, per-dim names."""
import json
import os
import sys

import numpy as np
import pytest

from mrl_jax import errors
from mrl_jax import search
from mrl_jax.evaluators import retrieval

# Query 0 (label 1, R = 3): hits at ranks 1, 3, 4 of 5.
#   precision at hits: 1/1, 2/3, 3/4 -> sum 29/12.
#   standard AP@5 = (29/12) / min(5, 3) = 29/36; corrected = (29/12) / 5.
# Query 1 (label 2, R = 1): one hit at rank 2 -> sum 1/2.
#   standard AP@5 = 0.5 / 1; corrected = 0.5 / 5.
# Query 2 (label 3, R = 0 in the database): no hits, AP and recall 0.
QUERY_LABELS = np.array([1, 2, 3])
RETRIEVED = np.array([[1, 0, 1, 1, 2],
                      [0, 2, 0, 1, 1],
                      [0, 0, 1, 2, 1]])
CLASS_COUNTS = np.array([4, 3, 1, 0])


def test_golden_average_precision_both_variants():
  rel = retrieval.relevance(QUERY_LABELS, RETRIEVED)
  relevant = retrieval.num_relevant(QUERY_LABELS, CLASS_COUNTS)
  np.testing.assert_array_equal(relevant, [3, 1, 0])
  np.testing.assert_allclose(
      retrieval.average_precision_at_k(rel, relevant, 5), [29 / 36, 0.5, 0])
  np.testing.assert_allclose(
      retrieval.corrected_average_precision_at_k(rel, 5), [29 / 60, 0.1, 0])
  # With R >= k the standard AP divides by k too.
  np.testing.assert_allclose(
      retrieval.average_precision_at_k(rel, np.array([9, 9, 9]), 5),
      [29 / 60, 0.1, 0])
  # Cut-off 2: query 0 has one hit in 2 (P@1 = 1), query 1 has P@2 = 1/2.
  np.testing.assert_allclose(
      retrieval.average_precision_at_k(rel, relevant, 2), [1 / 2, 1 / 2, 0])


def test_golden_summary_standard_and_paper():
  std = retrieval.retrieval_metrics(QUERY_LABELS, RETRIEVED, CLASS_COUNTS,
                                    [5])
  want = {"top1": 1 / 3, "precision@5": (3 / 5 + 1 / 5) / 3,
          "hit@5": 2 / 3, "mAP@5": (29 / 36 + 0.5) / 3,
          "recall@5": (1 + 1) / 3}
  assert std.keys() == want.keys()
  for name, value in want.items():
    assert std[name] == pytest.approx(value), name
  paper = retrieval.retrieval_metrics(QUERY_LABELS, RETRIEVED, CLASS_COUNTS,
                                      [5], protocol="paper")
  assert set(paper) == {"top1", "precision@5", "hit@5", "corrected_mAP@5",
                        "paper_recall@5"}
  assert paper["corrected_mAP@5"] == pytest.approx((29 / 60 + 0.1) / 3)
  assert paper["paper_recall@5"] == pytest.approx((3 + 1) / 1300 / 3)
  assert paper["precision@5"] == std["precision@5"]


def _loop_metrics(query_labels, retrieved, counts, k):
  """Per-query loop straight from the definitions."""
  rows = []
  for label, ranked in zip(query_labels, retrieved):
    r = counts[label] if label < len(counts) else 0
    hits, ap_sum = 0, 0.0
    for rank, item in enumerate(ranked[:k], start=1):
      if item == label:
        hits += 1
        ap_sum += hits / rank
    rows.append({
        "top1": float(ranked[0] == label), "precision": hits / k,
        "hit": float(hits > 0), "recall": hits / r if r else 0.0,
        "ap": ap_sum / min(k, r) if r else 0.0, "cap": ap_sum / k,
        "paper_recall": hits / 1300})
  return {key: np.mean([row[key] for row in rows]) for key in rows[0]}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_cases_match_a_per_query_loop(seed):
  rng = np.random.default_rng(seed)
  counts = rng.integers(0, 12, 6)
  queries = rng.integers(0, 7, 40)  # label 6 is absent from the database
  retrieved = rng.integers(0, 6, (40, 25))
  std = retrieval.retrieval_metrics(queries, retrieved, counts, [1, 10, 25])
  paper = retrieval.retrieval_metrics(queries, retrieved, counts, [10, 25],
                                      protocol=retrieval.Protocol.PAPER)
  for k in (1, 10, 25):
    want = _loop_metrics(queries, retrieved, counts, k)
    assert std["top1"] == pytest.approx(want["top1"])
    assert std[f"precision@{k}"] == pytest.approx(want["precision"])
    assert std[f"hit@{k}"] == pytest.approx(want["hit"])
    assert std[f"recall@{k}"] == pytest.approx(want["recall"])
    assert std[f"mAP@{k}"] == pytest.approx(want["ap"])
    if k > 1:
      assert paper[f"corrected_mAP@{k}"] == pytest.approx(want["cap"])
      assert paper[f"paper_recall@{k}"] == pytest.approx(
          want["paper_recall"])


def test_k_beyond_retrieved_is_rejected():
  with pytest.raises(ValueError, match="k=6"):
    retrieval.retrieval_metrics(QUERY_LABELS, RETRIEVED, CLASS_COUNTS, [6])


# A labelled database: classes are clusters, so metrics are not trivial.
_RNG = np.random.default_rng(3)
DB_LABELS = _RNG.integers(0, 5, 150)
Q_LABELS = _RNG.integers(0, 5, 12)
CENTRES = _RNG.normal(size=(5, 32))
DB = (CENTRES[DB_LABELS] + 1.5 * _RNG.normal(size=(150, 32))).astype(
    np.float32)
QUERIES = (CENTRES[Q_LABELS] + 1.5 * _RNG.normal(size=(12, 32))).astype(
    np.float32)


def _numpy_neighbours(m, k):
  q = QUERIES[:, :m] / np.linalg.norm(QUERIES[:, :m], axis=1, keepdims=True)
  x = DB[:, :m] / np.linalg.norm(DB[:, :m], axis=1, keepdims=True)
  return np.argsort(-(q @ x.T), axis=1, kind="stable")[:, :k]


def test_evaluate_per_dim_names_and_values():
  index = search.build_index(DB, normalize=True)
  got = retrieval.evaluate_per_dim(index, QUERIES, Q_LABELS, DB_LABELS,
                                   dims=(8, 32), ks=(5, 10), chunk_rows=64)
  counts = np.bincount(DB_LABELS)
  for m in (8, 32):
    want = retrieval.retrieval_metrics(
        Q_LABELS, DB_LABELS[_numpy_neighbours(m, 10)], counts, (5, 10))
    for name, value in want.items():
      assert got[f"retrieval/{name}/d={m}"] == pytest.approx(value)
  assert len(got) == 2 * len(want)
  assert "retrieval/mAP@10/d=32" in got
  assert 0 < got["retrieval/mAP@10/d=32"] < 1


def test_adaptive_and_funnel_report_the_same_metrics():
  index = search.build_index(DB, normalize=True)
  counts = np.bincount(DB_LABELS)
  got = retrieval.evaluate_adaptive(index, QUERIES, Q_LABELS, DB_LABELS,
                                    [(8, 32)], shortlist_k=20, ks=(5,),
                                    protocol="paper")
  _, ids = search.adaptive_search(index, QUERIES, 8, 20, 32, 5)
  want = retrieval.retrieval_metrics(Q_LABELS, DB_LABELS[np.asarray(ids)],
                                     counts, (5,), protocol="paper")
  assert got == {f"retrieval/{n}/Ds=8,K=20,Dr=32": v for n, v in want.items()}
  stages = [(8, 20), (16, 10), (32, 5)]
  got = retrieval.evaluate_funnel(index, QUERIES, Q_LABELS, DB_LABELS,
                                  [stages], ks=(5,))
  _, ids = search.funnel_search(index, QUERIES, stages)
  want = retrieval.retrieval_metrics(Q_LABELS, DB_LABELS[np.asarray(ids)],
                                     counts, (5,))
  assert got == {f"retrieval/{n}/funnel=8:20,16:10,32:5": v
                 for n, v in want.items()}
  with pytest.raises(ValueError, match="ends with K=5"):
    retrieval.evaluate_funnel(index, QUERIES, Q_LABELS, DB_LABELS, [stages],
                              ks=(10,))


def test_both_protocols_is_the_union():
  both = retrieval.retrieval_metrics(QUERY_LABELS, RETRIEVED, CLASS_COUNTS,
                                     [5], protocol="both")
  std = retrieval.retrieval_metrics(QUERY_LABELS, RETRIEVED, CLASS_COUNTS,
                                    [5])
  paper = retrieval.retrieval_metrics(QUERY_LABELS, RETRIEVED, CLASS_COUNTS,
                                      [5], protocol="paper")
  assert both == {**std, **paper}
  # Query 1's class has 1 < k items: the official AP (divided by k) is lower.
  assert both["corrected_mAP@5"] < both["mAP@5"]


def _export(directory, embeddings, labels, step=3):
  os.makedirs(directory)
  np.savez(os.path.join(directory, "shard-p000-00000.npz"),
           embeddings=embeddings, labels=labels)
  with open(os.path.join(directory, "metadata.json"), "w") as f:
    json.dump({"model": "resnet18", "step": step, "dataset": "synthetic",
               "split": os.path.basename(directory), "nesting": [8, 16, 32],
               "arrays": ["embeddings", "labels"]}, f)


@pytest.fixture
def exported(tmp_path):
  """(train_dir, eval_dir) of a 600 x 32 clustered export, 40 queries."""
  rng = np.random.default_rng(5)
  centres = rng.normal(size=(6, 32))
  dirs = []
  for split, n in (("train", 600), ("test", 40)):
    labels = rng.integers(0, 6, n)
    emb = centres[labels] + 1.2 * rng.normal(size=(n, 32))
    dirs.append(str(tmp_path / split))
    _export(dirs[-1], emb.astype(np.float16), labels)
  return tuple(dirs)


def test_exported_exact_reports_both_protocols_and_adaptive(exported):
  got = retrieval.evaluate_exported(*exported, {"dim_shortlist": 8})
  assert got["nesting"] == [8, 16, 32] and got["step"] == 3
  assert got["shortlist"]["shortlist"] == "exact"
  for suffix in ("d=8", "d=32", "Ds=8,K=200,Dr=32"):
    for name in ("mAP@10", "corrected_mAP@10", "recall@100",
                 "paper_recall@100", "top1"):
      assert 0 <= got[f"retrieval/{name}/{suffix}"] <= 1, (name, suffix)
  db, db_labels, queries, q_labels, _ = (
      retrieval.embedding_files.load_database_and_queries(*exported))
  index = search.build_index(db, boundaries=(8, 16, 32), normalize=True)
  want = retrieval.evaluate_adaptive(
      index, queries.astype(np.float32), q_labels, db_labels, [(8, 32)], 200,
      retrieval.DEFAULTS["ks"], protocol="both")
  assert {k: got[k] for k in want} == want
  assert not any("coverage" in name for name in got)


def test_exported_hnsw_builds_saves_and_reuses_its_index(exported):
  train_dir, eval_dir = exported
  opts = {"shortlist": "hnsw", "dim_shortlist": 8, "ef_search": 400}
  got = retrieval.evaluate_exported(train_dir, eval_dir, opts)
  name = "hnsw,Ds=8,K=200,Dr=32"
  assert got[f"retrieval/shortlist_coverage/{name}"] > 0.95
  assert got[f"retrieval/agreement@100/{name}"] > 0.95
  assert f"retrieval/corrected_mAP@10/{name}" in got
  ann_dir = os.path.join(train_dir, "ann")
  assert sorted(os.listdir(ann_dir)) == ["hnsw-d8.faiss", "hnsw-d8.faiss.json"]
  again = retrieval.evaluate_exported(train_dir, eval_dir, opts)
  assert again == got
  with pytest.raises(ValueError, match="built with .* asks for {'m': 16}"):
    retrieval.evaluate_exported(train_dir, eval_dir, {**opts, "hnsw_m": 16})
  # A new export of another checkpoint: the saved index is stale.
  meta_path = os.path.join(train_dir, "metadata.json")
  with open(meta_path) as f:
    meta = json.load(f)
  for directory in exported:
    with open(os.path.join(directory, "metadata.json"), "w") as f:
      json.dump({**meta, "step": 9, "split": os.path.basename(directory)}, f)
  before = os.stat(os.path.join(ann_dir, "hnsw-d8.faiss")).st_mtime_ns
  with pytest.raises(ValueError, match=r"step 3 != 9\); delete it"):
    retrieval.evaluate_exported(train_dir, eval_dir, opts)
  assert os.stat(os.path.join(ann_dir, "hnsw-d8.faiss")).st_mtime_ns == before


@pytest.mark.parametrize("opts", [
    {"shortlist": "ivf", "ivf_nlist": 6, "ivf_nprobe": 6},
    {"codes": "binary"}, {"codes": "int8"}, {"codes": "bfloat16"}])
def test_exported_exhaustive_shortlists_cover_the_exact_one(exported, opts):
  got = retrieval.evaluate_exported(*exported, {"dim_shortlist": 16, **opts})
  kind = opts.get("codes", opts.get("shortlist"))
  name = f"{kind},Ds=16,K=200,Dr=32"
  coverage = got[f"retrieval/shortlist_coverage/{name}"]
  if kind == "ivf":  # every list scanned: the exact shortlist
    assert coverage == 1.0
    assert got[f"retrieval/mAP@10/{name}"] == got[
        "retrieval/mAP@10/Ds=16,K=200,Dr=32"]
  else:
    assert 0.5 < coverage <= 1.0, coverage
  assert os.path.exists(os.path.join(exported[0], "ann")) == (kind == "ivf")


@pytest.mark.parametrize("opts, match", [
    ({"shortlist": "lsh"}, "shortlist='lsh'; use one of"),
    ({"codes": "int4"}, "codes='int4'; use one of"),
    ({"shortlist": "hnsw", "codes": "int8"}, "set shortlist='exact'"),
    ({"k_shortlist": 50}, "k_shortlist=50 < k=100"),
    ({"shortlist": "hnsw", "ef_search": 100}, "ef_search=100 < k_shortlist=200"),
])
def test_bad_settings_fail_before_reading_the_export(tmp_path, opts, match):
  with pytest.raises(ValueError, match=match):
    retrieval.evaluate_exported(str(tmp_path / "no"), str(tmp_path / "no"),
                                opts)


def test_shortlist_dim_above_the_export_writes_nothing(exported):
  with pytest.raises(ValueError, match="prefix dim 64 is above the "
                     "embeddings' dim 32"):
    retrieval.evaluate_exported(*exported, {"shortlist": "hnsw",
                                            "dim_shortlist": 64})
  assert not os.path.exists(os.path.join(exported[0], "ann"))


def test_missing_faiss_names_the_extra(exported, monkeypatch):
  monkeypatch.setitem(sys.modules, "faiss", None)
  with pytest.raises(errors.RunError, match=r"pip install -e '\.\[ann\]'"):
    retrieval.evaluate_exported(*exported, {"shortlist": "ivf"})
  assert not os.path.exists(os.path.join(exported[0], "ann"))
  # The exact path needs no FAISS.
  assert "retrieval/mAP@10/d=8" in retrieval.evaluate_exported(*exported, {})
