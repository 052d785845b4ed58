"""Orbax checkpoints of the train state, with a little armour around them.

Each checkpoint holds two items: `state` (the TrainState, restored onto the
current mesh from an abstract target that carries shardings) and `meta`
(JSON: the run's fingerprint, nesting list and config). On start-up:
  * a workdir whose checkpoints come from an incompatible config is refused
    before anything is written;
  * an unreadable latest checkpoint is moved aside to `<dir>/unreadable/`
    (never deleted) and the previous one is used.
"""
import json
import os
import shutil
import time
from typing import Any

from absl import logging
import jax
import orbax.checkpoint as ocp

PyTree = Any

# Replica-parallel saving splits each replicated array across its replicas:
# worth it for large arrays on many hosts, but it compiles one slice per array
# shape and device (~10 s for a ResNet on 8 CPU devices). Keep it for arrays
# whose per-replica slice is at least 4 MiB.
ocp.type_handlers.register_type_handler(
    jax.Array,
    ocp.type_handlers.ArrayHandler(
        min_slice_bytes_for_replica_parallel=4 << 20),
    override=True)


class IncompatibleCheckpointError(ValueError):
  """The workdir holds checkpoints of a different model or task."""


class Checkpointer:
  """Saves and restores TrainStates under `directory`.

  Args:
    directory: where step folders live (created on first save).
    fingerprint: JSON-able facts that must match to resume (model, head,
      nesting dims, classes, ...).
    max_to_keep: keep this many most recent checkpoints.
  """

  def __init__(self, directory: str, fingerprint: dict[str, Any],
               max_to_keep: int = 2):
    self.directory = os.path.abspath(directory)
    self.fingerprint = fingerprint
    self._options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, enable_async_checkpointing=True, create=True)
    self._manager = self._open()

  def _open(self) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(self.directory, options=self._options)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def check_compatible(self) -> None:
    """Raises IncompatibleCheckpointError if the latest meta disagrees."""
    for step in sorted(self._manager.all_steps(), reverse=True):
      try:
        meta = self._manager.restore(
            step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
      except Exception:  # pylint: disable=broad-except
        continue  # unreadable: restore_latest deals with it
      theirs = meta.get("fingerprint", {})
      diffs = [f"{k}: checkpoint {theirs.get(k)!r} vs config {v!r}"
               for k, v in _jsonable(self.fingerprint).items()
               if theirs.get(k) != v]
      if diffs:
        raise IncompatibleCheckpointError(
            f"{self.directory} holds checkpoints of a different run "
            f"({'; '.join(diffs)}); use a new --workdir, or move the old "
            "checkpoints away to start over")
      return

  def restore_latest(self, target: PyTree) -> tuple[PyTree, int] | None:
    """Restores the newest readable checkpoint onto `target`'s shardings.

    Args:
      target: a state (or abstract state) whose leaves carry the shardings
        to restore onto.
    Returns:
      (state, step), or None if there is no readable checkpoint.
    """
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    for step in sorted(self._manager.all_steps(), reverse=True):
      try:
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract)))
        return restored["state"], step
      except Exception as e:  # pylint: disable=broad-except
        self._set_aside(step, e)
    return None

  def _set_aside(self, step: int, error: Exception) -> None:
    aside = os.path.join(self.directory, "unreadable",
                         f"{step}-{int(time.time())}")
    logging.error("checkpoint at step %d is unreadable (%s: %s); moving it to "
                  "%s and trying the previous one", step,
                  type(error).__name__, str(error).splitlines()[0][:200], aside)
    os.makedirs(os.path.dirname(aside), exist_ok=True)
    self._manager.close()
    shutil.move(os.path.join(self.directory, str(step)), aside)
    self._manager = self._open()

  def save(self, step: int, state: PyTree, config_json: str) -> None:
    """Starts an asynchronous save of `state` at `step` (keeps the last N)."""
    meta = {"step": step, "fingerprint": _jsonable(self.fingerprint),
            "config": json.loads(config_json)}
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


def _jsonable(tree: dict[str, Any]) -> dict[str, Any]:
  """Tuples become lists, as they do in JSON, so comparisons are fair."""
  return json.loads(json.dumps(tree))
