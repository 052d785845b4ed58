"""TFDS builders for text: a packed MLM corpus and WordNet gloss classes.

`MrlTextCorpus` (tfds name `mrl_text_corpus`) prepares, fully offline:
1. documents from the configured sources (text_sources.py: WordNet glosses
   and GCIDE entries from Debian packages, or a user's text folder);
2. a document-level train / validation split by a hash of each document id;
3. a tokenizer: a sentencepiece model trained on the train documents only
   (a hash-chosen sample of about TOKENIZER_SAMPLE_CHARS characters of them
   when there are more), or a user's `.model` file, stored as
   `tokenizer.model` in the prepared dataset's directory
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

Configs of the corpus: `debian_128` (BERT's 128-token phase) and
`debian_512`; pass another `TextCorpusConfig(...)` as `config=` for a text
folder (`sources=("folder",)` and the `folder=` builder argument) or a
small test corpus.
"""
from collections.abc import Iterable, Iterator, Sequence
import dataclasses
import hashlib
import itertools
import pathlib

import numpy as np
import tensorflow_datasets as tfds

from mrl_jax.data import text_sources
from mrl_jax.data import tokenizer as tok

TOKENIZER_FILE = "tokenizer.model"
VALIDATION_FRACTION = 0.02
SOURCES = ("wordnet", "gcide", "folder")
_ENCODE_CHUNK = 1000  # documents per sentencepiece batch call
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
  """
  sources: tuple[str, ...] = ("wordnet", "gcide")
  seq_len: int = 128
  vocab_size: int = 8192
  validation_fraction: float = VALIDATION_FRACTION
  max_documents: int | None = None


class MrlTextCorpus(tfds.core.GeneratorBasedBuilder):
  """Packed, pre-tokenized sequences for masked language modelling."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {
      "1.1.0": "The tokenizer trains on a sample of at most "
               "TOKENIZER_SAMPLE_CHARS characters of the train documents.",
  }
  BUILDER_CONFIGS = [
      TextCorpusConfig(name="debian_128", seq_len=128,
                       description="WordNet glosses + GCIDE, 128 tokens"),
      TextCorpusConfig(name="debian_512", seq_len=512,
                       description="WordNet glosses + GCIDE, 512 tokens"),
  ]

  def __init__(self, *, wordnet_dir: str | None = None,
               gcide_dict: str | None = None, folder: str | None = None,
               tokenizer_path: str | None = None, **kwargs):
    """Source locations (defaults: the Debian packages' paths), the folder
    for sources=("folder",), and an optional sentencepiece model to use
    instead of training one."""
    self._wordnet_dir = wordnet_dir or text_sources.WORDNET_DIR
    self._gcide_dict = gcide_dict or text_sources.GCIDE_DICT
    self._folder = folder
    self._tokenizer_path = tokenizer_path
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
    unknown = sorted(set(config.sources) - set(SOURCES))
    if unknown or not config.sources:
      raise ValueError(f"text corpus sources {config.sources} are not a "
                       f"non-empty subset of {SOURCES}")
    readers = {"wordnet": lambda: text_sources.wordnet_documents(
                   self._wordnet_dir),
               "gcide": lambda: text_sources.gcide_documents(self._gcide_dict),
               "folder": self._folder_documents}
    for source in config.sources:
      yield from itertools.islice(readers[source](), config.max_documents)

  def _folder_documents(self) -> Iterator[text_sources.Document]:
    if self._folder is None:
      raise ValueError("the text corpus source 'folder' needs folder=<root> "
                       "(a folder of .txt / .jsonl files)")
    return text_sources.folder_documents(self._folder)

  def _split_generators(self, dl_manager):
    del dl_manager  # everything is local
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


NAME = "mrl_text_corpus"


def open_builder(corpus, data_dir: str | None) -> tfds.core.DatasetBuilder:
  """The prepared corpus `corpus` describes (prepared here if needed)."""
  fields = dict(corpus)
  name, folder = fields.pop("name", None), fields.pop("folder", None)
  tokenizer_path = fields.pop("tokenizer_path", None)
  if name:
    builder = MrlTextCorpus(config=name, data_dir=data_dir, folder=folder,
                            tokenizer_path=tokenizer_path)
  else:
    fields["sources"] = tuple(fields["sources"])
    digest = hashlib.sha256(repr(sorted(fields.items())).encode()).hexdigest()
    config = TextCorpusConfig(name=f"custom_{digest[:10]}", **fields)
    builder = MrlTextCorpus(config=config, data_dir=data_dir, folder=folder,
                            tokenizer_path=tokenizer_path)
  if not builder.is_prepared():
    builder.download_and_prepare()
  return builder
