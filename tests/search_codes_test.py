"""Quantised prefix codes (int8 / binary / bfloat16) as a shortlist, re-ranked
exactly."""
import jax.numpy as jnp
import numpy as np
import pytest

from mrl_jax import search
from mrl_jax.search import ann
from mrl_jax.search import codes

N, D, Q = 3000, 64, 30
DS, K, DR, KK = 16, 200, 64, 10

_RNG = np.random.default_rng(1)
_CENTRES = _RNG.standard_normal((40, D))
DB = (_CENTRES[_RNG.integers(0, 40, N)]
      + 0.6 * _RNG.standard_normal((N, D))).astype(np.float32)
QUERIES = (_CENTRES[_RNG.integers(0, 40, Q)]
           + 0.6 * _RNG.standard_normal((Q, D))).astype(np.float32)


@pytest.fixture(scope="module")
def index():
  return search.build_index(DB, normalize=True)


def _cosine(m):
  q, x = codes.normalized_prefix(QUERIES, m), codes.normalized_prefix(DB, m)
  return q @ x.T


def test_int8_scores_within_the_quantisation_bound():
  int8 = codes.build(DB, "int8", DS)
  assert int8.codes.dtype == np.int8 and int8.bytes_per_row == DS
  assert np.abs(int8.codes).max() == 127
  q = codes.normalized_prefix(QUERIES, DS)
  bound = (np.abs(q) * int8.scale).sum(axis=1, keepdims=True) / 2
  err = np.abs(int8.scores(QUERIES) - _cosine(DS))
  assert np.all(err <= bound + 1e-6)
  assert err.max() > 0  # the codes are lossy


def test_int8_shortlist_is_the_top_of_its_own_scores_and_close_to_exact(
    index):
  int8 = codes.build(DB, "int8", DS)
  got = int8.shortlist(QUERIES, K)
  want = np.argsort(-int8.scores(QUERIES), axis=1, kind="stable")[:, :K]
  np.testing.assert_array_equal(got, want)
  _, exact = search.adaptive_search(index, QUERIES, DS, K, DR, KK)
  _, ids = ann.shortlist_search(index, int8, QUERIES, K, [(DR, KK)])
  recall = np.mean([len(set(a) & set(b)) / KK
                    for a, b in zip(np.asarray(ids), np.asarray(exact))])
  assert recall > 0.95, recall


def test_binary_hamming_matches_a_bit_loop():
  binary = codes.build(DB, "binary", DS)
  assert binary.bits.shape == (N, 2) and binary.bytes_per_row == 2
  want = ((QUERIES[:, None, :DS] > 0) != (DB[None, :, :DS] > 0)).sum(2)
  np.testing.assert_array_equal(binary.hamming(QUERIES), want)
  odd = codes.build(DB, "binary", 12)  # 12 bits in 2 bytes, the rest zero
  want = ((QUERIES[:, None, :12] > 0) != (DB[None, :, :12] > 0)).sum(2)
  np.testing.assert_array_equal(odd.hamming(QUERIES), want)


def test_binary_shortlist_of_every_row_equals_exact_search(index):
  binary = codes.build(DB, "binary", DS)
  _, got = ann.shortlist_search(index, binary, QUERIES, N, [(DR, KK)])
  _, want = search.search(index, QUERIES, DR, KK)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def _bf16(x):
  """x rounded to bfloat16 (round to nearest even), as float32."""
  return np.asarray(x, np.float32).astype(jnp.bfloat16).astype(np.float32)


def test_bfloat16_shortlist_is_the_top_of_rounded_cosines(index):
  bf16 = codes.build(DB, "bfloat16", DS)
  assert bf16.bytes_per_row == 2 * DS and bf16.index.dtype == jnp.bfloat16
  # Independent reference: both sides rounded to bfloat16, float32 dot,
  # stable argsort (ties: lower id). Float64 products of bfloat16 values are
  # exact, so only the float32 summation order can differ: compare sets up
  # to a near-tie at the K-th place.
  ref = (_bf16(codes.normalized_prefix(QUERIES, DS)).astype(np.float64)
         @ _bf16(codes.normalized_prefix(DB, DS)).astype(np.float64).T)
  got = np.asarray(bf16.shortlist(QUERIES, K))
  want = np.argsort(-ref, axis=1, kind="stable")[:, :K]
  kth = np.take_along_axis(ref, want[:, -1:], 1)
  for g, w, r, t in zip(got, want, ref, kth):
    assert set(g) ^ set(w) <= set(np.flatnonzero(np.abs(r - t) < 1e-6))
  np.testing.assert_array_equal(got[:, :KK], want[:, :KK])
  err = np.abs(ref - _cosine(DS))
  assert 0 < err.max() <= 2.0**-7  # lossy, within the documented bound
  _, exact = search.adaptive_search(index, QUERIES, DS, K, DR, KK)
  _, ids = ann.shortlist_search(index, bf16, QUERIES, K, [(DR, KK)])
  np.testing.assert_array_equal(np.asarray(ids), np.asarray(exact))


def test_shortlist_spans_several_chunks(monkeypatch):
  monkeypatch.setattr(codes, "_CHUNK_ROWS", 700)
  int8 = codes.build(DB, "int8", DS)
  want = np.argsort(-int8.scores(QUERIES), axis=1, kind="stable")[:, :K]
  np.testing.assert_array_equal(int8.shortlist(QUERIES, K), want)


def test_bad_input():
  with pytest.raises(ValueError, match="D_s=65 is above the embeddings' dim "
                     "64"):
    codes.build(DB, "binary", 65)
  with pytest.raises(ValueError, match="unknown code kind 'int4'"):
    codes.build(DB, "int4", DS)
  with pytest.raises(ValueError, match="D_s=65 is above"):
    codes.build(DB, "bfloat16", 65)
  bf16 = codes.build(DB[:50], "bfloat16", DS)
  with pytest.raises(ValueError, match="shortlist K=51 must be in"):
    bf16.shortlist(QUERIES, 51)
  int8 = codes.build(DB[:50], "int8", DS)
  with pytest.raises(ValueError, match="shortlist K=51 must be in"):
    int8.shortlist(QUERIES, 51)
  with pytest.raises(ValueError, match=r"queries must be \[Q, >= 16\]"):
    int8.shortlist(QUERIES[:, :8], 5)
