"""Labelled text for the exporter: the tokenize_padded op equals the
tokenizer's own padding; the offline dataset preparation fails in one line."""
import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from mrl_jax.data import preprocess
from mrl_jax.data import text_eval
from mrl_jax.data import text_sources
from mrl_jax.data import tokenizer as tok
from mrl_jax.errors import RunError

_TEXT = ["a small river flows over green stones toward the sea",
         "the bird flies quickly over the quiet house",
         "people use a sharp metal tool for cutting wood"] * 20


@pytest.fixture(name="model_path", scope="module")
def fixture_model_path(tmp_path_factory):
  path = tmp_path_factory.mktemp("tok") / "tokenizer.model"
  tok.train(_TEXT, vocab_size=80).save(path)
  return str(path)


def test_tokenize_padded_equals_encode_padded_in_tf_data(model_path):
  texts = ["the sea", "a quick bird " * 20, "été"]  # short, cut, non-ASCII
  data = text_eval.data_section(
      ml_collections.ConfigDict({"name": "x"}), model_path, 12)
  op = preprocess.build(data.eval_preprocess)
  ds = tf.data.Dataset.from_tensor_slices(
      {"text": texts, "label": [3, 1, 4], "id": ["a", "b", "c"]})
  rows = list(ds.map(lambda ex: op(ex, tf.constant([0, 0]))
                     ).batch(3).as_numpy_iterator())[0]
  assert sorted(rows) == ["input_ids", "input_mask", "label"]
  ids, mask = tok.load(model_path).encode_padded(texts, 12)
  np.testing.assert_array_equal(rows["input_ids"], ids)
  np.testing.assert_array_equal(rows["input_mask"], mask)
  np.testing.assert_array_equal(rows["label"], [3, 1, 4])
  assert rows["input_ids"][1, -1] == tok.SEP_ID  # truncated, then closed


def test_bad_length_is_one_line_value_error(model_path):
  with pytest.raises(ValueError, match="length=2 leaves no room"):
    preprocess.build(f"tokenize_padded({model_path!r}, 2)")


def test_missing_wordnet_package_is_one_line_run_error(tmp_path, monkeypatch):
  monkeypatch.setattr(text_sources, "WORDNET_DIR", tmp_path / "no_wordnet")
  dataset = ml_collections.ConfigDict(
      {"name": text_eval.LEXNAMES, "data_dir": str(tmp_path / "tfds")})
  with pytest.raises(RunError, match=r"no_wordnet/data\.noun is missing; "
                     "install the Debian package wordnet-base"):
    text_eval.prepare(dataset)
