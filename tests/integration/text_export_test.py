"""The mlm task's sentence embeddings leave the trainer: --mode=export of
WordNet glosses (wordnet_lexnames slices), scored per dim by knn / probe /
baselines on the 45 lexicographer classes.

One smoke run of configs/text_mlm.py (6 steps of bert_mu) is shared by the
tests; each test copies its workdir before touching it.
"""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from mrl_jax import config_lib
from mrl_jax import modes
from mrl_jax.export import embedding_files

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
CONFIG = os.path.join(REPO, "configs", "text_mlm.py")
DIMS = (8, 16, 32)


def launch(workdir, *flags):
  proc = subprocess.run(
      [sys.executable, "-m", "mrl_jax.main", f"--config={CONFIG}:smoke",
       f"--workdir={workdir}", *flags],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


def run_mode(workdir, mode, **export):
  """An offline mode in-process through the modes table, as the launcher
  runs it; returns (result, printed text).

  export: config.export fields to override (e.g. dtype).
  """
  config = config_lib.load_config(f"{CONFIG}:smoke")
  config.export.update(export)
  entry = modes.MODES[mode]
  result = modes.resolve(entry.runner)(config, workdir)
  return result, modes.resolve(entry.printer)(result)


@pytest.fixture(scope="module", name="reference")
def fixture_reference(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("text_reference"))
  launch(workdir)
  return workdir


@pytest.fixture(name="copy_of")
def fixture_copy_of(tmp_path):
  def copy(workdir):
    dst = str(tmp_path / "workdir")
    shutil.copytree(workdir, dst)
    return dst
  return copy


def split_dirs(workdir):
  root = os.path.join(workdir, "embeddings", "wordnet_lexnames")
  return os.path.join(root, "train_2048"), os.path.join(root, "validation_512")


def test_export_writes_labelled_sentence_embeddings(reference, copy_of):
  workdir = copy_of(reference)
  proc = launch(workdir, "--mode=export")
  train_dir, eval_dir = split_dirs(workdir)
  assert f"validation[:512]: {eval_dir}" in proc.stdout
  emb, labels, meta = embedding_files.load_split(train_dir)
  assert emb.shape == (2048, 32) and emb.dtype == np.float16
  assert np.isfinite(emb).all() and np.abs(emb).max() > 0
  assert labels.shape == (2048,) and set(labels) <= set(range(45))
  assert len(set(labels)) > 20  # a slice of all 45 classes
  assert meta["arrays"] == ["labels", "embeddings"]  # no logits
  assert meta["dataset"] == "wordnet_lexnames" and meta["step"] == 6
  assert meta["nesting"] == list(DIMS) and meta["pool"] == "mean"
  assert meta["seq_len"] == 64 and len(meta["tokenizer_sha256"]) == 64
  # A rerun skips the finished shard and redoes only the missing one, equal.
  shards = sorted(f for f in os.listdir(train_dir) if f.startswith("shard"))
  assert shards == ["shard-p000-00000.npz", "shard-p000-00001.npz"]
  mtime = os.path.getmtime(os.path.join(train_dir, shards[0]))
  os.remove(os.path.join(train_dir, shards[1]))
  run_mode(workdir, "export")
  assert os.path.getmtime(os.path.join(train_dir, shards[0])) == mtime
  np.testing.assert_array_equal(embedding_files.load_split(train_dir)[0], emb)


def _chance(workdir):
  """(1-NN's chance: the probability that a random database row shares the
  query's class; the majority-class rate of the queries)."""
  _, db, _ = embedding_files.load_split(split_dirs(workdir)[0])
  _, queries, _ = embedding_files.load_split(split_dirs(workdir)[1])
  p_db, p_q = (np.bincount(x, minlength=45) / len(x) for x in (db, queries))
  return float(p_db @ p_q), float(p_q[p_db.argmax()])


def test_knn_probe_and_baselines_score_every_dim(reference, copy_of):
  workdir = copy_of(reference)
  run_mode(workdir, "export")
  results = {mode: run_mode(workdir, mode)
             for mode in ("knn", "probe", "baselines")}
  names = {"knn": "knn/top1", "probe": "probe/top1@all",
           "baselines": "svd/linear_top1"}
  for mode, (result, printed) in results.items():
    with open(os.path.join(workdir, f"{mode}_summary.json")) as f:
      assert json.load(f)["step"] == 6
    for d in DIMS:
      assert 0.0 <= result[f"{names[mode]}/d={d}"] <= 1.0
      assert f"{names[mode]}/d={d}" in printed
  # Six steps already beat chance at the full dim: glosses of one class
  # share words, which even a barely trained encoder's mean pools.
  neighbour_chance, majority = _chance(workdir)
  assert results["knn"][0]["knn/top1/d=32"] > 1.5 * neighbour_chance
  assert results["probe"][0]["probe/top1@all/d=32"] > majority

