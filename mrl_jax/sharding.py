"""Device mesh, batch shardings and activation constraints.

Training meshes have the axes `data`, `fsdp` and `model` (missing ones get
size 1). The batch is split over (`data`, `fsdp`): FSDP is data parallelism
whose parameters are sharded too. How parameters and optimizer state are
split is decided by rules (sharding_rules.py). Meshes use Auto axes: XLA
propagates shardings through the step, which is what
`jit(in_shardings=, out_shardings=)` code expects.
"""
from collections.abc import Callable, Sequence
import functools
import math
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"
FSDP_AXIS = "fsdp"
MODEL_AXIS = "model"
TRAIN_AXES = (DATA_AXIS, FSDP_AXIS, MODEL_AXIS)
# Mesh axes that split the batch, major to minor.
BATCH_AXES = (DATA_AXIS, FSDP_AXIS)


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


def make_train_mesh(axes: Sequence[tuple[str, int]],
                    devices: Sequence[jax.Device] | None = None) -> Mesh:
  """`make_mesh` for training: axes among data/fsdp/model, missing ones size 1.

  Every training mesh has all three axes so that sharding rules can always
  name them; an axis of size 1 splits nothing.
  """
  names = [name for name, _ in axes]
  unknown = sorted(set(names) - set(TRAIN_AXES))
  if unknown:
    raise ValueError(f"config.mesh axis {unknown[0]!r} is unknown; use "
                     f"{', '.join(TRAIN_AXES)}")
  missing = tuple((name, 1) for name in TRAIN_AXES if name not in names)
  return make_mesh(tuple(axes) + missing, devices)


def batch_axes(mesh: Mesh | jax.sharding.AbstractMesh) -> tuple[str, ...]:
  """The axes of BATCH_AXES that `mesh` has."""
  return tuple(a for a in BATCH_AXES if a in mesh.axis_names)


def batch_spec(mesh: Mesh) -> P:
  """Leading (batch) dim split over the batch axes, the rest replicated."""
  return P(batch_axes(mesh))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """`batch_spec` on mesh: how every batch array is laid out."""
  return NamedSharding(mesh, batch_spec(mesh))


def batch_shards(mesh: Mesh) -> int:
  """How many pieces the batch is split into."""
  return math.prod(mesh.shape[a] for a in batch_axes(mesh))


def constrain_batch(x: jax.Array, batch_dim: int = 0) -> jax.Array:
  """Pins dim `batch_dim` of an activation to the batch axes, others free.

  Without it XLA may split activations the way it splits an FSDP weight they
  meet, instead of by example. Acts only while a step is traced under
  `traced_under_mesh`; elsewhere (init, a model applied alone) it returns x
  unchanged.
  """
  mesh = jax.sharding.get_abstract_mesh()
  axes = batch_axes(mesh)
  if mesh.empty or not axes:
    return x
  # Other dims stay free, so a tensor-parallel split of features survives.
  spec = [P.UNCONSTRAINED] * x.ndim
  spec[batch_dim] = axes
  return jax.lax.with_sharding_constraint(x, P(*spec))


def traced_under_mesh(fn: Callable[..., Any], mesh: Mesh) -> Callable[..., Any]:
  """fn, traced with `mesh` as the context mesh (for `constrain_batch`)."""
  @functools.wraps(fn)
  def wrapped(*args, **kwargs):
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
      return fn(*args, **kwargs)
  return wrapped


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def padded_batch_size(global_batch: int, mesh: Mesh) -> int:
  """`global_batch` rounded up to split evenly over the batch shards and the
  processes of `mesh`: the examples each eval step reads.

  Eval counts only rows with mask 1 (the padding of its last batch has 0),
  so the configured eval batch can be any size; the rounding adds less than
  one example per batch shard.
  """
  processes = len({d.process_index for d in mesh.devices.flat})
  unit = math.lcm(batch_shards(mesh), processes)
  return -(-global_batch // unit) * unit


def check_batch_size(global_batch: int, mesh: Mesh, what: str) -> None:
  """A global batch must split evenly over the batch axes and the hosts."""
  shards = batch_shards(mesh)
  if global_batch % shards or global_batch % jax.process_count():
    raise ValueError(
        f"config.{what}={global_batch} is not divisible by the {shards} batch "
        f"shards and {jax.process_count()} processes; use a multiple of "
        f"{math.lcm(shards, jax.process_count())}")
