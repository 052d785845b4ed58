"""The prefix index: a database stored as column blocks at nesting boundaries.

`PrefixIndex` stores the [N, d] database as column blocks cut at the nesting
boundaries ([0:8], [8:16], [16:32], ... by default), each its own contiguous
[N, width] array, so a D_s = 16 scan reads 16 columns per row and never
touches the other 2032. With `normalize=True` it also keeps the L2 norm of
every boundary prefix: the MRL protocol normalises each prefix separately.
"""
from collections.abc import Sequence
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
  """A database of N embeddings stored as column blocks (see module doc).

  Attributes:
    blocks: per block b, [rows, boundaries[b] - boundaries[b-1]] in the
      storage dtype; device arrays sharded over `axis_name` (rows padded with
      zeros to a multiple of the shard count) or host numpy arrays.
    boundaries: block ends, strictly increasing; the last is the full dim d.
    norms: per boundary b, [rows] float32 L2 norm of the prefix
      [:boundaries[b]]; None when the index is not normalised.
    num_rows: N, the real rows (ids 0..N-1); padded rows never match.
    mesh: devices the rows are split over (along `axis_name`).
    axis_name: the mesh axis that splits the rows.
  """
  blocks: tuple[Any, ...]
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
                mesh: Mesh | None = None,
                axis_name: str = sharding_lib.DATA_AXIS,
                on_device: bool = True) -> PrefixIndex:
  """Builds a `PrefixIndex` from [N, d] embeddings.

  Args:
    embeddings: [N, d] array (numpy, np.memmap or jax).
    boundaries: block ends; default the halving nesting list of d
      ((8, 16, ..., 2048) for d = 2048). d is appended when missing.
    dtype: storage dtype, float32 or bfloat16. Norms are computed from the
      stored (rounded) values, in float32.
    normalize: keep per-prefix norms and search by per-prefix cosine.
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
  n, d = embeddings.shape
  bounds = _check_boundaries(boundaries, d)
  starts = (0,) + bounds[:-1]
  # Padding to a multiple of the shard count lets shard_map split rows evenly;
  # at most (shards - 1) zero rows, masked by id at search time.
  shards = mesh.shape[axis_name] if on_device else 1
  rows = -(-n // shards) * shards
  # Each block goes to the devices as soon as it is built, so host memory
  # holds one block's copy at a time (a 1M x 2048 float32 index is 8 GB).
  place = (functools.partial(jax.device_put,
                             device=NamedSharding(mesh, P(axis_name)))
           if on_device else lambda x: x)
  blocks, norms, sq = [], [], np.zeros(n, np.float32)
  for s, e in zip(starts, bounds):
    block = np.zeros((rows, e - s), dtype)
    block[:n] = np.asarray(embeddings[:, s:e]).astype(dtype)
    if normalize:
      sq = sq + _row_sq_norms(block[:n])
      norms.append(place(np.pad(np.sqrt(sq), (0, rows - n))))
    blocks.append(place(block))
    del block
  return PrefixIndex(tuple(blocks), bounds, tuple(norms) if normalize else None,
                     n, mesh, axis_name)



def _check_boundaries(boundaries: Sequence[int] | None, d: int
                      ) -> tuple[int, ...]:
  if boundaries is None:
    return nesting.default_nesting(d)
  bounds = tuple(int(b) for b in boundaries)
  if not bounds or bounds[-1] != d:
    bounds += (d,)
  return nesting.validate_nesting(bounds, d)



def _row_sq_norms(block: np.ndarray, rows: int = 1 << 16) -> np.ndarray:
  """[n] float32 squared row norms, in row chunks to bound the f32 copy."""
  return np.concatenate([
      np.einsum("nd,nd->n", c, c) for c in
      (block[i:i + rows].astype(np.float32)
       for i in range(0, block.shape[0], rows))])

