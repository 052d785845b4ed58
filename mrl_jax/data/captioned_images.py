"""The TFDS builder shared by the image-text datasets (image + caption).

A subclass lists its pairs (`_pairs`); this base splits them, trains the
tokenizer and writes the examples:

1. split: train / validation / test by a hash of each pair's `split_key`
   (openclipart: the normalised title; a user's folder: the image path), or
   the split the pair names, so pairs sharing a key never straddle splits;
2. tokenizer: a sentencepiece model trained on the train captions only (or
   a user's `.model` or `vocab.txt` file), stored as `tokenizer.model` in
   the prepared dataset's directory (`load_tokenizer(builder)` reads it
   back);
3. examples, features:
     image      uint8 [H, W, 3] (PNG- or JPEG-encoded on disk)
     caption    text
     input_ids  int32 [seq_len]: [CLS] caption pieces [SEP], [PAD]-padded
                (truncated captions keep their final [SEP])
     label      int64 (a class, or -1 without classes)
     id         text (the image's path relative to its source)
The preprocess op `caption_tokens` (below) adds input_mask [seq_len] and
can shorten the tokens.
"""
from collections.abc import Iterator, Sequence
import dataclasses
import hashlib
import pathlib

from absl import logging
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from mrl_jax.data import preprocess as preprocess_lib
from mrl_jax.data import tokenizer as tok

TOKENIZER_FILE = "tokenizer.model"
SPLITS = ("train", "validation", "test")
NO_LABEL = -1


@dataclasses.dataclass(frozen=True)
class Pair:
  """One image with one caption, before splitting and tokenizing.

  Attributes:
    key: unique within the dataset (the TFDS example key).
    id: the image's path relative to its source.
    image: uint8 [H, W, 3], or the path of a JPEG / PNG file.
    caption: the text.
    label: class index, or NO_LABEL.
    split_key: pairs with equal keys land in the same split.
    split: a split of SPLITS that overrides the hash, or None.
  """
  key: str
  id: str
  image: np.ndarray | str
  caption: str
  label: int
  split_key: str
  split: str | None = None


def split_of(split_key: str, validation_fraction: float,
             test_fraction: float) -> str:
  """'train', 'validation' or 'test', from a hash of `split_key` alone."""
  digest = hashlib.sha256(split_key.encode("utf-8")).digest()
  bucket = int.from_bytes(digest[:8], "big") / 2**64
  if bucket < validation_fraction:
    return "validation"
  if bucket < validation_fraction + test_fraction:
    return "test"
  return "train"


def split_pairs(pairs: Sequence[Pair], validation_fraction: float,
                test_fraction: float) -> dict[str, list[Pair]]:
  """{split: its pairs, in input order} for every split of SPLITS."""
  out = {name: [] for name in SPLITS}
  for pair in pairs:
    split = pair.split or split_of(pair.split_key, validation_fraction,
                                   test_fraction)
    out[split].append(pair)
  return out


@dataclasses.dataclass(eq=False)
class CaptionedImagesConfig(tfds.core.BuilderConfig):
  """Tokenizing and splitting.

  Attributes:
    seq_len: L, caption tokens stored per example, [CLS] and [SEP] included.
    vocab_size: pieces of the trained tokenizer (special ones included).
    validation_fraction: share of split keys (by hash) in validation.
    test_fraction: share of split keys (by hash) in test.
  """
  seq_len: int = 32
  vocab_size: int = 2048
  validation_fraction: float = 0.1
  test_fraction: float = 0.1


class CaptionedImages(tfds.core.GeneratorBasedBuilder):
  """Base of the image-text builders; subclasses define `_pairs`,
  `_image_feature` and `_label_feature`."""

  def __init__(self, *, tokenizer_path: str | None = None, **kwargs):
    """tokenizer_path: a sentencepiece .model or a BERT vocab.txt to use
    instead of training one."""
    self._tokenizer_path = tokenizer_path
    super().__init__(**kwargs)

  def _image_feature(self) -> tfds.features.Image:
    raise NotImplementedError

  def _label_feature(self) -> tfds.features.FeatureConnector:
    return tfds.features.Scalar(dtype=np.int64,
                                doc="-1: the source has no classes")

  def _pairs(self) -> list[Pair]:
    """Every pair of the source; bad input raises or is skipped and logged
    here, before anything is written."""
    raise NotImplementedError

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "image": self._image_feature(),
            "caption": tfds.features.Text(),
            "input_ids": tfds.features.Tensor(
                shape=(self.builder_config.seq_len,), dtype=np.int32),
            "label": self._label_feature(),
            "id": tfds.features.Text(),
        }),
        description=type(self).__doc__)

  def _split_generators(self, dl_manager):
    del dl_manager  # everything is local
    config = self.builder_config
    splits = split_pairs(self._pairs(), config.validation_fraction,
                         config.test_fraction)
    if not splits["train"]:
      total = sum(map(len, splits.values()))
      raise ValueError(f"no image-caption pair fell into the train split "
                       f"({total} pairs in all); add pairs or lower "
                       "validation_fraction / test_fraction")
    logging.info("%s: %s pairs", self.name,
                 {name: len(pairs) for name, pairs in splits.items()})
    if self._tokenizer_path:
      tokenizer = tok.load(self._tokenizer_path)
    else:
      tokenizer = tok.train((p.caption for p in splits["train"]),
                            config.vocab_size)
    # data_path is the dataset's temporary directory until the preparation
    # succeeds, so the tokenizer appears together with the data.
    tokenizer.save(self.data_path / TOKENIZER_FILE)
    # TFDS cannot write an empty split; a small source may leave one empty.
    return {name: self._generate_examples(pairs, tokenizer)
            for name, pairs in splits.items() if pairs}

  def _generate_examples(self, pairs: list[Pair], tokenizer: tok.Tokenizer
                         ) -> Iterator[tuple[str, dict]]:
    ids, _ = tokenizer.encode_padded([p.caption for p in pairs],
                                     self.builder_config.seq_len)
    for pair, row in zip(pairs, ids):
      yield pair.key, {"image": pair.image, "caption": pair.caption,
                       "input_ids": row, "label": pair.label, "id": pair.id}


def load_tokenizer(builder: tfds.core.DatasetBuilder) -> tok.Tokenizer:
  """The tokenizer stored with a prepared image-text dataset."""
  return tok.load(pathlib.Path(builder.data_dir) / TOKENIZER_FILE)


@preprocess_lib.register
def caption_tokens(length: int | None = None) -> preprocess_lib.Op:
  """input_ids [L] -> input_ids and input_mask (1 = real token) [length].

  A shorter `length` truncates the caption and ends it with [SEP] again; a
  longer one pads; None keeps L.
  """
  if length is not None and length < 2:
    raise ValueError(f"length={length} leaves no room for [CLS] and [SEP]")

  def op(example, seed):
    del seed
    ids = tf.cast(example["input_ids"], tf.int32)
    if length is not None:
      real = tf.reduce_sum(tf.cast(ids != tok.PAD_ID, tf.int32))
      ids = tf.pad(ids, [[0, tf.maximum(length - tf.shape(ids)[0], 0)]])
      ids = ids[:length]
      # A cut caption lost its [SEP]: put it back in the last slot.
      ids = tf.tensor_scatter_nd_update(
          ids, [[length - 1]],
          tf.where(real > length, tok.SEP_ID, ids[length - 1])[None])
      ids = tf.ensure_shape(ids, [length])
    return {**example, "input_ids": ids,
            "input_mask": tf.cast(ids != tok.PAD_ID, tf.int32)}
  return op
