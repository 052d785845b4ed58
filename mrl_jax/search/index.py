"""The prefix index: a database stored for contiguous low-dim prefix scans.

`PrefixIndex` keeps the [N, d] database twice over its first columns: the
low nesting prefixes ([0:8], [8:16], [16:32], [32:64] by default, up to
`contiguous_dim`) as column blocks, each its own contiguous [N, width]
array, so a D_s = 16 shortlist scan reads 16 columns per row and never
touches the other 2032; and the whole [N, d] row-major array, which every
wider prefix reads (one matmul operand per chunk with no per-chunk copy of
blocks side by side, and a re-ranked candidate is one contiguous row). The
blocks cost 64 / 2048 = 3% more memory at the defaults. With
`normalize=True` the index also keeps the L2 norm of every boundary prefix:
the MRL protocol normalises each prefix separately.
"""
from collections.abc import Callable, Sequence
import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mrl_jax import sharding as sharding_lib
from mrl_jax.mrl import nesting

Array = jax.Array
# Norms are floored so that an all-zero prefix scores 0 instead of nan.
NORM_FLOOR = 1e-12


@dataclasses.dataclass(frozen=True, eq=False)
class PrefixIndex:
  """A database of N embeddings stored for prefix scans (see module doc).

  Attributes:
    blocks: per block j, [rows, end_j - start_j] columns `spans[j]` in the
      storage dtype: the low column blocks, then the whole [rows, d] array;
      device arrays sharded over `axis_name` (rows padded with zeros to a
      multiple of the shard count) or host numpy arrays.
    spans: (start, end) columns of each block; the last is (0, d).
    boundaries: nesting boundaries, strictly increasing; the last is d.
    norms: per boundary b, [rows] float32 L2 norm of the prefix
      [:boundaries[b]]; None when the index is not normalised.
    num_rows: N, the real rows (ids 0..N-1); padded rows never match.
    mesh: devices the rows are split over (along `axis_name`).
    axis_name: the mesh axis that splits the rows.
  """
  blocks: tuple[Any, ...]
  spans: tuple[tuple[int, int], ...]
  boundaries: tuple[int, ...]
  norms: tuple[Any, ...] | None
  num_rows: int
  mesh: Mesh
  axis_name: str = sharding_lib.DATA_AXIS

  @property
  def dim(self) -> int:
    return self.boundaries[-1]

  @property
  def dtype(self) -> np.dtype:
    return np.dtype(self.blocks[0].dtype)

  @property
  def normalized(self) -> bool:
    return self.norms is not None

  @property
  def on_device(self) -> bool:
    return isinstance(self.blocks[0], jax.Array)

  @property
  def num_shards(self) -> int:
    return self.mesh.shape[self.axis_name]

  def prefix_norms(self) -> np.ndarray:
    """[N, G] float32 norms of the boundary prefixes (normalised index only)."""
    if self.norms is None:
      raise ValueError("the index was built with normalize=False")
    return np.stack([np.asarray(n)[:self.num_rows] for n in self.norms], 1)


def build_index(embeddings: Any, *, boundaries: Sequence[int] | None = None,
                dtype: Any = jnp.float32, normalize: bool = False,
                contiguous_dim: int = 64, mesh: Mesh | None = None,
                axis_name: str = sharding_lib.DATA_AXIS,
                on_device: bool = True) -> PrefixIndex:
  """Builds a `PrefixIndex` from [N, d] embeddings.

  Args:
    embeddings: [N, d] array (numpy, np.memmap or jax).
    boundaries: nesting boundaries; default the halving nesting list of d
      ((8, 16, ..., 2048) for d = 2048). d is appended when missing.
    dtype: storage dtype, float32 or bfloat16. Norms are computed from the
      stored (rounded) values, in float32.
    normalize: keep per-prefix norms and search by per-prefix cosine.
    contiguous_dim: boundaries up to this dim (and below d) also get their
      own column block, so scans of prefixes up to the largest of them read
      contiguous memory; wider prefixes read the whole [N, d] array.
    mesh: devices to split the rows over; default all devices on one
      `data` axis.
    axis_name: the mesh axis that splits the rows.
    on_device: place the blocks on the mesh (sharded) or keep them as host
      numpy arrays to be streamed by `search`.
  """
  if mesh is None:
    mesh = sharding_lib.make_mesh([(axis_name, -1)])
  if axis_name not in mesh.shape:
    raise ValueError(f"mesh axes {tuple(mesh.shape)} lack {axis_name!r}")
  dtype = np.dtype(dtype)
  if dtype not in (np.dtype(np.float32), np.dtype(jnp.bfloat16)):
    raise ValueError(f"storage dtype must be float32 or bfloat16, got {dtype}")
  if len(embeddings.shape) != 2 or not embeddings.shape[0]:
    raise ValueError(f"embeddings must be [N>0, d], got {embeddings.shape}")
  if contiguous_dim < 0:
    raise ValueError(f"contiguous_dim={contiguous_dim} must be >= 0 (0: no "
                     "column blocks, every prefix reads the whole array)")
  n, d = embeddings.shape
  bounds = _check_boundaries(boundaries, d)
  low = tuple(b for b in bounds if b <= contiguous_dim and b < d)
  spans = tuple(zip((0,) + low[:-1], low)) + ((0, d),)
  # Padding to a multiple of the shard count lets shard_map split rows evenly;
  # at most (shards - 1) zero rows, masked by id at search time.
  shards = mesh.shape[axis_name] if on_device else 1
  rows = -(-n // shards) * shards
  place = (functools.partial(_device_rows, rows=rows,
                             sharding=NamedSharding(mesh, P(axis_name)))
           if on_device else functools.partial(_host_rows, rows=rows))
  layouts = [((e - s,), dtype) for s, e in spans]
  if normalize:
    layouts += [((), np.dtype(np.float32))] * len(bounds)
  arrays = place(_row_reader(embeddings, spans, bounds, dtype, normalize),
                 layouts)
  norms = tuple(arrays[len(spans):]) if normalize else None
  return PrefixIndex(tuple(arrays[:len(spans)]), spans, bounds, norms, n, mesh,
                     axis_name)


# Rows per host-to-device copy while building (bounds the host copy).
_BUILD_ROWS = 1 << 16
# read(r0, r1) -> rows [r0, r1) of every index array as numpy, zeros past N.
Reader = Callable[[int, int], list[np.ndarray]]
# (per-row shape, dtype) of each array a Reader returns.
Layouts = Sequence[tuple[tuple[int, ...], np.dtype]]


def _row_reader(embeddings: Any, spans: Sequence[tuple[int, int]],
                bounds: Sequence[int], dtype: np.dtype, normalize: bool
                ) -> Reader:
  """Reads each row chunk of the embeddings [N, d] once (a memmap is read
  once, not once per block) and cuts it into the index arrays: the columns
  of each span in the storage dtype, then, if `normalize`, the float32 norm
  of every boundary prefix of the stored (rounded) values."""
  n = embeddings.shape[0]

  def read(r0: int, r1: int) -> list[np.ndarray]:
    rows = pad_rows(np.asarray(embeddings[r0:min(r1, n)]).astype(dtype),
                    r1 - r0)
    out = [np.ascontiguousarray(rows[:, s:e]) for s, e in spans]
    if normalize:
      sq = [np.einsum("nd,nd->n", c, c) for c in
            (rows[:, s:e].astype(np.float32)
             for s, e in zip((0,) + tuple(bounds[:-1]), bounds))]
      out += list(np.sqrt(np.cumsum(sq, axis=0)))
    return out

  return read


def pad_rows(x: np.ndarray, size: int) -> np.ndarray:
  """x [n, ...] zero-padded to [size, ...] rows (n <= size)."""
  if x.shape[0] == size:
    return x
  return np.pad(x, [(0, size - x.shape[0])] + [(0, 0)] * (x.ndim - 1))


def _host_rows(read: Reader, layouts: Layouts, *, rows: int
               ) -> list[np.ndarray]:
  """The [rows, *shape] host arrays."""
  outs = [np.zeros((rows,) + shape, dtype) for shape, dtype in layouts]
  for r0 in range(0, rows, _BUILD_ROWS):
    for out, part in zip(outs, read(r0, min(r0 + _BUILD_ROWS, rows))):
      out[r0:r0 + _BUILD_ROWS] = part
  return outs


@functools.partial(jax.jit, donate_argnums=0)
def _write_rows(dst: Array, src: Array, start: Array) -> Array:
  return jax.lax.dynamic_update_slice_in_dim(dst, src, start, axis=0)


def _device_rows(read: Reader, layouts: Layouts, *, rows: int,
                 sharding: NamedSharding) -> list[Array]:
  """The [rows, *shape] arrays sharded by rows, filled device by device in
  row chunks written in place: host memory holds one chunk, device memory
  one copy (a 1M x 2048 float32 index is 8 GB)."""
  shards = [[] for _ in layouts]
  for device, index in sharding.addressable_devices_indices_map(
      (rows,)).items():
    r0, r1, _ = index[0].indices(rows)
    if r1 - r0 <= _BUILD_ROWS:
      dsts = [jax.device_put(part, device) for part in read(r0, r1)]
    else:
      dsts = [jnp.zeros((r1 - r0,) + shape, dtype, device=device)
              for shape, dtype in layouts]
      for c0 in range(r0, r1, _BUILD_ROWS):
        parts = read(c0, min(c0 + _BUILD_ROWS, r1))
        dsts = [_write_rows(dst, jax.device_put(part, device), c0 - r0)
                for dst, part in zip(dsts, parts)]
    for out, dst in zip(shards, dsts):
      out.append(dst)
  return [jax.make_array_from_single_device_arrays((rows,) + shape, sharding,
                                                   out)
          for (shape, _), out in zip(layouts, shards)]


def _check_boundaries(boundaries: Sequence[int] | None, d: int
                      ) -> tuple[int, ...]:
  if boundaries is None:
    return nesting.default_nesting(d)
  bounds = tuple(int(b) for b in boundaries)
  if not bounds or bounds[-1] != d:
    bounds += (d,)
  return nesting.validate_nesting(bounds, d)
