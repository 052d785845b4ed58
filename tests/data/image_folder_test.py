"""Image folders root/<split>/<class>/*: source, config inference, errors, and
a smoke run through the launcher."""
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import write_image_tree
from mrl_jax import sharding
from mrl_jax.data import image_folder
from mrl_jax.data import pipeline

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))
CLASSES = ("cat", "dog", "fish")


@pytest.fixture(name="config")
def fixture_config(config_module, image_tree):
  return config_module("image_folder").get_config(f"root={image_tree},smoke")


def test_config_infers_classes_channels_size(config):
  data = config.data
  assert (data.name, data.train_split, data.eval_split) == (
      "image_folder", "train", "val")
  assert data.num_classes == 3 and tuple(data.class_names) == CLASSES
  # 40x48 RGB files: 40 px squares (the short side; below 64 px, the
  # small-image recipe).
  assert "central_crop(40)|pad_and_random_crop(5)|" in data.train_preprocess
  assert "decode(3)|resize_small(40)|central_crop(40)" in data.eval_preprocess


def test_config_for_grayscale_folder_without_eval_split(config_module,
                                                        tmp_path):
  root = write_image_tree(tmp_path, {"train": 10}, size=(30, 30), gray=True)
  data = config_module("image_folder").get_config(f"root={root}").data
  assert (data.train_split, data.eval_split) == ("train[:90%]", "train[90%:]")
  assert data.train_preprocess.startswith(
      "decode(1)|resize_small(30)|central_crop(30)|pad_and_random_crop(4)|")
  source = pipeline.open_source(data, data.train_split)
  mesh = sharding.make_mesh((("data", -1),))
  batch = next(pipeline.train_batches(data, source, 8, 0, 0,
                                      sharding.batch_sharding(mesh)))
  assert batch["image"].shape == (8, 30, 30, 1)
  assert pipeline.open_source(data, data.eval_split).num_examples == 3


def test_source_labels_follow_sorted_class_folders(config, image_tree):
  source = pipeline.open_source(config.data, "train")
  assert source.class_names == CLASSES
  assert source.num_examples == source.total_examples == 24
  for path, label in zip(source.paths, source.labels):
    assert os.path.basename(os.path.dirname(path)) == CLASSES[label]
  examples = list(source.read().as_numpy_iterator())
  assert [e["label"] for e in examples] == list(source.labels)
  with open(source.paths[0], "rb") as f:
    assert examples[0]["image"] == f.read()  # served encoded
  shuffled = [e["label"] for e in source.read(shuffle_seed=1)
              .as_numpy_iterator()]
  assert sorted(shuffled) == sorted(source.labels)
  assert len(pipeline.open_source(config.data, "train[:50%]").paths) == 12
  assert image_folder.classes(str(image_tree)) == list(CLASSES)


def test_training_shards_cut_the_whole_split(config):
  source = pipeline.open_source(config.data, "train[:22]")
  shards = [source.shard(j, 4) for j in range(4)]
  assert [s.num_examples for s in shards] == [5, 6, 5, 6]
  # Contiguous, in order, disjoint, covering the whole split.
  assert sum((s.paths for s in shards), ()) == source.paths
  assert sum((s.labels for s in shards), ()) == source.labels
  assert pipeline.steps_per_epoch(source, 8, 4) == 2  # 5 // 2
  # Emulated 2 processes give the 1-process global batches.
  data = config.data.copy_and_resolve_references()
  data.num_shards = 4
  one = pipeline.process_batches(data, source, 8, 0, 1, 0, 1)
  two = [pipeline.process_batches(data, source, 8, 0, 1, p, 2) for p in (0, 1)]
  for _ in range(3):  # steps 1..3 cross the epoch boundary
    a, halves = next(one), [next(t) for t in two]
    np.testing.assert_array_equal(
        a["image"], np.concatenate([h["image"] for h in halves]))


def test_eval_batches_are_sharded_and_padded(config):
  source = pipeline.open_source(config.data, config.data.eval_split)
  mesh = sharding.make_mesh((("data", -1),))
  batches = list(pipeline.eval_batches(config.data, source, 8,
                                       sharding.batch_sharding(mesh)))
  assert [b["image"].shape for b in batches] == [(8, 40, 40, 3)] * 2
  assert batches[0]["image"].sharding.spec == jax.sharding.PartitionSpec(
      "data")
  assert sum(float(np.asarray(b["mask"]).sum()) for b in batches) == 9


def _break(root, how):
  if how == "missing":
    shutil.rmtree(root)
  elif how == "no_splits":
    shutil.rmtree(root)
    root.mkdir()
  elif how == "no_classes":
    (root / "extra").mkdir()
  elif how == "empty_class":
    (root / "train" / "emu").mkdir()
    (root / "train" / "emu" / "notes.txt").write_text("no images")


@pytest.mark.parametrize("how, match", [
    ("missing", "does not exist"),
    ("no_splits", "has no split folders"),
    ("no_classes", "has no class folders"),
    ("empty_class", "emu' has no .jpg/.jpeg/.png files"),
])
def test_bad_folders_are_one_line_errors(how, match, tmp_path, config_module):
  root = write_image_tree(tmp_path / "images", {"train": 2})
  _break(root, how)
  with pytest.raises(ValueError, match=match) as e:
    config_module("image_folder").get_config(f"root={root}")
  assert "\n" not in str(e.value)


@pytest.mark.parametrize("change, split, match", [
    ({}, "valid", "no split folder 'valid'"),
    ({}, "train+val", "one split at a time"),
    ({"num_classes": 4}, "train", "has 3 classes but"),
    ({"class_names": ("a", "b", "c")}, "train", "differ from"),
    ({"skip_decode": False}, "train", "set config.data.skip_decode=True"),
])
def test_bad_source_settings_are_errors(config, change, split, match):
  data = config.data.copy_and_resolve_references()
  data.update(change)
  with pytest.raises(ValueError, match=match):
    pipeline.open_source(data, split)


def test_config_needs_root(config_module):
  with pytest.raises(ValueError, match="needs root=<dir>"):
    config_module("image_folder").get_config("smoke")


@pytest.mark.slow
def test_smoke_trains_through_the_launcher(image_tree, tmp_path):
  # The README's command, with `smoke`.
  workdir = tmp_path / "work"
  proc = subprocess.run(
      [sys.executable, "-m", "mrl_jax.main",
       f"--config=configs/image_folder.py:root={image_tree},smoke",
       f"--workdir={workdir}"],
      cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  summary = json.loads((workdir / "eval_summary.json").read_text())
  assert summary["step"] == 4 and summary["num_examples"] == 9
  assert summary["nesting"] == [8, 16]  # 40x48 px: the small-image cnn_mu
  assert "eval at step 4 on 9 examples" in proc.stdout
  bad = subprocess.run(
      [sys.executable, "-m", "mrl_jax.main",
       f"--config=configs/image_folder.py:root={tmp_path}/none,smoke",
       f"--workdir={workdir}"],
      cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  assert bad.returncode != 0
  assert "none' does not exist" in bad.stderr
