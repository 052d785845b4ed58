"""Text sources, document split, packing and the two text TFDS builders.

The builders run on a tiny corpus written here in the Debian packages'
formats (WordNet data.* lines, a dictd .dict.dz + .index), so the tests need
neither package installed.
"""
import gzip
import itertools
import json
import pathlib

import numpy as np
import pytest
import tensorflow_datasets as tfds

from mrl_jax.data import text_corpus
from mrl_jax.data import text_sources
from mrl_jax.data import tokenizer as tok
from mrl_jax.errors import RunError

_WORDS = ("river stone light water small large animal plant moves quickly "
          "slowly green red bird flies over under the a of and which that "
          "is has with tool made by people used for cutting wood metal "
          "building house food eaten cooked raw sweet bitter sound loud "
          "quiet walks runs swims fish sea land air fire earth").split()
_BASE64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _sentence(rng: np.random.Generator, n: int) -> str:
  return " ".join(rng.choice(_WORDS, n))


def _write_wordnet(root: pathlib.Path, per_pos: int = 40) -> list[tuple]:
  """data.{noun,verb,adj,adv} with `per_pos` synsets each; returns
  (id, lemmas, gloss, lex_filenum) per synset."""
  rng = np.random.default_rng(0)
  root.mkdir(parents=True, exist_ok=True)
  lexnum = {"noun": (5, 6, 18), "verb": (38, 29), "adj": (0, 44),
            "adv": (2,)}
  synsets = []
  for pos, nums in lexnum.items():
    lines = ["  1 This software and database is being provided to you, the "
             "LICENSEE, by"]
    for i in range(per_pos):
      offset = f"{1000 + 37 * i:08d}"
      lemma_a, lemma_b = rng.choice(_WORDS, 2)
      gloss = f"{_sentence(rng, 9)}; \"{_sentence(rng, 5)}\""
      num = nums[i % len(nums)]
      lines.append(f"{offset} {num:02d} {pos[0]} 02 {lemma_a}_x 0 {lemma_b} "
                   f"1 001 @ 00001740 n 0000 | {gloss}  ")
      synsets.append((f"wordnet:{pos}:{offset}", (f"{lemma_a} x", lemma_b),
                      gloss, num))
    (root / f"data.{pos}").write_text("\n".join(lines) + "\n")
  return synsets


def _b64(n: int) -> str:
  digits = ""
  while True:
    n, r = divmod(n, 64)
    digits = _BASE64[r] + digits
    if not n:
      return digits


def _write_gcide(root: pathlib.Path, entries: int = 40) -> pathlib.Path:
  rng = np.random.default_rng(1)
  root.mkdir(parents=True, exist_ok=True)
  body, index = b"", ["00-database-info\tA\tB"]
  body += b"header text of the database\n"
  for i in range(entries):
    word = f"Word{i}"
    text = (f"{word} \\{word}\"x`\\, n. [L. {{Root}}.]\n"
            f"   1. {_sentence(rng, 12)}.\n      [1913 Webster]\n\n").encode()
    index.append(f"{word}\t{_b64(len(body))}\t{_b64(len(text))}")
    if i % 10 == 0:  # a second headword for the same entry
      index.append(f"{word}s\t{_b64(len(body))}\t{_b64(len(text))}")
    body += text
  path = root / "gcide.dict.dz"
  path.write_bytes(gzip.compress(body))
  (root / "gcide.index").write_text("\n".join(index) + "\n")
  return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  root = tmp_path_factory.mktemp("corpus")
  synsets = _write_wordnet(root / "wordnet")
  gcide = _write_gcide(root / "dictd")
  return root, synsets, gcide


def test_wordnet_lines_give_lemmas_gloss_and_lexname(corpus):
  root, synsets, _ = corpus
  glosses = list(text_sources.wordnet_glosses(root / "wordnet"))
  assert [(g.id, g.lemmas, g.gloss, g.label) for g in glosses] == synsets
  assert text_sources.LEXNAMES[5] == "noun.animal"
  assert text_sources.LEXNAMES[38] == "verb.motion"
  assert len(text_sources.LEXNAMES) == 45
  doc = next(text_sources.wordnet_documents(root / "wordnet"))
  assert doc.text == f"{', '.join(synsets[0][1])}: {synsets[0][2]}"


def test_gcide_entries_are_cleaned_and_deduplicated(corpus):
  _, _, gcide = corpus
  docs = list(text_sources.gcide_documents(gcide))
  assert len(docs) == 40  # no metadata entry, no second headword
  first = docs[0].text
  assert first.startswith("Word0 , n. [L. Root.] 1. ")
  assert "Webster" not in first and "\\" not in first and "{" not in first
  assert len({d.id for d in docs}) == 40


def test_folder_reads_txt_paragraphs_and_jsonl(tmp_path):
  (tmp_path / "sub").mkdir()
  (tmp_path / "a.txt").write_text("one  two\nthree\n\n\n four \n")
  (tmp_path / "sub" / "b.jsonl").write_text(
      json.dumps({"text": "x y"}) + "\n\n" + json.dumps({"text": "z"}) + "\n")
  (tmp_path / "ignored.md").write_text("not read")
  docs = list(text_sources.folder_documents(tmp_path))
  assert [(d.id, d.text) for d in docs] == [
      ("a.txt#0", "one two three"), ("a.txt#1", "four"),
      ("sub/b.jsonl#0", "x y"), ("sub/b.jsonl#2", "z")]


def test_non_utf8_byte_is_named_with_file_and_offset(tmp_path):
  (tmp_path / "bad.txt").write_bytes("caf\u00e9 ok ".encode() + b"na\xefve")
  with pytest.raises(RunError) as e:
    list(text_sources.folder_documents(tmp_path))
  message = str(e.value)
  assert "\n" not in message
  bad = tmp_path / "bad.txt"
  assert f"{bad}: byte offset 11 (0xef) is not UTF-8" in message


@pytest.mark.parametrize("setup,match", [
    (lambda p: None, "does not exist"),
    (lambda p: p.mkdir(), "has no .txt or .jsonl file"),
    (lambda p: (p.mkdir(), (p / "a.jsonl").write_text('{"txt": 1}\n')),
     r"a.jsonl:1: not a JSON object with a string \"text\" field"),
])
def test_bad_folders_raise_one_line(tmp_path, setup, match):
  root = tmp_path / "texts"
  setup(root)
  with pytest.raises(RunError, match=match):
    list(text_sources.folder_documents(root))


def test_missing_corpus_names_the_debian_package_and_setup(tmp_path):
  with pytest.raises(RunError) as e:
    list(text_sources.wordnet_glosses(tmp_path))
  assert str(e.value) == (
      f"{tmp_path / 'data.noun'} is missing; install the Debian package "
      "wordnet-base (scripts/setup.sh does: apt-get install -y wordnet-base)")
  with pytest.raises(RunError, match="install the Debian package dict-gcide"):
    list(text_sources.gcide_documents(tmp_path / "gcide.dict.dz"))


def test_split_is_a_stable_function_of_the_id():
  ids = [f"gcide:{i}" for i in range(20_000)]
  splits = [text_sources.split_of(i, 0.02) for i in ids]
  assert splits == [text_sources.split_of(i, 0.02) for i in ids]
  assert abs(splits.count("validation") / len(ids) - 0.02) < 0.005
  # A larger fraction only moves documents from train to validation.
  assert all(text_sources.split_of(i, 0.1) == "validation"
             for i, s in zip(ids, splits) if s == "validation")


def test_packing_boundaries():
  docs = [[10, 11, 12], [], [13, 14, 15, 16, 17], [18]]
  rows = list(text_corpus.pack_sequences(docs, 6))
  cls, sep = tok.CLS_ID, tok.SEP_ID
  # Stream 10 11 12 S 13 14 15 16 17 S 18, cut every 4 tokens; a separator
  # at the edge of a row is dropped, one inside a row kept.
  assert [r.tolist() for r in rows] == [
      [cls, 10, 11, 12, sep, 0],
      [cls, 13, 14, 15, 16, sep],
      [cls, 17, sep, 18, sep, 0]]
  assert all(r.dtype == np.int32 and r.shape == (6,) for r in rows)


def test_packing_keeps_every_token_in_order():
  rng = np.random.default_rng(0)
  docs = [list(rng.integers(5, 99, rng.integers(1, 40))) for _ in range(50)]
  rows = list(text_corpus.pack_sequences(docs, 16))
  assert all(r[0] == tok.CLS_ID for r in rows)
  kept = [t for r in rows for t in r[1:] if t >= tok.NUM_SPECIAL]
  assert kept == [t for d in docs for t in d]
  for r in rows[:-1]:  # full rows end with [SEP]; the last may be padded
    assert r[-1] == tok.SEP_ID or (r[-2] == tok.SEP_ID and r[-1] == 0)


def test_tokenizer_sample_is_a_stable_hash_chosen_share():
  docs = [text_sources.Document(f"gcide:{i}", f"text {i:05d}")
          for i in range(10_000)]  # 10 characters each
  assert text_corpus.tokenizer_sample(docs[:50], 500) == [
      d.text for d in docs[:50]]  # fits: all, in order
  sample = text_corpus.tokenizer_sample(docs, 20_000)
  assert 1800 < len(sample) < 2200  # about 20_000 characters
  assert sample == sorted(sample)  # in document order
  assert sample == text_corpus.tokenizer_sample(docs, 20_000)
  # Independent of the validation split's hash: both splits contribute.
  val = {d.text for d in docs if text_sources.split_of(d.id, 0.2) ==
         "validation"}
  assert 0.1 < len(val & set(sample)) / len(sample) < 0.3


def _prepare(builder_cls, data_dir, **kwargs):
  builder = builder_cls(data_dir=str(data_dir), **kwargs)
  builder.download_and_prepare()
  return builder


def test_corpus_builder_tokenizes_packs_and_stores_the_tokenizer(
    corpus, tmp_path):
  root, synsets, gcide = corpus
  config = text_corpus.TextCorpusConfig(
      name="tiny", seq_len=32, vocab_size=120, validation_fraction=0.2)
  builder = _prepare(text_corpus.MrlTextCorpus, tmp_path, config=config,
                     wordnet_dir=str(root / "wordnet"), gcide_dict=str(gcide))
  tokenizer = text_corpus.load_tokenizer(builder)
  assert tokenizer.vocab_size <= 120
  rows = {split: np.stack([ex["input_ids"] for ex in tfds.as_numpy(
      builder.as_dataset(split=split))]) for split in ("train", "validation")}
  for split, ids in rows.items():
    assert ids.shape[1] == 32 and ids.dtype == np.int32
    assert (ids[:, 0] == tok.CLS_ID).all()
  # Validation text is exactly the validation documents, in order.
  docs = list(text_sources.wordnet_documents(root / "wordnet")) + list(
      text_sources.gcide_documents(gcide))
  val = [d for d in docs if text_sources.split_of(d.id, 0.2) == "validation"]
  want = list(text_corpus.pack_sequences(
      tokenizer.encode_batch([d.text for d in val]), 32))
  np.testing.assert_array_equal(rows["validation"], np.stack(want))
  # Preparing again reuses the prepared data (same tokenizer file).
  again = _prepare(text_corpus.MrlTextCorpus, tmp_path, config=config)
  assert text_corpus.load_tokenizer(again).model_proto == tokenizer.model_proto


def test_corpus_builder_with_too_few_documents_fails_before_writing(
    corpus, tmp_path):
  root, _, _ = corpus
  config = text_corpus.TextCorpusConfig(
      name="two", sources=("wordnet",), max_documents=2, vocab_size=50)
  builder = text_corpus.MrlTextCorpus(data_dir=str(tmp_path), config=config,
                                      wordnet_dir=str(root / "wordnet"))
  with pytest.raises(ValueError, match="no document fell into the validation"):
    builder.download_and_prepare()
  assert not pathlib.Path(builder.data_dir).exists()


def test_lexname_builder_splits_like_the_corpus(corpus, tmp_path):
  root, synsets, _ = corpus
  builder = _prepare(text_corpus.WordnetLexnames, tmp_path,
                     wordnet_dir=str(root / "wordnet"),
                     validation_fraction=0.2)
  assert builder.info.features["label"].num_classes == 45
  got = {}
  for split in ("train", "validation"):
    for ex in tfds.as_numpy(builder.as_dataset(split=split)):
      got[ex["id"].decode()] = (split, ex["text"].decode(), int(ex["label"]))
  assert got == {sid: (text_sources.split_of(sid, 0.2), gloss, num)
                 for sid, _, gloss, num in synsets}


@pytest.mark.skipif(not (text_sources.WORDNET_DIR / "data.noun").exists() or
                    not text_sources.GCIDE_DICT.exists(),
                    reason="needs wordnet-base and dict-gcide (scripts/setup.sh)")
def test_the_installed_debian_corpus():
  glosses = list(text_sources.wordnet_glosses())
  assert len(glosses) == 117_659  # WordNet 3.0 synsets
  assert {g.label for g in glosses} == set(range(45))
  assert all(g.gloss and g.lemmas for g in glosses)
  docs = list(itertools.islice(text_sources.gcide_documents(), 2000))
  assert all(d.text for d in docs)
  assert not any("Webster]" in d.text or "PJC" in d.text for d in docs)
  # Pronunciations are gone (a few entries have unpaired marks).
  assert sum("\\" in d.text for d in docs) < 20
