"""A prepared TFDS image-caption dataset by name (tfds_image_text.py):
a coco_captions look-alike prepared in a temporary data_dir, read through
image_text.open_image_text and pipeline.open_source."""
import os
import shutil

import ml_collections
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from mrl_jax.data import captioned_images
from mrl_jax.data import image_text
from mrl_jax.data import pipeline
from mrl_jax.data import preprocess
from mrl_jax.data import tfds_image_text
from mrl_jax.data import tokenizer as tok
from mrl_jax.errors import RunError
from conftest import (TINY_CAPTIONS, check_batches_resume_and_split,
                      write_tiny_captions)

SEQ_LEN = 12


@pytest.fixture(name="data_dir", scope="module")
def fixture_data_dir(tmp_path_factory):
  return write_tiny_captions(tmp_path_factory.mktemp("tfds"))


def _data_config(data_dir, **fields):
  return ml_collections.ConfigDict({
      "name": TINY_CAPTIONS, "data_dir": str(data_dir),
      "image_text": image_text.section(seq_len=SEQ_LEN, vocab_size=40,
                                       id_key="image/id", **fields)})


def _source_examples(data_dir, split):
  """{image/id: example} of the source split, images decoded."""
  source = tfds.builder(TINY_CAPTIONS, data_dir=str(data_dir))
  return {int(ex["image/id"]): ex
          for ex in tfds.as_numpy(source.as_dataset(split=split))}


@pytest.fixture(name="prepared", scope="module")
def fixture_prepared(data_dir):
  cfg = _data_config(data_dir)
  return cfg, pipeline.open_source(cfg, "train")


def test_examples_are_the_sources_with_their_first_caption(prepared,
                                                           data_dir):
  cfg, source = prepared
  assert source.builder.name == tfds_image_text.NAME
  assert source.builder.builder_config.name.startswith("mrl_test_captions_")
  sources = _source_examples(data_dir, "train")
  got = list(tfds.as_numpy(source.read()))
  # 64 examples, the one without a caption skipped.
  assert sorted(int(ex["id"]) for ex in got) == sorted(
      i for i in sources if i != 10_003)
  tokenizer = image_text.load_tokenizer(source.builder)
  for ex in got:
    original = sources[int(ex["id"])]
    texts = [t.decode() for t in original["captions"]["text"]]
    want = "the first real caption" if int(ex["id"]) == 10_004 else texts[0]
    assert ex["caption"].decode() == want
    np.testing.assert_array_equal(
        ex["input_ids"], tokenizer.encode_padded([want], SEQ_LEN)[0][0])
    np.testing.assert_array_equal(ex["image"], original["image"])
    assert ex["label"] == captioned_images.NO_LABEL
  assert source.class_names is None  # no label_key: no zero-shot
  val = pipeline.open_source(cfg, "val")
  assert val.num_examples == 16 and val.builder.data_dir == \
      source.builder.data_dir


def test_tokenizer_is_trained_on_every_train_caption(prepared, data_dir):
  _, source = prepared
  stored = tfds.builder(TINY_CAPTIONS, data_dir=str(data_dir)).as_dataset(
      split="train", shuffle_files=False)
  texts = [t.decode() for ex in tfds.as_numpy(stored)
           for t in ex["captions"]["text"] if t.strip()]
  assert len(texts) == 2 * 62 + 1  # every caption, blank ones left out
  assert (image_text.load_tokenizer(source.builder).model_proto ==
          tok.train(texts, 40).model_proto)


def test_label_key_gives_labels_and_class_names(data_dir):
  source = pipeline.open_source(_data_config(data_dir, label_key="category"),
                                "val")
  assert source.class_names == ("cat", "dog", "bird")
  labels = {int(ex["id"]): int(ex["label"])
            for ex in tfds.as_numpy(source.read())}
  assert labels == {10_000 + i: i % 3 for i in range(100, 116)}


def test_caption_tokens_op_reads_the_examples(prepared):
  _, source = prepared
  op = preprocess.build("caption_tokens(8)|resize_small(16)|central_crop(16)"
                        "|keep('image', 'input_ids', 'input_mask', 'label')")
  example = op(next(iter(source.read())), tf.constant([0, 0], tf.int64))
  assert example["image"].shape == (16, 16, 3)
  assert example["input_ids"].shape == example["input_mask"].shape == (8,)


def test_train_batches_resume_and_split_over_processes(prepared, data_dir):
  cfg, source = prepared
  cfg = cfg.copy_and_resolve_references()
  cfg.update({"num_shards": 2, "shuffle_buffer": 8, "cache": False,
              "train_preprocess": "caption_tokens|inception_crop(8)|flip_lr|"
                                  "keep('image', 'input_ids', 'id')"})
  check_batches_resume_and_split(cfg, source, 4)
  # Pairs stay pairs: row i's caption tokens are those of row i's image.
  by_id = {int(ex["id"]): ex["input_ids"]
           for ex in tfds.as_numpy(source.read())}
  batch = next(pipeline.process_batches(cfg, source, 4, 7, 0, 1, 2))
  for ident, ids in zip(batch["id"], batch["input_ids"]):
    np.testing.assert_array_equal(ids, by_id[int(ident)])


def test_not_prepared_is_one_line_naming_tfds_build(tmp_path):
  cfg = _data_config(tmp_path)
  cfg.name = "coco_captions"
  with pytest.raises(RunError) as e:
    pipeline.open_source(cfg, "train")
  assert str(e.value) == (
      f"TFDS dataset coco_captions is not prepared in {tmp_path}; prepare it "
      f"first: tfds build coco_captions --data_dir={tmp_path}")
  cfg.name = "no_such_captions"
  with pytest.raises(RunError, match="neither registered nor prepared .* "
                     "tfds build no_such_captions"):
    pipeline.open_source(cfg, "train")
  assert not os.listdir(tmp_path)


@pytest.mark.parametrize("field, key, message", [
    ("caption_key", "caption", r"caption_key='caption' is not a text \(or a "
     r"sequence of texts\) feature of TFDS dataset mrl_test_captions; its "
     r"features: \['captions/id', 'captions/text', 'category', 'image', "
     r"'image/id'\]"),
    ("image_key", "captions/text", "image_key='captions/text' is not an "
     "image"),
    ("label_key", "captions/id", "label_key='captions/id' is not an integer"),
])
def test_a_field_map_that_does_not_fit_is_one_line(data_dir, tmp_path, field,
                                                    key, message):
  copy = tmp_path / "tfds"
  shutil.copytree(data_dir / TINY_CAPTIONS, copy / TINY_CAPTIONS)
  with pytest.raises(ValueError, match=message):
    image_text.open_image_text(_data_config(copy, **{field: key}))
  assert os.listdir(copy) == [TINY_CAPTIONS]


def test_a_users_tokenizer_is_stored_and_names_another_dataset(prepared,
                                                               data_dir,
                                                               tmp_path):
  _, source = prepared
  path = tmp_path / "user.model"
  tok.train(["a red dog", "blue cats on the house"] * 20, 24).save(path)
  builder = image_text.open_image_text(
      _data_config(data_dir, tokenizer_path=str(path)))
  assert builder.builder_config.name != source.builder.builder_config.name
  assert image_text.load_tokenizer(builder).model_proto == path.read_bytes()
