"""Export settings are validated before any work; exports record the
checkpoint they come from (the plain end-to-end export runs in
train_test.py, through the launcher)."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from mrl_jax import embedding_files
from mrl_jax import export
from mrl_jax import sharding

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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


def test_defaults_and_path_safe_split_names(config_module):
  settings = export._export_settings(  # pylint: disable=protected-access
      config_module("default").get_config())
  assert settings == {"splits": ("train", "test"), "dtype": "float16",
                      "examples_per_shard": 20_000,
                      "logits_splits": ("test",), "flip_tta": True,
                      "views": None}
  assert embedding_files.split_dir("W", "ds", "train[:10%]").endswith(
      os.path.join("embeddings", "ds", "train_10%"))


@pytest.mark.parametrize("field,value,match", [
    ("dtype", "int8", "config.export.dtype"),
    ("examples_per_shard", 100, "multiple of the per-process eval batch 64"),
    ("views.count", -2, "views.count=-2 must be an int >= 0"),
    ("views.preprocess", "flip_lr|blur", "unknown preprocess op 'blur'"),
])
def test_bad_export_settings(field, value, match, config_module):
  config = config_module("default").get_config("smoke")
  config.export.views.count = 2  # views are checked when asked for
  *path, name = f"export.{field}".split(".")
  section = config
  for key in path:
    section = section[key]
  section[name] = value
  with pytest.raises(ValueError, match=match):
    export._export_settings(config)  # pylint: disable=protected-access


def test_reading_and_evaluating_an_export_imports_neither_tf_nor_flax():
  # Downstream evaluation (and the search benchmark on a bare GPU image) reads
  # exports with numpy and jax alone; a fresh interpreter shows what loads.
  code = ("import sys, mrl_jax.embedding_eval, mrl_jax.embedding_files; "
          "print(sorted(m for m in ('tensorflow', 'flax', 'orbax.checkpoint')"
          " if m in sys.modules))")
  out = subprocess.run([sys.executable, "-c", code], check=True,
                       capture_output=True, text=True).stdout
  assert out.strip() == "[]"


def test_reading_a_missing_or_empty_export_says_how_to_fix_it(tmp_path):
  with pytest.raises(ValueError, match="no finished export.*--mode=export"):
    embedding_files.load_split(str(tmp_path / "nothing_here"))
  (tmp_path / "metadata.json").write_text('{"step": 1}')
  with pytest.raises(ValueError, match="no shard-.*run --mode=export again"):
    embedding_files.load_split(str(tmp_path))


def test_database_and_queries_are_checked_before_any_shard_is_read(tmp_path):
  # Metadata only, no shards: the checkpoint mismatch is found without I/O of
  # the (possibly huge) database.
  for name, step in (("train", 1), ("test", 2)):
    (tmp_path / name).mkdir()
    (tmp_path / name / "metadata.json").write_text(json.dumps(
        {"step": 1, "nesting": [8],
         "checkpoint": {"step": 1, "weights": f"{step:016x}"}}))
  with pytest.raises(ValueError, match="step 1 weights 0+1, nesting .8.* and "
                     ".*step 1 weights 0+2.*different checkpoints.*"
                     "--mode=export"):
    embedding_files.load_database_and_queries(str(tmp_path / "train"),
                                              str(tmp_path / "test"))
  with pytest.raises(ValueError, match="no finished export"):
    embedding_files.load_database_and_queries(str(tmp_path / "train"),
                                              str(tmp_path / "missing"))


def _write_split(directory, checkpoints: list[str]) -> dict:
  """A split whose shard i says it comes from checkpoint label
  checkpoints[i]; its metadata records the first one's."""
  directory.mkdir()
  for i, label in enumerate(checkpoints):
    np.savez(directory / f"shard-p000-{i:05d}.npz", labels=np.arange(2),
             embeddings=np.ones((2, 4), np.float16),
             checkpoint=np.array(label))
  checkpoint = {"step": 3, "weights": "ab"}
  (directory / "metadata.json").write_text(json.dumps(
      {"step": 3, "nesting": [4], "checkpoint": checkpoint}))
  return checkpoint


def test_a_split_mixing_two_checkpoints_is_refused(tmp_path):
  label = embedding_files.checkpoint_label({"step": 3, "weights": "ab"})
  _write_split(tmp_path / "same", [label, label])
  emb, _, meta = embedding_files.load_split(str(tmp_path / "same"))
  assert emb.shape == (4, 4) and meta["checkpoint"]["weights"] == "ab"
  _write_split(tmp_path / "mixed", [label, "step 3 weights cd"])
  with pytest.raises(ValueError, match=r"shard-p000-00001.npz comes from "
                     "checkpoint step 3 weights cd, the rest of the split "
                     "from step 3 weights ab; run --mode=export again"):
    embedding_files.load_split(str(tmp_path / "mixed"))


def test_weights_digest_changes_with_any_weight_not_with_sharding():
  mesh = sharding.make_mesh((("data", 8),))
  rng = np.random.default_rng(0)
  weights = {"a": rng.normal(size=(16, 8)).astype(np.float32),
             "b": {"c": rng.normal(size=(8,)).astype(np.float32)}}
  on_one = export.weights_digest(jax.device_put(weights), mesh)
  split_rows = jax.device_put(weights["a"], sharding.batch_sharding(mesh))
  assert export.weights_digest({**weights, "a": split_rows}, mesh) == on_one
  assert len(on_one) == 16
  nudged = weights["a"].copy()
  nudged[5, 3] = np.nextafter(nudged[5, 3], np.float32(np.inf))
  swapped = weights["a"][::-1].copy()  # same values, other places
  for a in (nudged, swapped):
    assert export.weights_digest({**weights, "a": a}, mesh) != on_one


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


@pytest.mark.slow
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
  import shutil  # pylint: disable=import-outside-toplevel
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
