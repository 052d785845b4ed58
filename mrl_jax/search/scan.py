"""Blockwise running top-k scans behind `mrl_jax.search` (package-internal).

Each chunk of database rows is one [Q, C] score matmul followed by `lax.top_k`
over the running top-k concatenated with the chunk's scores. Device-placed
indexes run one jitted `shard_map` per search; host-placed ones stream row
chunks to the devices and carry each device's running top-k between calls.
Ties go to the lower database id everywhere.
"""
from collections.abc import Callable, Sequence
import dataclasses
import functools
from typing import Any

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mrl_jax.search.index import Array, NORM_FLOOR, PrefixIndex, pad_rows


@dataclasses.dataclass(frozen=True)
class Plan:
  """Static description of a prefix-m scan (hashable: keys compiled fns).

  block_ids: the index blocks read: the low column blocks that tile [0, m)
    when m fits in them, else the whole array alone.
  spans: (start, end) columns read from each of those blocks, the last
    clipped to m.
  rest: columns past the last boundary <= m (0: m is a boundary); their
    squares are added to that boundary's stored norm.
  norm_block: index of the last boundary <= m whose stored norm is reused
    (-1: none).
  whole: the plan reads the whole-array block (a wide prefix).
  """
  block_ids: tuple[int, ...]
  spans: tuple[tuple[int, int], ...]
  rest: int
  norm_block: int
  normalize: bool
  dtype: str
  whole: bool

  @property
  def widths(self) -> tuple[int, ...]:
    return tuple(e - s for s, e in self.spans)

  @property
  def precision(self) -> lax.Precision:
    # float32 data is scored at full precision (GPU default would be TF32,
    # which reorders near neighbours); bfloat16 already is the precision.
    return (lax.Precision.HIGHEST if self.dtype == "float32"
            else lax.Precision.DEFAULT)


def make_plan(index: PrefixIndex, dim: int, queries: Any) -> Plan:
  """Checks dim against the index and the queries [Q, d_q]; plans the scan."""
  if not 1 <= dim <= index.dim:
    raise ValueError(f"prefix dim {dim} outside [1, {index.dim}]")
  if len(np.shape(queries)) != 2 or np.shape(queries)[1] < dim:
    raise ValueError(f"queries must be [Q, >= {dim}], got "
                     f"{np.shape(queries)}")
  low = index.spans[:-1]
  whole = not low or dim > low[-1][1]
  block_ids = ((len(low),) if whole else
               tuple(j for j, (s, _) in enumerate(low) if s < dim))
  spans = tuple((index.spans[j][0], min(index.spans[j][1], dim))
                for j in block_ids)
  below = [b for b in index.boundaries if b <= dim]
  return Plan(block_ids, spans, dim - (below[-1] if below else 0),
              len(below) - 1, index.normalized, index.dtype.name, whole)


def check_k(k: int, available: int, what: str) -> None:
  if not 1 <= k <= available:
    raise ValueError(f"{what}={k} must be in [1, {available}]")



def _query_parts(queries: Array, plan: Plan) -> tuple[Array, ...]:
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


def _merge_by_id(s: Array, ids: Array, k: int) -> tuple[Array, Array]:
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
                   first_id: Array, num_valid: Array, k: int, group: int,
                   chunk_rows: int) -> tuple[Array, Array]:
  """Top-k [Q, k] of rows [n] of blocks by a group-max prefilter.

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
  dot, nrm = _gathered_scores(plan, q_parts, jnp.minimum(local, n - 1),
                              blocks, full_norm)
  s = dot if nrm is None else dot / jnp.maximum(nrm, NORM_FLOOR)
  ids = first_id + local
  s = jnp.where((local < n) & (ids < num_valid), s, -jnp.inf)
  return _merge_sorted_prefix(*_empty_topk(q, 0), s, ids, k)


def _topk_rows(plan: Plan, q_parts: Sequence[Array], blocks: Sequence[Array],
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
  s, i = _two_pass_topk(plan, q_parts, blocks, full_norm, first_id,
                        num_valid, k, group, chunk_rows)
  return _merge_sorted_prefix(*carry, s, i, k)


def _scan_options(mesh: Mesh, plan: Plan) -> dict[str, str] | None:
  """XLA options for a scan's compiled function (None: the defaults).

  XLA:CPU hands a matmul to YNNPACK together with the element-wise ops and
  reductions that consume its scores (one `__ynn_fusion`). For a low-dim
  scan that fused group max is the point (the [Q, C] scores never reach
  memory); for a wide one (it reads the whole-array block) the fused
  epilogue (YNNPACK's group max) costs more than it saves: 2048-d exact
  scans ran 12-14% faster with the matmul alone in YNNPACK and the epilogue
  in XLA's own fusions (BUILD_NOTES, "Search benchmark").
  """
  if mesh.devices.flat[0].platform != "cpu" or not plan.whole:
    return None
  return {"xla_cpu_experimental_ynn_fusion_type":
          "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}


def _empty_topk(q: int, k: int, lead: tuple[int, ...] = ()
                ) -> tuple[Array, Array]:
  """An empty running top-k: scores -inf [*lead, Q, k], ids -1."""
  return (jnp.full(lead + (q, k), -jnp.inf, jnp.float32),
          jnp.full(lead + (q, k), -1, jnp.int32))


def _used(index: PrefixIndex, plan: Plan
          ) -> tuple[tuple[Any, ...], Any | None]:
  """The blocks a plan reads and the boundary norm it reuses (or None)."""
  norm = (index.norms[plan.norm_block]
          if plan.normalize and plan.norm_block >= 0 else None)
  return tuple(index.blocks[j] for j in plan.block_ids), norm


# ----------------------------------------------------------------------------
# Device-resident index: one compiled shard_map per (plan, k, chunk, shape).


@functools.lru_cache(maxsize=64)
def _device_search_fn(mesh: Mesh, axis: str, plan: Plan, k: int,
                      chunk_rows: int) -> Callable[..., tuple[Array, Array]]:
  """jit(queries, blocks, norm, num_valid) -> replicated (scores, ids)."""

  def local(q_parts, blocks, norm, num_valid):
    n = blocks[0].shape[0]
    first = lax.axis_index(axis).astype(jnp.int32) * n
    # The running top-k differs per device: mark it varying for the loop.
    carry = lax.pcast(_empty_topk(q_parts[0].shape[0], k), (axis,),
                      to="varying")
    return _topk_rows(plan, q_parts, blocks, norm, carry, first, num_valid,
                      k, chunk_rows)

  # Each device's k best side by side ([Q, D * k], device order); the sorted
  # merge outside the shard_map makes XLA gather them (D * k per query).
  sharded = jax.shard_map(local, mesh=mesh,
                          in_specs=(P(), P(axis), P(axis), P()),
                          out_specs=(P(None, axis), P(None, axis)))

  def fn(queries, blocks, norm, num_valid):
    s, i = sharded(_query_parts(queries, plan), blocks, norm, num_valid)
    return _merge_by_id(s, i, k)

  return jax.jit(fn, compiler_options=_scan_options(mesh, plan))


def device_search(index: PrefixIndex, queries: Array, *, plan: Plan, k: int,
                   chunk_rows: int, host_chunk_rows: int
                   ) -> tuple[Array, Array]:
  del host_chunk_rows  # Host indexes only.
  fn = _device_search_fn(index.mesh, index.axis_name, plan, k, chunk_rows)
  blocks, norm = _used(index, plan)
  return fn(queries, blocks, norm, jnp.int32(index.num_rows))


@functools.lru_cache(maxsize=64)
def _device_rerank_fn(mesh: Mesh, axis: str, plan: Plan, k: int
                      ) -> Callable[..., tuple[Array, Array]]:
  """jit(queries, ids, blocks, norm, num_valid) -> replicated (scores, ids)."""

  def local(q_parts, ids, blocks, norm, num_valid):
    # Each device scores the candidates it owns (0 elsewhere); a psum of the
    # [Q, K] partial scores (and norms) is far less traffic than gathering
    # the candidates' rows across devices.
    n = blocks[0].shape[0]
    loc = ids - lax.axis_index(axis).astype(jnp.int32) * n
    own = (loc >= 0) & (loc < n)
    loc = jnp.clip(loc, 0, n - 1)
    dot, nrm = _gathered_scores(plan, q_parts, loc, blocks, norm)
    dot = lax.psum(jnp.where(own, dot, 0.0), axis)
    if nrm is not None:
      nrm = lax.psum(jnp.where(own, nrm, 0.0), axis)
    return _finish_rerank(dot, nrm, ids, num_valid, k)

  sharded = jax.shard_map(local, mesh=mesh,
                          in_specs=(P(), P(), P(axis), P(axis), P()),
                          out_specs=(P(), P()))
  return jax.jit(lambda queries, ids, blocks, norm, num_valid: sharded(
      _query_parts(queries, plan), ids, blocks, norm, num_valid))


def device_rerank(index: PrefixIndex, queries: Array, ids: Array, *,
                   plan: Plan, k: int) -> tuple[Array, Array]:
  fn = _device_rerank_fn(index.mesh, index.axis_name, plan, k)
  blocks, norm = _used(index, plan)
  return fn(queries, jnp.asarray(ids, jnp.int32), blocks, norm,
            jnp.int32(index.num_rows))


def _gathered_scores(plan: Plan, q_parts: Sequence[Array], loc: Array,
                     blocks: Sequence[Array], norm: Array | None,
                     queries_per_step: int = 4
                     ) -> tuple[Array, Array | None]:
  """`_candidate_scores` of rows loc [Q, K] of blocks, a few queries at a time.

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
    dot, nrm = _candidate_scores(plan, [q[None] for q in q_parts], rows,
                                 gathered)
    return dot[0], None if nrm is None else nrm[0]

  return lax.map(one_query, (tuple(q_parts), loc),
                 batch_size=queries_per_step)


def _candidate_scores(plan: Plan, q_parts: Sequence[Array],
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


def _finish_rerank(dot: Array, nrm: Array | None, ids: Array,
                   num_valid: Array, k: int) -> tuple[Array, Array]:
  """Cosine (if normalised), -inf for ids outside [0, N), best k by id."""
  s = dot if nrm is None else dot / jnp.maximum(nrm, NORM_FLOOR)
  s = jnp.where((ids >= 0) & (ids < num_valid), s, -jnp.inf)
  return _merge_by_id(s, ids, k)


# ----------------------------------------------------------------------------
# Host index: stream row chunks to the mesh, carry per-device top-k.


@functools.lru_cache(maxsize=64)
def _host_step_fn(mesh: Mesh, axis: str, plan: Plan, k: int,
                  chunk_rows: int) -> Callable[..., tuple[Array, Array]]:
  """jit(queries, blocks, norm, run_s, run_i, base, num_valid) -> running.

  The running top-k [D, Q, k] stays sharded (one [Q, k] per device) across
  calls; within a device, later host chunks hold higher ids, so the cheap
  ordered merge stays valid. Only `_merge_by_id` at the end compares devices.
  """

  def local(q_parts, blocks, norm, run_s, run_i, base, num_valid):
    n = blocks[0].shape[0]
    first = base + lax.axis_index(axis).astype(jnp.int32) * n
    s, i = _topk_rows(plan, q_parts, blocks, norm, (run_s[0], run_i[0]),
                      first, num_valid, k, chunk_rows)
    return s[None], i[None]

  sharded = jax.shard_map(
      local, mesh=mesh,
      in_specs=(P(), P(axis), P(axis), P(axis), P(axis), P(), P()),
      out_specs=(P(axis), P(axis)))
  return jax.jit(
      lambda queries, blocks, norm, run_s, run_i, base, num_valid: sharded(
          _query_parts(queries, plan), blocks, norm, run_s, run_i, base,
          num_valid),
      donate_argnums=(3, 4), compiler_options=_scan_options(mesh, plan))


@functools.partial(jax.jit, static_argnums=2)
def _merge_devices(run_s: Array, run_i: Array, k: int) -> tuple[Array, Array]:
  """[D, Q, k] per-device top-k -> [Q, k] global, ties by lower id."""
  d, q, _ = run_s.shape
  flat = lambda x: jnp.moveaxis(x, 0, 1).reshape(q, d * k)
  return _merge_by_id(flat(run_s), flat(run_i), k)


def host_search(index: PrefixIndex, queries: Array, *, plan: Plan, k: int,
                 chunk_rows: int, host_chunk_rows: int
                 ) -> tuple[Array, Array]:
  shards = index.num_shards
  step_rows = -(-min(host_chunk_rows, index.num_rows) // shards) * shards
  rows_sharding = NamedSharding(index.mesh, P(index.axis_name))
  fn = _host_step_fn(index.mesh, index.axis_name, plan, k, chunk_rows)
  blocks, norm = _used(index, plan)
  # Replicate the queries once, not on every chunk call.
  queries = jax.device_put(queries, NamedSharding(index.mesh, P()))
  run = jax.device_put(_empty_topk(queries.shape[0], k, (shards,)),
                       rows_sharding)
  for start in range(0, index.num_rows, step_rows):
    # Host slices are copied (and the last one zero-padded) before transfer;
    # dispatch is asynchronous, so the next slice overlaps this chunk's scan.
    put = lambda x: jax.device_put(
        pad_rows(np.asarray(x[start:start + step_rows]), step_rows),
        rows_sharding)
    run = fn(queries, tuple(put(x[:, :w]) for x, w in
                            zip(blocks, plan.widths)),
             None if norm is None else put(norm), *run, jnp.int32(start),
             jnp.int32(index.num_rows))
  return _merge_devices(*run, k)


@functools.lru_cache(maxsize=64)
def _host_rerank_fn(plan: Plan, k: int) -> Callable[..., tuple[Array, Array]]:
  """jit(queries, ids, rows, norm, num_valid) on host-gathered candidates."""

  def fn(queries, ids, rows, norm, num_valid):
    dot, nrm = _candidate_scores(plan, _query_parts(queries, plan), rows, norm)
    return _finish_rerank(dot, nrm, ids, num_valid, k)

  return jax.jit(fn)


def host_rerank(index: PrefixIndex, queries: Array, ids: Any, *, plan: Plan,
                 k: int) -> tuple[Array, Array]:
  # Gather on the host (numpy fancy indexing also reads a memmap lazily), then
  # score the [Q, K, m] candidates on the default device.
  ids = np.asarray(ids, np.int32)
  safe = np.clip(ids, 0, index.num_rows - 1)
  blocks, norm = _used(index, plan)
  rows = tuple(x[safe, :w] for x, w in zip(blocks, plan.widths))
  return _host_rerank_fn(plan, k)(
      queries, ids, rows, None if norm is None else norm[safe],
      jnp.int32(index.num_rows))


# ----------------------------------------------------------------------------


def in_query_batches(fn: Callable[..., tuple[Array, Array]],
                      batch: int | None, queries: Any, *per_query: Any
                      ) -> tuple[Array, Array]:
  """Runs fn over query batches and concatenates the results.

  Every batch has the same size (the last one is padded) so that one
  compilation serves all of them.
  """
  queries = jnp.asarray(queries)
  q = queries.shape[0]
  if batch is None or batch >= q:
    return fn(queries, *per_query)
  outs = []
  for start in range(0, q, batch):
    take = lambda x: _pad_to(x[start:start + batch], batch)
    outs.append(fn(take(queries), *(take(np.asarray(x)) for x in per_query)))
  n = lambda x: x[:q]
  return (n(jnp.concatenate([o[0] for o in outs])),
          n(jnp.concatenate([o[1] for o in outs])))


def _pad_to(x: Any, rows: int) -> Any:
  """Zero-pads the leading dim of a numpy or jax array to `rows`."""
  pad = rows - x.shape[0]
  if not pad:
    return x
  widths = [(0, pad)] + [(0, 0)] * (x.ndim - 1)
  return jnp.pad(x, widths) if isinstance(x, jax.Array) else np.pad(x, widths)
