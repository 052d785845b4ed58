"""Per-device kernels behind `mrl_jax.search` (package-internal).

Scores [Q, C] of the queries against chunks of database rows (one matmul
per chunk over the plan's columns), their running or two-pass top-k, and
the re-scoring of gathered candidates. Every function here runs inside one
device's part of a `shard_map` (scan.py places them); ties go to the lower
database id everywhere.
"""
from collections.abc import Sequence
import functools
from typing import Any

from jax import lax
import jax.numpy as jnp

from mrl_jax.search.index import Array, NORM_FLOOR
from mrl_jax.search.plan import Plan


def query_parts(queries: Array, plan: Plan) -> tuple[Array, ...]:
  """[Q, d_q] -> per read block [Q, width], normalised, in storage dtype."""
  q = queries[:, :plan.spans[-1][1]].astype(jnp.float32)
  if plan.normalize:
    q = q / jnp.maximum(jnp.linalg.norm(q, axis=1, keepdims=True),
                        NORM_FLOOR)
  q = q.astype(plan.dtype)
  return tuple(q[:, s:e] for s, e in plan.spans)


def _prefix_norm(plan: Plan, full_norm: Array | None, last: Array
                 ) -> Array:
  """m-dim prefix norms [...]: the stored boundary norm + the squares of the
  last `rest` columns read (those past that boundary)."""
  if not plan.rest:
    return full_norm
  partial = last[..., last.shape[-1] - plan.rest:]
  sq = jnp.sum(jnp.square(partial.astype(jnp.float32)), axis=-1)
  if full_norm is not None:
    sq = sq + jnp.square(full_norm)
  return jnp.sqrt(sq)


def _chunk_scores(plan: Plan, q_parts: Sequence[Array],
                  rows: Sequence[Array], full_norm: Array | None) -> Array:
  """Scores [Q, C] of queries against C database rows: per block read, the
  plan's columns [C, width]."""
  # One matmul over the chunk's columns side by side: XLA:CPU runs narrow
  # (8-64 column) matmuls at a fraction of its speed on wide ones, and a
  # low-dim chunk is cheap to copy (wide prefixes read one block: no copy).
  cat = lambda xs: xs[0] if len(xs) == 1 else jnp.concatenate(xs, axis=1)
  s = lax.dot_general(cat(q_parts), cat(rows), (((1,), (1,)), ((), ())),
                      precision=plan.precision,
                      preferred_element_type=jnp.float32)
  if plan.normalize:
    s = s / jnp.maximum(_prefix_norm(plan, full_norm, rows[-1]),
                        NORM_FLOOR)[None, :]
  return s


def _merge_sorted_prefix(run_s: Array, run_i: Array, s: Array, ids: Array,
                         k: int) -> tuple[Array, Array]:
  """Top-k of [running | new]; new ids must all exceed the running ones.

  `top_k` keeps the lower position first on ties and the running entries come
  first, so ties go to the lower id without sorting on ids.
  """
  s = jnp.where(s == 0, 0.0, s)  # -0.0 ranks below +0.0 in top_k
  all_s = jnp.concatenate([run_s, s], axis=1)
  all_i = jnp.concatenate([run_i, jnp.broadcast_to(ids, s.shape)], axis=1)
  top_s, pos = lax.top_k(all_s, k)
  return top_s, jnp.take_along_axis(all_i, pos, axis=1)


def _group_size(rows: int, k: int, dim: int) -> int:
  """Rows per group for `_two_pass_topk`; 0: use the running merge instead.

  Two passes pay when at least 4k groups remain (the top_k over the group
  maxima stays cheap) and pass 2's gather of k * group rows of `dim` values
  is no bigger than one score per row: low-dim shortlists (D_s = 16, K =
  200 over 60k rows: 5x faster on CPU), not full-dim scans, where the matmul
  dominates and a running top-10 costs little.
  """
  for group in (16, 8):
    if rows // group >= 4 * k and k * group * dim <= rows:
      return group
  return 0


def _merge_grouped(run_s: Array, run_i: Array, s: Array, first: Array,
                   k: int, group: int) -> tuple[Array, Array]:
  """`_merge_sorted_prefix` of chunk scores [Q, C] (ids first + j) through a
  group-max prefilter: `top_k` runs over the C / group maxima and the k * group
  scores of the k best groups (which hold the chunk's top k) instead of all C.

  Selected groups are put back in id order and equal maxima pick the lower
  group, so ties still go to the lower id.
  """
  q, c = s.shape
  local = _best_group_rows(s.reshape(q, c // group, group).max(axis=2), k,
                           group)
  cand = jnp.take_along_axis(s, local, axis=1)
  return _merge_sorted_prefix(run_s, run_i, cand, first + local, k)


def _best_group_rows(maxima: Array, k: int, group: int) -> Array:
  """Row offsets [Q, k * group], in id order, of the k groups whose maxima
  [Q, G] are largest (equal maxima: the lower group; -0.0 ties +0.0, which
  top_k would rank apart)."""
  _, best = lax.top_k(jnp.where(maxima == 0, 0.0, maxima), k)
  return (jnp.sort(best, axis=1)[:, :, None] * group
          + jnp.arange(group, dtype=jnp.int32)).reshape(maxima.shape[0], -1)


def _chunk_group(chunk: int, k: int) -> int:
  """Group size for `_merge_grouped` of a [Q, chunk] score block; 0: none."""
  for group in (32, 16, 8):
    if chunk % group == 0 and chunk // group >= 4 * k:
      return group
  return 0


def merge_by_id(s: Array, ids: Array, k: int) -> tuple[Array, Array]:
  """Top-k of [Q, M] candidates ordered by (score desc, id asc)."""
  s = jnp.where(s == 0, 0.0, s)
  neg, ids = lax.sort((-s, ids), dimension=1, num_keys=2)
  return -neg[:, :k], ids[:, :k]


def _rows_scores(plan: Plan, q_parts: Sequence[Array],
                 blocks: Sequence[Array], full_norm: Array | None,
                 start: Any, size: int, first_id: Array, num_valid: Array
                 ) -> tuple[Array, Array]:
  """Scores [Q, size] of rows start.. (dynamic slices of the plan's columns,
  no copy) and their ids [size]; padding rows (ids >= num_valid) score
  -inf."""
  rows = [lax.dynamic_slice(x, (start, 0), (size, w))
          for x, w in zip(blocks, plan.widths)]
  norm = (None if full_norm is None
          else lax.dynamic_slice_in_dim(full_norm, start, size))
  s = _chunk_scores(plan, q_parts, rows, norm)
  ids = first_id + start + jnp.arange(size, dtype=jnp.int32)
  return jnp.where(ids[None, :] < num_valid, s, -jnp.inf), ids


def _scan_rows(plan: Plan, q_parts: Sequence[Array], blocks: Sequence[Array],
               full_norm: Array | None, carry: tuple[Array, Array],
               first_id: Array, num_valid: Array, k: int, chunk_rows: int
               ) -> tuple[Array, Array]:
  """Merges rows [n] of (this device's) blocks into a running top-k [Q, k].

  Row r has id first_id + r; ids >= num_valid are padding and never match.
  Chunks are dynamic slices of the resident arrays (no copy); the tail that
  does not fill a chunk is one extra static-size step.
  """
  n = blocks[0].shape[0]

  def update(start, size, carry):
    s, ids = _rows_scores(plan, q_parts, blocks, full_norm, start, size,
                          first_id, num_valid)
    group = _chunk_group(size, k)
    if group:
      return _merge_grouped(*carry, s, first_id + start, k, group)
    return _merge_sorted_prefix(*carry, s, ids[None, :], k)

  num_full, tail = divmod(n, chunk_rows)
  if num_full:
    carry = lax.fori_loop(
        0, num_full, lambda c, cr: update(c * chunk_rows, chunk_rows, cr),
        carry)
  if tail:
    carry = update(num_full * chunk_rows, tail, carry)
  return carry


def _two_pass_topk(plan: Plan, q_parts: Sequence[Array],
                   blocks: Sequence[Array], full_norm: Array | None,
                   carry: tuple[Array, Array], first_id: Array,
                   num_valid: Array, k: int, group: int, chunk_rows: int
                   ) -> tuple[Array, Array]:
  """Merges rows [n] of blocks into a running top-k [Q, k] (ids above the
  carry's) by a group-max prefilter.

  Pass 1 scans the rows in chunks and keeps only the maximum score of every
  `group` consecutive rows ([Q, n / group]); the k groups with the largest
  maxima hold the top k (a tie between maxima picks the lower group, so ties
  still go to the lower id). Pass 2 re-scores just those k * group rows and
  takes their top k. On CPU this replaces a `top_k` over every score (several
  ns per element, the bottleneck of low-dim scans) with a fused max and two
  small `top_k`s, and the chunk's scores stay in cache.

  Row r has id first_id + r; ids >= num_valid are padding and never match.
  Returns scores [Q, k] descending and ids [Q, k] (ties: lower id).
  """
  n, q = blocks[0].shape[0], q_parts[0].shape[0]
  chunk = max(chunk_rows // group, 1) * group

  def maxima_of(start, size):
    """[Q, ceil(size / group)] group maxima of rows start..start+size-1."""
    s, _ = _rows_scores(plan, q_parts, blocks, full_norm, start, size,
                        first_id, num_valid)
    pad = -size % group  # only the last chunk has a partial group
    s = jnp.pad(s, ((0, 0), (0, pad)), constant_values=-jnp.inf)
    return s.reshape(q, -1, group).max(axis=2)

  num_full, tail = divmod(n, chunk)
  parts = []
  if num_full:  # [num_full, Q, chunk / group] -> [Q, num_full * chunk / group]
    per_chunk = lax.map(lambda c: maxima_of(c * chunk, chunk),
                        jnp.arange(num_full))
    parts.append(jnp.moveaxis(per_chunk, 0, 1).reshape(q, -1))
  if tail:
    parts.append(maxima_of(num_full * chunk, tail))
  local = _best_group_rows(jnp.concatenate(parts, axis=1), k, group)
  dot, nrm = gathered_scores(plan, q_parts, jnp.minimum(local, n - 1),
                             blocks, full_norm)
  s = dot if nrm is None else dot / jnp.maximum(nrm, NORM_FLOOR)
  ids = first_id + local
  s = jnp.where((local < n) & (ids < num_valid), s, -jnp.inf)
  return _merge_sorted_prefix(*carry, s, ids, k)


def topk_rows(plan: Plan, q_parts: Sequence[Array], blocks: Sequence[Array],
              full_norm: Array | None, carry: tuple[Array, Array],
              first_id: Array, num_valid: Array, k: int, chunk_rows: int
              ) -> tuple[Array, Array]:
  """Merges rows [n] of blocks (ids above the carry's) into a running top-k.

  Two passes (`_two_pass_topk`) when there are enough rows per k, else the
  running merge of `_scan_rows` (few rows per device, or k near n).
  """
  group = _group_size(blocks[0].shape[0], k, plan.spans[-1][1])
  if not group:
    return _scan_rows(plan, q_parts, blocks, full_norm, carry, first_id,
                      num_valid, k, chunk_rows)
  return _two_pass_topk(plan, q_parts, blocks, full_norm, carry, first_id,
                        num_valid, k, group, chunk_rows)


def empty_topk(q: int, k: int, lead: tuple[int, ...] = ()
               ) -> tuple[Array, Array]:
  """An empty running top-k: scores -inf [*lead, Q, k], ids -1."""
  return (jnp.full(lead + (q, k), -jnp.inf, jnp.float32),
          jnp.full(lead + (q, k), -1, jnp.int32))


def gathered_scores(plan: Plan, q_parts: Sequence[Array], loc: Array,
                    blocks: Sequence[Array], norm: Array | None,
                    queries_per_step: int = 4
                    ) -> tuple[Array, Array | None]:
  """`candidate_scores` of rows loc [Q, K] of blocks, a few queries at a time.

  Gathering all [Q, K, m] candidate rows at once writes a temporary far
  larger than the caches (1.6 GB for 1000 x 200 x 2048 float32) and is
  memory-bound; per step of a few queries the rows stay in cache (6x faster
  on CPU at that size).
  """
  def one_query(args):
    q_parts, loc = args
    # Only the plan's columns of each candidate row are gathered.
    rows = [x[loc, :w][None] for x, w in zip(blocks, plan.widths)]
    gathered = None if norm is None else jnp.take(norm, loc, axis=0)[None]
    dot, nrm = candidate_scores(plan, [q[None] for q in q_parts], rows,
                                gathered)
    return dot[0], None if nrm is None else nrm[0]

  return lax.map(one_query, (tuple(q_parts), loc),
                 batch_size=queries_per_step)


def candidate_scores(plan: Plan, q_parts: Sequence[Array],
                     rows: Sequence[Array], full_norm: Array | None
                     ) -> tuple[Array, Array | None]:
  """Raw dots [Q, K] with gathered candidate rows [Q, K, width] per block
  (the plan's columns only).

  Returns:
    (dots [Q, K], the candidates' m-dim prefix norms [Q, K] or None when the
    index is not normalised).
  """
  dots = [jnp.einsum("qw,qkw->qk", q, x, precision=plan.precision,
                     preferred_element_type=jnp.float32)
          for q, x in zip(q_parts, rows)]
  dot = functools.reduce(jnp.add, dots)
  nrm = _prefix_norm(plan, full_norm, rows[-1]) if plan.normalize else None
  return dot, nrm


def finish_rerank(dot: Array, nrm: Array | None, ids: Array,
                  num_valid: Array, k: int) -> tuple[Array, Array]:
  """Cosine (if normalised), -inf for ids outside [0, N), best k by id."""
  s = dot if nrm is None else dot / jnp.maximum(nrm, NORM_FLOOR)
  s = jnp.where((ids >= 0) & (ids < num_valid), s, -jnp.inf)
  return merge_by_id(s, ids, k)
