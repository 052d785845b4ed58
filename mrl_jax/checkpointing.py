"""Orbax checkpoints of the train state, with a little armour around them.

Each checkpoint holds two items: `state` (the TrainState, restored onto the
current mesh from an abstract target that carries shardings) and `meta`
(JSON: the run's fingerprint, nesting list and config), plus
`checksums.json` (the sha256 of every file of the two items, written before
Orbax renames the finished checkpoint into place). Restoring tells two failures apart:
  * a checkpoint that does not match the config (fingerprint, or the train
    state's tree, shapes and dtypes from Orbax's metadata) stops the run with
    one line naming what differs; nothing is moved;
  * a checkpoint that cannot be read (I/O or decode error, checksum
    mismatch) is moved aside to `<dir>/unreadable/` by a trainer (never
    deleted), skipped by a reader, and the previous one is tried.
A failed save raises `errors.RunError` (at that save, or at the next save or
wait for an asynchronous one) after shutting Orbax's threads down.
"""
import functools
import hashlib
import json
import os
import shutil
import time
from typing import Any

from absl import logging
import jax
import numpy as np
import orbax.checkpoint as ocp

from mrl_jax import errors

PyTree = Any

CHECKSUMS = "checksums.json"
_TMP_SUFFIX = ".orbax-checkpoint-tmp"  # where Orbax writes before the rename


@functools.cache
def _register_array_handler() -> None:
  """Once per process, before the first save or restore.

  Replica-parallel saving splits each replicated array across its replicas:
  worth it for large arrays on many hosts, but it compiles one slice per
  array shape and device (~10 s for a ResNet on 8 CPU devices). Keep it for
  arrays whose per-replica slice is at least 4 MiB.
  """
  ocp.type_handlers.register_type_handler(
      jax.Array,
      ocp.type_handlers.ArrayHandler(
          min_slice_bytes_for_replica_parallel=4 << 20),
      override=True)


class IncompatibleCheckpointError(ValueError):
  """The workdir holds checkpoints of a different model, task or optimizer."""


class UnreadableCheckpointError(errors.RunError):
  """A checkpoint's files are damaged (checksum mismatch)."""


class Checkpointer:
  """Saves and restores TrainStates under `directory`.

  Args:
    directory: where step folders live (created on first save).
    fingerprint: JSON-able facts that must match to resume (model, head,
      nesting dims, classes, optimizer, ...).
    max_to_keep: keep this many most recent checkpoints.
    read_only: a reader (eval, export, ...): never creates, moves or deletes
      anything; skips unreadable or vanishing checkpoints.
    checksums: record a sha256 per file at save and verify it at restore.
  """

  def __init__(self, directory: str, fingerprint: dict[str, Any],
               max_to_keep: int = 2, *, read_only: bool = False,
               checksums: bool = True):
    _register_array_handler()
    self.directory = os.path.abspath(directory)
    self.fingerprint = fingerprint
    self.read_only = read_only
    self._checksums = checksums
    self._saving_step = None
    self._options = ocp.CheckpointManagerOptions(
        max_to_keep=None if read_only else max_to_keep,
        read_only=read_only, create=not read_only,
        enable_async_checkpointing=not read_only,
        # Created in save() itself: a missing or read-only directory then
        # fails there, instead of leaving Orbax's threads waiting forever
        # for a directory that never appears.
        async_options=None if read_only else ocp.AsyncOptions(
            create_directories_asynchronously=False,
            post_finalization_callback=self._write_checksums))
    self._manager = self._open()

  def _open(self) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        self.directory, options=self._options,
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "meta": ocp.JsonCheckpointHandler()})

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def check_compatible(self) -> None:
    """Raises IncompatibleCheckpointError if the latest meta disagrees."""
    for step in sorted(self._manager.all_steps(), reverse=True):
      try:
        meta = self._read_meta(step)
      except Exception:  # pylint: disable=broad-except
        continue  # unreadable: restore_latest deals with it
      self._check_fingerprint(meta)
      return

  def _read_meta(self, step: int) -> dict[str, Any]:
    return self._manager.restore(
        step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def read_meta(self, step: int) -> dict[str, Any]:
    """The meta item at `step`: {"step", "fingerprint", "config"}."""
    return self._read_meta(step)

  def saved_state_tree(self, step: int) -> PyTree:
    """Orbax's record of the state at `step`: nested dicts of array
    metadata (shape, dtype), e.g. {"params": {...}, "opt_state": [...]}."""
    return self._manager.item_metadata(step)["state"].tree

  def restore_part(self, step: int, part: PyTree) -> PyTree:
    """Restores only `part`'s arrays of the state at `step`, e.g. another
    run's {"params": {"backbone": ...}} without its optimizer state.

    Args:
      part: nested dicts, a sub-tree of the saved state, whose leaves are
        `jax.ShapeDtypeStruct`s carrying the shardings to restore onto.
    Raises:
      UnreadableCheckpointError: a file differs from its recorded sha256,
        or the arrays cannot be read.
    """
    try:
      self._verify_checksums(step)
      # StandardRestore reads whole trees; PyTreeRestore reads the same
      # format and can leave the rest of the checkpoint on disk.
      with ocp.PyTreeCheckpointer() as reader:
        return reader.restore(
            os.path.join(self._step_dir(step), "state"),
            args=ocp.args.PyTreeRestore(
                item=part,
                restore_args=ocp.checkpoint_utils.construct_restore_args(
                    part),
                partial_restore=True))
    except Exception as e:  # pylint: disable=broad-except
      raise UnreadableCheckpointError(
          f"cannot read the checkpoint at step {step} in {self.directory} "
          f"({_one_line(e)}); restore its files or point at another "
          "workdir") from e

  def _check_fingerprint(self, meta: dict[str, Any]) -> None:
    # Facts a checkpoint lacks were not recorded by the version that wrote
    # it; restore_latest's check of the state's tree covers what they change.
    theirs = meta.get("fingerprint", {})
    diffs = [f"{k}: checkpoint {theirs[k]!r} vs config {v!r}"
             for k, v in _jsonable(self.fingerprint).items()
             if k in theirs and theirs[k] != v]
    if diffs:
      raise IncompatibleCheckpointError(
          f"{self.directory} holds checkpoints of a different run "
          f"({'; '.join(diffs)}); use a new --workdir, or move the old "
          "checkpoints away to start over")

  def restore_latest(self, target: PyTree) -> tuple[PyTree, int] | None:
    """Restores the newest readable checkpoint onto `target`'s shardings.

    Args:
      target: a state (or abstract state) whose leaves carry the shardings
        to restore onto.
    Returns:
      (state, step), or None if there is no readable checkpoint.
    Raises:
      IncompatibleCheckpointError: a readable checkpoint does not match
        the config (nothing is moved).
    """
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    for step in sorted(self._manager.all_steps(), reverse=True):
      try:
        self._check_fingerprint(self._read_meta(step))
        self._check_layout(step, abstract)  # a mismatch before any damage
        self._verify_checksums(step)
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract)))
        return restored["state"], step
      except (IncompatibleCheckpointError, MemoryError):
        raise
      except Exception as e:  # pylint: disable=broad-except
        self._skip(step, e)
    return None

  def _check_layout(self, step: int, abstract: PyTree) -> None:
    """Compares Orbax's record of the saved tree with the config's state."""
    saved = self._manager.item_metadata(step)["state"]
    diff = _layout_diff(_layout(saved.tree), _layout(abstract))
    if diff:
      raise IncompatibleCheckpointError(
          f"the checkpoint at step {step} in {self.directory} does not match "
          f"this config's train state ({diff}); resume with the run's own "
          "config.model / config.optimizer, or use a new --workdir")

  def _skip(self, step: int, error: Exception) -> None:
    """Sets an unreadable checkpoint aside (trainer) or passes it (reader)."""
    reason = _one_line(error)
    if not os.path.isdir(self._step_dir(step)):
      logging.warning("checkpoint at step %d vanished while it was read "
                      "(another run removed it); trying the previous one", step)
    elif self.read_only:
      logging.warning("checkpoint at step %d is unreadable (%s); skipping it "
                      "(left in place: a trainer sets it aside)", step, reason)
    else:
      self._set_aside(step, reason)

  def _set_aside(self, step: int, reason: str) -> None:
    aside = os.path.join(self.directory, "unreadable",
                         f"{step}-{int(time.time())}")
    logging.error("checkpoint at step %d is unreadable (%s); moving it to "
                  "%s and trying the previous one", step, reason, aside)
    os.makedirs(os.path.dirname(aside), exist_ok=True)
    self._manager.close()
    shutil.move(self._step_dir(step), aside)
    self._manager = self._open()

  def _step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def save(self, step: int, state: PyTree, config_json: str) -> None:
    """Starts an asynchronous save of `state` at `step` (keeps the last N).

    Raises:
      errors.RunError: this save, or the previous asynchronous one, failed.
    """
    meta = {"step": step, "fingerprint": _jsonable(self.fingerprint),
            "config": json.loads(config_json)}
    self.wait()  # Orbax would wait too; this names the step that failed
    self._saving_step = step  # for _write_checksums, in Orbax's thread
    try:
      self._manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))
    except Exception as e:  # pylint: disable=broad-except
      self._fail(f"saving the checkpoint at step {step}", e)

  def wait(self) -> None:
    """Blocks until the pending save is on disk; RunError if it failed."""
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      self._fail(f"finishing the checkpoint at step {self._saving_step}", e)

  def _fail(self, what: str, error: Exception) -> None:
    self.abandon()
    raise errors.RunError(
        f"{what} in {self.directory} failed ({_one_line(error)}); the run "
        "stopped: make the directory writable (or free space) and rerun to "
        "resume from the last checkpoint") from error

  def close(self) -> None:
    """Waits for the pending save (RunError if it failed) and closes."""
    self.wait()
    self._manager.close()

  def abandon(self) -> None:
    """Closes on an error path: joins Orbax's threads (so that the process
    can exit), logging rather than raising a save error of their own."""
    try:
      self._manager.close()
    except Exception as e:  # pylint: disable=broad-except
      logging.warning("closing the checkpoints in %s: %s", self.directory,
                      _one_line(e))

  def _write_checksums(self) -> None:
    """Orbax's post-finalization hook: hashes the finished temporary folder.

    Runs in Orbax's save thread before the folder is renamed to its step, so
    a checkpoint and its checksums appear together.
    """
    if not self._checksums or jax.process_index() != 0:
      return
    tmp = self._step_dir(self._saving_step) + _TMP_SUFFIX
    if not os.path.isdir(tmp):  # another atomicity mode (e.g. GCS)
      logging.warning("no %s to hash; the checkpoint at step %s has no "
                      "checksums", tmp, self._saving_step)
      return
    sums = {path: _sha256(os.path.join(tmp, path)) for path in _files(tmp)}
    with open(os.path.join(tmp, CHECKSUMS), "w") as f:
      json.dump({"sha256": sums}, f, indent=0)

  def _verify_checksums(self, step: int) -> None:
    """Raises UnreadableCheckpointError if a recorded file differs."""
    if not self._checksums:
      return
    path = os.path.join(self._step_dir(step), CHECKSUMS)
    if not os.path.exists(path):
      logging.warning("checkpoint at step %d has no %s (written without "
                      "checksums); restoring it unverified", step, CHECKSUMS)
      return
    with open(path) as f:
      sums = json.load(f)["sha256"]
    for name, digest in sums.items():
      if _sha256(os.path.join(self._step_dir(step), name)) != digest:
        raise UnreadableCheckpointError(f"{name} does not match its sha256")


def _one_line(error: Exception) -> str:
  """'OSError: [Errno 30] ...': the type and the first line of the message."""
  lines = str(error).strip().splitlines()
  return f"{type(error).__name__}: {lines[0][:200]}" if lines else (
      type(error).__name__)


def _files(root: str) -> list[str]:
  """Every file of the items (state/, meta/) under root, relative to it.

  Orbax's top-level files (_CHECKPOINT_METADATA, ...) are rewritten when the
  checkpoint is committed, after the hash; they hold no arrays.
  """
  return sorted(os.path.relpath(os.path.join(d, name), root)
                for d, _, names in os.walk(root) if d != root
                for name in names)


def _sha256(path: str) -> str:
  with open(path, "rb") as f:
    return hashlib.file_digest(f, "sha256").hexdigest()


def _layout(tree: PyTree) -> dict[str, tuple[tuple[int, ...], str]]:
  """{'opt_state/0/mu/...': (shape, dtype)} for every array of a tree."""
  return {"/".join(k): (tuple(v.shape), np.dtype(v.dtype).name)
          for k, v in ocp.tree.to_flat_dict(tree).items()}


def layout_diff(saved: PyTree, wanted: PyTree) -> str:
  """One phrase naming how two trees' arrays (paths, shapes, dtypes)
  differ, '' if they match; `saved` e.g. from `saved_state_tree`."""
  return _layout_diff(_layout(saved), _layout(wanted))


def _layout_diff(saved: dict[str, Any], wanted: dict[str, Any]) -> str:
  """One phrase naming how two layouts differ ('' if they match)."""
  parts = []
  for keys, where in (([k for k in saved if k not in wanted],
                       "only the checkpoint has"),
                      ([k for k in wanted if k not in saved],
                       "only the config's state has")):
    if keys:
      parts.append(f"{where} {len(keys)} arrays, e.g. {keys[0]}")
  changed = [k for k in wanted if k in saved and saved[k] != wanted[k]]
  if changed:
    k = changed[0]
    parts.append(f"{len(changed)} arrays differ, e.g. {k}: checkpoint "
                 f"{saved[k][1]}{list(saved[k][0])} vs config "
                 f"{wanted[k][1]}{list(wanted[k][0])}")
  return "; ".join(parts)


def _jsonable(tree: dict[str, Any]) -> dict[str, Any]:
  """Tuples become lists, as they do in JSON, so comparisons are fair."""
  return json.loads(json.dumps(tree))
