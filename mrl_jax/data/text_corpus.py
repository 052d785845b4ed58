"""TFDS builders for text: a packed MLM corpus and WordNet gloss classes.

`MrlTextCorpus` (tfds name `mrl_text_corpus`) prepares, fully offline:
1. documents from the configured sources (text_sources.py: WordNet glosses
   and GCIDE entries from Debian packages, a user's text folder, or a
   prepared TFDS text dataset);
2. a document-level train / validation split by a hash of each document id;
3. a tokenizer: a sentencepiece model trained on the train documents only
   (a hash-chosen sample of about TOKENIZER_SAMPLE_CHARS characters of them
   when there are more), or a user's sentencepiece `.model` or BERT
   `vocab.txt` file, stored as `tokenizer.model` in the prepared dataset's
   directory
   (`load_tokenizer(builder)` reads it back);
4. fixed-length sequences packed across documents, in source order:
   [CLS] tokens... [SEP], documents separated by [SEP], [PAD] after the last
   sequence's end. Features: {"input_ids": int32 [seq_len]}.
MLM masking happens later, in tf.data (mlm_masking.py).

`WordnetLexnames` (tfds name `wordnet_lexnames`): every WordNet gloss with its
lexicographer class (45 classes, `noun.animal`, `verb.motion`, ...), split by
the same hash of the synset id as the corpus, so validation glosses are
never in the MLM training text. Features: {"text", "label", "id"}; tokenize
with the encoder's own tokenizer (`Tokenizer.encode_padded`).

`open_builder(corpus, data_dir)` is the trainer's entry point: it returns
the prepared corpus a config section describes (CORPUS_FIELDS), preparing
it first if needed. Named configs: `debian_128` (BERT's 128-token phase)
and `debian_512`. Any other corpus (name None) is prepared under the config
name `custom_<hash>`, a hash of everything that shapes its data: the
fields, the folder's path and its files' names, sizes and modification
times, the tokenizer file's bytes, the TFDS dataset's full name. Editing a
folder's files therefore prepares a new corpus on the next run. Sources
are read and the tokenizer trained before TFDS writes anything; TFDS
writes into a temporary directory that it renames when done, so a failed
preparation leaves no dataset behind.
"""
from collections.abc import Iterable, Iterator, Mapping, Sequence
import dataclasses
import hashlib
import itertools
import json
import os
import pathlib
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from mrl_jax.data import text_sources
from mrl_jax.data import tfds_prepare
from mrl_jax.data import tokenizer as tok

NAME = "mrl_text_corpus"
TOKENIZER_FILE = "tokenizer.model"
VALIDATION_FRACTION = 0.02
SOURCES = ("wordnet", "gcide", "folder", "tfds")
_ENCODE_CHUNK = 1000  # documents per tokenizer batch call
# Sentencepiece's training time grows with the text it sees, while its
# vocabulary hardly changes beyond a few million characters, so a large
# corpus trains the tokenizer on a fixed-size sample.
TOKENIZER_SAMPLE_CHARS = 10_000_000


def pack_sequences(documents: Iterable[Sequence[int]], seq_len: int
                   ) -> Iterator[np.ndarray]:
  """Packs token id lists into [CLS] ... [SEP] rows of `seq_len` ids.

  Documents are joined with [SEP] and cut every seq_len - 2 tokens; a
  separator that would open or close a row is dropped (the row's own [CLS]
  and [SEP] mark the boundary). The last row is [PAD]-padded.

  Yields:
    int32 arrays [seq_len].
  """
  if seq_len < 3:
    raise ValueError(f"seq_len={seq_len} leaves no room for tokens; use e.g. "
                     "128")
  body, buffer = seq_len - 2, []
  for ids in documents:
    if not len(ids):
      continue
    if buffer:
      buffer.append(tok.SEP_ID)
    buffer.extend(ids)
    while len(buffer) >= body:
      row = _row(buffer[:body], seq_len)
      buffer = buffer[body:]
      if row is not None:
        yield row
  row = _row(buffer, seq_len)
  if row is not None:
    yield row


def tokenizer_sample(docs: Sequence[text_sources.Document],
                     max_chars: int = TOKENIZER_SAMPLE_CHARS) -> list[str]:
  """Texts of a share of `docs`, chosen by a hash of each id, holding about
  `max_chars` characters (all of them when they hold fewer), in order."""
  total = sum(len(d.text) for d in docs)
  if total <= max_chars:
    return [d.text for d in docs]
  fraction = max_chars / total
  # Salted, so that the sample does not follow the validation split's hash.
  return [d.text for d in docs
          if text_sources.hash_bucket(f"tokenizer:{d.id}") < fraction]


def _row(chunk: list[int], seq_len: int) -> np.ndarray | None:
  if chunk and chunk[0] == tok.SEP_ID:
    chunk = chunk[1:]
  if chunk and chunk[-1] == tok.SEP_ID:
    chunk = chunk[:-1]
  if not chunk:
    return None
  row = np.full(seq_len, tok.PAD_ID, np.int32)
  row[:len(chunk) + 2] = [tok.CLS_ID, *chunk, tok.SEP_ID]
  return row


@dataclasses.dataclass(eq=False)
class TextCorpusConfig(tfds.core.BuilderConfig):
  """What to read and how to tokenize and pack it.

  Attributes:
    sources: subset of SOURCES, read in this order.
    seq_len: tokens per packed sequence, [CLS] and [SEP] included.
    vocab_size: pieces of the trained tokenizer (special ones included).
    validation_fraction: share of documents (by id hash) in validation.
    max_documents: read at most this many documents per source (None: all).
    tfds_name: the TFDS dataset of source "tfds" (e.g.
      "wikipedia/20230601.en"), prepared in the builder's `tfds_data_dir`.
    tfds_split: its split to read.
    text_key: its text feature.
  Raises:
    ValueError: a value that cannot describe a corpus.
  """
  sources: tuple[str, ...] = ("wordnet", "gcide")
  seq_len: int = 128
  vocab_size: int = 8192
  validation_fraction: float = VALIDATION_FRACTION
  max_documents: int | None = None
  tfds_name: str | None = None
  tfds_split: str = "train"
  text_key: str = "text"

  def __post_init__(self):
    unknown = sorted(set(self.sources) - set(SOURCES))
    if unknown or not self.sources:
      raise ValueError(f"text corpus sources {tuple(self.sources)} are not a "
                       f"non-empty subset of {SOURCES}")
    if self.seq_len < 3:
      raise ValueError(f"text corpus seq_len={self.seq_len} leaves no room "
                       "for tokens between [CLS] and [SEP]; use e.g. 128")
    if self.vocab_size <= tok.NUM_SPECIAL + 1:
      raise ValueError(f"text corpus vocab_size={self.vocab_size} is too "
                       "small; use at least a few hundred (e.g. 8192)")
    if not 0 < self.validation_fraction < 1:
      raise ValueError("text corpus validation_fraction="
                       f"{self.validation_fraction} is not in (0, 1); use "
                       f"e.g. {VALIDATION_FRACTION}")
    if self.max_documents is not None and self.max_documents < 1:
      raise ValueError(f"text corpus max_documents={self.max_documents} is "
                       "not positive; use None for all documents")
    if ("tfds" in self.sources) != bool(self.tfds_name):
      raise ValueError("text corpus source 'tfds' and tfds_name go together "
                       f"(sources={tuple(self.sources)}, tfds_name="
                       f"{self.tfds_name!r}); set both or neither")


class MrlTextCorpus(tfds.core.GeneratorBasedBuilder):
  """Packed, pre-tokenized sequences for masked language modelling."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {
      "1.1.0": "The tokenizer trains on a sample of at most "
               "TOKENIZER_SAMPLE_CHARS characters of the train documents, "
               "from fewer seed pieces.",
  }
  BUILDER_CONFIGS = [
      TextCorpusConfig(name="debian_128", seq_len=128,
                       description="WordNet glosses + GCIDE, 128 tokens"),
      TextCorpusConfig(name="debian_512", seq_len=512,
                       description="WordNet glosses + GCIDE, 512 tokens"),
  ]

  def __init__(self, *, wordnet_dir: str | None = None,
               gcide_dict: str | None = None, folder: str | None = None,
               tokenizer_path: str | None = None,
               tfds_data_dir: str | None = None, **kwargs):
    """Source locations (defaults: the Debian packages' paths), the folder
    for sources=("folder",), an optional tokenizer file (.model or
    vocab.txt) to use instead of training one, and the TFDS data_dir of source "tfds" (None: TFDS's
    default)."""
    self._wordnet_dir = wordnet_dir or text_sources.WORDNET_DIR
    self._gcide_dict = gcide_dict or text_sources.GCIDE_DICT
    self._folder = folder
    self._tokenizer_path = tokenizer_path
    self._tfds_data_dir = tfds_data_dir
    # What read_sources() made, until _split_generators takes it.
    self._read: tuple[dict[str, list[text_sources.Document]],
                      tok.Tokenizer] | None = None
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "input_ids": tfds.features.Tensor(
                shape=(self.builder_config.seq_len,), dtype=np.int32),
        }),
        # Stored in packing order (TFDS would otherwise shuffle by a hash of
        # the key); the training pipeline shuffles.
        disable_shuffling=True,
        description=__doc__.split("\n\n")[0])

  def _documents(self) -> Iterator[text_sources.Document]:
    config = self.builder_config
    readers = {"wordnet": lambda: text_sources.wordnet_documents(
                   self._wordnet_dir),
               "gcide": lambda: text_sources.gcide_documents(self._gcide_dict),
               "folder": self._folder_documents,
               "tfds": lambda: text_sources.tfds_documents(
                   config.tfds_name, config.tfds_split, config.text_key,
                   self._tfds_data_dir)}
    for source in config.sources:
      yield from itertools.islice(readers[source](), config.max_documents)

  def _folder_documents(self) -> Iterator[text_sources.Document]:
    if self._folder is None:
      raise ValueError("the text corpus source 'folder' needs folder=<root> "
                       "(a folder of .txt / .jsonl files)")
    return text_sources.folder_documents(self._folder)

  def read_sources(self) -> None:
    """Reads and splits the documents and trains (or loads) the tokenizer,
    keeping both for the preparation, which then only encodes and writes:
    a bad source or tokenizer fails here, before TFDS writes anything.

    Raises:
      RunError: a source that is missing or unreadable, or a tokenizer file
        that is not usable.
      ValueError: a split without documents, or a vocab_size that does not
        fit the text.
    """
    config = self.builder_config
    splits = {"train": [], "validation": []}
    for doc in self._documents():
      splits[text_sources.split_of(doc.id, config.validation_fraction)].append(
          doc)
    empty = [name for name, docs in splits.items() if not docs]
    if empty:
      total = sum(map(len, splits.values()))
      raise ValueError(
          f"no document fell into the {empty[0]} split ({total} documents in "
          "all); add documents or change validation_fraction")
    if self._tokenizer_path:
      tokenizer = tok.load(self._tokenizer_path)
    else:
      tokenizer = tok.train(tokenizer_sample(splits["train"]),
                            config.vocab_size)
    self._read = splits, tokenizer

  def _split_generators(self, dl_manager):
    del dl_manager  # everything is local
    if self._read is None:
      self.read_sources()
    (splits, tokenizer), self._read = self._read, None
    # data_path is the dataset's temporary directory until the preparation
    # succeeds, so the tokenizer appears together with the data.
    tokenizer.save(self.data_path / TOKENIZER_FILE)
    return {name: self._generate_examples(docs, tokenizer)
            for name, docs in splits.items()}

  def _generate_examples(self, docs: list[text_sources.Document],
                         tokenizer: tok.Tokenizer):
    def token_lists():
      for start in range(0, len(docs), _ENCODE_CHUNK):
        chunk = docs[start:start + _ENCODE_CHUNK]
        yield from tokenizer.encode_batch([d.text for d in chunk])

    rows = pack_sequences(token_lists(), self.builder_config.seq_len)
    for index, row in enumerate(rows):
      yield f"{index:010d}", {"input_ids": row}


def load_tokenizer(builder: tfds.core.DatasetBuilder) -> tok.Tokenizer:
  """The tokenizer stored with a prepared MrlTextCorpus."""
  return tok.load(pathlib.Path(builder.data_dir) / TOKENIZER_FILE)


# The fields of a corpus config section and their defaults (None in a
# section means the default).
CORPUS_FIELDS = {
    "name": None, "sources": ("wordnet", "gcide"), "seq_len": 128,
    "vocab_size": 8192, "folder": None, "tokenizer_path": None,
    "tfds_name": None, "tfds_split": "train", "text_key": "text",
    "max_documents": None, "validation_fraction": VALIDATION_FRACTION}
# Fields that name files for the builder rather than TextCorpusConfig values.
_LOCATIONS = ("folder", "tokenizer_path")


def open_builder(corpus: Mapping[str, Any], data_dir: str | None = None
                 ) -> MrlTextCorpus:
  """The prepared corpus that `corpus` describes, prepared here if needed.

  Args:
    corpus: CORPUS_FIELDS, as a ConfigDict or dict; a field that is absent
      or None takes its default.
      name: "debian_128" or "debian_512" (their other fields are fixed), or
        None for a corpus of the other fields, prepared as `custom_<hash>`.
      sources: subset of SOURCES; seq_len, vocab_size, max_documents,
        validation_fraction, tfds_name, tfds_split, text_key: as
        TextCorpusConfig's.
      folder: root of .txt / .jsonl files, for source "folder".
      tokenizer_path: a sentencepiece .model or a BERT vocab.txt to use
        instead of training one.
    data_dir: TFDS data_dir of the corpus and of source "tfds" (None: TFDS's
      default).
  Returns:
    The prepared builder: `as_dataset(split="train" | "validation")` gives
    {"input_ids": int32 [seq_len]}; `load_tokenizer(builder)` its tokenizer.
  Raises:
    ValueError: a field that cannot describe a corpus, a split without
      documents, a vocab_size that does not fit the text.
    RunError: a missing or unreadable source or tokenizer file.
  """
  unknown = sorted(set(corpus) - set(CORPUS_FIELDS))
  if unknown:
    raise ValueError(f"text corpus fields {unknown} are unknown; the fields "
                     f"are {sorted(CORPUS_FIELDS)}")
  given = {key: value for key, value in dict(corpus).items()
           if value is not None}
  if "sources" in given:
    given["sources"] = tuple(given["sources"])
  fields = {**CORPUS_FIELDS, **given}
  if ("folder" in fields["sources"]) != bool(fields["folder"]):
    raise ValueError("text corpus source 'folder' and folder=<root of .txt / "
                     f".jsonl files> go together (sources={fields['sources']}"
                     f", folder={fields['folder']!r}); set both or neither")
  tfds_prepare.silence_config_notices()
  if fields["name"] is None:
    config = _custom_config(fields, data_dir)
  else:
    config = _named_config(fields["name"], given)
  builder = MrlTextCorpus(
      config=config, data_dir=data_dir, folder=fields["folder"],
      tokenizer_path=fields["tokenizer_path"], tfds_data_dir=data_dir)
  if not builder.is_prepared():
    builder.read_sources()
    tfds_prepare.prepare(builder, f"the text corpus {config.name} "
                         f"({config.description})")
  return builder


def _named_config(name: str, given: dict[str, Any]) -> TextCorpusConfig:
  """The builder config `name`; ValueError if a given field differs."""
  configs = {c.name: c for c in MrlTextCorpus.BUILDER_CONFIGS}
  if name not in configs:
    raise ValueError(f"text corpus name {name!r} is not one of "
                     f"{sorted(configs)}; use None for a corpus of its other "
                     "fields")
  config = configs[name]
  for key, value in given.items():
    fixed = getattr(config, key, None)  # None for the locations
    if key != "name" and value != fixed:
      raise ValueError(f"text corpus {name} has {key}={fixed!r}, not "
                       f"{value!r}; set name=None for a corpus of your own")
  return config


def _custom_config(fields: dict[str, Any], data_dir: str | None
                   ) -> TextCorpusConfig:
  """A config named by a hash of what shapes the corpus's data."""
  values = {key: value for key, value in fields.items()
            if key != "name" and key not in _LOCATIONS}
  config = TextCorpusConfig(name="custom", **values)  # checks the values
  identity = {**values, "sources": list(config.sources)}
  if "folder" in config.sources:
    identity["folder"] = _folder_identity(fields["folder"])
  if fields["tokenizer_path"]:
    model = tok.load(fields["tokenizer_path"]).model_proto
    identity["tokenizer"] = hashlib.sha256(model).hexdigest()
  if "tfds" in config.sources:
    identity["tfds_name"] = text_sources.tfds_text_builder(
        config.tfds_name, config.tfds_split, config.text_key,
        data_dir).info.full_name
  text = json.dumps(identity, sort_keys=True)
  digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
  return dataclasses.replace(config, name=f"custom_{digest[:12]}",
                             description=text)


def _folder_identity(root: str | os.PathLike) -> dict[str, str]:
  """The folder's path and a hash of its text files' names, sizes and
  modification times (a stat per file, no reading)."""
  root = pathlib.Path(root).resolve()
  listing = [(path.relative_to(root).as_posix(), stat.st_size,
              stat.st_mtime_ns)
             for path in text_sources.text_files(root)
             for stat in [path.stat()]]
  files = hashlib.sha256(json.dumps(listing).encode("utf-8")).hexdigest()
  return {"path": str(root), "files": files}


class WordnetLexnames(tfds.core.GeneratorBasedBuilder):
  """WordNet gloss -> lexicographer class (45 classes)."""

  VERSION = tfds.core.Version("1.0.0")

  def __init__(self, *, wordnet_dir: str | None = None,
               validation_fraction: float = VALIDATION_FRACTION, **kwargs):
    self._wordnet_dir = wordnet_dir or text_sources.WORDNET_DIR
    self._validation_fraction = validation_fraction
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "text": tfds.features.Text(),
            "label": tfds.features.ClassLabel(
                names=list(text_sources.LEXNAMES)),
            "id": tfds.features.Text(),
        }),
        supervised_keys=("text", "label"),
        description="WordNet 3.0 glosses labelled with their lexicographer "
                    "file (lexnames(5WN)).")

  def _split_generators(self, dl_manager):
    del dl_manager
    glosses = list(text_sources.wordnet_glosses(self._wordnet_dir))
    return {name: self._generate_examples(glosses, name)
            for name in ("train", "validation")}

  def _generate_examples(self, glosses, split):
    for g in glosses:
      if text_sources.split_of(g.id, self._validation_fraction) == split:
        yield g.id, {"text": g.gloss, "label": g.label, "id": g.id}
