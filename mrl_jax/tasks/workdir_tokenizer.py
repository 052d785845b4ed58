"""The tokenizer a text model was trained with, kept in its workdir.

A checkpoint's token ids mean nothing without the tokenizer that made them,
so a trainer keeps it as DIR/tokenizer.model (written atomically on the
first run) and every later run, export or bundle checks the dataset's
tokenizer against it.
"""
import os

from absl import logging

from mrl_jax import atomic_files
from mrl_jax import errors
from mrl_jax.data import tokenizer as tok

FILE = "tokenizer.model"


def bind(tokenizer: tok.Tokenizer, vocab_size: int | None, vocab_field: str,
         workdir: str, dataset_dir: str, *, writer: bool) -> None:
  """Checks the dataset's tokenizer against the model and the workdir.

  Args:
    tokenizer: the dataset's tokenizer.
    vocab_size: the model's vocabulary (None: not set, not checked).
    vocab_field: the config field that sets it, for the error.
    workdir: the run's workdir.
    dataset_dir: where the tokenizer came from, for the error.
    writer: a trainer's process 0 records the tokenizer if the workdir has
      none yet.
  Raises:
    ValueError: the tokenizer has more pieces than the model's vocabulary.
    errors.RunError: the workdir was trained with another tokenizer.
  """
  if vocab_size is not None and tokenizer.vocab_size > vocab_size:
    raise ValueError(
        f"the dataset's tokenizer has {tokenizer.vocab_size} pieces but "
        f"{vocab_field}={vocab_size}; set it to {tokenizer.vocab_size} or "
        "more")
  path = os.path.join(workdir, FILE)
  if os.path.exists(path):
    with open(path, "rb") as f:
      if f.read() != tokenizer.model_proto:
        raise errors.RunError(
            f"{path}, the tokenizer this workdir was trained with, differs "
            f"from the dataset's ({dataset_dir}); point config.data at the "
            "data it was trained on, or use a new --workdir")
  elif writer:
    os.makedirs(workdir, exist_ok=True)
    atomic_files.write_bytes(path, tokenizer.model_proto)
    logging.info("tokenizer: %d pieces, kept as %s", tokenizer.vocab_size,
                 path)
