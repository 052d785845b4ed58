"""End to end through the launcher: outputs, resume after SIGKILL, bad input.

One reference run (configs/default.py:smoke, 12 steps, checkpoints every 4,
keep 2) is shared by the tests; each test copies its workdir before touching
it.
"""
import json
import os
import re
import signal
import subprocess
import sys

import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import run_offline_mode
from mrl_jax.export import embedding_files
from mrl_jax import errors
from mrl_jax import workdir_lock

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
CONFIG = os.path.join(REPO, "configs", "default.py")
LAUNCH = [sys.executable, "-m", "mrl_jax.main"]



def at_second_save(action):
  """The real launcher, running `action` (code using `self`, the
  Checkpointer) when it is about to write its second checkpoint, after the
  first one is safely on disk."""
  return f"""
import os, shutil, signal, sys
from absl import app
from mrl_jax import checkpointing, main
original_save = checkpointing.Checkpointer.save
calls = []
def save(self, step, state, config_json):
  calls.append(step)
  if len(calls) == 2:
    self.wait()
    {action}
  original_save(self, step, state, config_json)
checkpointing.Checkpointer.save = save
sys.argv = ["mrl_jax.main"] + sys.argv[1:]
app.run(main.main)
"""


# SIGKILLed: the work of steps 5..8 is lost, as in a pre-empted job.
KILL_AT_SECOND_SAVE = at_second_save("os.kill(os.getpid(), signal.SIGKILL)")
# The checkpoint directory becomes a file: the second save fails, as on a
# vanished or read-only disk (chmod does not stop root, who runs the tests).
BREAK_DIR_AT_SECOND_SAVE = at_second_save(
    "shutil.rmtree(self.directory); open(self.directory, 'w').close()")

# The launcher on a workdir where nothing can be written.
READ_ONLY_WORKDIR = """
import sys
from absl import app
from mrl_jax import atomic_files, main
def read_only(*_):
  raise OSError(30, "Read-only file system")
atomic_files.write_json = read_only
sys.argv = ["mrl_jax.main"] + sys.argv[1:]
app.run(main.main)
"""


def launch(workdir, *flags, arg="smoke", script=None, check=True,
           timeout=300):
  cmd = ([sys.executable, "-c", script] if script else LAUNCH) + [
      f"--config={CONFIG}:{arg}", f"--workdir={workdir}", *flags]
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                        timeout=timeout)
  if check and proc.returncode != 0:
    raise AssertionError(f"launcher failed ({proc.returncode}):\n"
                         f"{proc.stderr[-3000:]}")
  return proc


def params_at(workdir, step):
  path = os.path.join(workdir, "checkpoints", str(step), "state")
  return ocp.StandardCheckpointer().restore(path)


def listing(workdir):
  """Every file under workdir/checkpoints with its size and mtime."""
  out = {}
  for root, _, files in os.walk(os.path.join(workdir, "checkpoints")):
    for name in files:
      path = os.path.join(root, name)
      out[path] = (os.path.getsize(path), os.path.getmtime(path))
  return out


@pytest.fixture(scope="module", name="reference")
def fixture_reference(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("reference"))
  proc = launch(workdir)
  return workdir, proc.stdout


def test_smoke_run_writes_every_nesting_dim(reference):
  workdir, stdout = reference
  with open(os.path.join(workdir, "eval_summary.json")) as f:
    summary = json.load(f)
  assert summary["step"] == 12
  assert summary["nesting"] == [8, 16, 32]
  for metric in ("top1", "top5"):
    assert sorted(summary[metric], key=int) == ["8", "16", "32"]
    assert all(0.0 <= v <= 1.0 for v in summary[metric].values())
  assert summary["num_examples"] == 256
  # The table the user sees.
  assert "top-1" in stdout and "    32" in stdout
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  assert [r["step"] for r in rows if "train/loss" in r] == [4, 8, 12]
  names = set().union(*rows)
  for d in (8, 16, 32):
    assert {f"train/loss/d={d}", f"train/top1/d={d}", f"val/top1/d={d}",
            f"val/top5/d={d}"} <= names
  assert {"examples_per_sec", "eta_minutes"} <= names
  assert os.listdir(os.path.join(workdir, "tensorboard"))
  # keep_checkpoints=2
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["12", "8"]


def test_resume_after_sigkill_is_bitwise_identical(reference, tmp_path):
  workdir = str(tmp_path / "killed")
  proc = launch(workdir, script=KILL_AT_SECOND_SAVE, check=False)
  assert proc.returncode == -signal.SIGKILL
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["4"]
  proc = launch(workdir)
  assert "resumed from checkpoint at step 4" in proc.stderr
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  # The step-8 row the killed run logged was logged again, not twice.
  assert [r["step"] for r in rows if "train/loss" in r] == [4, 8, 12]
  assert [r["step"] for r in rows if "val/top1/d=8" in r] == [12]
  resumed, uninterrupted = params_at(workdir, 12), params_at(reference[0], 12)
  flat_a, flat_b = (sorted(ocp.tree.to_flat_dict(t).items())
                    for t in (resumed, uninterrupted))
  assert [k for k, _ in flat_a] == [k for k, _ in flat_b]
  for (key, a), (_, b) in zip(flat_a, flat_b):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=key)


def test_rerun_of_finished_run_resumes_and_only_evaluates(reference, copy_of):
  workdir = copy_of(reference[0])
  proc = launch(workdir)
  assert "resumed from checkpoint at step 12" in proc.stderr
  assert "training steps 12..12" in proc.stderr
  with open(os.path.join(workdir, "eval_summary.json")) as f:
    assert json.load(f)["step"] == 12


def test_incompatible_workdir_is_refused_untouched(reference, copy_of):
  workdir = copy_of(reference[0])
  before = listing(workdir)
  proc = launch(workdir, "--config.mrl.nesting_dims=(16,32)", check=False)
  assert proc.returncode != 0
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("mrl_jax: error:") and "different run" in last
  assert "nesting_dims" in last and "--workdir" in last
  assert listing(workdir) == before


def test_unreadable_latest_checkpoint_falls_back(reference, copy_of):
  workdir = copy_of(reference[0])
  step12 = os.path.join(workdir, "checkpoints", "12")
  for root, _, files in os.walk(step12):  # truncate every data file
    for name in files:
      with open(os.path.join(root, name), "r+b") as f:
        f.truncate(max(os.path.getsize(f.name) // 3, 1))
  before = listing(workdir)
  proc = launch(workdir, "--mode=eval")
  # A reader skips it and moves nothing; the summary of step 12 is kept.
  assert "checkpoint at step 12 is unreadable" in proc.stderr
  assert "eval at step 8" in proc.stdout
  assert "newer than this evaluation's step 8" in proc.stderr
  with open(os.path.join(workdir, "eval_summary.json")) as f:
    assert json.load(f)["step"] == 12
  assert listing(workdir) == before
  # A trainer sets it aside, not deleted, and trains on from step 8.
  proc = launch(workdir)
  assert "resumed from checkpoint at step 8" in proc.stderr
  assert os.listdir(os.path.join(workdir, "checkpoints", "unreadable"))
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == [
      "12", "8", "unreadable"]


def test_bad_nesting_list_is_one_line_error_before_any_work(tmp_path):
  workdir = str(tmp_path / "bad")
  proc = launch(workdir, "--config.mrl.nesting_dims=(16,8)", check=False)
  assert proc.returncode != 0
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("mrl_jax: error: nesting list (16, 8) is not "
                         "strictly increasing")
  assert not os.path.exists(os.path.join(workdir, "checkpoints"))


def test_export_writes_resumable_embedding_shards(reference, copy_of):
  workdir = copy_of(reference[0])
  launch(workdir, "--mode=export")
  train_dir = os.path.join(workdir, "embeddings", "fashion_mnist",
                           "train_1024")
  shards = sorted(f for f in os.listdir(train_dir) if f.startswith("shard"))
  assert shards == [f"shard-p000-{i:05d}.npz" for i in range(4)]
  emb, labels, meta = embedding_files.load_split(train_dir)
  assert emb.shape == (1024, 32) and emb.dtype == np.float16
  assert labels.shape == (1024,) and set(labels) <= set(range(10))
  assert meta["step"] == 12 and meta["nesting"] == [8, 16, 32]
  test_emb, _, _ = embedding_files.load_split(os.path.join(
      workdir, "embeddings", "fashion_mnist", "test_256"))
  assert test_emb.shape == (256, 32)
  # A rerun skips finished shards and rewrites only a missing one, equal.
  mtimes = {s: os.path.getmtime(os.path.join(train_dir, s)) for s in shards}
  os.remove(os.path.join(train_dir, shards[3]))
  proc = launch(workdir, "--mode=export")
  assert "3 of 4 shards already exported" in proc.stderr
  for s in shards[:3]:
    assert os.path.getmtime(os.path.join(train_dir, s)) == mtimes[s]
  again, _, _ = embedding_files.load_split(train_dir)
  np.testing.assert_array_equal(again, emb)


def test_export_of_augmented_views(reference, copy_of):
  workdir = copy_of(reference[0])
  launch(workdir, "--mode=export", "--config.export.views.count=2")
  root = os.path.join(workdir, "embeddings", "fashion_mnist")
  plain, labels, _ = embedding_files.load_split(
      os.path.join(root, "train_1024"))
  views_dir = os.path.join(root, "train_1024_views2")
  emb, view_labels, meta = embedding_files.load_split(views_dir)
  assert meta["views"]["count"] == 2 and meta["views"]["of"] == "train[:1024]"
  assert emb.shape == (2048, 32)
  np.testing.assert_array_equal(view_labels, np.tile(labels, 2))
  # Random crops and flips: each view differs from the plain images and from
  # the other view, but the views are a function of (view, position).
  for a, b in ((emb[:1024], plain), (emb[:1024], emb[1024:])):
    assert np.mean(np.any(a != b, axis=1)) > 0.5
  first = sorted(os.listdir(views_dir))[0]
  assert first == "metadata.json" or first.startswith("shard-p000-v000-")
  os.remove(os.path.join(views_dir, "shard-p000-v001-00003.npz"))
  proc = launch(workdir, "--mode=export", "--config.export.views.count=2")
  assert "-v001: 3 of 4 shards already exported" in proc.stderr
  again, _, _ = embedding_files.load_split(views_dir)
  np.testing.assert_array_equal(again, emb)


def run_mode(workdir, mode, **export):
  """conftest.run_offline_mode with the smoke config."""
  return run_offline_mode(f"{CONFIG}:smoke", workdir, mode, **export)


def test_knn_and_retrieval_modes_on_exported_embeddings(reference, copy_of):
  workdir = copy_of(reference[0])
  # Through the launcher: before any export, one line saying what to run.
  proc = launch(workdir, "--mode=knn", check=False)
  assert proc.returncode != 0
  assert "run --mode=export" in proc.stderr.strip().splitlines()[-1]
  run_mode(workdir, "export")
  for mode, metric in (("knn", "knn/top1"),
                       ("retrieval", "retrieval/corrected_mAP@10")):
    _, printed = run_mode(workdir, mode)
    with open(os.path.join(workdir, f"{mode}_summary.json")) as f:
      summary = json.load(f)
    assert summary["nesting"] == [8, 16, 32] and summary["step"] == 12
    for d in (8, 16, 32):
      # Ten classes: chance is 0.1; 12 steps already do much better.
      assert 0.3 < summary[f"{metric}/d={d}"] <= 1.0
      assert f"{metric}/d={d}" in printed


def test_adaptive_probe_and_baselines_modes(reference, copy_of):
  workdir = copy_of(reference[0])
  # Without the eval split's logits, adaptive says how to get them ...
  run_mode(workdir, "export", logits_splits=("x",))
  with pytest.raises(ValueError, match="config.export.logits_splits"):
    run_mode(workdir, "adaptive")
  # ... and a rerun of export redoes the shards that lack them.
  run_mode(workdir, "export")
  test_dir = os.path.join(workdir, "embeddings", "fashion_mnist", "test_256")
  arrays, _ = embedding_files.load_arrays(test_dir, ("logits", "flip_logits"))
  assert arrays["logits"].shape == arrays["flip_logits"].shape == (256, 3, 10)
  assert "logits" not in embedding_files.load_arrays(
      os.path.join(workdir, "embeddings", "fashion_mnist", "train_1024"),
      ())[1]["arrays"]
  # The exported logits are the heads' logits: their top-1 is eval's.
  with open(os.path.join(workdir, "eval_summary.json")) as f:
    top1 = json.load(f)["top1"]
  _, labels, _ = embedding_files.load_split(test_dir)
  for g, d in enumerate((8, 16, 32)):
    acc = np.mean(arrays["logits"][:, g].argmax(-1) == labels)
    assert abs(acc - top1[str(d)]) <= 1 / 256  # float16 ties at most
  accuracies = {
      "adaptive": ("adaptive/ac_accuracy/d=32",),
      "probe": ("probe/top1@2shot/d=8", "probe/top1@all/d=32"),
      "baselines": ("svd/linear_top1/d=8", "random/knn_top1/d=32"),
  }
  for mode, names in accuracies.items():
    result, printed = run_mode(workdir, mode)
    with open(os.path.join(workdir, f"{mode}_summary.json")) as f:
      assert json.load(f)["step"] == result["step"] == 12
    for name in names:
      assert 0.1 < result[name] <= 1.0 and name in printed
  # The cascade stops between the smallest and the largest dim, on the
  # eval rows its thresholds were not fitted on (20% held out, 3 seeds).
  with open(os.path.join(workdir, "adaptive_summary.json")) as f:
    adaptive = json.load(f)
  assert 8.0 <= adaptive["expected_dim"]["32"] <= 32.0
  assert adaptive["num_eval"] == 256 - 51 and len(adaptive["seeds"]) == 3


def last_line(proc):
  return proc.stderr.strip().splitlines()[-1]


def test_other_optimizer_is_refused_and_nothing_changes(reference, copy_of):
  workdir = copy_of(reference[0])
  before = listing(workdir)
  with open(os.path.join(workdir, "eval_summary.json")) as f:
    summary = f.read()
  for mode in ("eval", "train"):
    proc = launch(workdir, f"--mode={mode}", "--config.optimizer.name=sgd",
                  check=False)
    assert proc.returncode != 0
    assert last_line(proc).startswith("mrl_jax: error:")
    assert "optimizer: checkpoint" in last_line(proc)
    assert "'sgd'" in last_line(proc)
    assert listing(workdir) == before
    with open(os.path.join(workdir, "eval_summary.json")) as f:
      assert f.read() == summary


def test_inference_modes_refuse_without_a_readable_checkpoint(
    reference, copy_of):
  workdir = copy_of(reference[0])
  for step in ("8", "12"):
    path = os.path.join(workdir, "checkpoints", step, "state", "_METADATA")
    with open(path, "r+b") as f:
      f.truncate(os.path.getsize(path) // 3)
  before = listing(workdir)
  # Through the launcher once (what the user sees), in-process for the rest.
  proc = launch(workdir, "--mode=eval", check=False)
  assert proc.returncode != 0
  assert last_line(proc).startswith("mrl_jax: error: no readable "
                                    "checkpoint in")
  for mode in ("export", "export_encoder"):
    with pytest.raises(errors.RunError, match="^no readable checkpoint in"):
      run_mode(workdir, mode)
  assert listing(workdir) == before
  assert not {"embeddings", "encoder"} & set(os.listdir(workdir))
  with open(os.path.join(workdir, "eval_summary.json")) as f:
    assert json.load(f)["step"] == 12


def test_failed_save_stops_the_run_with_one_line(tmp_path):
  workdir = str(tmp_path / "run")
  proc = launch(workdir, script=BREAK_DIR_AT_SECOND_SAVE, check=False,
                timeout=240)  # a hang fails here
  assert proc.returncode == 1
  assert re.match(r"mrl_jax: error: saving the checkpoint at step 8 in "
                  r".*/checkpoints failed \(\w+Error", last_line(proc))
  assert "step 12" not in proc.stderr  # training did not carry on
  assert not os.path.exists(os.path.join(workdir, "eval_summary.json"))


def test_second_trainer_is_refused_while_readers_go_on(reference, copy_of):
  workdir = copy_of(reference[0])
  with workdir_lock.exclusive(workdir, "train"):
    proc = launch(workdir, check=False)
    assert proc.returncode != 0
    assert re.match(rf"mrl_jax: error: {workdir} is in use by another run "
                    rf"\(pid {os.getpid()}, host \S+, mode train",
                    last_line(proc))
    proc = launch(workdir, "--mode=eval")
    assert "eval at step 12" in proc.stdout


def test_eval_prints_its_table_on_a_read_only_workdir(reference, copy_of):
  workdir = copy_of(reference[0])
  proc = launch(workdir, "--mode=eval", script=READ_ONLY_WORKDIR)
  assert "eval at step 12" in proc.stdout and "top-1" in proc.stdout
  assert "cannot write" in proc.stderr
