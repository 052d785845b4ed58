"""Sentencepiece tokenizer: special ids, round trip, padding, loading errors."""
import io

import numpy as np
import pytest
import sentencepiece as spm

from mrl_jax.data import tokenizer as tok
from mrl_jax.errors import RunError

_TEXT = [
    "a small river flows over green stones toward the sea",
    "the bird flies quickly over the quiet house and the large tree",
    "people use a sharp metal tool for cutting wood when building",
    "sweet food is eaten raw or cooked; bitter food is rarely eaten",
] * 20


@pytest.fixture(scope="module")
def tokenizer():
  return tok.train(_TEXT, vocab_size=90)


def test_special_ids_are_fixed(tokenizer):
  pieces = [tokenizer.piece(i) for i in tok.SPECIAL_IDS]
  assert pieces == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
  assert (tok.PAD_ID, tok.CLS_ID, tok.SEP_ID, tok.MASK_ID) == (0, 2, 3, 4)
  assert tokenizer.vocab_size <= 90
  # Text spelling a special token is ordinary text, never a special id.
  assert not set(tokenizer.encode("[MASK] [CLS] [SEP]")) & {
      tok.CLS_ID, tok.SEP_ID, tok.MASK_ID}


def test_round_trip(tokenizer):
  for text in _TEXT[:4] + ["the stones flow"]:
    ids = tokenizer.encode(text)
    assert min(ids) >= tok.NUM_SPECIAL
    assert tokenizer.decode(ids) == text
  # Specials other than [UNK] are dropped on decoding.
  ids = tokenizer.encode("the sea")
  assert tokenizer.decode([tok.CLS_ID, *ids, tok.SEP_ID, tok.PAD_ID]) == (
      "the sea")


def test_encode_padded_adds_cls_sep_and_truncates(tokenizer):
  ids, mask = tokenizer.encode_padded(["the sea", _TEXT[1]], 8)
  sea = tokenizer.encode("the sea")
  padding = [tok.PAD_ID] * (6 - len(sea))
  assert ids[0].tolist() == [tok.CLS_ID, *sea, tok.SEP_ID, *padding]
  assert ids[1, 0] == tok.CLS_ID and ids[1, -1] == tok.SEP_ID
  assert ids[1, 1:-1].tolist() == tokenizer.encode(_TEXT[1])[:6]
  np.testing.assert_array_equal(mask, ids != 0)


def test_training_is_deterministic(tokenizer):
  assert tok.train(_TEXT, vocab_size=90).model_proto == tokenizer.model_proto


def test_save_and_load(tokenizer, tmp_path):
  path = tmp_path / "tokenizer.model"
  tokenizer.save(path)
  again = tok.load(path)
  assert again.encode(_TEXT[2]) == tokenizer.encode(_TEXT[2])


def test_load_errors_are_one_line(tmp_path):
  with pytest.raises(RunError, match="tokenizer file .*missing.model does not "
                     "exist"):
    tok.load(tmp_path / "missing.model")
  (tmp_path / "junk.model").write_bytes(b"not a model")
  with pytest.raises(RunError, match="junk.model is neither a sentencepiece "
                     "model nor a WordPiece vocab.txt"):
    tok.load(tmp_path / "junk.model")
  with pytest.raises(ValueError, match="vocab_size=5 is too small"):
    tok.train(_TEXT, vocab_size=5)


def test_a_model_with_other_special_ids_is_refused(tmp_path):
  model = io.BytesIO()
  spm.SentencePieceTrainer.Train(  # sentencepiece's defaults: <unk> <s> </s>
      sentence_iterator=iter(_TEXT), model_writer=model, vocab_size=50,
      minloglevel=2)
  (tmp_path / "plain.model").write_bytes(model.getvalue())
  with pytest.raises(RunError, match="special token ids .* differ"):
    tok.load(tmp_path / "plain.model")
