"""Checkpointer on a tiny state: mismatch vs unreadable, readers, checksums,
failed saves; the workdir lock; metrics.jsonl after a resume; the summary."""
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import write_image_tree
from mrl_jax import atomic_files
from mrl_jax import checkpointing
from mrl_jax import errors
from mrl_jax import metric_writer
from mrl_jax import train
from mrl_jax import workdir_lock

ADAMW = {"model": "m", "optimizer": {"name": "adamw", "state_dtype": "float32"}}


def state(n=4):
  return {"params": {"w": jnp.arange(n, dtype=jnp.float32)},
          "opt_state": {"mu": jnp.zeros(n)}}


def saved(directory, steps=(1, 2), fingerprint=None, **kwargs):
  """A checkpoint directory holding `steps` of state() (w = step * arange)."""
  ckpt = checkpointing.Checkpointer(str(directory), fingerprint or ADAMW,
                                    **kwargs)
  for step in steps:
    ckpt.save(step, {**state(), "params": {"w": step * state()["params"]["w"]}},
              "{}")
  ckpt.close()
  return str(directory)


def listing(directory):
  return sorted((os.path.relpath(os.path.join(d, n), directory),
                 os.path.getsize(os.path.join(d, n)))
                for d, _, names in os.walk(directory) for n in names)


def restore(directory, read_only=False, fingerprint=None, target=None):
  ckpt = checkpointing.Checkpointer(directory, fingerprint or ADAMW,
                                    read_only=read_only)
  out = ckpt.restore_latest(target or state())
  ckpt.close()
  return out


def test_restores_newest_with_checksums_recorded(tmp_path):
  directory = saved(tmp_path / "c")
  sums = json.loads((tmp_path / "c" / "2" / checkpointing.CHECKSUMS)
                    .read_text())["sha256"]
  assert "state/_METADATA" in sums and "meta/metadata" in sums
  restored, step = restore(directory)
  assert step == 2
  np.testing.assert_array_equal(restored["params"]["w"], [0, 2, 4, 6])


def test_other_optimizer_is_refused_from_meta_and_nothing_moves(tmp_path):
  directory = saved(tmp_path / "c")
  before = listing(directory)
  sgd = {**ADAMW, "optimizer": {"name": "sgd", "state_dtype": "float32"}}
  for read_only in (False, True):
    ckpt = checkpointing.Checkpointer(directory, sgd, read_only=read_only)
    with pytest.raises(checkpointing.IncompatibleCheckpointError,
                       match=r"optimizer: checkpoint .*'adamw'.* vs config "
                       r".*'sgd'"):
      ckpt.check_compatible()
    with pytest.raises(checkpointing.IncompatibleCheckpointError):
      ckpt.restore_latest(state())
    ckpt.close()
  assert listing(directory) == before


def test_other_state_tree_is_refused_naming_the_array(tmp_path):
  # A fingerprint without the optimizer (an older checkpoint): the tree
  # recorded by Orbax still tells a mismatch from damage.
  directory = saved(tmp_path / "c", fingerprint={"model": "m"})
  before = listing(directory)
  other = {**state(), "opt_state": {"trace": jnp.zeros(4)}}
  with pytest.raises(checkpointing.IncompatibleCheckpointError,
                     match=r"only the checkpoint has 1 arrays, e.g. "
                     r"opt_state/mu; only the config's state has 1 arrays"):
    restore(directory, target=other)
  with pytest.raises(checkpointing.IncompatibleCheckpointError,
                     match=r"2 arrays differ, e.g. opt_state/mu: checkpoint "
                     r"float32\[4\] vs config float32\[5\]"):
    restore(directory, target=state(5))
  assert listing(directory) == before


def truncate(path):
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 3)


def flip_a_byte(step_dir):
  data = sorted(p for p in (step_dir / "state").rglob("*")
                if p.is_file() and "/d/" in str(p))
  raw = bytearray(data[0].read_bytes())
  raw[len(raw) // 2] ^= 0xFF
  data[0].write_bytes(raw)


@pytest.mark.parametrize("damage", [
    lambda d: truncate(d / "state" / "_METADATA"), flip_a_byte])
def test_unreadable_is_skipped_by_readers_and_set_aside_by_trainers(
    tmp_path, damage):
  directory = saved(tmp_path / "c")
  damage(tmp_path / "c" / "2")
  before = listing(directory)
  _, step = restore(directory, read_only=True)
  assert step == 1 and listing(directory) == before  # a reader moves nothing
  _, step = restore(directory)
  assert step == 1
  assert sorted(os.listdir(directory)) == ["1", "unreadable"]
  assert os.listdir(os.path.join(directory, "unreadable"))[0].startswith("2-")


def test_reader_with_nothing_readable_gets_none(tmp_path):
  directory = saved(tmp_path / "c")
  for step in ("1", "2"):
    truncate(tmp_path / "c" / step / "state" / "_METADATA")
  assert restore(directory, read_only=True) is None


def test_reader_tolerates_a_checkpoint_vanishing_mid_restore(
    tmp_path, monkeypatch):
  directory = saved(tmp_path / "c")
  original = checkpointing.Checkpointer._check_layout

  def trainer_deletes_it(self, step, abstract):
    if step == 2:  # as a trainer's max_to_keep does
      shutil.rmtree(os.path.join(directory, "2"))
    return original(self, step, abstract)

  monkeypatch.setattr(checkpointing.Checkpointer, "_check_layout",
                      trainer_deletes_it)
  _, step = restore(directory, read_only=True)
  assert step == 1 and sorted(os.listdir(directory)) == ["1"]


def test_failed_save_is_a_run_error(tmp_path):
  directory = str(tmp_path / "c")
  ckpt = checkpointing.Checkpointer(directory, ADAMW)
  ckpt.save(1, state(), "{}")
  ckpt.wait()
  shutil.rmtree(directory)
  with open(directory, "w"):  # the directory became a file
    pass
  with pytest.raises(errors.RunError, match=r"checkpoint at step 2 .* failed"):
    ckpt.save(2, state(), "{}")
    ckpt.wait()


def test_failed_asynchronous_save_surfaces_at_wait_and_joins_threads(
    tmp_path, monkeypatch):
  def disk_error(path):
    raise OSError(5, "Input/output error", path)

  monkeypatch.setattr(checkpointing, "_sha256", disk_error)  # Orbax's thread
  ckpt = checkpointing.Checkpointer(str(tmp_path / "c"), ADAMW)
  ckpt.save(1, state(), "{}")
  with pytest.raises(errors.RunError,
                     match=r"finishing the checkpoint at step 1 .* failed "
                     r"\(OSError: \[Errno 5\] Input/output error"):
    ckpt.wait()
  # Nothing left for the interpreter to wait for at exit: Orbax's pools are
  # shut down, so their idle workers end (on their own, soon after).
  def busy():
    return [t.name for t in threading.enumerate()
            if t.is_alive() and not t.daemon
            and t is not threading.main_thread()]
  deadline = time.monotonic() + 30
  while busy() and time.monotonic() < deadline:
    time.sleep(0.05)
  assert busy() == []
  assert not os.path.exists(tmp_path / "c" / "1")


def image_folder_config(config_module, root):
  return config_module("image_folder").get_config(f"root={root},smoke")


def test_renamed_class_is_a_different_run(tmp_path, config_module):
  configs = [image_folder_config(config_module, write_image_tree(
      tmp_path / name, {"train": 2, "val": 1}, classes=("cat", "dog", fish)))
             for name, fish in (("a", "fish"), ("b", "eel"))]
  prints = [train.setup(c).fingerprint for c in configs]
  assert prints[0]["class_names"] == ["cat", "dog", "fish"]
  assert prints[1]["class_names"] == ["cat", "dog", "eel"]
  directory = saved(tmp_path / "c", fingerprint=prints[0])
  checkpointing.Checkpointer(directory, prints[0]).check_compatible()
  with pytest.raises(checkpointing.IncompatibleCheckpointError,
                     match="class_names: checkpoint .*'fish'.* vs config "
                     ".*'eel'"):
    checkpointing.Checkpointer(directory, prints[1]).check_compatible()


def test_second_holder_of_the_lock_is_refused_naming_the_first(tmp_path):
  with workdir_lock.exclusive(str(tmp_path), "train"):
    with pytest.raises(errors.RunError, match=rf"in use by another run \(pid "
                       rf"{os.getpid()}, host .*, mode train"):
      with workdir_lock.exclusive(str(tmp_path), "train"):
        pass
    with workdir_lock.exclusive(str(tmp_path), "train", primary=False):
      pass  # other processes of the same run share the workdir
  with workdir_lock.exclusive(str(tmp_path), "train"):
    pass  # released


def test_unwritable_workdir_is_a_run_error(tmp_path):
  (tmp_path / "file").write_text("")
  with pytest.raises(errors.RunError, match="cannot create .*file/lock"):
    with workdir_lock.exclusive(str(tmp_path / "file"), "train"):
      pass


def test_lock_of_a_killed_run_is_free(tmp_path):
  holder = subprocess.Popen(
      [sys.executable, "-c",
       "import sys, time\nfrom mrl_jax import workdir_lock\n"
       f"with workdir_lock.exclusive({str(tmp_path)!r}, 'train'):\n"
       "  print('locked', flush=True)\n  time.sleep(600)\n"],
      stdout=subprocess.PIPE, text=True)
  assert holder.stdout.readline() == "locked\n"
  with pytest.raises(errors.RunError, match=f"pid {holder.pid}"):
    with workdir_lock.exclusive(str(tmp_path), "train"):
      pass
  holder.send_signal(signal.SIGKILL)
  holder.wait()
  with workdir_lock.exclusive(str(tmp_path), "train"):
    pass


def rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_metrics_after_resume_have_each_step_once(tmp_path):
  workdir = str(tmp_path)
  writer = metric_writer.MetricWriter(workdir)
  for step in (4, 8):
    writer.write(step, {"train/loss": 1.0})
  writer.write(8, {"val/top1": 0.5})
  writer.close()
  with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
    f.write('{"step": 12, "train/lo')  # killed mid-line
  writer = metric_writer.MetricWriter(workdir, resume_step=4)
  assert rows(workdir) == [{"step": 4, "train/loss": 1.0}]
  writer.write(8, {"train/loss": 2.0})
  writer.write(8, {"val/top1": 0.6})
  writer.write(8, {"val/top1": 0.7})  # the same eval again: replaces
  writer.close()
  assert rows(workdir) == [{"step": 4, "train/loss": 1.0},
                           {"step": 8, "train/loss": 2.0},
                           {"step": 8, "val/top1": 0.7}]


def test_summary_keeps_a_newer_step_and_survives_a_read_only_workdir(
    tmp_path, monkeypatch):
  path = tmp_path / "eval_summary.json"
  train._write_summary(str(tmp_path), {"step": 12}, must=False)
  train._write_summary(str(tmp_path), {"step": 8}, must=False)
  assert json.loads(path.read_text())["step"] == 12

  def read_only(*_):
    raise OSError(30, "Read-only file system")

  monkeypatch.setattr(atomic_files, "write_json", read_only)
  train._write_summary(str(tmp_path), {"step": 16}, must=False)  # warns
  with pytest.raises(errors.RunError, match="cannot write .*Read-only"):
    train._write_summary(str(tmp_path), {"step": 16}, must=True)
