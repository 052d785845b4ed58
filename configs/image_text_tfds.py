r"""Nested two-tower contrastive learning on a TFDS image-caption dataset.

  tfds build coco_captions --data_dir=/data/tfds   # once, with the web
  python -m mrl_jax.main \
      --config=configs/image_text_tfds.py:data_dir=/data/tfds \
      --workdir=workdirs/coco

Reads the TFDS dataset `name` (default `coco_captions`, the COCO 2014
images with the Karpathy splits) as prepared in `data_dir`; nothing is
downloaded at run time, and a dataset that is not prepared stops the run
with the `tfds build` command that prepares it. On first use its images and
first captions are copied, with the captions tokenized, into a dataset of
data/tfds_image_text.py under the same data_dir (so there must be room for
a second copy of the images).

Arguments (comma-separated): `name=`, `data_dir=`, the field map
`image_key=` (default image), `caption_key=` (default captions/text: a text
feature or a sequence of them, whose first caption is used), `label_key=`
(an integer class feature; a ClassLabel's names give zero-shot evaluation,
which is skipped without one), `id_key=`; `train_split=` (default train),
`eval_split=` (default val); `tokenizer=<a sentencepiece .model or a BERT
vocab.txt>` (default: one trained on the train split's captions, `vocab=`
pieces, default 8192),
`seq_len=` (caption tokens, default 32); and configs/align_openclipart.py's
`smoke`, `head=mrl|ff`, `loss=softmax|sigmoid`, `per_dim_temperature`,
`steps=`. With `tokenizer=`, `vocab=` must be its vocabulary size.

Model and recipe are align_openclipart.py's (a small CNN on 32x32 crops and
BERT-Tiny, sized for a CPU): point config.model at a larger tower for full
COCO. Images are random crops (inception_crop) with flips for training,
resized and centre-cropped for evaluation; the decoded split is not cached.
"""
import os

import ml_collections

from mrl_jax import config_lib
from mrl_jax.data import image_text

_ALIGN = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                      "align_openclipart.py")
_IMAGE = 32
_KEEP = "keep('image', 'input_ids', 'input_mask', 'label')"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = config_lib.parse_arg(
      arg, name="coco_captions", data_dir="", image_key="image",
      caption_key="captions/text", label_key="", id_key="",
      train_split="train", eval_split="val", tokenizer="", vocab=8192,
      seq_len=32, smoke=False, head="mrl", loss="softmax",
      per_dim_temperature=False, steps=800)
  base = f"head={arg.head},loss={arg.loss},steps={arg.steps}"
  base += ",smoke" * arg.smoke
  base += ",per_dim_temperature" * arg.per_dim_temperature
  config = config_lib.load_module(_ALIGN).get_config(base)
  data = config.data
  with data.ignore_type():
    data.num_classes = None
  data.name = arg.name
  data.data_dir = arg.data_dir or None
  data.train_split, data.eval_split = arg.train_split, arg.eval_split
  # Decoded full-size photos do not fit in host memory.
  data.cache = False
  data.train_preprocess = (f"caption_tokens|inception_crop({_IMAGE})|"
                           f"flip_lr|value_range(-1, 1)|{_KEEP}")
  data.eval_preprocess = (f"caption_tokens|resize_small({_IMAGE})|"
                          f"central_crop({_IMAGE})|value_range(-1, 1)|"
                          f"{_KEEP}")
  data.image_text = image_text.section(
      seq_len=arg.seq_len, vocab_size=arg.vocab,
      tokenizer_path=arg.tokenizer or None, image_key=arg.image_key,
      caption_key=arg.caption_key, label_key=arg.label_key or None,
      id_key=arg.id_key or None)
  config.text_model.kwargs.vocab_size = arg.vocab
  config.text_model.kwargs.max_len = arg.seq_len
  return config
