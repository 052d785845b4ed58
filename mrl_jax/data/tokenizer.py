"""Subword tokenizers for the text models, with BERT's special tokens at
fixed ids. Two kinds share one interface (`Tokenizer`):

* `SentencePieceTokenizer`: a sentencepiece unigram model (`.model`).
  sentencepiece is one small wheel without dependencies, trains a vocabulary
  from a corpus in seconds (`train`), and stores the whole tokenizer
  (normaliser included) in one file.
* `WordPieceTokenizer`: a standard BERT `vocab.txt` (one piece a line), run
  by HF `tokenizers` exactly as BERT tokenizes: BertNormalizer (control
  characters removed, CJK characters split, lowercasing and accent
  stripping), BertPreTokenizer (whitespace and punctuation), greedy
  longest-match WordPiece with "##" continuations, [UNK] for a word it
  cannot spell.

Special ids are fixed so that the data pipeline and the models can name them
without the tokenizer:

  [PAD] = 0, [UNK] = 1, [CLS] = 2, [SEP] = 3, [MASK] = 4.

A vocab.txt holds them elsewhere (BERT's: [PAD]=0, [UNK]=100, [CLS]=101,
[SEP]=102, [MASK]=103, [unused0].. in between): each special swaps ids with
the piece at its fixed id, so ids are a permutation of the file's line
numbers; vocab_size is the line count and every id names one line's piece.

[CLS], [SEP] and [MASK] are control symbols: text that spells "[MASK]" is
tokenized as ordinary characters, never as the mask id (both kinds).

A tokenizer is stored as the bytes it was read from (`model_proto`: the
.model file, or the vocab.txt verbatim), as tokenizer.model in prepared
datasets, workdirs and encoder bundles; `from_bytes` and `load` tell the
kinds apart by content: a serialized sentencepiece model begins with its
pieces field (byte 0x0a), a vocab.txt with a piece, never an empty line.
"""
import abc
from collections.abc import Iterable, Sequence
import io
import os
import pathlib
import re

import numpy as np
import sentencepiece as spm
import tokenizers
from tokenizers import decoders
from tokenizers import models
from tokenizers import normalizers
from tokenizers import pre_tokenizers

from mrl_jax.errors import RunError

PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID = 0, 1, 2, 3, 4
SPECIAL_IDS = (PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID)
SPECIAL_PIECES = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
# Ids below this are special; every id from it up is an ordinary piece.
NUM_SPECIAL = 5
_CONTROL = ("[CLS]", "[SEP]", "[MASK]")
# The trained model depends on the number of training threads (not on the
# cores), so it is fixed: the same corpus gives the same tokenizer anywhere.
_TRAIN_THREADS = 4
# A serialized sentencepiece ModelProto starts with field 1 (its pieces),
# length-delimited: tag byte 0x0a.
_SENTENCEPIECE_START = b"\n"
# BERT's own vocabulary entries such as [PAD] or [unused7], never produced
# from text; they do not tell whether a vocabulary is cased.
_BRACKETED = re.compile(r"\[[^\[\]]+\]")
_EITHER = ("give a sentencepiece .model (e.g. one mrl_jax trained) or a "
           "BERT WordPiece vocab.txt")


class Tokenizer(abc.ABC):
  """Text <-> ids with the special ids above.

  Attributes:
    model_proto: the bytes that store it: `save` writes them and
      `from_bytes` rebuilds the same tokenizer from them.
  """

  model_proto: bytes

  @property
  @abc.abstractmethod
  def vocab_size(self) -> int:
    """Number of ids (special ones included); ids are 0..vocab_size-1."""

  @abc.abstractmethod
  def piece(self, token_id: int) -> str:
    """The subword string of one id (e.g. "[MASK]", "▁the", "##able")."""

  @abc.abstractmethod
  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text, without [CLS] / [SEP]."""

  @abc.abstractmethod
  def _decode(self, ids: list[int]) -> str:
    """Text of ids, none of them special but [UNK]."""

  def encode(self, text: str) -> list[int]:
    """Token ids of `text`, without [CLS] / [SEP]."""
    return self.encode_batch([text])[0]

  def decode(self, ids: Iterable[int]) -> str:
    """Text of ids; [PAD], [CLS], [SEP] and [MASK] are dropped."""
    return self._decode([int(i) for i in ids
                         if i == UNK_ID or i >= NUM_SPECIAL])

  def encode_padded(self, texts: Sequence[str], length: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """[CLS] ids [SEP], truncated and padded to `length`.

    Returns:
      (input_ids [len(texts), length] int32, input_mask of the same shape:
      1 for real tokens, 0 for padding).
    """
    ids = np.full((len(texts), length), PAD_ID, np.int32)
    for row, pieces in enumerate(self.encode_batch(texts)):
      seq = [CLS_ID] + pieces[:length - 2] + [SEP_ID]
      ids[row, :len(seq)] = seq
    return ids, (ids != PAD_ID).astype(np.int32)

  def save(self, path: str | os.PathLike) -> None:
    pathlib.Path(path).write_bytes(self.model_proto)


class SentencePieceTokenizer(Tokenizer):
  """A sentencepiece model whose special pieces sit at the fixed ids."""

  def __init__(self, model_proto: bytes, source: str = "<bytes>"):
    """Loads a serialized sentencepiece model; `source` names it in errors.

    Raises:
      RunError: the bytes are not a sentencepiece model or its special ids
        differ from the fixed ones.
    """
    self._sp = spm.SentencePieceProcessor()
    try:
      self._sp.LoadFromSerializedProto(model_proto)
    except (RuntimeError, OSError) as e:
      raise RunError(f"{source} is not a sentencepiece model ({e}); "
                     f"{_EITHER}") from None
    want = dict(zip(SPECIAL_PIECES, SPECIAL_IDS))
    got = {piece: self._sp.PieceToId(piece) for piece in want}
    if got != want:
      raise RunError(f"{source}: special token ids {got} differ from "
                     f"{want}; train it with mrl_jax.data.tokenizer.train")
    self.model_proto = model_proto

  @property
  def vocab_size(self) -> int:
    return self._sp.GetPieceSize()

  def piece(self, token_id: int) -> str:
    return self._sp.IdToPiece(int(token_id))

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    return self._sp.EncodeAsIds(list(texts))

  def _decode(self, ids: list[int]) -> str:
    return self._sp.DecodeIds(ids)


class WordPieceTokenizer(Tokenizer):
  """A BERT vocab.txt, tokenizing as BERT does, specials moved to the fixed
  ids (module docstring).

  Attributes:
    lowercase: whether text is lowercased and its accents stripped: true
      unless an ordinary piece has an uppercase letter (BERT's uncased
      vocabularies hold none, its cased ones many), the one setting under
      which every piece can be produced.
  """

  def __init__(self, vocab: bytes, source: str = "<bytes>"):
    """Reads a vocab.txt's bytes; `source` names it in errors.

    Raises:
      RunError: the bytes are not a UTF-8 list of distinct pieces holding
        the five special ones and at least one ordinary piece.
    """
    pieces = _fixed_order(_vocab_lines(vocab, source), source)
    self.lowercase = not any(p != p.lower() for p in pieces[NUM_SPECIAL:]
                             if not _BRACKETED.fullmatch(p))
    self._hf = tokenizers.Tokenizer(models.WordPiece(
        {p: i for i, p in enumerate(pieces)}, unk_token="[UNK]"))
    # strip_accents=None follows lowercase, as BERT's BasicTokenizer.
    self._hf.normalizer = normalizers.BertNormalizer(
        lowercase=self.lowercase, strip_accents=None)
    self._hf.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    self._hf.decoder = decoders.WordPiece(prefix="##")
    self.model_proto = vocab

  @property
  def vocab_size(self) -> int:
    return self._hf.get_vocab_size()

  def piece(self, token_id: int) -> str:
    return self._hf.id_to_token(int(token_id))

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    return [e.ids for e in self._hf.encode_batch(list(texts),
                                                 add_special_tokens=False)]

  def _decode(self, ids: list[int]) -> str:
    return self._hf.decode(ids, skip_special_tokens=False)


def _vocab_lines(vocab: bytes, source: str) -> list[str]:
  """The pieces of a vocab.txt, one a line (trailing whitespace and a
  final newline dropped, as BERT reads it).

  Raises:
    RunError: not UTF-8, empty, an empty line, or a piece listed twice.
  """
  try:
    text = vocab.decode("utf-8-sig")
  except UnicodeDecodeError as e:
    raise RunError(f"{source} is neither a sentencepiece model nor a UTF-8 "
                   f"vocab.txt (byte {e.start} is not UTF-8); {_EITHER}"
                   ) from None
  # Split on "\n" only: str.splitlines would also split inside pieces that
  # hold other Unicode line breaks.
  lines = [line.rstrip() for line in text.split("\n")]
  if lines and not lines[-1]:
    lines.pop()
  if not lines:
    raise RunError(f"{source} is empty; {_EITHER}")
  first: dict[str, int] = {}
  for number, piece in enumerate(lines, 1):
    if not piece:
      raise RunError(f"{source}: line {number} is empty; a vocab.txt holds "
                     "one piece on every line, remove the empty ones")
    if piece in first:
      raise RunError(f"{source}: line {number} repeats {piece!r} of line "
                     f"{first[piece]}; a vocab.txt lists each piece once, "
                     "remove the repeat")
    first[piece] = number
  return lines


def _fixed_order(lines: list[str], source: str) -> list[str]:
  """The pieces by id: each special swapped with the piece at its fixed id.

  Raises:
    RunError: a special piece is missing, or no ordinary one is left.
  """
  missing = [p for p in SPECIAL_PIECES if p not in lines]
  if missing:
    raise RunError(
        f"{source} is neither a sentencepiece model nor a WordPiece vocab.txt"
        f" with BERT's special tokens (no {', '.join(missing)} line); "
        f"{_EITHER} holding [PAD], [UNK], [CLS], [SEP] and [MASK]")
  if len(lines) <= NUM_SPECIAL:
    raise RunError(f"{source} holds only the special tokens; give a "
                   "vocab.txt with ordinary pieces too")
  pieces = list(lines)
  # Each swap leaves earlier specials in place: they sit below `fixed`.
  for fixed, special in zip(SPECIAL_IDS, SPECIAL_PIECES):
    at = pieces.index(special)
    pieces[fixed], pieces[at] = pieces[at], pieces[fixed]
  return pieces


def from_bytes(data: bytes, source: str = "<bytes>") -> Tokenizer:
  """The tokenizer stored as `data` (a `model_proto`), of either kind.

  Raises:
    RunError: the bytes are neither kind, or break its rules (one line
      naming `source` and the fix).
  """
  if data.startswith(_SENTENCEPIECE_START):
    return SentencePieceTokenizer(data, source)
  return WordPieceTokenizer(data, source)


def load(path: str | os.PathLike) -> Tokenizer:
  """Reads a sentencepiece `.model` file or a WordPiece `vocab.txt`.

  Raises:
    RunError: the file is missing, unreadable, or neither kind of tokenizer
      with the special tokens.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise RunError(f"tokenizer file {path} does not exist; give the .model "
                   "or vocab.txt file stored with the dataset or encoder")
  try:
    data = path.read_bytes()
  except OSError as e:
    raise RunError(f"cannot read the tokenizer file {path} ({e}); make it "
                   "readable") from None
  return from_bytes(data, str(path))


def train(texts: Iterable[str], vocab_size: int,
          seed_sentencepiece_size: int | None = None
          ) -> SentencePieceTokenizer:
  """Trains a unigram sentencepiece model on `texts` (one document each).

  Args:
    texts: training documents; newlines inside one are spaces.
    vocab_size: pieces including the 5 special ones.
    seed_sentencepiece_size: candidate pieces before pruning (default:
      max(50_000, 4 * vocab_size)). The EM rounds over the most candidates
      take most of the training time; a few times the vocabulary suffices.
  Returns:
    The trained tokenizer (its `model_proto` is what to store).
  Raises:
    ValueError: vocab_size leaves no room for ordinary pieces, or is
      smaller than the text's alphabet.
  """
  if vocab_size <= NUM_SPECIAL + 1:
    raise ValueError(f"tokenizer vocab_size={vocab_size} is too small; use "
                     "at least a few hundred (e.g. 8192)")
  if seed_sentencepiece_size is None:
    seed_sentencepiece_size = max(50_000, 4 * vocab_size)
  model = io.BytesIO()
  try:
    spm.SentencePieceTrainer.Train(
        sentence_iterator=(" ".join(t.split()) for t in texts),
        model_writer=model, model_type="unigram", vocab_size=vocab_size,
        pad_id=PAD_ID, pad_piece="[PAD]", unk_id=UNK_ID, unk_piece="[UNK]",
        bos_id=-1, eos_id=-1, control_symbols=list(_CONTROL),
        character_coverage=0.9995, input_sentence_size=2_000_000,
        shuffle_input_sentence=False, max_sentence_length=1 << 16,
        seed_sentencepiece_size=seed_sentencepiece_size,
        hard_vocab_limit=False, num_threads=_TRAIN_THREADS, minloglevel=2)
  except RuntimeError as e:
    # Every character kept by character_coverage needs a piece of its own.
    needed = re.search(r"smaller than required_chars\. \d+ vs (\d+)", str(e))
    if needed is None:
      raise
    raise ValueError(
        f"tokenizer vocab_size={vocab_size} is smaller than the "
        f"{needed.group(1)} pieces that the training text's characters and "
        "the special tokens need; use at least a few hundred (e.g. 8192)"
    ) from None
  return SentencePieceTokenizer(model.getvalue(), "<trained>")
