"""Export provenance through the launcher: a killed export resumes from the
same checkpoint, and an export from another checkpoint redoes the split."""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from mrl_jax.export import embedding_files

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
CONFIG = os.path.join(REPO, "configs", "default.py")

# The real launcher, SIGKILLed when its export is about to write its third
# shard: two shards of the train split are on disk, no metadata.json.
KILL_AT_THIRD_SHARD = """
import os, signal, sys
from absl import app
from mrl_jax import atomic_files, main
original_write = atomic_files.write_npz
calls = []
def write_npz(path, **arrays):
  calls.append(path)
  if len(calls) == 3:
    os.kill(os.getpid(), signal.SIGKILL)
  original_write(path, **arrays)
atomic_files.write_npz = write_npz
sys.argv = ["mrl_jax.main"] + sys.argv[1:]
app.run(main.main)
"""


def _launch_export(workdir, script=None):
  cmd = ([sys.executable, "-c", script] if script else
         [sys.executable, "-m", "mrl_jax.main"]) + [
             f"--config={CONFIG}:smoke", f"--workdir={workdir}",
             "--mode=export", "--config.export.splits=('train[:1024]',)"]
  return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                        timeout=300)


def _shard_checkpoints(directory) -> set[str]:
  return {str(np.load(os.path.join(directory, name))["checkpoint"])
          for name in os.listdir(directory) if name.startswith("shard-")}


def test_export_from_another_checkpoint_redoes_the_split(tmp_path):
  # Train 8 steps (checkpoints at 4 and 8); export from step 8, killed after
  # two shards; resume it; then make step 4 the latest checkpoint (as more
  # training makes another one the latest) and export again.
  workdir = str(tmp_path / "run")
  subprocess.run([sys.executable, "-m", "mrl_jax.main",
                  f"--config={CONFIG}:smoke", f"--workdir={workdir}",
                  "--config.total_steps=8", "--config.keep_checkpoints=2"],
                 cwd=REPO, check=True, capture_output=True, timeout=300)
  split = embedding_files.split_dir(workdir, "fashion_mnist", "train[:1024]")
  killed = _launch_export(workdir, KILL_AT_THIRD_SHARD)
  assert killed.returncode == -9
  assert sorted(os.listdir(split)) == ["shard-p000-00000.npz",
                                       "shard-p000-00001.npz"]
  resumed = _launch_export(workdir)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert "2 of 4 shards already exported" in resumed.stderr
  at_8, _, meta_8 = embedding_files.load_split(split)
  assert meta_8["checkpoint"]["step"] == 8
  assert _shard_checkpoints(split) == {
      embedding_files.checkpoint_label(meta_8["checkpoint"])}

  # Another checkpoint: killed after two new shards, the split is unfinished
  # (nothing of it can be read), then redone as a whole.
  shutil.rmtree(os.path.join(workdir, "checkpoints", "8"))
  assert _launch_export(workdir, KILL_AT_THIRD_SHARD).returncode == -9
  with pytest.raises(ValueError, match="no finished export"):
    embedding_files.load_split(split)
  redone = _launch_export(workdir)
  assert redone.returncode == 0, redone.stderr[-2000:]
  assert "2 of 4 shards already exported" in redone.stderr  # its own two
  at_4, _, meta_4 = embedding_files.load_split(split)
  assert meta_4["step"] == meta_4["checkpoint"]["step"] == 4
  assert meta_4["checkpoint"]["weights"] != meta_8["checkpoint"]["weights"]
  assert _shard_checkpoints(split) == {
      embedding_files.checkpoint_label(meta_4["checkpoint"])}
  assert np.mean(np.any(at_4 != at_8, axis=1)) > 0.5
