"""Exact maximum-inner-product search over nested (Matryoshka) prefixes.

Layout. `PrefixIndex` stores the low nesting prefixes of the [N, d] database
as column blocks ([0:8], [8:16], [16:32], [32:64] by default), each its own
contiguous [N, width] array, so a D_s = 16 scan reads 16 columns per row and
never touches the other 2032, plus the whole [N, d] row-major array, which
wider prefixes read (no per-chunk copy of blocks side by side before the
matmul; a re-ranked candidate is one contiguous row); 3% more memory at the
defaults. The m-dim score is one matmul over the columns < m of the blocks
read. With `normalize=True` the index also keeps the L2 norm of
every boundary prefix (`prefix_norms`, [N, G]); the MRL protocol normalises
each prefix separately, so the cosine at dim m divides the m-dim score by the
m-dim prefix norm (and normalises the query prefix too).

Search. The database is scanned in chunks of `chunk_rows` rows, one [Q, C]
score matmul per chunk. With enough rows per k (at least 4k groups of 16 or
8 rows) the scan takes two passes: pass 1 keeps only the maximum score of
every group, the k groups with the largest maxima must hold the top k, and
pass 2 re-scores just their rows (`top_k` over every score costs several ns
per element on CPU, more than a 16-dim matmul; the max is a fused
reduction; the two passes' matmuls differ in shape, so scores within float
rounding of the k-th may be decided differently, as between any two exact
engines). Otherwise (few rows, k near N) `lax.top_k` merges each chunk's
scores into a running top-k. Rows are split over the `data` axis of a mesh
(all devices by default); each device finds its own top-k, and one global
merge orders the D x k candidates at the end.

Where the database lives (two placements, same kernels):
* `on_device=True` (default): the blocks are sharded device arrays; one
  jitted `shard_map` runs a `fori_loop` over the chunks of each device's rows
  (a dynamic slice per chunk, no copy of the database, no per-chunk Python).
  This is the fast path whenever the index fits device memory.
* `on_device=False`: the blocks stay host numpy arrays (np.memmap works);
  `search` streams `host_chunk_rows` rows at a time to the devices and carries
  each device's running top-k between the calls. For databases larger than
  device memory (ImageNet-4K at 2048-d fp32 is ~34 GB).

Ties are broken by the lower database id everywhere, so results equal a
stable numpy argsort of the negated scores: `top_k` keeps the lower index
first, each merge puts the older (lower-id) candidates first, and the final
merges sort on (score desc, id asc) explicitly.

Approximate first stages: `ann` (FAISS HNSW / IVF over the normalised D_s
prefix, the `ann` extra) and `codes` (int8 / binary codes of the prefix)
return K candidates that `rerank` re-scores exactly (`ann.shortlist_search`).
"""
from collections.abc import Sequence
import functools
from typing import Any

import numpy as np

from mrl_jax.search import ann
from mrl_jax.search import codes
from mrl_jax.search.index import Array, PrefixIndex, build_index
from mrl_jax.search.plan import NARROW_DIMS, check_k, make_plan
from mrl_jax.search.scan import (device_rerank, device_search, host_rerank,
                                 host_search, in_query_batches)

__all__ = ["PrefixIndex", "build_index", "search", "rerank",
           "adaptive_search", "funnel_search", "ann", "codes"]


def search(index: PrefixIndex, queries: Any, dim: int, k: int, *,
           chunk_rows: int | None = None,
           query_batch_size: int | None = None,
           host_chunk_rows: int = 1 << 18) -> tuple[Array, Array]:
  """Exact top-k by inner product (cosine if normalised) at prefix dim m.

  Args:
    index: the database.
    queries: [Q, d_q] with d_q >= dim; only [:, :dim] is read.
    dim: prefix length m, 1 <= m <= d (any m, not only block boundaries).
    k: neighbours per query, 1 <= k <= N (may exceed `chunk_rows`).
    chunk_rows: database rows per device per matmul / top-k step. Default
      on CPU: 8192, or for prefixes of at most 64 dims 1024 at 1,024
      queries per call or more, up to 65536 for fewer (low-dim shortlists
      are faster when the [Q, C] scores stay in cache; with few queries
      that block is small and each chunk costs a loop step; wide scans want
      long matmuls); on GPU / TPU 16384 at any dim (long matmuls, few
      top-k merges; experiments/bench/search_accel.py times the
      alternatives).
    query_batch_size: queries per compiled call (bounds the [Q, C] score
      memory); default all at once. A host index re-streams the database
      once per batch, so give it large batches.
    host_chunk_rows: rows streamed per transfer for a host index.

  Returns:
    scores [Q, k] float32, descending, and ids [Q, k] int32 (ties: lower id).
  """
  plan = make_plan(index, dim, queries)
  check_k(k, index.num_rows, "k")
  if chunk_rows is None:
    chunk_rows = default_chunk_rows(
        index, dim, min(np.shape(queries)[0], query_batch_size or np.inf))
  if chunk_rows < 1 or host_chunk_rows < 1:
    raise ValueError(f"chunk_rows={chunk_rows} and host_chunk_rows="
                     f"{host_chunk_rows} must be positive")
  fn = (device_search if index.on_device else host_search)
  run = functools.partial(fn, index, plan=plan, k=k, chunk_rows=chunk_rows,
                          host_chunk_rows=host_chunk_rows)
  return in_query_batches(run, query_batch_size, queries)


def default_chunk_rows(index: PrefixIndex, dim: int, num_queries: int) -> int:
  """`search`'s chunk size for `num_queries` per call when none is given (see
  its docstring): the CPU values were tuned on a 2-core CPU and are not the
  accelerators'."""
  if index.mesh.devices.flat[0].platform != "cpu":
    return 16384
  if dim > NARROW_DIMS:
    return 8192
  # [Q, C] blocks of about 1024 x 1024 scores, C a power of two: a single
  # query's 64-d scan of 1M rows takes half the time in chunks of 65536 rows
  # as in chunks of 1024.
  scale = min(64, max(1, 1024 // max(num_queries, 1)))
  return 1024 << (scale.bit_length() - 1)


def rerank(index: PrefixIndex, queries: Any, candidate_ids: Any, dim: int,
           k: int, *, query_batch_size: int | None = None
           ) -> tuple[Array, Array]:
  """Rescores each query's candidates at prefix dim m and keeps the best k.

  Args:
    index: the database.
    queries: [Q, d_q] with d_q >= dim.
    candidate_ids: [Q, K] int database ids; ids outside [0, N) (e.g. -1
      padding) score -inf. Duplicates are kept as given.
    dim: prefix length m used for rescoring.
    k: kept candidates, 1 <= k <= K.
    query_batch_size: queries per compiled call; default all at once.

  Returns:
    scores [Q, k] float32 descending and ids [Q, k] int32 (ties: lower id).
  """
  plan = make_plan(index, dim, queries)
  if np.shape(candidate_ids)[:1] != np.shape(queries)[:1]:
    raise ValueError(f"candidate_ids {np.shape(candidate_ids)} must be "
                     f"[Q, K] for {np.shape(queries)[0]} queries")
  check_k(k, np.shape(candidate_ids)[1], "k (rerank)")
  fn = device_rerank if index.on_device else host_rerank
  run = functools.partial(fn, index, plan=plan, k=k)
  return in_query_batches(run, query_batch_size, queries, candidate_ids)


def adaptive_search(index: PrefixIndex, queries: Any, shortlist_dim: int,
                    shortlist_k: int, rerank_dim: int, k: int,
                    **kwargs: Any) -> tuple[Array, Array]:
  """MRL adaptive retrieval: shortlist K with D_s dims, re-rank with D_r.

  Args:
    shortlist_dim: D_s, the prefix used for the exact shortlist search.
    shortlist_k: K, shortlist size (the paper uses 200); k <= K.
    rerank_dim: D_r, the prefix the shortlist is re-scored with.
    k: neighbours returned.
    **kwargs: passed to `search` (`chunk_rows`, `query_batch_size`, ...).

  Returns:
    scores [Q, k] at D_r and ids [Q, k].
  """
  return funnel_search(index, queries,
                       [(shortlist_dim, shortlist_k), (rerank_dim, k)],
                       **kwargs)


def funnel_search(index: PrefixIndex, queries: Any,
                  stages: Sequence[tuple[int, int]],
                  **kwargs: Any) -> tuple[Array, Array]:
  """Funnel retrieval: search at stages[0], then re-rank and truncate.

  Args:
    stages: [(dim, K), ...]: exact search keeping K_0 at dim_0, then each
      later stage re-scores the survivors at dim_i and keeps K_i
      (non-increasing), e.g. [(16, 200), (32, 100), (64, 50), (128, 25),
      (2048, 10)].
    **kwargs: passed to `search`; `query_batch_size` also to `rerank`.

  Returns:
    scores [Q, K_last] at the last stage's dim and ids [Q, K_last].
  """
  stages = [(int(m), int(kk)) for m, kk in stages]
  if not stages:
    raise ValueError("funnel_search needs at least one (dim, K) stage")
  sizes = [kk for _, kk in stages]
  if any(a < b for a, b in zip(sizes, sizes[1:])):
    raise ValueError(f"funnel shortlist sizes {sizes} must not increase")
  scores, ids = search(index, queries, *stages[0], **kwargs)
  batch = kwargs.get("query_batch_size")
  for m, kk in stages[1:]:
    scores, ids = rerank(index, queries, ids, m, kk, query_batch_size=batch)
  return scores, ids


# ----------------------------------------------------------------------------
# Planning: which blocks and columns a prefix dim reads.

