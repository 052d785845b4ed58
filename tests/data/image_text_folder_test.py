"""A user's image-caption folder: checks of bad input, splits, the builder
through image_text.open_image_text and pipeline.open_source."""
import os
import pathlib

from absl import logging
import ml_collections
import numpy as np
from PIL import Image
import pytest

from mrl_jax.data import captioned_images
from mrl_jax.data import image_text
from mrl_jax.data import image_text_folder
from mrl_jax.data import pipeline
from mrl_jax.data import preprocess
from mrl_jax.data import tokenizer as tok
from mrl_jax.errors import RunError
from conftest import check_batches_resume_and_split, write_image_text_folder

@pytest.fixture(name="folder")
def fixture_folder(tmp_path) -> pathlib.Path:
  root = tmp_path / "pairs"
  write_image_text_folder(root)
  return root


def _data_config(folder, data_dir, **image_text_fields):
  cfg = ml_collections.ConfigDict({
      "name": "image_text_folder", "data_dir": str(data_dir),
      "image_text": image_text.section(
          folder=str(folder), vocab_size=40, seq_len=10,
          validation_fraction=0.25, test_fraction=0.25,
          **image_text_fields),
      "skip_bad_files": False})
  return cfg


def test_read_rows_checked(folder):
  rows = image_text_folder.read_rows_checked(folder)
  assert len(rows) == 25 and rows[0].line == 1
  assert rows[3].image == "sub/img_03.jpg" and rows[3].split is None


def _rewrite(folder: pathlib.Path, text: str,
             name: str = "captions.jsonl") -> None:
  (folder / "captions.jsonl").unlink()
  (folder / name).write_text(text)


def _first_lines(extra: str) -> str:
  return ('{"image": "img_01.png", "caption": "a dog"}\n'
          '{"image": "img_02.png", "caption": "a cat"}\n' + extra)


@pytest.mark.parametrize("text,message", [
    (_first_lines('{"image": "img_04.png", "caption": "x"'),
     r"captions.jsonl line 3 is not JSON .*write one object per line"),
    (_first_lines('["img_04.png", "x"]'),
     r"line 3 is not an object; write one per line"),
    (_first_lines('{"image": "img_04.png", "text": "x"}'),
     r"line 3 has no string 'caption' field"),
    (_first_lines('{"image": "img_04.png", "caption": "  "}'),
     r"line 3: the caption of img_04.png is empty; write a caption or "
     "remove the line"),
    (_first_lines('{"image": "../img_04.png", "caption": "x"}'),
     r"line 3: image '../img_04.png' is not a path inside the folder"),
    (_first_lines('{"image": "img_04.png", "caption": "x", "split": "dev"}'),
     r"line 3: split 'dev' is not one of train, validation, test"),
    (_first_lines('{"image": "nope.png", "caption": "x"}'),
     r"line 3: image nope.png is not in .*; add the file or remove the "
     "line"),
    ("\n", r"captions.jsonl has no rows"),
])
def test_bad_caption_rows_name_the_line(folder, text, message):
  _rewrite(folder, text)
  with pytest.raises(ValueError, match=message):
    image_text_folder.read_rows_checked(folder)


def test_images_without_captions(folder):
  _rewrite(folder, _first_lines(""))
  with pytest.raises(ValueError, match=r"image img_04.png and 21 more in "
                     r".* has no caption in captions.jsonl; add a row for "
                     "each image or move it out of the folder"):
    image_text_folder.read_rows_checked(folder)


@pytest.mark.parametrize("text,message", [
    ("image,text\nimg_01.png,a dog\n",
     r"captions.csv line 1: the header lacks the column\(s\) caption"),
    ("image,caption\nimg_01.png,a dog,barks\n",
     r"captions.csv line 2 has more cells than the header; quote captions"),
    ('image,caption\nimg_01.png,""\n', r"captions.csv line 2: the caption"),
])
def test_bad_csv(folder, text, message):
  _rewrite(folder, text, "captions.csv")
  with pytest.raises(ValueError, match=message):
    image_text_folder.read_rows_checked(folder)


def test_csv_with_given_splits(tmp_path):
  root = tmp_path / "pairs"
  write_image_text_folder(root, count=3, rows=[])
  (root / "captions.jsonl").unlink()
  (root / "captions.csv").write_text(
      "image,caption,split\n"
      'sub/img_00.jpg,"a dog, running",train\n'
      "img_01.png,a cat,test\nimg_02.png,a bird,validation\n")
  rows = image_text_folder.read_rows_checked(root)
  assert [(r.line, r.caption, r.split) for r in rows] == [
      (2, "a dog, running", "train"), (3, "a cat", "test"),
      (4, "a bird", "validation")]


def test_mixed_or_conflicting_splits(folder):
  _rewrite(folder, _first_lines('{"image": "img_04.png", "caption": "x", '
                                '"split": "train"}'))
  with pytest.raises(ValueError, match="line 1 has no split but other rows "
                     "do"):
    image_text_folder.read_rows_checked(folder)
  _rewrite(folder, '{"image": "img_01.png", "caption": "x", "split": '
           '"train"}\n{"image": "img_01.png", "caption": "y", "split": '
           '"test"}\n')
  with pytest.raises(ValueError, match="line 2: image img_01.png is also in "
                     "split 'train'"):
    image_text_folder.read_rows_checked(folder)


def test_caption_file_missing_or_doubled_or_no_images(tmp_path, folder):
  with pytest.raises(ValueError, match="does not exist"):
    image_text_folder.caption_file(tmp_path / "nothing")
  (folder / "captions.csv").write_text("image,caption\n")
  with pytest.raises(ValueError, match="has both of captions.jsonl and "
                     "captions.csv; keep exactly one"):
    image_text_folder.caption_file(folder)
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(ValueError, match="has neither of"):
    image_text_folder.caption_file(empty)
  (empty / "captions.jsonl").write_text(
      '{"image": "a.png", "caption": "x"}\n')
  with pytest.raises(ValueError, match=r"has no .jpg/.jpeg/.png files; add "
                     "the images that captions.jsonl names"):
    image_text_folder.read_rows_checked(empty)


def test_corrupt_image_refused_or_skipped_with_count(folder, monkeypatch):
  (folder / "img_02.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
  with pytest.raises(RunError, match=r"unreadable image .*img_02.png .*; "
                     "replace or remove it, or set "
                     r"config.data.skip_bad_files=True"):
    image_text_folder.read_rows_checked(folder)
  warnings = []
  monkeypatch.setattr(logging, "warning",
                      lambda msg, *args: warnings.append(msg % args))
  rows = image_text_folder.read_rows_checked(folder, skip_bad_files=True)
  assert len(rows) == 24 and "img_02.png" not in {r.image for r in rows}
  assert any("img_02.png" in w for w in warnings)
  assert any("skipped 1 unreadable of 24 files" in w for w in warnings)


def test_bad_folder_writes_nothing(folder, tmp_path):
  _rewrite(folder, _first_lines('{"image": "img_04.png", "caption": ""}'))
  data_dir = tmp_path / "tfds"
  with pytest.raises(ValueError, match="line 3"):
    image_text.open_image_text(_data_config(folder, data_dir))
  assert not data_dir.exists()


@pytest.fixture(name="prepared")
def fixture_prepared(folder, tmp_path):
  cfg = _data_config(folder, tmp_path / "tfds")
  return cfg, image_text.open_image_text(cfg)


def _all_examples(builder):
  return {split: list(builder.as_dataset(split=split).as_numpy_iterator())
          for split in builder.info.splits}


def test_builder_splits_by_image_and_keeps_files(prepared, folder):
  _, builder = prepared
  examples = _all_examples(builder)
  assert sum(map(len, examples.values())) == 25
  assert set(examples) == set(captioned_images.SPLITS)
  split_of_image = {}
  for split, exs in examples.items():
    for ex in exs:
      image = ex["id"].decode()
      assert split_of_image.setdefault(image, split) == split
      assert split == captioned_images.split_of(image, 0.25, 0.25)
      assert ex["label"] == -1 and ex["image"].shape == (16, 20, 3)
  gray = next(ex for exs in examples.values() for ex in exs
              if ex["id"] == b"img_01.png")
  with Image.open(folder / "img_01.png") as image:
    np.testing.assert_array_equal(gray["image"][..., 0], np.asarray(image))
  tokenizer = image_text.load_tokenizer(builder)
  assert tokenizer.vocab_size <= 40
  first = examples["train"][0]
  assert first["input_ids"][0] == tok.CLS_ID


def test_reopening_reuses_and_a_change_prepares_again(prepared, folder,
                                                      monkeypatch):
  cfg, builder = prepared
  monkeypatch.setattr(image_text_folder, "read_rows_checked",
                      lambda *a: pytest.fail("checked a prepared folder"))
  assert image_text.open_image_text(cfg).data_dir == builder.data_dir
  monkeypatch.undo()
  with open(folder / "captions.jsonl", "a") as f:
    f.write('{"image": "img_01.png", "caption": "one more"}\n')
  again = image_text.open_image_text(cfg)
  assert again.data_dir != builder.data_dir
  assert sum(s.num_examples for s in again.info.splits.values()) == 26


def test_pipeline_source_and_caption_tokens(prepared):
  cfg, _ = prepared
  source = pipeline.open_source(cfg, "train")
  assert source.class_names is None
  assert source.total_examples == sum(
      source.shard(j, 3).num_examples for j in range(3))
  spec = ("caption_tokens(6)|resize(8)|"
          "keep('image', 'input_ids', 'input_mask', 'label')")
  fn = preprocess.build(spec)
  example = fn(next(iter(source.read())), [0, 0])
  assert example["image"].shape == (8, 8, 3)
  assert example["input_ids"].shape == (6,)
  assert example["input_mask"].numpy().tolist() == [
      int(i != tok.PAD_ID) for i in example["input_ids"].numpy()]
  assert example["label"] == -1


def test_unknown_options_and_missing_folder(tmp_path):
  with pytest.raises(ValueError, match=r"unknown image_text field\(s\) "
                     r"\['size'\]"):
    image_text.section(size=3)
  cfg = ml_collections.ConfigDict({"name": "image_text_folder",
                                   "data_dir": str(tmp_path)})
  with pytest.raises(ValueError, match="needs config.data.image_text.folder"):
    image_text.open_image_text(cfg)
  cfg.name = "coco"  # any other name is a TFDS dataset, here not prepared
  with pytest.raises(RunError, match=f"tfds build coco --data_dir={tmp_path}"):
    image_text.open_image_text(cfg)
  assert not os.listdir(tmp_path)


def test_train_batches_shard_and_resume(prepared):
  cfg, _ = prepared
  cfg = cfg.copy_and_resolve_references()
  cfg.update({"num_shards": 2, "shuffle_buffer": 8, "cache": False,
              "train_preprocess": "caption_tokens|resize(8)|keep('image', "
                                  "'input_ids', 'input_mask', 'label')"})
  source = pipeline.open_source(cfg, "train")
  check_batches_resume_and_split(cfg, source, 4)
  whole = next(pipeline.process_batches(cfg, source, 4, 7, 0, 0, 1))
  assert whole["input_ids"].shape == (4, 10)
  assert whole["image"].shape == (4, 8, 8, 3)
