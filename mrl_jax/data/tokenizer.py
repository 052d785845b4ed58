"""Subword tokenizer for the text models: a sentencepiece model with BERT's
special tokens at fixed ids.

sentencepiece is one small wheel without dependencies, trains a unigram
vocabulary from a corpus in seconds, and stores the whole tokenizer
(normaliser included) in one `.model` file that travels with a dataset or an
encoder. Special ids are fixed so that the data pipeline and the models can
name them without the tokenizer:

  [PAD] = 0, [UNK] = 1, [CLS] = 2, [SEP] = 3, [MASK] = 4.

[CLS], [SEP] and [MASK] are control symbols: text that spells "[MASK]" is
tokenized as ordinary characters, never as the mask id.

A standard BERT `vocab.txt` (WordPiece) is not read: that needs a WordPiece
implementation (HF `tokenizers` or `tensorflow-text`), which this package
does not depend on.
"""
from collections.abc import Iterable, Sequence
import io
import os
import pathlib
import re

import numpy as np
import sentencepiece as spm

from mrl_jax.errors import RunError

PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID = 0, 1, 2, 3, 4
SPECIAL_IDS = (PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID)
# Ids below this are special; every id from it up is an ordinary piece.
NUM_SPECIAL = 5
_CONTROL = ("[CLS]", "[SEP]", "[MASK]")
# The trained model depends on the number of training threads (not on the
# cores), so it is fixed: the same corpus gives the same tokenizer anywhere.
_TRAIN_THREADS = 4


class Tokenizer:
  """Text <-> ids with a sentencepiece model (special ids as above)."""

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
      raise RunError(f"{source} is not a sentencepiece model ({e}); give a "
                     ".model file written by sentencepiece") from None
    want = {"[PAD]": PAD_ID, "[UNK]": UNK_ID, "[CLS]": CLS_ID,
            "[SEP]": SEP_ID, "[MASK]": MASK_ID}
    got = {piece: self._sp.PieceToId(piece) for piece in want}
    if got != want:
      raise RunError(f"{source}: special token ids {got} differ from "
                     f"{want}; train it with mrl_jax.data.tokenizer.train")
    self.model_proto = model_proto

  @property
  def vocab_size(self) -> int:
    return self._sp.GetPieceSize()

  def piece(self, token_id: int) -> str:
    """The subword string of one id (e.g. "[MASK]", "▁the")."""
    return self._sp.IdToPiece(int(token_id))

  def encode(self, text: str) -> list[int]:
    """Token ids of `text`, without [CLS] / [SEP]."""
    return self._sp.EncodeAsIds(text)

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    return self._sp.EncodeAsIds(list(texts))

  def decode(self, ids: Iterable[int]) -> str:
    """Text of ids; [PAD], [CLS], [SEP] and [MASK] are dropped."""
    return self._sp.DecodeIds(
        [int(i) for i in ids if i == UNK_ID or i >= NUM_SPECIAL])

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


def load(path: str | os.PathLike) -> Tokenizer:
  """Reads a sentencepiece `.model` file.

  Raises:
    RunError: the file is missing or is not a model with the special ids.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise RunError(f"tokenizer file {path} does not exist; give the .model "
                   "file stored with the dataset or encoder")
  return Tokenizer(path.read_bytes(), str(path))


def train(texts: Iterable[str], vocab_size: int,
          seed_sentencepiece_size: int | None = None) -> Tokenizer:
  """Trains a unigram sentencepiece model on `texts` (one document each).

  Args:
    texts: training documents; newlines inside one are spaces.
    vocab_size: pieces including the 5 special ones.
    seed_sentencepiece_size: candidate pieces before pruning (default:
      max(50_000, 4 * vocab_size)). The EM rounds over the most candidates
      take most of the training time; a few times the vocabulary suffices.
  Returns:
    The trained Tokenizer (its `model_proto` is what to store).
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
  return Tokenizer(model.getvalue(), "<trained>")
