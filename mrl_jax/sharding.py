"""Device mesh and shardings.

The batch is split over the `data` mesh axis; parameters and optimizer state
are replicated (FSDP / tensor-parallel rules build on this, see the scale
issue). Meshes use Auto axes: XLA propagates shardings through the step, which
is what `jit(in_shardings=, out_shardings=)` code expects.
"""
from collections.abc import Sequence
import math

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(axes: Sequence[tuple[str, int]],
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Builds a mesh from [(name, size), ...]; one size may be -1 (the rest).

  Raises:
    ValueError: if the sizes do not multiply to the device count or there is
      no `data` axis.
  """
  devices = list(jax.devices() if devices is None else devices)
  names = tuple(name for name, _ in axes)
  sizes = [int(size) for _, size in axes]
  if DATA_AXIS not in names:
    raise ValueError(f"config.mesh {tuple(axes)} has no {DATA_AXIS!r} axis; "
                     f"add ('{DATA_AXIS}', -1)")
  if sizes.count(-1) > 1:
    raise ValueError(f"config.mesh {tuple(axes)}: at most one size may be -1")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if known == 0 or len(devices) % known:
      raise ValueError(f"config.mesh {tuple(axes)} does not divide "
                       f"{len(devices)} devices")
    sizes[sizes.index(-1)] = len(devices) // known
  if math.prod(sizes) != len(devices):
    raise ValueError(f"config.mesh {tuple(axes)} needs {math.prod(sizes)} "
                     f"devices but {len(devices)} are visible; fix the sizes "
                     "or use -1 for one axis")
  return Mesh(np.asarray(devices).reshape(sizes), names,
              axis_types=(jax.sharding.AxisType.Auto,) * len(names))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dim split over `data`, the rest replicated."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def check_batch_size(global_batch: int, mesh: Mesh, what: str) -> None:
  """A global batch must split evenly over the data axis and the hosts."""
  shards = mesh.shape[DATA_AXIS]
  if global_batch % shards or global_batch % jax.process_count():
    raise ValueError(
        f"config.{what}={global_batch} is not divisible by the {shards} data "
        f"shards and {jax.process_count()} processes; use a multiple of "
        f"{math.lcm(shards, jax.process_count())}")
