"""Quantised codes of the D_s prefix: a compact, exhaustive first stage.

Each row's D_s prefix is L2-normalised (per prefix, as the MRL protocol
does) and stored as
* int8: per-dimension symmetric scale, x_j ~ scale_j * c_j with
  scale_j = max_i |x_ij| / 127 and c_j in [-127, 127]; a query scores
  (q * scale) . c (the query stays float), within
  sum_j |q_j| scale_j / 2 of the float cosine. D_s bytes per row.
* binary: the sign bit of every dimension, packed; a query scores minus the
  Hamming distance between its sign bits and the row's. D_s / 8 bytes per
  row (the float32 prefix takes 4 D_s).
* bfloat16: the normalised prefix rounded to bfloat16 (8 significant bits);
  a query scores its own normalised prefix, rounded alike, against it with
  float32 accumulation: the cosine to within 2^-7 (Cauchy-Schwarz; about
  1e-3 in practice). 2 D_s bytes per row.
Every row is scanned (no graph, no lists), K best kept; the exact engine
then re-ranks them in float (`ann.shortlist_search`, which takes these as a
shortlister). Ties within the shortlist are broken arbitrarily; the re-rank
orders the survivors exactly.

int8 and binary are scanned in numpy (a chunked matmul, or XOR + popcount,
with a running top-K). bfloat16 codes are a `PrefixIndex` scanned by the
exact engine (`mrl_jax.search.search`: device-resident, sharded, the
two-pass top-K): its matmul runs at about twice the float32 rate where the
hardware multiplies bfloat16 natively (accelerators; CPUs with AVX512_BF16
or AMX), which is what the kind is for (experiments/bench/README.md).
"""
import dataclasses
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import numpy as np

from mrl_jax.search.index import Array, PrefixIndex, build_index

KINDS = ("int8", "binary", "bfloat16")
# Rows scored per step: bounds the [Q, C] score chunk (64 MB at Q = 1,000).
_CHUNK_ROWS = 1 << 14


@dataclasses.dataclass(frozen=True)
class Int8Codes:
  """int8 codes [N, D_s] of the normalised prefix and scales [D_s]."""
  codes: np.ndarray
  scale: np.ndarray

  @property
  def dim(self) -> int:
    return self.codes.shape[1]

  @property
  def num_rows(self) -> int:
    return self.codes.shape[0]

  @property
  def bytes_per_row(self) -> int:
    return self.dim

  def scores(self, queries: Any, r0: int = 0, r1: int | None = None
             ) -> np.ndarray:
    """[Q, r1 - r0] approximate cosines of queries [Q, >= D_s] to rows."""
    q = normalized_prefix(queries, self.dim) * self.scale
    return q @ self.codes[r0:r1].astype(np.float32).T

  def shortlist(self, queries: Any, k: int) -> np.ndarray:
    """[Q, K] ids of the best approximate cosines, best first."""
    _check(queries, k, self.dim, self.num_rows)
    return _top_k(lambda r0, r1: self.scores(queries, r0, r1),
                  self.num_rows, len(queries), k)


@dataclasses.dataclass(frozen=True)
class BinaryCodes:
  """Packed sign bits [N, ceil(D_s / 8)] (uint8) of the prefix."""
  bits: np.ndarray
  dim: int

  @property
  def num_rows(self) -> int:
    return self.bits.shape[0]

  @property
  def bytes_per_row(self) -> int:
    return self.bits.shape[1]

  def hamming(self, queries: Any, r0: int = 0, r1: int | None = None
              ) -> np.ndarray:
    """[Q, r1 - r0] Hamming distances of the queries' sign bits to rows'."""
    q = _words(sign_bits(queries, self.dim))
    rows = _words(self.bits[r0:r1])
    return np.bitwise_count(q[:, None, :] ^ rows[None]).sum(
        axis=2, dtype=np.int32)

  def shortlist(self, queries: Any, k: int) -> np.ndarray:
    """[Q, K] ids of the smallest Hamming distances, best first."""
    _check(queries, k, self.dim, self.num_rows)
    return _top_k(lambda r0, r1: -self.hamming(queries, r0, r1),
                  self.num_rows, len(queries), k)


@dataclasses.dataclass(frozen=True, eq=False)
class BFloat16Codes:
  """The normalised prefix in bfloat16, [N, D_s], as a `PrefixIndex`."""
  index: PrefixIndex

  @property
  def dim(self) -> int:
    return self.index.dim

  @property
  def num_rows(self) -> int:
    return self.index.num_rows

  @property
  def bytes_per_row(self) -> int:
    return 2 * self.dim

  def shortlist(self, queries: Any, k: int) -> Array:
    """[Q, K] ids of the best bfloat16 cosines, best first (ties: lower id)."""
    _check(queries, k, self.dim, self.num_rows)
    # Imported here: mrl_jax.search imports this module.
    from mrl_jax import search  # pylint: disable=import-outside-toplevel
    return search.search(self.index, normalized_prefix(queries, self.dim),
                         self.dim, k)[1]


Codes = Int8Codes | BinaryCodes | BFloat16Codes


def build(embeddings: Any, kind: str, dim: int) -> Codes:
  """Codes of the normalised [:, :dim] prefix of embeddings [N, d].

  Args:
    embeddings: [N, d] (numpy or np.memmap; read in row chunks).
    kind: "int8", "binary" or "bfloat16" (the last placed on the default
      mesh's devices, rows split over them).
    dim: D_s, 1 <= D_s <= d.
  """
  if kind not in KINDS:
    raise ValueError(f"unknown code kind {kind!r}; use one of {KINDS}")
  if len(embeddings.shape) != 2 or not 1 <= dim <= embeddings.shape[1]:
    raise ValueError(f"shortlist dim D_s={dim} is above the embeddings' dim "
                     f"{embeddings.shape[-1]}; use D_s in [1, "
                     f"{embeddings.shape[-1]}]")
  n = embeddings.shape[0]
  chunks = range(0, n, _CHUNK_ROWS)
  if kind == "binary":
    return BinaryCodes(np.concatenate([
        sign_bits(embeddings[r0:r0 + _CHUNK_ROWS], dim) for r0 in chunks]),
                       dim)
  if kind == "bfloat16":
    rows = np.empty((n, dim), jnp.bfloat16)  # half the float32 prefix
    for r0 in chunks:
      rows[r0:r0 + _CHUNK_ROWS] = normalized_prefix(
          embeddings[r0:r0 + _CHUNK_ROWS], dim)
    return BFloat16Codes(build_index(rows, boundaries=(dim,),
                                     dtype=jnp.bfloat16))
  peak = np.zeros(dim, np.float32)
  for r0 in chunks:
    peak = np.maximum(peak, np.abs(normalized_prefix(
        embeddings[r0:r0 + _CHUNK_ROWS], dim)).max(axis=0))
  scale = np.where(peak > 0, peak / 127, 1.0).astype(np.float32)
  codes = np.concatenate([
      np.rint(normalized_prefix(embeddings[r0:r0 + _CHUNK_ROWS], dim) / scale
              ).astype(np.int8) for r0 in chunks])
  return Int8Codes(codes, scale)


def normalized_prefix(x: Any, dim: int) -> np.ndarray:
  """[n, dim] float32 rows of x[:, :dim] scaled to unit norm (0 stays 0)."""
  x = np.asarray(x[:, :dim], dtype=np.float32)
  return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def sign_bits(x: Any, dim: int) -> np.ndarray:
  """[n, ceil(dim / 8)] uint8: bit j set where x[:, j] > 0, packed."""
  return np.packbits(np.asarray(x[:, :dim]) > 0, axis=1)


def _words(bits: np.ndarray) -> np.ndarray:
  """The packed bytes viewed as the widest unsigned words that tile them
  (fewer XOR / popcount steps)."""
  width = next(w for w in (8, 4, 2, 1) if bits.shape[1] % w == 0)
  return np.ascontiguousarray(bits).view(f"u{width}")


def _top_k(score: Callable[[int, int], np.ndarray], n: int,
           num_queries: int, k: int) -> np.ndarray:
  """[Q, k] ids of the largest score(r0, r1) [Q, r1 - r0] over all rows,
  best first (equal scores: lower id first)."""
  best = np.zeros((num_queries, 0), np.float32)
  ids = np.zeros((num_queries, 0), np.int64)
  for r0 in range(0, n, _CHUNK_ROWS):
    r1 = min(r0 + _CHUNK_ROWS, n)
    best = np.concatenate([best, score(r0, r1)], axis=1)
    ids = np.concatenate([ids, np.broadcast_to(np.arange(r0, r1),
                                               (num_queries, r1 - r0))], 1)
    if best.shape[1] > k:
      keep = np.argpartition(-best, k - 1, axis=1)[:, :k]
      best = np.take_along_axis(best, keep, 1)
      ids = np.take_along_axis(ids, keep, 1)
  order = np.lexsort((ids, -best), axis=1)
  return np.take_along_axis(ids, order, 1)


def check_queries(queries: Any, dim: int) -> None:
  if len(np.shape(queries)) != 2 or np.shape(queries)[1] < dim:
    raise ValueError(f"queries must be [Q, >= {dim}], got "
                     f"{np.shape(queries)}")


def _check(queries: Any, k: int, dim: int, n: int) -> None:
  check_queries(queries, dim)
  if not 1 <= k <= n:
    raise ValueError(f"shortlist K={k} must be in [1, {n}]")
