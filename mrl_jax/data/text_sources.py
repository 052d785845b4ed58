"""Readers of the offline English text sources, as documents with stable ids.

* WordNet 3.0 (Debian `wordnet-base`, /usr/share/wordnet/data.{noun,verb,
  adj,adv}): one document per synset, "lemma, lemma: gloss". A data line is
  `offset lex_filenum ss_type w_cnt word lex_id ... | gloss`; lex_filenum
  (two decimal digits) indexes the 45 lexicographer files (LEXNAMES, from
  lexnames(5WN)), which label the gloss classification task.
* GCIDE (Debian `dict-gcide`, /usr/share/dictd/gcide.dict.dz, a dictzip =
  gzip file, with the dictd index gcide.index): one document per entry, with
  pronunciation marks, cross-reference braces and source tags removed.
* A user's folder: every `.txt` file (one document per blank-line separated
  paragraph) and `.jsonl` file (one document per line, its "text" field).
* A prepared TFDS text dataset (e.g. `wikipedia/20230601.en`): one document
  per example of a split, its text feature `text_key`.

A document id ("wordnet:noun:00001740", "gcide:1234", "notes/a.txt#3",
"wikipedia/20230601.en:17") is stable across runs; `split_of` maps it to
train or validation.
"""
from collections.abc import Iterator
import dataclasses
import gzip
import hashlib
import json
import pathlib
import re

import tensorflow_datasets as tfds

from mrl_jax.errors import RunError

WORDNET_DIR = pathlib.Path("/usr/share/wordnet")
GCIDE_DICT = pathlib.Path("/usr/share/dictd/gcide.dict.dz")
_WORDNET_POS = ("noun", "verb", "adj", "adv")

# lexnames(5WN): lexicographer file number -> name.
LEXNAMES = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal",
    "noun.artifact", "noun.attribute", "noun.body", "noun.cognition",
    "noun.communication", "noun.event", "noun.feeling", "noun.food",
    "noun.group", "noun.location", "noun.motive", "noun.object",
    "noun.person", "noun.phenomenon", "noun.plant", "noun.possession",
    "noun.process", "noun.quantity", "noun.relation", "noun.shape",
    "noun.state", "noun.substance", "noun.time", "verb.body", "verb.change",
    "verb.cognition", "verb.communication", "verb.competition",
    "verb.consumption", "verb.contact", "verb.creation", "verb.emotion",
    "verb.motion", "verb.perception", "verb.possession", "verb.social",
    "verb.stative", "verb.weather", "adj.ppl")


@dataclasses.dataclass(frozen=True)
class Document:
  id: str
  text: str


@dataclasses.dataclass(frozen=True)
class Gloss:
  """A WordNet synset: its id, lemmas, gloss and lexicographer class."""
  id: str
  lemmas: tuple[str, ...]
  gloss: str
  label: int  # index into LEXNAMES


def hash_bucket(key: str) -> float:
  """A stable number in [0, 1) from the sha256 of `key`."""
  digest = hashlib.sha256(key.encode("utf-8")).digest()
  return int.from_bytes(digest[:8], "big") / 2**64


def split_of(doc_id: str, validation_fraction: float) -> str:
  """'train' or 'validation', from a hash of the document id alone."""
  return ("validation" if hash_bucket(doc_id) < validation_fraction
          else "train")


def _require(path: pathlib.Path, package: str) -> None:
  if not path.exists():
    raise RunError(f"{path} is missing; install the Debian package {package} "
                   f"(scripts/setup.sh does: apt-get install -y {package})")


def read_utf8(path: pathlib.Path) -> str:
  """The file's text; RunError naming the first byte that is not UTF-8."""
  data = path.read_bytes()
  try:
    return data.decode("utf-8")
  except UnicodeDecodeError as e:
    raise RunError(
        f"{path}: byte offset {e.start} (0x{data[e.start]:02x}) is not UTF-8; "
        "re-encode the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)"
    ) from None


def wordnet_glosses(wordnet_dir: str | pathlib.Path = WORDNET_DIR
                    ) -> Iterator[Gloss]:
  """Every synset of WordNet's data.{noun,verb,adj,adv}, in file order."""
  root = pathlib.Path(wordnet_dir)
  for pos in _WORDNET_POS:
    path = root / f"data.{pos}"
    _require(path, "wordnet-base")
    for line in read_utf8(path).splitlines():
      if not line or line.startswith("  "):  # the licence header
        continue
      fields, _, gloss = line.partition(" | ")
      parts = fields.split()
      offset, lex_filenum, count = parts[0], int(parts[1]), int(parts[3], 16)
      lemmas = tuple(w.replace("_", " ") for w in parts[4:4 + 2 * count:2])
      yield Gloss(f"wordnet:{pos}:{offset}", lemmas, gloss.strip(),
                  lex_filenum)


def wordnet_documents(wordnet_dir: str | pathlib.Path = WORDNET_DIR
                      ) -> Iterator[Document]:
  for g in wordnet_glosses(wordnet_dir):
    yield Document(g.id, f"{', '.join(g.lemmas)}: {g.gloss}")


_PRONUNCIATION = re.compile(r"\\[^\\\n]*\\")
# Where a sense comes from: [1913 Webster], [WordNet 1.5 +PJC], [PJC], ...
_SOURCE_TAG = re.compile(
    r"\[(?:1913 Webster|Webster 1913|WordNet 1\.5|PJC)[^\]\n]*\]|\+PJC\b")
_BASE64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _dictd_number(text: str) -> int:
  """dictd index numbers are base64 digits, most significant first."""
  value = 0
  for char in text:
    value = value * 64 + _BASE64.index(char)
  return value


def _clean_gcide(entry: str) -> str:
  entry = _SOURCE_TAG.sub("", entry)  # "[1913 Webster]", "[WordNet 1.5]"
  entry = _PRONUNCIATION.sub("", entry)  # \Al"lo*cate\
  entry = entry.replace("{", "").replace("}", "")  # cross-references
  return " ".join(entry.split())


def gcide_documents(dict_path: str | pathlib.Path = GCIDE_DICT
                    ) -> Iterator[Document]:
  """Every GCIDE entry, in file order (index next to the .dict.dz file)."""
  dict_path = pathlib.Path(dict_path)
  index_path = dict_path.with_name(dict_path.name.split(".")[0] + ".index")
  _require(dict_path, "dict-gcide")
  _require(index_path, "dict-gcide")
  with gzip.open(dict_path) as f:
    data = f.read()
  seen = set()
  for line in read_utf8(index_path).splitlines():
    headword, offset, size = line.split("\t")
    if headword.startswith("00-database") or offset in seen:
      continue  # metadata, or another headword of an entry already read
    seen.add(offset)
    start = _dictd_number(offset)
    entry = data[start:start + _dictd_number(size)].decode("utf-8", "replace")
    yield Document(f"gcide:{start}", _clean_gcide(entry))


def text_files(root: str | pathlib.Path) -> list[pathlib.Path]:
  """The .txt and .jsonl files under `root`, sorted by path.

  Raises:
    RunError: no such folder, or no text file in it.
  """
  root = pathlib.Path(root)
  if not root.is_dir():
    raise RunError(f"text folder {root} does not exist; set the root to a "
                   "folder of .txt / .jsonl files")
  files = sorted(p for p in root.rglob("*")
                 if p.suffix in (".txt", ".jsonl") and p.is_file())
  if not files:
    raise RunError(f"text folder {root} has no .txt or .jsonl file; add "
                   "some or point the root elsewhere")
  return files


def folder_documents(root: str | pathlib.Path) -> Iterator[Document]:
  """Documents of the .txt and .jsonl files under `root`, sorted by path.

  Raises:
    RunError: no such folder, no text file in it, a file that is not UTF-8,
      or a .jsonl line without a string "text" field.
  """
  root = pathlib.Path(root)
  for path in text_files(root):
    name = path.relative_to(root).as_posix()
    text = read_utf8(path)
    if path.suffix == ".txt":
      paragraphs = re.split(r"\n\s*\n", text)
      for i, para in enumerate(p for p in paragraphs if p.strip()):
        yield Document(f"{name}#{i}", " ".join(para.split()))
      continue
    for i, line in enumerate(text.splitlines()):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
        doc = record["text"]
        if not isinstance(doc, str):
          raise TypeError
      except (ValueError, KeyError, TypeError):
        raise RunError(f"{path}:{i + 1}: not a JSON object with a string "
                       "\"text\" field; fix that line") from None
      yield Document(f"{name}#{i}", " ".join(doc.split()))


def prepared_tfds_builder(name: str, data_dir: str | None
                          ) -> tfds.core.DatasetBuilder:
  """The TFDS dataset `name` as prepared in data_dir (None: TFDS's default);
  nothing is downloaded.

  Raises:
    RunError: the dataset is unknown or not prepared there (one line naming
      the `tfds build` command that prepares it).
  """
  fix = f"prepare it first: tfds build {name}" + (
      f" --data_dir={data_dir}" if data_dir else "")
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise RunError(f"TFDS dataset {name} is neither registered nor prepared "
                   f"in {data_dir or 'the default data_dir'}; {fix}"
                   ) from None
  if not builder.is_prepared():
    raise RunError(f"TFDS dataset {name} is not prepared in "
                   f"{builder.data_dir_root}; {fix}")
  return builder


def tfds_text_builder(name: str, split: str, text_key: str,
                      data_dir: str | None) -> tfds.core.DatasetBuilder:
  """The prepared TFDS dataset `name`, checked to have `split` (a split
  name, or a slice of one such as "train[:10000]") and a text feature
  `text_key`.

  Raises:
    RunError: the dataset is unknown or not prepared in data_dir.
    ValueError: no such split, or no such text feature.
  """
  builder = prepared_tfds_builder(name, data_dir)
  if split.split("[")[0] not in builder.info.splits:
    raise ValueError(f"TFDS dataset {name} has no split {split!r}; its "
                     f"splits: {sorted(builder.info.splits)}")
  texts = sorted(key for key, feature in builder.info.features.items()
                 if isinstance(feature, tfds.features.Text))
  if text_key not in texts:
    raise ValueError(f"TFDS dataset {name} has no text feature "
                     f"{text_key!r}; set text_key to one of its text "
                     f"features {texts}")
  return builder


def tfds_documents(name: str, split: str, text_key: str,
                   data_dir: str | None) -> Iterator[Document]:
  """One document per example of a prepared TFDS text dataset, in its
  stored order; ids are f"{name}:{index}".

  Raises:
    RunError, ValueError: as `tfds_text_builder`.
  """
  builder = tfds_text_builder(name, split, text_key, data_dir)
  dataset = builder.as_dataset(split=split, shuffle_files=False).map(
      lambda example: example[text_key])
  for index, text in enumerate(dataset.as_numpy_iterator()):
    yield Document(f"{name}:{index}", " ".join(text.decode("utf-8").split()))
