"""Image folders root/<split>/<class>/*: source, config inference, errors and
unreadable files (the launcher runs are in tests/integration/)."""
import os
import shutil

import jax
import numpy as np
import pytest

from conftest import BAD_FILES
from conftest import copy_with_bad_files
from conftest import write_image_tree
from mrl_jax import errors
from mrl_jax import sharding
from mrl_jax.data import check
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
  elif how == "no_image_readable":
    for path in (root / "train").glob("*/*"):
      path.write_bytes(b"not an image")
  elif how == "one_class":
    for name in ("dog", "fish"):
      shutil.rmtree(root / "train" / name)


@pytest.mark.parametrize("how, match", [
    ("one_class", "has one class folder \\('cat'\\); classification needs "
     "at least 2: add a folder per class"),
    ("no_image_readable", "none of the first 8 files of each class of "
     ".*/train' is a readable image; replace them"),
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


def test_unreadable_files_are_named_before_any_batch(config, image_tree,
                                                     tmp_path):
  data = config.data.copy_and_resolve_references()
  data.data_dir = str(copy_with_bad_files(image_tree, tmp_path))
  with pytest.raises(errors.RunError, match=(
      r"unreadable image .*/train/cat/(cut|noise)\.\w+ \(.+\) and 2 more in "
      "split 'train'; replace or remove it, or set config.data.skip_bad_"
      "files=True .*--mode=check_data")) as e:
    pipeline.open_source(data, "train")
  assert "\n" not in str(e.value)
  assert pipeline.open_source(data, "val").num_examples == 9  # no bad files


def test_skip_bad_files_leaves_them_out_and_logs_each(config, image_tree,
                                                      tmp_path, caplog):
  data = config.data.copy_and_resolve_references()
  data.data_dir = str(copy_with_bad_files(image_tree, tmp_path))
  data.skip_bad_files = True
  source = pipeline.open_source(data, "train")
  assert source.total_examples == 24
  assert not {os.path.basename(p) for p in source.split_paths} & set(BAD_FILES)
  logged = caplog.text
  for name in BAD_FILES:
    assert f"skipping unreadable image {data.data_dir}/train/cat/{name}" in (
        logged)
  assert "skipped 3 unreadable of 27 files" in logged


def test_check_data_decodes_every_file(config, image_tree, tmp_path, caplog):
  root = copy_with_bad_files(image_tree, tmp_path)
  # Whole at both ends, broken inside: only a full decode finds it.
  (root / "val" / "dog" / "inside.jpg").write_bytes(
      _break_inside(root / "val" / "dog" / "0.jpg"))
  # Valid, with bytes after the end marker: not unreadable.
  (root / "val" / "dog" / "tail.jpg").write_bytes(
      (root / "val" / "dog" / "2.jpg").read_bytes() + bytes(50))
  cfg = config.copy_and_resolve_references()
  cfg.data.data_dir = str(root)
  inside = str(root / "val" / "dog" / "inside.jpg")
  assert inside not in dict(image_folder.unreadable([inside]))
  assert image_folder.unreadable([inside], thorough=True)[0][0] == inside
  with pytest.raises(errors.RunError, match="4 unreadable image"):
    check.check_data(cfg, str(tmp_path))
  for name in (*(f"train/cat/{n}" for n in BAD_FILES), "val/dog/inside.jpg"):
    assert f"unreadable image {root}/{name} (" in caplog.text
  assert "tail.jpg" not in caplog.text
  cfg.data.data_dir = str(image_tree)
  assert check.check_data(cfg, str(tmp_path)) == {"train": 24, "val": 9}


def _break_inside(jpeg) -> bytes:
  """The JPEG file's bytes with random ones in the middle: its first and
  last bytes are intact, but it does not decode."""
  data = bytearray(jpeg.read_bytes())
  middle = len(data) // 2
  data[middle:middle + 200] = np.random.default_rng(1).integers(
      0, 256, 200, np.uint8).tobytes()
  return bytes(data)


def _open_with_a_file_broken_inside(config, image_tree, tmp_path, split):
  """A copy of image_tree whose split has a JPEG broken in the middle (it
  passes the check done when the split opens); returns (data, source, path).
  """
  root = tmp_path / "images"
  shutil.copytree(image_tree, root)
  inside = root / split / "cat" / "inside.jpg"
  inside.write_bytes(_break_inside(root / split / "cat" / "0.jpg"))
  data = config.data.copy_and_resolve_references()
  data.data_dir = str(root)
  source = pipeline.open_source(data, split)  # looks whole: not found yet
  assert str(inside) in source.split_paths
  return data, source, inside


def _names(path):
  return f"^unreadable image {path} \\(.+\\); replace or remove it"


def test_a_file_broken_inside_is_named_when_training_reads_it(
    config, image_tree, tmp_path):
  data, source, inside = _open_with_a_file_broken_inside(
      config, image_tree, tmp_path, "train")
  data.num_shards = 1
  # A full decode (decode_jpeg_and_inception_crop only decodes a window).
  data.train_preprocess = data.eval_preprocess
  batches = pipeline.process_batches(data, source, 25, 0, 0, 0, 1)  # all
  with pytest.raises(errors.RunError, match=_names(inside)):
    next(batches)


def test_a_file_broken_inside_is_named_when_eval_reads_it(
    config, image_tree, tmp_path):
  data, source, inside = _open_with_a_file_broken_inside(
      config, image_tree, tmp_path, "val")
  mesh = sharding.make_mesh((("data", -1),))
  batches = pipeline.eval_batches(data, source, 16,
                                  sharding.batch_sharding(mesh))
  with pytest.raises(errors.RunError, match=_names(inside)):
    list(batches)


def test_config_needs_root(config_module):
  with pytest.raises(ValueError, match="needs root=<dir>"):
    config_module("image_folder").get_config("smoke")
