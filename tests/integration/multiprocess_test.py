"""2 processes x 4 CPU devices through the real launcher vs 1 process x 8.

The run is configs/default.py:smoke (random flips) on a 256-example split
with batch 32: 8 steps per epoch, 12 steps, so the split is reshuffled and
the global batches are proper subsets of it. Both layouts cut the split into
the same 8 data shards (one per device) and build the same global batches,
each process reading only its 4 shards: the 2-process run must reproduce the
1-process loss curve to float tolerance (both compile with XLA's default
optimisations; only the order of the per-device sums differs).

The two-tower run (configs/align_openclipart.py:smoke) checks the same for
the contrastive task, whose loss all-gathers the [B, d] embeddings of both
towers over the batch axes: rows of the host-sharded batches must land in
the gathered batch where the 1-process run has them, image i with caption
i, or the in-batch targets (the diagonal) would differ.
"""
import json
import os
import re
import shutil
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from mrl_jax import distributed
from mrl_jax import train
from mrl_jax.data import openclipart

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
SPLIT = "train[:256]"
FLAGS = [f"--config={REPO}/configs/default.py:smoke",
         f"--config.data.train_split={SPLIT}"]


def env_with_devices(n):
  """This environment with n CPU devices and XLA's default optimisations.

  conftest.py turns most XLA optimisations off for speed, but a process of a
  multi-process CPU run compiles as if they were on, whatever
  JAX_DISABLE_MOST_OPTIMIZATIONS or --xla_backend_optimization_level say
  (measured: its gradients at init match an optimised 1-process run's to
  ~1e-6, an unoptimised one's only to ~1e-2 of the largest entry, and 12
  steps amplify that to ~1e-4 in the loss). Both layouts must compile alike.
  """
  env = dict(os.environ)
  env.pop("JAX_DISABLE_MOST_OPTIMIZATIONS", None)
  flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "",
                 env.get("XLA_FLAGS", ""))
  env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}"
  return env


def launch(workdir, *extra, devices=8, wait=True, flags=tuple(FLAGS)):
  cmd = [sys.executable, "-m", "mrl_jax.main", f"--workdir={workdir}",
         *flags, *extra]
  proc = subprocess.Popen(cmd, cwd=REPO, env=env_with_devices(devices),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
  return finish(proc) if wait else proc


def finish(proc):
  out, err = proc.communicate(timeout=600)
  assert proc.returncode == 0, f"launcher failed:\n{err[-3000:]}"
  return out, err


def free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def read_metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def read_summary(workdir):
  with open(os.path.join(workdir, "eval_summary.json")) as f:
    return json.load(f)


def launch_two(workdir, flags=tuple(FLAGS)):
  """The launcher as 2 processes x 4 devices; returns their logs."""
  port = free_port()
  procs = [launch(workdir, f"--coordinator_address=localhost:{port}",
                  "--num_processes=2", f"--process_id={i}", devices=4,
                  wait=False, flags=flags) for i in range(2)]
  return [finish(p)[1] for p in procs]


def compare_curves(ref, got, prefixes):
  """Asserts the metrics records match; returns how many values it compared.

  The first logged record (a few steps from the same init) must agree to
  float rounding. After it, the layouts' different summation orders are
  amplified by Adam (it divides by sqrt(v), so near-zero gradients move
  weights by their sign): on an AVX-512 CPU, 12 steps moved losses by up to
  1e-4 relative and mean cosines near 0 by up to 3e-5 absolute. A wrong
  batch or shard assignment already shows at the first record.
  """
  compared = 0
  for n, (r, g) in enumerate(zip(ref, got)):
    rel, abs_ = (2e-5, 1e-6) if n == 0 else (1e-3, 2e-4)
    for key in r:
      if key.startswith(prefixes):
        assert g[key] == pytest.approx(r[key], rel=rel, abs=abs_), (
            r["step"], key)
        compared += 1
  return compared


def assert_close_states(config, one, two):
  """The workdirs' last checkpoints, restored in this (1-process, 8-device)
  process through the trainer's own restore, hold equal states.

  Adam divides by sqrt(v): a weight whose gradient is ~0 in both runs can
  step by about the learning rate (1e-3 to 3e-3 here) in opposite directions
  (on an AVX-512 CPU one weight of the default smoke model ended 5e-3 apart
  after 12 steps, the mean over all entries 5e-6 apart). A systematic
  difference (another batch, a missing gradient term) moves most weights,
  and so the mean, by the order of the learning rate.
  """
  _, state_two, _ = train.restore_latest(config, two)
  _, state_one, _ = train.restore_latest(config, one)
  assert int(state_two.step) == int(state_one.step) == config.total_steps
  diff = np.concatenate([
      np.abs(np.asarray(two_leaf) - np.asarray(one_leaf)).ravel()
      for two_leaf, one_leaf in zip(
          jax.tree.leaves((state_two.params, state_two.batch_stats)),
          jax.tree.leaves((state_one.params, state_one.batch_stats)))])
  assert diff.max() < 2e-2 and diff.mean() < 5e-5, (diff.max(), diff.mean())


def test_two_processes_match_one_and_share_a_checkpoint(tmp_path,
                                                       config_module):
  one, two = str(tmp_path / "one"), str(tmp_path / "two")
  # Also prepares the dataset before two processes read it.
  _, one_log = launch(one)
  assert (f"data: process 0 of 1 reads shards 0..7 of 8 of {SPLIT} "
          "(256 of 256 examples)") in one_log
  logs = launch_two(two)

  # Same loss curve (and per-dim metrics) to float tolerance.
  ref, got = read_metrics(one), read_metrics(two)
  assert [r["step"] for r in got] == [r["step"] for r in ref] == [4, 8, 12, 12]
  assert compare_curves(ref, got, ("train/loss", "train/top1", "val/")) > 10
  assert read_summary(two)["top1"] == read_summary(one)["top1"]

  # Each process read its own 4 of the 8 data shards: disjoint halves.
  images = []
  for i, log in enumerate(logs):
    assert f"distributed: process {i} of 2, 4 local of 8 devices" in log
    assert (f"data: process {i} of 2 reads shards {4 * i}..{4 * i + 3} of 8 "
            f"of {SPLIT} (128 of 256 examples)") in log, log[-2000:]
    images.append({ex["image"].tobytes()
                   for j in range(4 * i, 4 * i + 4)
                   for ex in tfds.as_numpy(tfds.load(
                       "fashion_mnist", split=tfds.even_splits(SPLIT, 8)[j]))})
  assert len(images[0]) == len(images[1]) == 128
  assert not images[0] & images[1]

  # One checkpoint per save, written together (keep 2), no per-process copies.
  ckpt = os.path.join(two, "checkpoints")
  assert sorted(os.listdir(ckpt)) == ["12", "8"]
  assert sorted(os.listdir(os.path.join(ckpt, "12"))) == sorted(
      os.listdir(os.path.join(one, "checkpoints", "12")))
  # Only process 0 wrote metrics: one row per logged step, no duplicates.
  assert len(got) == len(ref)

  # The 2-process checkpoint restores in this (1-process, 8-device) process
  # equal to the 1-process run's state.
  config = config_module("default").get_config("smoke")
  config.data.train_split = SPLIT
  assert_close_states(config, one, two)


@pytest.mark.skipif(
    not openclipart.SVG_DIR.is_dir() or shutil.which("rsvg-convert") is None,
    reason="needs openclipart-svg and librsvg2-bin (scripts/setup.sh)")
def test_two_processes_match_one_for_two_towers(tmp_path, config_module):
  flags = (f"--config={REPO}/configs/align_openclipart.py:smoke",)
  config = config_module("align_openclipart").get_config("smoke")
  split = config.data.train_split
  one, two = str(tmp_path / "one"), str(tmp_path / "two")
  # Also prepares the dataset before two processes read it.
  _, one_log = launch(one, flags=flags)
  assert f"data: process 0 of 1 reads shards 0..7 of 8 of {split}" in one_log
  logs = launch_two(two, flags)
  for i, log in enumerate(logs):
    assert (f"data: process {i} of 2 reads shards {4 * i}..{4 * i + 3} of 8 "
            f"of {split} (256 of 512 examples)") in log, log[-2000:]

  # Same losses and in-batch accuracies per dim, the same retrieval and the
  # same zero-shot on Fashion-MNIST (the last record, an extra eval set).
  ref, got = read_metrics(one), read_metrics(two)
  assert [r["step"] for r in got] == [r["step"] for r in ref] == [3, 6, 6, 6]
  assert compare_curves(ref, got, ("train/loss", "train/i2t_top1", "val/",
                                   "fashion_mnist/")) > 20
  assert read_summary(two)["i2t/recall@1"] == read_summary(one)[
      "i2t/recall@1"]
  assert_close_states(config, one, two)


def test_flags_go_together():
  with pytest.raises(ValueError, match="go together; pass all three"):
    distributed.initialize("localhost:1234", None, 0)
  with pytest.raises(ValueError, match="not HOST:PORT"):
    distributed.initialize("localhost", 2, 0)
  with pytest.raises(ValueError, match=r"--process_id=2 is not in \[0, "):
    distributed.initialize("localhost:1234", 2, 2)


def test_slurm_and_plain_environments_are_told_apart(monkeypatch):
  for key in list(os.environ):
    if key.startswith(("SLURM_", "OMPI_", "TPU_WORKER")):
      monkeypatch.delenv(key)
  assert distributed.detected_cluster() is None
  # What srun sets for task 1 of a 2-task job step.
  for key, value in {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "node[1-2]",
                     "SLURM_NTASKS": "2", "SLURM_PROCID": "1",
                     "SLURM_LOCALID": "0"}.items():
    monkeypatch.setenv(key, value)
  assert distributed.detected_cluster() == "slurm"
