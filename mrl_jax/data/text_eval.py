"""Labelled text for scoring a text encoder's sentence embeddings: a TFDS
dataset of {"text", "label"} (WordNet glosses and their 45 lexicographer
classes, `wordnet_lexnames`, by default) tokenized as the encoder was
trained.

* `tokenize_padded(model_path, length)`, a preprocess op: {"text", "label",
  ...} -> {"input_ids", "input_mask" [length] int32, "label"}: [CLS] ids
  [SEP], truncated and [PAD]-padded (`Tokenizer.encode_padded`, run inside
  tf.data through `tf.numpy_function`).
* `data_section(dataset, tokenizer_path, length)`: the config.data-like
  section `pipeline.open_source` / `eval_batches` read it with.
* `prepare(dataset)`: prepares `wordnet_lexnames` offline (from the Debian
  package wordnet-base) on first use, as the MLM corpus is.
"""
import ml_collections
import numpy as np
import tensorflow as tf

from mrl_jax.data import preprocess as preprocess_lib
from mrl_jax.data import text_corpus
from mrl_jax.data import tfds_prepare
from mrl_jax.data import tokenizer as tok

LEXNAMES = "wordnet_lexnames"
# Labelled text datasets that can be prepared here, without the web.
_OFFLINE_BUILDERS = {LEXNAMES: text_corpus.WordnetLexnames}


@preprocess_lib.register
def tokenize_padded(model_path: str, length: int) -> preprocess_lib.Op:
  """The preprocess op `tokenize_padded(model_path, length)` (see above)."""
  if length < 3:
    raise ValueError(f"length={length} leaves no room for tokens; use the "
                     "corpus's seq_len")
  tokenizer = tok.load(model_path)  # read per build: the file may change

  def encode(text: bytes) -> np.ndarray:
    ids, _ = tokenizer.encode_padded([text.decode("utf-8")], length)
    return ids[0]

  def op(example: preprocess_lib.Features,
         seed: tf.Tensor) -> preprocess_lib.Features:
    del seed  # deterministic
    ids = tf.numpy_function(encode, [example["text"]], tf.int32,
                            stateful=False)
    ids = tf.ensure_shape(ids, [length])
    return {"input_ids": ids,
            "input_mask": tf.cast(ids != tok.PAD_ID, tf.int32),
            "label": example["label"]}
  return op


def data_section(dataset: ml_collections.ConfigDict, tokenizer_path: str,
                 length: int) -> ml_collections.ConfigDict:
  """`dataset` (name, train_split, eval_split, num_classes, data_dir) with
  the eval preprocessing that tokenizes its "text" for the encoder."""
  data = ml_collections.ConfigDict(dict(dataset))
  data.eval_preprocess = f"tokenize_padded({tokenizer_path!r}, {length})"
  return data


def prepare(dataset: ml_collections.ConfigDict) -> None:
  """Prepares `dataset` in its data_dir if it is built here and is not yet
  (a few seconds for wordnet_lexnames); other datasets are left to TFDS.

  Raises:
    errors.RunError: a Debian text package it reads is not installed.
  """
  builder = _OFFLINE_BUILDERS.get(dataset.name)
  if builder is None:
    return
  builder = builder(data_dir=dataset.get("data_dir"))
  if not builder.is_prepared():
    tfds_prepare.prepare(builder, f"the labelled text dataset {dataset.name}")
