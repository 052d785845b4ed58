"""Locked parameters: a sub-tree of the model taken from another workdir's
checkpoint and held fixed while the rest trains (LiT, Zhai et al. 2022; the
contrastive task locks a tower, tasks/locked_tower.py).

What locking means here:
* a fresh run copies the sub-tree's parameters and BatchNorm statistics
  from the source workdir's latest checkpoint (`load`; only those arrays
  are read, never the source's optimizer state);
* the optimizer leaves them alone (`hold`): no update, no weight decay,
  no optimizer state;
* the task's model runs the sub-tree in inference mode and cuts its output
  off from the gradient, so the backward pass skips it;
* a resumed run restores its own checkpoint and never reads the source
  again (the task's fingerprint records the lock).
"""
import dataclasses
import os
from collections.abc import Callable
from typing import Any

import jax
import optax

from mrl_jax import checkpointing
from mrl_jax import errors

PyTree = Any
Path = tuple[str, ...]
# The parts of the state a locked sub-tree has (its optimizer state is none).
COLLECTIONS = ("params", "batch_stats")


@dataclasses.dataclass(frozen=True)
class Lock:
  """A locked sub-tree and where it comes from.

  Attributes:
    path: the sub-tree's keys in the model's params (and batch_stats), e.g.
      ("towers", "image_tower").
    from_workdir: the workdir whose latest checkpoint holds it.
    what: the sub-tree in words, for messages ("the image tower").
    field: the config field that names from_workdir, for messages.
    source_path: the source checkpoint's fingerprint -> the sub-tree's keys
      there; raises a one-line ValueError if the source holds no matching
      sub-tree (another task, another model).
  """
  path: Path
  from_workdir: str
  what: str
  field: str
  source_path: Callable[[dict[str, Any]], Path]


def locked_mask(params: PyTree, lock: Lock) -> PyTree:
  """params' tree of bools: True for the leaves under lock.path."""
  def one(key_path, _):
    keys = tuple(getattr(k, "key", None) for k in key_path)
    return keys[:len(lock.path)] == lock.path
  return jax.tree_util.tree_map_with_path(one, params)


def hold(tx: optax.GradientTransformation,
         lock: Lock | None) -> optax.GradientTransformation:
  """`tx` for the unlocked leaves; zero updates and no state for the locked.

  Two masks rather than `optax.multi_transform`, whose per-label dict in
  the optimizer state would hide the parameter paths that
  `sharding_rules.opt_state_specs` shards the state by.
  """
  if lock is None:
    return tx
  locked = lambda params: locked_mask(params, lock)
  trainable = lambda params: jax.tree.map(lambda x: not x, locked(params))
  return optax.chain(optax.masked(tx, trainable),
                     optax.masked(optax.set_to_zero(), locked))


@dataclasses.dataclass(frozen=True)
class _Source:
  ckpt: checkpointing.Checkpointer
  step: int
  path: Path


def check_source(lock: Lock, variables: PyTree) -> None:
  """Checks the source's latest checkpoint against the model's sub-tree
  without reading any array (run before anything is written or compiled).

  Args:
    variables: the model's {"params", "batch_stats"?} as arrays or
      `jax.ShapeDtypeStruct`s.
  Raises:
    errors.RunError: lock.from_workdir is missing, has no checkpoint, or
      its latest checkpoint's metadata cannot be read.
    ValueError: its checkpoint holds no sub-tree that matches the model's.
  """
  _open_source(lock, variables).ckpt.close()


def load(lock: Lock, state: Any, target: Any) -> Any:
  """`state` with lock.path's params and batch_stats read from the source.

  Args:
    state: a freshly initialised TrainState.
    target: the train state as `jax.ShapeDtypeStruct`s carrying shardings
      (`train.abstract_train_state`): the arrays are restored onto them.
  Raises:
    as `check_source`; checkpointing.UnreadableCheckpointError (a
    RunError) for a damaged one.
  """
  wanted = {c: getattr(target, c) for c in COLLECTIONS}
  source = _open_source(lock, wanted)
  part = {c: _nest(source.path, _get(wanted[c], lock.path))
          for c in COLLECTIONS if _get(wanted[c], lock.path)}
  try:
    restored = source.ckpt.restore_part(source.step, part)
  finally:
    source.ckpt.close()
  return state.replace(**{
      c: _replace(getattr(state, c), lock.path,
                  _get(restored[c], source.path)) for c in part})


def _open_source(lock: Lock, variables: PyTree) -> _Source:
  """The source's latest checkpoint, checked against variables' sub-tree."""
  directory = os.path.join(lock.from_workdir, "checkpoints")
  if not os.path.isdir(lock.from_workdir):
    raise errors.RunError(f"{lock.field}={lock.from_workdir!r} does not "
                          "exist; point it at a workdir whose checkpoint "
                          f"holds {lock.what}")
  ckpt = checkpointing.Checkpointer(directory, {}, read_only=True)
  step = ckpt.latest_step()
  try:
    if step is None:
      raise errors.RunError(f"{lock.field}={lock.from_workdir!r} has no "
                            f"checkpoint in {directory}; train it first or "
                            "point it at a trained workdir")
    try:
      meta, saved = ckpt.read_meta(step), ckpt.saved_state_tree(step)
    except Exception as e:  # pylint: disable=broad-except
      raise errors.RunError(
          f"cannot read the checkpoint at step {step} in {directory} "
          f"({type(e).__name__}); restore its files or set {lock.field} "
          "to another workdir") from e
    path = lock.source_path(meta.get("fingerprint", {}))
    for c in COLLECTIONS:
      diff = checkpointing.layout_diff(_get(saved.get(c) or {}, path),
                                       _get(variables.get(c) or {},
                                            lock.path))
      if diff:
        raise ValueError(
            f"{lock.what} in {lock.from_workdir} (step {step}) does not "
            f"match this config's ({c}: {diff}); configure the same model "
            f"and input shape as the source, or set {lock.field} to a "
            "matching workdir")
  except BaseException:
    ckpt.close()
    raise
  return _Source(ckpt, step, path)


def _get(tree: PyTree, path: Path) -> PyTree:
  """tree[path[0]][path[1]]...; {} where a key is missing."""
  for key in path:
    if not isinstance(tree, dict) or key not in tree:
      return {}
    tree = tree[key]
  return tree


def _nest(path: Path, leaf: PyTree) -> dict[str, Any]:
  """{path[0]: {path[1]: ... leaf}}."""
  for key in reversed(path):
    leaf = {key: leaf}
  return leaf


def _replace(tree: dict[str, Any], path: Path,
             value: PyTree) -> dict[str, Any]:
  """A copy of nested dicts `tree` with tree[path] set to value."""
  if not path:
    return value
  return {**tree, path[0]: _replace(tree[path[0]], path[1:], value)}
