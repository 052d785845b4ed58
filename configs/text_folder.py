r"""Nested masked language modelling on your own text: a folder of files.

  python -m mrl_jax.main --config=configs/text_folder.py:root=/data/notes \
      --workdir=workdirs/notes

Every `.txt` file under `root` (one document per blank-line separated
paragraph) and `.jsonl` file (one document per line, its "text" field) is
read, in path order; 2% of the documents (by a hash of their file and
position) are held out for validation. A sentencepiece tokenizer is trained
on the train documents, sequences are packed to `seq_len` tokens, and the
prepared corpus is stored under TFDS's data_dir (`data_dir=` to move it), so
later runs reuse it.

Arguments (comma-separated): `root=<dir>` (required), `vocab=<n>` (default
8192; a small corpus may give fewer pieces), `seq_len=<n>` (default 128),
`tokenizer=<file>` (a sentencepiece `.model` with mrl_jax's special ids, or
a BERT WordPiece `vocab.txt`, to use instead of training one; it then sets
the vocabulary; see data/tokenizer.py), 15% of the tokens masked (at most ceil(0.15 seq_len)),
`data_dir=<dir>`, and configs/text_mlm.py's own: `smoke`,
`head=mrl_e|mrl|ff`, `ff_dim=`, `prefix_norm`, `model=`, `steps=`. The
model and recipe are text_mlm.py's (BERT-Tiny, batch 32): sized for a CPU;
raise `model=` and `steps=` for a large corpus on an accelerator.
"""
import math
import os

import ml_collections

from mrl_jax import config_lib
from mrl_jax.data import tokenizer

_TEXT_MLM = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                         "text_mlm.py")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = config_lib.parse_arg(
      arg, root="", vocab=8192, seq_len=128, tokenizer="", data_dir="",
      smoke=False, head="mrl_e", ff_dim=0, prefix_norm=False,
      model="bert_tiny", steps=600)
  if not arg.root:
    raise ValueError("configs/text_folder.py needs root=<dir>, a folder of "
                     ".txt / .jsonl files: --config=configs/text_folder.py:"
                     "root=/path")
  base = ",".join(f"{k}={arg[k]}" for k in ("head", "ff_dim", "model",
                                              "steps"))
  base += ",smoke" * arg.smoke + ",prefix_norm" * arg.prefix_norm
  config = config_lib.load_module(_TEXT_MLM).get_config(base)
  seq_len = arg.seq_len if not arg.smoke else min(arg.seq_len, 64)
  if arg.tokenizer:  # the model's vocabulary is the given tokenizer's
    vocab = tokenizer.load(arg.tokenizer).vocab_size
  else:
    vocab = arg.vocab if not arg.smoke else min(arg.vocab, 512)
  corpus = config_lib.text_corpus_section(
      sources=("folder",), seq_len=seq_len, vocab_size=vocab,
      folder=os.path.abspath(arg.root),
      tokenizer_path=os.path.abspath(arg.tokenizer) if arg.tokenizer
      else None)
  config.data = config_lib.mlm_data_section(
      corpus, vocab_size=vocab, max_predictions=math.ceil(seq_len * 0.15),
      data_dir=arg.data_dir or None)
  config.model.kwargs.vocab_size = vocab
  config.model.kwargs.max_len = seq_len
  return config
