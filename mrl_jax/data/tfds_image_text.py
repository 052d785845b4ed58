"""Any prepared TFDS image-caption dataset (e.g. `coco_captions`) as an
image-text source.

`TfdsImageText` (tfds name `tfds_image_text`) reads the TFDS dataset
`tfds_name` as prepared in a data_dir (`text_sources.prepared_tfds_builder`:
nothing is downloaded, and a dataset that is not prepared is a one-line
error naming `tfds build`) and prepares the features of captioned_images.py:
* image: the source's encoded image bytes, copied as they are (decoded to
  [H, W, 3] when read);
* caption: the first non-empty caption of `caption_key`, a text feature or
  a sequence of them (COCO captions: "captions/text", five or more per
  image); examples without one are skipped and counted in the log;
* input_ids: the caption tokenized by a sentencepiece model trained on the
  captions (all of them) of the source's "train" split, at most
  text_corpus.TOKENIZER_SAMPLE_CHARS characters in stored order, or by a
  user's `.model` file;
* label: `label_key`'s class (its ClassLabel names become the class names
  that zero-shot evaluation prompts with), or -1 without a label_key;
* id: `id_key`'s value as text, or "<split>:<index>".
Every split of the source is prepared, under its own name.

A key names a feature; "/" descends into nested features ("captions/text")
unless the whole key is a feature's name ("image/id" in COCO).
"""
from collections.abc import Iterator, Mapping
import dataclasses
from typing import Any

from absl import logging
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from mrl_jax.data import captioned_images
from mrl_jax.data import text_corpus
from mrl_jax.data import tokenizer as tok

NAME = "tfds_image_text"
TOKENIZER_SPLIT = "train"
KEY_FIELDS = ("image_key", "caption_key", "label_key", "id_key")


@dataclasses.dataclass(eq=False)
class TfdsImageTextConfig(captioned_images.CaptionedImagesConfig):
  """The source and its field map (besides seq_len and vocab_size).

  Attributes:
    tfds_name: the TFDS dataset read, e.g. "coco_captions".
    image_key: its image feature.
    caption_key: its caption feature: text, or a sequence of texts.
    label_key: its integer class feature, or None (labels -1).
    id_key: a feature identifying the example, or None.
  """
  tfds_name: str = ""
  image_key: str = "image"
  caption_key: str = "captions/text"
  label_key: str | None = None
  id_key: str | None = None


def feature_path(features: tfds.features.FeaturesDict, key: str
                 ) -> tuple[tuple[str, ...], tfds.features.FeatureConnector,
                            bool]:
  """(path, feature, in_sequence) of `key` in `features`: the names to walk
  down a decoded example, the feature found, and whether it sits inside a
  tfds.features.Sequence (then its value has a leading [K] axis).

  Raises:
    KeyError: no such feature.
  """
  in_sequence = False
  while isinstance(features, tfds.features.Sequence):
    features, in_sequence = features.feature, True
  if isinstance(features, tfds.features.FeaturesDict):
    if key in features:
      feature = features[key]
      nested = isinstance(feature, tfds.features.Sequence)
      while isinstance(feature, tfds.features.Sequence):
        feature = feature.feature
      return (key,), feature, in_sequence or nested
    for cut in (i for i, c in enumerate(key) if c == "/"):
      head, rest = key[:cut], key[cut + 1:]
      if head in features:
        path, feature, inner = feature_path(features[head], rest)
        return (head, *path), feature, in_sequence or inner
  raise KeyError(key)


def value_at(example: Mapping[str, Any], path: tuple[str, ...]) -> Any:
  """The value at `path` (from `feature_path`) of a decoded example."""
  for name in path:
    example = example[name]
  return example


def _nested(path: tuple[str, ...], leaf: Any) -> dict[str, Any]:
  """{"a": {"b": leaf}} for path ("a", "b")."""
  for name in reversed(path):
    leaf = {name: leaf}
  return leaf


def _scalar_dtype(feature: tfds.features.FeatureConnector
                  ) -> tf.DType | None:
  """The dtype of a feature holding one scalar per value, else None."""
  if isinstance(feature, tfds.features.FeaturesDict) or feature.shape:
    return None
  return feature.tf_dtype


def check_fields(source: tfds.core.DatasetBuilder,
                 config: TfdsImageTextConfig) -> dict[str, Any]:
  """{field: (path, feature, in_sequence)} of the config's keys in the
  source's features, checked.

  Raises:
    ValueError (one line): a key that names no feature, or a feature of the
      wrong kind (image: an Image; caption: text, or a sequence of texts;
      label: an integer; id: a scalar), with the source's feature names.
  """
  features = source.info.features
  kinds = {"image_key": "an image", "caption_key": "a text (or a sequence "
           "of texts)", "label_key": "an integer class",
           "id_key": "a scalar"}
  found = {}
  for field in KEY_FIELDS:
    key = getattr(config, field)
    if key is None:
      continue
    try:
      path, feature, in_sequence = feature_path(features, key)
    except KeyError:
      path, feature, in_sequence = (), None, False
    dtype = None if feature is None else _scalar_dtype(feature)
    fits = {
        "image_key": isinstance(feature, tfds.features.Image)
                     and not in_sequence,
        "caption_key": dtype == tf.string,
        "label_key": dtype is not None and dtype.is_integer
                     and not in_sequence,
        "id_key": dtype is not None and not in_sequence,
    }[field]
    if not fits:
      names = sorted(_flat_names(features))
      raise ValueError(
          f"config.data.image_text.{field}={key!r} is not {kinds[field]} "
          f"feature of TFDS dataset {config.tfds_name}; its features: "
          f"{names}")
    found[field] = (path, feature, in_sequence)
  return found


def _flat_names(features: tfds.features.FeatureConnector,
                prefix: str = "") -> Iterator[str]:
  """Every leaf feature's key, e.g. "captions/text"."""
  while isinstance(features, tfds.features.Sequence):
    features = features.feature
  if not isinstance(features, tfds.features.FeaturesDict):
    yield prefix.rstrip("/")
    return
  for name, feature in features.items():
    yield from _flat_names(feature, f"{prefix}{name}/")


def captions(value: Any) -> Iterator[str]:
  """The non-empty captions of a decoded caption value (bytes, or an array
  of them), in order, whitespace collapsed."""
  for text in np.atleast_1d(value):
    text = " ".join(text.decode("utf-8").split())
    if text:
      yield text


class TfdsImageText(captioned_images.CaptionedImages):
  """Images with captions from a prepared TFDS dataset, tokenized."""

  VERSION = tfds.core.Version("1.0.0")

  def __init__(self, *, source: tfds.core.DatasetBuilder, **kwargs):
    """source: the prepared TFDS dataset the config's tfds_name names
    (text_sources.prepared_tfds_builder).

    Raises:
      ValueError: a key of the field map does not fit its features.
    """
    self._source = source
    self._fields = check_fields(source, kwargs["config"])
    self._tokenizer: tok.Tokenizer | None = None  # until prepare_tokenizer
    super().__init__(**kwargs)

  def _image_feature(self) -> tfds.features.Image:
    _, image, _ = self._fields["image_key"]
    # Decoding to 3 channels turns grayscale sources into RGB.
    return tfds.features.Image(shape=(None, None, 3),
                               encoding_format=image.encoding_format)

  def _label_feature(self) -> tfds.features.FeatureConnector:
    _, label, _ = self._fields.get("label_key", (None, None, None))
    if isinstance(label, tfds.features.ClassLabel):
      return tfds.features.ClassLabel(names=list(label.names))
    return super()._label_feature()

  def _read(self, split: str) -> tf.data.Dataset:
    """The source split in stored order, its image left encoded."""
    path, _, _ = self._fields["image_key"]
    return self._source.as_dataset(
        split=split, shuffle_files=False,
        decoders=_nested(path, tfds.decode.SkipDecoding()))

  def train_captions(self) -> Iterator[str]:
    """The captions of the source's train split, in stored order."""
    if TOKENIZER_SPLIT not in self._source.info.splits:
      raise ValueError(
          f"TFDS dataset {self.builder_config.tfds_name} has no "
          f"{TOKENIZER_SPLIT!r} split to train the caption tokenizer on "
          f"(its splits: {sorted(self._source.info.splits)}); set "
          "config.data.image_text.tokenizer_path to a sentencepiece .model")
    path, _, _ = self._fields["caption_key"]
    texts = self._read(TOKENIZER_SPLIT).map(lambda ex: value_at(ex, path))
    for value in texts.as_numpy_iterator():
      yield from captions(value)

  def prepare_tokenizer(self) -> None:
    """Trains (or loads) the caption tokenizer, keeping it for the
    preparation: bad captions or a bad tokenizer file fail here, before
    TFDS writes anything.

    Raises:
      ValueError: no train split or no captions in it, or a vocab_size that
        does not fit them.
      RunError: tokenizer_path is not a usable tokenizer file.
    """
    self._tokenizer = self._read_tokenizer()

  def _read_tokenizer(self) -> tok.Tokenizer:
    if self._tokenizer_path:
      return tok.load(self._tokenizer_path)
    # TFDS stores examples shuffled by their keys (unless a builder turns
    # that off), so the first captions are a sample of them all.
    texts, chars = [], 0
    for text in self.train_captions():
      chars += len(text)
      if texts and chars > text_corpus.TOKENIZER_SAMPLE_CHARS:
        break
      texts.append(text)
    if not texts:
      raise ValueError(f"TFDS dataset {self.builder_config.tfds_name} has no "
                       f"captions at {self.builder_config.caption_key!r} in "
                       f"its {TOKENIZER_SPLIT!r} split; check "
                       "config.data.image_text.caption_key")
    return tok.train(texts, self.builder_config.vocab_size)

  def _split_generators(self, dl_manager):
    del dl_manager  # the source is prepared; nothing is downloaded
    if self._tokenizer is None:
      self.prepare_tokenizer()
    tokenizer = self._tokenizer
    # data_path is the dataset's temporary directory until the preparation
    # succeeds, so the tokenizer appears together with the data.
    tokenizer.save(self.data_path / captioned_images.TOKENIZER_FILE)
    return {split: self._examples(split, tokenizer)
            for split in self._source.info.splits}

  def _examples(self, split: str, tokenizer: tok.Tokenizer
                ) -> Iterator[tuple[str, dict]]:
    seq_len = self.builder_config.seq_len
    picked = {field: self._fields[field][0]
              for field in KEY_FIELDS if field in self._fields}
    skipped = 0
    for index, example in enumerate(self._read(split).as_numpy_iterator()):
      caption = next(captions(value_at(example, picked["caption_key"])), "")
      if not caption:
        skipped += 1
        continue
      ids, _ = tokenizer.encode_padded([caption], seq_len)
      label = (int(value_at(example, picked["label_key"]))
               if "label_key" in picked else captioned_images.NO_LABEL)
      ident = (_as_text(value_at(example, picked["id_key"]))
               if "id_key" in picked else f"{split}:{index}")
      yield f"{index:010d}", {
          "image": value_at(example, picked["image_key"]),
          "caption": caption, "input_ids": ids[0], "label": label,
          "id": ident}
    if skipped:
      logging.warning("%s: skipped %d examples of split %s without a "
                      "caption", self.builder_config.tfds_name, skipped,
                      split)


def _as_text(value: Any) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)
