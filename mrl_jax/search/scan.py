"""Where the scans run: compiled device and host paths of `mrl_jax.search`
(package-internal).

Device-placed indexes run one jitted `shard_map` per search over the
resident blocks; host-placed ones stream row chunks to the devices and
carry each device's running top-k between calls. The per-device work is in
topk.py. Ties go to the lower database id everywhere.
"""
from collections.abc import Callable
import functools
from typing import Any

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mrl_jax.search.index import Array, PrefixIndex, pad_rows
from mrl_jax.search.plan import NARROW_DIMS, Plan
from mrl_jax.search.topk import (candidate_scores, empty_topk, finish_rerank,
                                 gathered_scores, merge_by_id, query_parts,
                                 topk_rows)


def _scan_options(mesh: Mesh, plan: Plan) -> dict[str, str] | None:
  """XLA options for a scan's compiled function (None: the defaults).

  XLA:CPU hands a matmul to YNNPACK together with the element-wise ops and
  reductions that consume its scores (one `__ynn_fusion`). For a low-dim
  scan that fused group max is the point (the [Q, C] scores never reach
  memory); for a wide one (more than 64 columns) the fused epilogue
  (YNNPACK's group max) costs more than it saves, so wide scans leave only
  the matmul to YNNPACK and the epilogue to XLA's own fusions
  (docs/design.md, "Search").
  """
  if (mesh.devices.flat[0].platform != "cpu"
      or plan.spans[-1][1] <= NARROW_DIMS
      or not _xla_accepts(_WIDE_SCAN_OPTIONS)):
    return None
  return dict(_WIDE_SCAN_OPTIONS)


_WIDE_SCAN_OPTIONS = (("xla_cpu_experimental_ynn_fusion_type",
                       "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"),)


@functools.cache
def _xla_accepts(options: tuple[tuple[str, str], ...]) -> bool:
  """Whether this jaxlib's XLA:CPU knows the options: an experimental flag
  can vanish in an upgrade, which must cost speed, not every wide search."""
  try:
    x = jax.device_put(np.float32(0), jax.devices("cpu")[0])
    jax.jit(lambda x: x + 1, compiler_options=dict(options)).lower(
        x).compile()
  except Exception:  # pylint: disable=broad-except  # XLA raises many kinds
    return False
  return True


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
    carry = lax.pcast(empty_topk(q_parts[0].shape[0], k), (axis,),
                      to="varying")
    return topk_rows(plan, q_parts, blocks, norm, carry, first, num_valid,
                     k, chunk_rows)

  # Each device's k best side by side ([Q, D * k], device order); the sorted
  # merge outside the shard_map makes XLA gather them (D * k per query).
  sharded = jax.shard_map(local, mesh=mesh,
                          in_specs=(P(), P(axis), P(axis), P()),
                          out_specs=(P(None, axis), P(None, axis)))

  def fn(queries, blocks, norm, num_valid):
    s, i = sharded(query_parts(queries, plan), blocks, norm, num_valid)
    # One device's top-k is already in (score desc, id asc) order.
    return (s, i) if mesh.shape[axis] == 1 else merge_by_id(s, i, k)

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
    dot, nrm = gathered_scores(plan, q_parts, loc, blocks, norm)
    dot = lax.psum(jnp.where(own, dot, 0.0), axis)
    if nrm is not None:
      nrm = lax.psum(jnp.where(own, nrm, 0.0), axis)
    return finish_rerank(dot, nrm, ids, num_valid, k)

  sharded = jax.shard_map(local, mesh=mesh,
                          in_specs=(P(), P(), P(axis), P(axis), P()),
                          out_specs=(P(), P()))
  return jax.jit(lambda queries, ids, blocks, norm, num_valid: sharded(
      query_parts(queries, plan), ids, blocks, norm, num_valid))


def device_rerank(index: PrefixIndex, queries: Array, ids: Array, *,
                   plan: Plan, k: int) -> tuple[Array, Array]:
  fn = _device_rerank_fn(index.mesh, index.axis_name, plan, k)
  blocks, norm = _used(index, plan)
  return fn(queries, jnp.asarray(ids, jnp.int32), blocks, norm,
            jnp.int32(index.num_rows))


# ----------------------------------------------------------------------------
# Host index: stream row chunks to the mesh, carry per-device top-k.


@functools.lru_cache(maxsize=64)
def _host_step_fn(mesh: Mesh, axis: str, plan: Plan, k: int,
                  chunk_rows: int) -> Callable[..., tuple[Array, Array]]:
  """jit(queries, blocks, norm, run_s, run_i, base, num_valid) -> running.

  The running top-k [D, Q, k] stays sharded (one [Q, k] per device) across
  calls; within a device, later host chunks hold higher ids, so the cheap
  ordered merge stays valid. Only `merge_by_id` at the end compares devices.
  """

  def local(q_parts, blocks, norm, run_s, run_i, base, num_valid):
    n = blocks[0].shape[0]
    first = base + lax.axis_index(axis).astype(jnp.int32) * n
    s, i = topk_rows(plan, q_parts, blocks, norm, (run_s[0], run_i[0]),
                     first, num_valid, k, chunk_rows)
    return s[None], i[None]

  sharded = jax.shard_map(
      local, mesh=mesh,
      in_specs=(P(), P(axis), P(axis), P(axis), P(axis), P(), P()),
      out_specs=(P(axis), P(axis)))
  return jax.jit(
      lambda queries, blocks, norm, run_s, run_i, base, num_valid: sharded(
          query_parts(queries, plan), blocks, norm, run_s, run_i, base,
          num_valid),
      donate_argnums=(3, 4), compiler_options=_scan_options(mesh, plan))


@functools.partial(jax.jit, static_argnums=2)
def _merge_devices(run_s: Array, run_i: Array, k: int) -> tuple[Array, Array]:
  """[D, Q, k] per-device top-k -> [Q, k] global, ties by lower id."""
  d, q, _ = run_s.shape
  flat = lambda x: jnp.moveaxis(x, 0, 1).reshape(q, d * k)
  return merge_by_id(flat(run_s), flat(run_i), k)


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
  run = jax.device_put(empty_topk(queries.shape[0], k, (shards,)),
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
    dot, nrm = candidate_scores(plan, query_parts(queries, plan), rows, norm)
    return finish_rerank(dot, nrm, ids, num_valid, k)

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
