"""WordPiece tokenizer from a BERT vocab.txt: BERT's tokenization (checked
against HF's BertWordPieceTokenizer), the special ids moved to 0-4, bad files
refused in one line, the workdir's tokenizer check across kinds, and (slow)
configs/text_folder.py trained with a vocab.txt and bundled."""
import os
import pathlib

import numpy as np
import pytest
from tokenizers import BertWordPieceTokenizer

from conftest import CONFIG_DIR, launch_ok, run_offline_mode
import mrl_jax
from mrl_jax import errors
from mrl_jax.data import tokenizer as tok
from mrl_jax.tasks import workdir_tokenizer

# BERT's layout: [PAD] at 0, [UNK] [CLS] [SEP] [MASK] at 100..103, [unusedN]
# in between, then ordinary pieces.
_WORDS = ["the", "of", "and", "is", "river", "stone", "stones", "green",
          "small", "bird", "flies", "over", "water", "un", "##aff", "##able",
          "cafe", "naive", "run", "##ning", "hello", "world", "中", "文"]
_CHARACTERS = list("abcdefghijklmnoprstuvwy")  # no q, x or z: "quiz" is [UNK]
_PUNCTUATION = list(",.!?-()'")
BERT_SPECIALS = {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102,
                 "[MASK]": 103}
# File id <-> mrl_jax id, as the fixed ids and BERT's layout give them.
_SWAPPED = {100: 1, 101: 2, 102: 3, 103: 4}
_SWAPPED.update({v: k for k, v in _SWAPPED.items()})


def bert_vocab_lines(words=_WORDS) -> list[str]:
  """A small vocab.txt in BERT's layout, as lines."""
  head = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + [
      "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
  return head + _PUNCTUATION + _CHARACTERS + [
      f"##{c}" for c in _CHARACTERS] + list(words)


def write_bert_vocab(path, words=_WORDS):
  """Writes bert_vocab_lines(words) to path; returns path."""
  path.write_text("\n".join(bert_vocab_lines(words)) + "\n", encoding="utf-8")
  return path


def _ours(file_id: int) -> int:
  return _SWAPPED.get(file_id, file_id)


@pytest.fixture(name="vocab", scope="module")
def fixture_vocab(tmp_path_factory):
  return write_bert_vocab(tmp_path_factory.mktemp("uncased") / "vocab.txt")


@pytest.fixture(name="cased_vocab", scope="module")
def fixture_cased_vocab(tmp_path_factory):
  return write_bert_vocab(tmp_path_factory.mktemp("cased") / "vocab.txt",
                          [*_WORDS, "The", "Café", "##A"])


_TEXTS = [
    "The unaffable river-stones!",
    "Café naïve RUNNING over the water, (again)?",
    "small  green\tbirds\nflies \x00 over 中文 hello",
    "quiz unaffables",
]


@pytest.mark.parametrize("name, lowercase", [("vocab", True),
                                             ("cased_vocab", False)])
def test_ids_are_berts_through_the_special_swap(request, name, lowercase):
  path = request.getfixturevalue(name)
  tokenizer = tok.load(path)
  assert isinstance(tokenizer, tok.WordPieceTokenizer)
  assert tokenizer.lowercase == lowercase
  bert = BertWordPieceTokenizer.from_file(str(path), lowercase=lowercase)
  for text in _TEXTS:
    want = [_ours(i) for i in bert.encode(text, add_special_tokens=False).ids]
    assert tokenizer.encode(text) == want, text
  assert tokenizer.encode_batch(_TEXTS) == [tokenizer.encode(t)
                                            for t in _TEXTS]


def test_hand_checked_splits(vocab):
  tokenizer = tok.load(vocab)

  def pieces(text):
    return [tokenizer.piece(i) for i in tokenizer.encode(text)]

  assert pieces("Unaffable") == ["un", "##aff", "##able"]
  assert pieces("café NAÏVE") == ["cafe", "naive"]  # accents stripped
  assert pieces("stones,run-running!") == [
      "stones", ",", "run", "-", "run", "##ning", "!"]
  assert pieces("中文") == ["中", "文"]
  # A word it cannot spell (no "q") is one [UNK], as BERT's.
  assert tokenizer.encode("quiz the") == [tok.UNK_ID,
                                          tokenizer.encode("the")[0]]
  # Text spelling a special token is ordinary text, never a special id.
  assert not set(tokenizer.encode("[MASK] [CLS] [SEP]")) & {
      tok.CLS_ID, tok.SEP_ID, tok.MASK_ID}


def test_every_id_maps_back_to_its_line(vocab):
  tokenizer = tok.load(vocab)
  lines = bert_vocab_lines()
  assert tokenizer.vocab_size == len(lines)
  assert [tokenizer.piece(i) for i in tok.SPECIAL_IDS] == list(BERT_SPECIALS)
  by_id = [tokenizer.piece(i) for i in range(tokenizer.vocab_size)]
  assert by_id == [lines[_ours(i)] for i in range(len(lines))]
  # The swapped [unusedN] pieces moved to the specials' file ids.
  assert by_id[100:104] == ["[unused0]", "[unused1]", "[unused2]",
                            "[unused3]"]


def test_decode_padded_and_saved(vocab, tmp_path):
  tokenizer = tok.load(vocab)
  ids = tokenizer.encode("Unaffable stones, naïve!")
  assert tokenizer.decode([tok.CLS_ID, *ids, tok.SEP_ID, tok.PAD_ID]) == (
      "unaffable stones, naive!")
  padded, mask = tokenizer.encode_padded(["the water", _TEXTS[1]], 6)
  assert padded[0].tolist() == [tok.CLS_ID, *tokenizer.encode("the water"),
                                tok.SEP_ID, tok.PAD_ID, tok.PAD_ID]
  assert padded[1, -1] == tok.SEP_ID
  np.testing.assert_array_equal(mask, padded != tok.PAD_ID)
  # It is stored as the vocab.txt itself, and rebuilt from those bytes.
  assert tokenizer.model_proto == vocab.read_bytes()
  tokenizer.save(tmp_path / "tokenizer.model")
  again = tok.load(tmp_path / "tokenizer.model")
  assert again.encode(_TEXTS[1]) == tokenizer.encode(_TEXTS[1])
  assert isinstance(tok.from_bytes(tok.train(_TEXTS * 20, 60).model_proto),
                    tok.SentencePieceTokenizer)


@pytest.mark.parametrize("content, match", [
    (b"", "vocab.txt is empty; give a sentencepiece .model"),
    (b"[PAD]\n[UNK]\n[CLS]\n[SEP]\nthe\n",
     (r"vocab.txt is neither a sentencepiece model nor a WordPiece vocab.txt "
      r"with BERT's special tokens \(no \[MASK\] line\)")),
    ("\n".join(bert_vocab_lines() + ["the"]).encode(),
     (f"line {len(bert_vocab_lines()) + 1} repeats 'the' of line "
      f"{bert_vocab_lines().index('the') + 1}; a vocab.txt lists each piece "
      "once")),
    (b"[PAD]\n\n[UNK]", "line 2 is empty"),
    (b"[PAD]\n\xff\xfe\n", r"nor a UTF-8 vocab.txt \(byte 6 is not UTF-8\)"),
    (b"[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n",
     "holds only the special tokens"),
])
def test_bad_vocab_is_a_one_line_run_error(tmp_path, content, match):
  (tmp_path / "vocab.txt").write_bytes(content)
  with pytest.raises(errors.RunError, match=match) as e:
    tok.load(tmp_path / "vocab.txt")
  assert "\n" not in str(e.value)


def test_workdir_keeps_the_vocab_and_refuses_the_other_kind(vocab, tmp_path):
  wordpiece = tok.load(vocab)
  sentencepiece = tok.train(_TEXTS * 20, 60)
  with pytest.raises(ValueError, match=f"has {wordpiece.vocab_size} pieces "
                     "but model.kwargs.vocab_size=100"):
    workdir_tokenizer.bind(wordpiece, 100, "model.kwargs.vocab_size",
                           str(tmp_path), "data", writer=True)
  assert not (tmp_path / workdir_tokenizer.FILE).exists()
  workdir_tokenizer.bind(wordpiece, None, "v", str(tmp_path), "data",
                         writer=True)
  kept = tmp_path / workdir_tokenizer.FILE
  assert kept.read_bytes() == vocab.read_bytes()
  workdir_tokenizer.bind(wordpiece, None, "v", str(tmp_path), "data",
                         writer=False)  # the same one: accepted
  with pytest.raises(errors.RunError, match="differs from the dataset's"):
    workdir_tokenizer.bind(sentencepiece, None, "v", str(tmp_path), "data",
                           writer=False)


@pytest.mark.slow
def test_text_folder_trains_and_bundles_with_a_vocab_txt(vocab, tmp_path):
  """One smoke run of configs/text_folder.py with tokenizer=vocab.txt; its
  workdir and its encoder bundle keep the vocab.txt and tokenize as BERT."""
  root = tmp_path / "texts"
  root.mkdir()
  rng = np.random.default_rng(0)
  words = [w for w in _WORDS if not w.startswith("##")] + [
      "Unaffable", "running", "naïve", "stones,"]
  for f in range(2):
    paragraphs = (" ".join(rng.choice(words, rng.integers(8, 40)))
                  for _ in range(300))
    (root / f"part{f}.txt").write_text("\n\n".join(paragraphs))
  spec = (f"{CONFIG_DIR / 'text_folder.py'}:root={root},tokenizer={vocab},"
          f"data_dir={tmp_path / 'tfds'},smoke")
  workdir = tmp_path / "workdir"
  assert "MLM acc" in launch_ok(spec, str(workdir), timeout=600).stdout
  assert (workdir / workdir_tokenizer.FILE).read_bytes() == vocab.read_bytes()
  bundle = pathlib.Path(run_offline_mode(spec, str(workdir),
                                         "export_encoder")[0])
  assert bundle == workdir / "encoder"
  assert (bundle / workdir_tokenizer.FILE).read_bytes() == vocab.read_bytes()
  encoder = mrl_jax.load_encoder(os.fspath(bundle))
  assert isinstance(encoder.tokenizer, tok.WordPieceTokenizer)
  z = np.asarray(encoder.embed(
      ["The unaffable river", "THE UNAFFABLE RIVER", "small green birds"],
      dim=8))
  assert z.shape == (3, 8) and np.isfinite(z).all()
  np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0, rtol=1e-5)
  np.testing.assert_array_equal(z[0], z[1])  # lowercased, as uncased BERT
  assert not np.allclose(z[0], z[2])
