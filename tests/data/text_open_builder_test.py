"""text_corpus.open_builder: named and custom corpora, their prepared
directories, the TFDS text source, and bad input (one line, nothing
written)."""
import io
import pathlib

import ml_collections
import numpy as np
import pytest
import sentencepiece as spm
import tensorflow_datasets as tfds

from mrl_jax.data import text_corpus
from mrl_jax.data import text_sources
from mrl_jax.data import tokenizer as tok
from mrl_jax.errors import RunError

_WORDS = ("river stone light water small large animal plant moves quickly "
          "slowly green red bird flies over under the a of and which that "
          "is has with tool made by people used for cutting wood").split()


def _paragraphs(seed: int, count: int) -> str:
  rng = np.random.default_rng(seed)
  return "\n\n".join(" ".join(rng.choice(_WORDS, 12)) for _ in range(count))


def _folder(root: pathlib.Path, seed: int = 0) -> pathlib.Path:
  root.mkdir(parents=True)
  (root / "a.txt").write_text(_paragraphs(seed, 30))
  (root / "b.txt").write_text(_paragraphs(seed + 1, 30))
  return root


def _corpus(root: pathlib.Path, **fields) -> dict:
  return {"name": None, "sources": ("folder",), "folder": str(root),
          "seq_len": 32, "vocab_size": 80, "validation_fraction": 0.2,
          **fields}


def _files(root: pathlib.Path) -> list[str]:
  return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                if p.is_file())


def _rows(builder, split: str) -> np.ndarray:
  return np.stack([ex["input_ids"] for ex in tfds.as_numpy(
      builder.as_dataset(split=split))])


class MrlTestTexts(tfds.core.GeneratorBasedBuilder):
  """A tiny TFDS text dataset (two text features and a label)."""

  VERSION = tfds.core.Version("1.0.0")
  # Where TFDS looks for metadata files (none here); a test module has no
  # package to infer it from.
  pkg_dir_path = pathlib.Path(__file__).parent

  def _info(self):
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "text": tfds.features.Text(), "title": tfds.features.Text(),
            "label": tfds.features.ClassLabel(num_classes=2)}),
        disable_shuffling=True)

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    for i, text in enumerate(_paragraphs(7, 50).split("\n\n")):
      yield i, {"text": f"  {text}\n", "title": f"t{i}", "label": i % 2}


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("tfds")
  MrlTestTexts(data_dir=str(root)).download_and_prepare()
  return root


def test_a_folder_corpus_is_prepared_once_under_a_hashed_name(tmp_path):
  folder = _folder(tmp_path / "texts")
  data_dir = tmp_path / "tfds"
  builder = text_corpus.open_builder(
      ml_collections.ConfigDict(_corpus(folder)), str(data_dir))
  assert builder.is_prepared()
  assert builder.builder_config.name.startswith("custom_")
  rows = _rows(builder, "validation")
  assert rows.shape[1] == 32 and (rows[:, 0] == tok.CLS_ID).all()
  docs = list(text_sources.folder_documents(folder))
  val = [d.text for d in docs
         if text_sources.split_of(d.id, 0.2) == "validation"]
  tokenizer = text_corpus.load_tokenizer(builder)
  np.testing.assert_array_equal(rows, np.stack(list(
      text_corpus.pack_sequences(tokenizer.encode_batch(val), 32))))
  prepared = {p: p.stat().st_mtime_ns for p in data_dir.rglob("*")}
  again = text_corpus.open_builder(_corpus(folder), str(data_dir))
  assert again.data_dir == builder.data_dir
  assert {p: p.stat().st_mtime_ns for p in data_dir.rglob("*")} == prepared


def test_what_shapes_the_data_gives_another_directory(tmp_path):
  folder = _folder(tmp_path / "texts")
  twin = _folder(tmp_path / "twin")  # the same files in another folder
  data_dir = str(tmp_path / "tfds")
  first = text_corpus.open_builder(_corpus(folder), data_dir).data_dir
  names = {first}
  for corpus in (_corpus(twin), _corpus(folder, seq_len=16),
                 _corpus(folder, vocab_size=70),
                 _corpus(folder, validation_fraction=0.3),
                 _corpus(folder, max_documents=50)):
    names.add(text_corpus.open_builder(corpus, data_dir).data_dir)
  assert len(names) == 6
  # Editing a file prepares the corpus anew, with the new text.
  (folder / "b.txt").write_text(_paragraphs(5, 30))
  edited = text_corpus.open_builder(_corpus(folder), data_dir)
  assert edited.data_dir not in names
  assert pathlib.Path(first).is_dir()  # the old corpus stays for old runs


def test_a_given_tokenizer_is_used_and_stored(tmp_path):
  folder = _folder(tmp_path / "texts")
  given = tok.train(_WORDS * 20, vocab_size=70)
  given.save(tmp_path / "given.model")
  builder = text_corpus.open_builder(
      _corpus(folder, tokenizer_path=str(tmp_path / "given.model")),
      str(tmp_path / "tfds"))
  assert text_corpus.load_tokenizer(builder).model_proto == given.model_proto


def test_named_corpora_keep_their_fields():
  with pytest.raises(ValueError, match="text corpus debian_128 has "
                     "seq_len=128, not 512; set name=None"):
    text_corpus.open_builder({"name": "debian_128", "seq_len": 512})
  with pytest.raises(ValueError, match="has tokenizer_path=None, not 'x.model'"):
    text_corpus.open_builder({"name": "debian_512", "seq_len": 512,
                              "tokenizer_path": "x.model"})
  with pytest.raises(ValueError, match="name 'wiki' is not one of"):
    text_corpus.open_builder({"name": "wiki"})


def test_a_failure_while_writing_leaves_no_dataset(tmp_path, monkeypatch):
  folder = _folder(tmp_path / "texts")
  pack = text_corpus.pack_sequences

  def pack_then_fail(documents, seq_len):
    yield next(pack(documents, seq_len))
    raise OSError("disk full")

  monkeypatch.setattr(text_corpus, "pack_sequences", pack_then_fail)
  data_dir = tmp_path / "tfds"
  with pytest.raises(OSError, match="disk full"):
    text_corpus.open_builder(_corpus(folder), str(data_dir))
  # TFDS wrote into a temporary directory and removed it.
  assert not [f for f in _files(data_dir) if "custom_" in f]


def test_tfds_documents_are_its_texts_in_order(tfds_dir):
  docs = list(text_sources.tfds_documents("mrl_test_texts", "train", "text",
                                          str(tfds_dir)))
  texts = _paragraphs(7, 50).split("\n\n")
  assert [(d.id, d.text) for d in docs] == [
      (f"mrl_test_texts:{i}", t) for i, t in enumerate(texts)]


def test_a_tfds_text_corpus(tfds_dir):
  corpus = {"sources": ["tfds"], "tfds_name": "mrl_test_texts",
            "tfds_split": "train", "text_key": "text", "seq_len": 32,
            "vocab_size": 80, "validation_fraction": 0.2}
  builder = text_corpus.open_builder(corpus, str(tfds_dir))
  assert builder.info.splits["validation"].num_examples > 0
  titles = text_corpus.open_builder({**corpus, "text_key": "title"},
                                    str(tfds_dir))
  assert titles.data_dir != builder.data_dir
  half = text_corpus.open_builder({**corpus, "tfds_split": "train[:25]"},
                                  str(tfds_dir))
  assert half.data_dir != builder.data_dir
  assert 0 < half.info.splits["train"].num_examples < (
      builder.info.splits["train"].num_examples)


def _bad_tokenizer(tmp_path: pathlib.Path) -> str:
  model = io.BytesIO()
  spm.SentencePieceTrainer.Train(  # sentencepiece's special pieces
      sentence_iterator=iter(_WORDS * 10), model_writer=model, vocab_size=40,
      minloglevel=2)
  (tmp_path / "plain.model").write_bytes(model.getvalue())
  return str(tmp_path / "plain.model")


@pytest.mark.parametrize("change,error,match", [
    (lambda t: {"sources": ("wordnet",), "folder": None}, RunError,
     "is missing; install the Debian package wordnet-base"),
    (lambda t: {"folder": str(t / "empty")}, RunError,
     "has no .txt or .jsonl file"),
    (lambda t: (t / "texts" / "c.txt").write_bytes(b"na\xefve") and {},
     RunError, r"c.txt: byte offset 2 \(0xef\) is not UTF-8"),
    (lambda t: (t / "junk.model").write_bytes(b"junk") and {
        "tokenizer_path": str(t / "junk.model")}, RunError,
     "is neither a sentencepiece model nor a WordPiece vocab.txt"),
    (lambda t: {"tokenizer_path": _bad_tokenizer(t)}, RunError,
     "special token ids .* differ"),
    (lambda t: {"seq_len": 2}, ValueError, "seq_len=2 leaves no room"),
    (lambda t: {"vocab_size": 5}, ValueError, "vocab_size=5 is too small"),
    (lambda t: {"vocab_size": 20}, ValueError,
     "vocab_size=20 is smaller than the 29 pieces that the training "
     "text's characters"),
    (lambda t: {"sources": ("folder", "wiki")}, ValueError,
     r"sources \('folder', 'wiki'\) are not a non-empty subset"),
    (lambda t: {"folder": None}, ValueError,
     "source 'folder' and folder=<root of .txt / .jsonl files> go together"),
    (lambda t: {"sources": ("wordnet",)}, ValueError,
     "source 'folder' and folder=.* go together"),
    (lambda t: {"vocab": 10}, ValueError, r"fields \['vocab'\] are unknown"),
    (lambda t: {"validation_fraction": 1.5}, ValueError,
     r"validation_fraction=1.5 is not in \(0, 1\)"),
    (lambda t: {"sources": ("folder", "tfds")}, ValueError,
     "source 'tfds' and tfds_name go together"),
    (lambda t: {"sources": ("tfds",), "folder": None, "tfds_name": "mnist"},
     RunError, r"TFDS dataset mnist is not prepared in .*; prepare it first: "
     "tfds build mnist --data_dir="),
    (lambda t: {"sources": ("tfds",), "folder": None,
                "tfds_name": "no_such_texts"}, RunError,
     "TFDS dataset no_such_texts is neither registered nor prepared"),
])
def test_bad_input_is_one_line_before_anything_is_written(
    tmp_path, monkeypatch, change, error, match):
  monkeypatch.setattr(text_sources, "WORDNET_DIR", tmp_path / "no_wordnet")
  folder = _folder(tmp_path / "texts")
  (tmp_path / "empty").mkdir()
  corpus = _corpus(folder, **change(tmp_path))
  data_dir = tmp_path / "tfds"
  with pytest.raises(error, match=match) as e:
    text_corpus.open_builder(corpus, str(data_dir))
  assert "\n" not in str(e.value)
  assert not data_dir.exists()


@pytest.mark.parametrize("change,match", [
    ({"text_key": "label"}, r"no text feature 'label'; set text_key to one "
     r"of its text features \['text', 'title'\]"),
    ({"tfds_split": "test"}, r"has no split 'test'; its splits: \['train'\]"),
])
def test_bad_tfds_fields_name_what_exists(tfds_dir, change, match):
  corpus = {"sources": ("tfds",), "tfds_name": "mrl_test_texts", **change}
  before = _files(tfds_dir)
  with pytest.raises(ValueError, match=match):
    text_corpus.open_builder(corpus, str(tfds_dir))
  assert _files(tfds_dir) == before
