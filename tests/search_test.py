"""Exact prefix search against numpy brute force (stable argsort ties)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mrl_jax import search
from mrl_jax.search import index as index_lib
from mrl_jax.search import plan as plan_lib
from mrl_jax.search import scan
from mrl_jax import sharding

N, D, Q = 203, 64, 6  # 203 = 7 x 29; 8 shards of 26 rows (5 padding rows).
MESH1 = sharding.make_mesh([("data", 1)], jax.devices()[:1])
MESH8 = sharding.make_mesh([("data", -1)])
MESHES = {"1dev": MESH1, "8dev": MESH8}

_RNG = np.random.default_rng(0)
# Small integers: every dot product is exact in float32 and bfloat16 and
# many scores tie, so ids must match numpy exactly, tie order included.
INT_DB = _RNG.integers(-2, 3, (N, D)).astype(np.float32)
INT_Q = _RNG.integers(-2, 3, (Q, D)).astype(np.float32)
# Gaussian data for cosine, where rounding differs from numpy in the last
# bits: tests assert the reference has no near-ties, then exact ids.
GAUSS_DB = _RNG.normal(size=(N, D)).astype(np.float32)
GAUSS_Q = _RNG.normal(size=(Q, D)).astype(np.float32)


def _prefix_scores(q, db, m, normalize):
  """[Q, N] float64 reference scores at prefix m."""
  q, db = q[:, :m].astype(np.float64), db[:, :m].astype(np.float64)
  if normalize:
    q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    db = db / np.maximum(np.linalg.norm(db, axis=1, keepdims=True), 1e-12)
  return q @ db.T


def _brute(q, db, m, k, normalize=False):
  s = _prefix_scores(q, db, m, normalize)
  ids = np.argsort(-s, axis=1, kind="stable")[:, :k]
  return np.take_along_axis(s, ids, 1), ids


def _rank_by_id(scores, ids, k):
  """Reference re-rank order: score desc, then id asc."""
  order = np.lexsort((ids, -scores), axis=1)[:, :k]
  return (np.take_along_axis(scores, order, 1),
          np.take_along_axis(ids, order, 1))


def _assert_equal(got, want, exact=True):
  got_s, got_i = (np.asarray(x) for x in got)
  want_s, want_i = want
  assert got_i.dtype == np.int32 and got_s.dtype == np.float32
  np.testing.assert_array_equal(got_i, want_i)
  if exact:
    np.testing.assert_array_equal(got_s, want_s)
  else:
    np.testing.assert_allclose(got_s, want_s, rtol=0, atol=2e-6)


def _assert_no_near_ties(scores, k, gap=1e-6):
  """The first k+1 reference scores are separated (so ids are defined)."""
  s = np.sort(scores, axis=1)[:, ::-1][:, :k + 1]
  assert np.diff(-s, axis=1).min() > gap


# (m, chunk_rows, k): block-aligned and not, chunks that divide the rows per
# device (26 for 8 shards, 203 for one) and that do not, k above the chunk;
# on one device the last four take a group-max prefilter (two passes, or per
# chunk for (64, 96, 3)), with many tied maxima.
CASES = [(8, 16, 10), (16, 7, 40), (24, 13, 5), (64, 64, 50), (5, 29, 3),
         (4, 96, 3), (8, 128, 1), (3, 64, 2), (64, 96, 3), (40, 13, 5)]


@pytest.mark.parametrize("mesh", MESHES)
@pytest.mark.parametrize("m,chunk,k", CASES)
def test_search_equals_numpy_with_ties(mesh, m, chunk, k):
  index = search.build_index(INT_DB, mesh=MESHES[mesh])
  got = search.search(index, INT_Q, m, k, chunk_rows=chunk)
  _assert_equal(got, _brute(INT_Q, INT_DB, m, k))


@pytest.mark.parametrize("mesh", MESHES)
@pytest.mark.parametrize("m,chunk,k", [(24, 13, 5), (64, 7, 40), (6, 64, 2),
                                       (48, 64, 3)])
def test_normalized_search_equals_numpy(mesh, m, chunk, k):
  index = search.build_index(GAUSS_DB, normalize=True, mesh=MESHES[mesh])
  want = _brute(GAUSS_Q, GAUSS_DB, m, k, normalize=True)
  _assert_no_near_ties(_prefix_scores(GAUSS_Q, GAUSS_DB, m, True), k)
  _assert_equal(search.search(index, GAUSS_Q, m, k, chunk_rows=chunk), want,
                exact=False)


@pytest.mark.parametrize("mesh,normalize,m,k", [
    ("8dev", False, 24, 40), ("1dev", False, 16, 7), ("8dev", True, 32, 10)])
def test_host_index_streams_equal_numpy(mesh, normalize, m, k):
  db, q = (GAUSS_DB, GAUSS_Q) if normalize else (INT_DB, INT_Q)
  index = search.build_index(db, normalize=normalize, mesh=MESHES[mesh],
                             on_device=False)
  assert isinstance(index.blocks[0], np.ndarray)
  # 203 rows in host chunks of 72 (the last one padded); 9 rows per device.
  got = search.search(index, q, m, k, chunk_rows=4, host_chunk_rows=70)
  _assert_equal(got, _brute(q, db, m, k, normalize), exact=not normalize)


@pytest.mark.parametrize("mesh", sorted(MESHES))  # 1 device: no final merge
def test_equal_scores_go_to_the_lower_id(mesh):
  db = np.tile(INT_DB[:3], (40, 1))  # rows i and i + 3 are equal.
  index = search.build_index(db, mesh=MESHES[mesh])
  want = _brute(INT_Q, db, 16, 30)
  # 30 winners among 3 distinct scores: every merge decides ties.
  assert max(len(np.unique(row)) for row in want[0]) <= 3
  _assert_equal(search.search(index, INT_Q, 16, 30, chunk_rows=4), want)


def test_an_xla_option_this_jaxlib_lacks_is_dropped_not_fatal():
  # pylint: disable-next=protected-access
  assert not scan._xla_accepts((("xla_cpu_no_such_option", "1"),))


def test_only_wide_cpu_scans_leave_the_epilogue_to_xla():
  """More than 64 columns read: matmul alone to YNNPACK; a narrow scan keeps
  the fused group max, also when it reads a <= 64-d index's whole array."""
  # pylint: disable=protected-access
  wide = search.build_index(np.zeros((8, 128), np.float32), mesh=MESH1)
  narrow = search.build_index(np.zeros((8, 64), np.float32), mesh=MESH1)
  plan = lambda index, m: plan_lib.make_plan(index, m, np.zeros((1, m)))
  assert plan(narrow, 64).whole and plan(wide, 128).whole
  assert scan._scan_options(MESH1, plan(narrow, 64)) is None
  assert scan._scan_options(MESH1, plan(wide, 32)) is None
  assert scan._scan_options(MESH1, plan(wide, 65)) == dict(
      scan._WIDE_SCAN_OPTIONS)


def test_default_chunk_rows_are_the_cpu_values_on_cpu():
  """The cache-sized CPU chunks; accelerators get their own (16384)."""
  index = search.build_index(INT_DB, mesh=MESH1)
  assert search.default_chunk_rows(index, 64, 1000) == 1024
  assert search.default_chunk_rows(index, 64, 4096) == 1024
  assert search.default_chunk_rows(index, 64, 100) == 8192
  assert search.default_chunk_rows(index, 64, 1) == 65536
  assert search.default_chunk_rows(index, 65, 1) == 8192


@pytest.mark.parametrize("width", [1, 64])  # two passes; chunk prefilter
def test_group_prefilter_keeps_ties_in_id_order(width):
  # 64 rows in 8 groups of 8 (k = 2). Group 1 holds the best score (id 9)
  # and a 5 at id 10; group 0 holds a 5 at id 0, so the second place goes to
  # id 0 although group 1's maximum ranks first.
  db = np.zeros((64, width), np.float32)
  db[:, 0] = -1.0
  db[[0, 9, 10], 0] = 5.0, 9.0, 5.0
  index = search.build_index(db, mesh=MESH1)
  got = search.search(index, np.ones((1, width), np.float32), width, 2,
                      chunk_rows=64)
  _assert_equal(got, (np.array([[9.0, 5.0]], np.float32), np.array([[9, 0]])))


@pytest.mark.parametrize("on_device", [True, False])
def test_padding_rows_never_match_when_every_score_is_negative(on_device):
  # 315 rows on 8 devices: 40 per device, the last 5 are zero padding, which
  # would score 0 and beat every real (negative) score if not masked. 40 rows
  # in groups of 8 at m = 4, k = 1: the two-pass scan.
  db = -np.abs(np.tile(INT_DB, (2, 1))[:315]) - 1  # every entry <= -1
  db[283, :4] = -0.5  # the best row, on the padded device, not in the
  # padding's group: an unmasked padding group would take its place.
  q = np.abs(INT_Q) + 1
  index = search.build_index(db, mesh=MESH8, on_device=on_device)
  got = search.search(index, q, 4, 1, chunk_rows=16, host_chunk_rows=320)
  want = _brute(q, db, 4, 1)
  assert (want[0] < 0).all()
  _assert_equal(got, want)


def test_bfloat16_storage_exact_on_small_integers():
  index = search.build_index(INT_DB, dtype=jnp.bfloat16, mesh=MESH8)
  assert index.dtype == jnp.bfloat16
  _assert_equal(search.search(index, INT_Q, 24, 20, chunk_rows=16),
                _brute(INT_Q, INT_DB, 24, 20))


def test_bfloat16_normalized_close_to_float64():
  index = search.build_index(GAUSS_DB, dtype=jnp.bfloat16, normalize=True,
                             mesh=MESH8)
  s, ids = (np.asarray(x) for x in search.search(index, GAUSS_Q, 32, 10))
  want_s, _ = _brute(GAUSS_Q, GAUSS_DB, 32, 10, normalize=True)
  ref = _prefix_scores(GAUSS_Q, GAUSS_DB, 32, True)
  np.testing.assert_allclose(s, want_s, atol=2e-2)
  np.testing.assert_allclose(np.take_along_axis(ref, ids, 1), want_s,
                             atol=2e-2)


def test_query_batches_equal_one_batch():
  index = search.build_index(INT_DB, mesh=MESH8)
  _assert_equal(search.search(index, INT_Q, 16, 7, query_batch_size=4),
                _brute(INT_Q, INT_DB, 16, 7))


def test_index_layout_and_prefix_norms():
  index = search.build_index(GAUSS_DB, normalize=True, mesh=MESH8)
  assert index.boundaries == (8, 16, 32, 64)
  # Low column blocks up to 32 (< d = 64), then the whole array.
  assert index.spans == ((0, 8), (8, 16), (16, 32), (0, 64))
  assert [b.shape for b in index.blocks] == [(208, 8), (208, 8), (208, 16),
                                             (208, 64)]
  np.testing.assert_array_equal(np.asarray(index.blocks[2])[:N],
                                GAUSS_DB[:, 16:32])
  np.testing.assert_array_equal(np.asarray(index.blocks[3])[:N], GAUSS_DB)
  want = np.stack([np.linalg.norm(GAUSS_DB[:, :e], axis=1)
                   for e in index.boundaries], 1)
  np.testing.assert_allclose(index.prefix_norms(), want, rtol=1e-6)
  custom = search.build_index(INT_DB, boundaries=(4, 10), on_device=False)
  assert custom.boundaries == (4, 10, 64) and custom.blocks[1].shape == (N, 6)
  _assert_equal(search.search(custom, INT_Q, 12, 9, chunk_rows=50),
                _brute(INT_Q, INT_DB, 12, 9))


@pytest.mark.parametrize("dim,block_ids,widths", [
    (5, (0,), (5,)), (16, (0, 1), (8, 8)), (20, (0, 1, 2), (8, 8, 4)),
    (32, (0, 1, 2), (8, 8, 16)), (33, (3,), (33,)), (64, (3,), (64,))])
def test_low_prefixes_read_only_their_column_blocks(dim, block_ids, widths):
  index = search.build_index(INT_DB, mesh=MESH1)
  plan = plan_lib.make_plan(index, dim, INT_Q)
  assert (plan.block_ids, plan.widths) == (block_ids, widths)


def test_large_index_is_written_in_row_chunks(monkeypatch):
  # Shards bigger than one host chunk are filled in place chunk by chunk.
  monkeypatch.setattr(index_lib, "_BUILD_ROWS", 10)
  index = search.build_index(GAUSS_DB, normalize=True, mesh=MESH8)
  np.testing.assert_array_equal(np.asarray(index.blocks[-1])[:N], GAUSS_DB)
  assert not np.asarray(index.blocks[-1])[N:].any()
  want = np.linalg.norm(GAUSS_DB[:, :16], axis=1)
  np.testing.assert_allclose(index.prefix_norms()[:, 1], want, rtol=1e-6)
  _assert_equal(search.search(index, GAUSS_Q, 40, 5),
                _brute(GAUSS_Q, GAUSS_DB, 40, 5, True), exact=False)


def _ref_rerank(q, db, cand, m, k, normalize=False):
  s = _prefix_scores(q, db, m, normalize)
  scores = np.take_along_axis(s, np.clip(cand, 0, len(db) - 1), 1)
  scores = np.where((cand >= 0) & (cand < len(db)), scores, -np.inf)
  return _rank_by_id(scores, cand, k)


@pytest.mark.parametrize("on_device", [True, False])
def test_rerank_equals_numpy(on_device):
  index = search.build_index(INT_DB, mesh=MESH8, on_device=on_device)
  cand = np.stack([_RNG.permutation(N)[:30] for _ in range(Q)]).astype(
      np.int32)
  cand[:, -2] = -1  # padding ids never win
  _assert_equal(search.rerank(index, INT_Q, cand, 40, 12),
                _ref_rerank(INT_Q, INT_DB, cand, 40, 12))


def _ref_funnel(q, db, stages, normalize):
  scores, ids = _brute(q, db, *stages[0], normalize)
  for m, k in stages[1:]:
    scores, ids = _ref_rerank(q, db, ids, m, k, normalize)
  return scores, ids


@pytest.mark.parametrize("mesh", MESHES)
def test_adaptive_search_equals_numpy(mesh):
  index = search.build_index(INT_DB, mesh=MESHES[mesh])
  got = search.adaptive_search(index, INT_Q, 8, 40, 64, 10, chunk_rows=16)
  _assert_equal(got, _ref_funnel(INT_Q, INT_DB, [(8, 40), (64, 10)], False))


@pytest.mark.parametrize("on_device", [True, False])
def test_funnel_search_equals_numpy(on_device):
  stages = [(8, 40), (24, 20), (64, 5)]
  index = search.build_index(GAUSS_DB, normalize=True, mesh=MESH8,
                             on_device=on_device)
  for m, k in stages:
    _assert_no_near_ties(_prefix_scores(GAUSS_Q, GAUSS_DB, m, True), k)
  _assert_equal(search.funnel_search(index, GAUSS_Q, stages, chunk_rows=16),
                _ref_funnel(GAUSS_Q, GAUSS_DB, stages, True), exact=False)


def test_bad_arguments_are_rejected():
  index = search.build_index(INT_DB[:10], on_device=False)
  with pytest.raises(ValueError, match="prefix dim"):
    search.search(index, INT_Q, 65, 3)
  with pytest.raises(ValueError, match="k=11"):
    search.search(index, INT_Q, 8, 11)
  with pytest.raises(ValueError, match="must not increase"):
    search.funnel_search(index, INT_Q, [(8, 3), (16, 5)])
  with pytest.raises(ValueError, match="float32 or bfloat16"):
    search.build_index(INT_DB, dtype=np.float16)
  with pytest.raises(ValueError, match="contiguous_dim=-1 must be >= 0"):
    search.build_index(INT_DB, contiguous_dim=-1)


def test_index_without_column_blocks_reads_the_whole_array():
  index = search.build_index(INT_DB, contiguous_dim=0, mesh=MESH8)
  assert index.spans == ((0, 64),)
  _assert_equal(search.search(index, INT_Q, 12, 9, chunk_rows=16),
                _brute(INT_Q, INT_DB, 12, 9))


@pytest.mark.parametrize("dim", [16, 40, 96])
def test_two_pass_scans_with_either_compiler_split_are_exact(dim):
  # Wide scans (96) and low-dim scans compile with different XLA:CPU options
  # (experiments/bench/cpu_fusion_check.py checks which); both are exact.
  # 16240 x 128 rows, k = 10, 1024-row chunks: the two-pass scan.
  db, q = np.tile(INT_DB, (80, 2)), np.tile(INT_Q, (1, 2))
  index = search.build_index(db, mesh=MESH1)
  plan = plan_lib.make_plan(index, dim, q)
  # pylint: disable-next=protected-access
  assert (scan._scan_options(MESH1, plan) is None) == (dim <= 64)
  fn = scan._device_search_fn(MESH1, "data", plan, 10, 1024)
  blocks, norm = scan._used(index, plan)
  _assert_equal(fn(q, blocks, norm, jnp.int32(len(db))),
                _brute(q, db, dim, 10))
