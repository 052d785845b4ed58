r"""Nested two-tower contrastive learning on your own image-caption pairs.

  python -m mrl_jax.main --config=configs/image_text_folder.py:root=/data/pairs \
      --workdir=workdirs/pairs

`root` holds images (any depth) and `captions.jsonl` ({"image": <path
relative to root>, "caption": <text>} per line; an image may have several
captions) or `captions.csv` (columns image, caption); an optional `split`
field (train / validation / test) on every row sets the splits, else a hash
of the image path picks them (10% validation, 10% test). Every image is
checked once when the dataset is first prepared (under TFDS's data_dir):
images without captions, captions without images, empty captions, bad rows
and undecodable images stop it with one line naming the problem;
`skip_bad_files` skips undecodable images with a count instead.

Arguments: `root=<dir>` (required), `vocab=<n>` (the caption tokenizer,
default 2048), `seq_len=<n>` (caption tokens, default 32), `data_dir=`,
`skip_bad_files`, and configs/align_openclipart.py's own: `smoke`,
`head=mrl|ff`, `loss=softmax|sigmoid`, `per_dim_temperature`, `steps=`.
Model and recipe are align_openclipart.py's (32x32 images, sized for a
CPU); folders have no categories, so there is no zero-shot evaluation.
"""
import os

import ml_collections

from mrl_jax import config_lib
from mrl_jax.data import image_text

_ALIGN = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                      "align_openclipart.py")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = config_lib.parse_arg(
      arg, root="", vocab=2048, seq_len=32, data_dir="",
      skip_bad_files=False, smoke=False, head="mrl", loss="softmax",
      per_dim_temperature=False, steps=800)
  if not arg.root:
    raise ValueError("configs/image_text_folder.py needs root=<dir>, a "
                     "folder of images with captions.jsonl or captions.csv:"
                     " --config=configs/image_text_folder.py:root=/path")
  base = f"head={arg.head},loss={arg.loss},steps={arg.steps}"
  base += ",smoke" * arg.smoke
  base += ",per_dim_temperature" * arg.per_dim_temperature
  config = config_lib.load_module(_ALIGN).get_config(base)
  with config.data.ignore_type():
    config.data.num_classes = None
  config.data.name = "image_text_folder"
  config.data.data_dir = arg.data_dir or None
  config.data.skip_bad_files = arg.skip_bad_files
  config.data.image_text = image_text.section(
      folder=os.path.abspath(arg.root), seq_len=arg.seq_len,
      vocab_size=arg.vocab)
  if arg.smoke:  # tiny folders: the splits as they are
    config.data.train_split, config.data.eval_split = "train", "validation"
  config.text_model.kwargs.vocab_size = arg.vocab
  config.text_model.kwargs.max_len = arg.seq_len
  return config
