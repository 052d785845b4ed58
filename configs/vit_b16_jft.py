r"""MRL ViT-B/16 on JFT-style multi-label data (paper App. C), sigmoid loss.

  python -m mrl_jax.main \
      --config=configs/vit_b16_jft.py:dataset=my_multilabel,num_classes=5000 \
      --workdir=workdirs/vit_b16_jft --config.data.data_dir=/path/to/tfds

Arguments (comma-separated): `dataset=<tfds name>` (default "jft", a
placeholder: JFT-300M is private), `num_classes=<C>` (default 18291, JFT-300M),
`smoke` (tiny ViT on 32x32 crops, < 1 min on CPU; for tests),
`head=mrl|mrl_e|ff`, `ff_dim=<k>` (FF-k with `head=ff`),
`dtype=float32|bfloat16`.

Built from configs/vit_b16_imagenet.py (model, heads, optimizer, image
reading and the smoke setting); this file changes the data, the loss, the
run length and the schedule.

Data: any prepared TFDS dataset with an encoded "image" (JPEG/PNG, read with
`data.skip_decode`) and a "label" feature that is a variable-length sequence
of class ids in [0, C), e.g. `tfds.features.Sequence(ClassLabel(C))`; the
`multi_hot(C)` op turns it into the [C] target. Splits "train" and
"validation" (override with --config.data.train_split / eval_split). If the
labels are already stored multi-hot ([C] of 0/1), drop `|multi_hot(...)` from
both preprocess strings. Reported top-1/top-5 are prec@1/prec@5 (the top
class(es) contain a positive), the usual JFT metric; the paper itself
evaluates JFT models by ImageNet-1K 1-NN, which is not part
of this config.

Recipe (paper App. C): 8x8 TPU pod, batch 128, 300K steps,
Adafactor, linear decay from lr 1e-3; nesting (12, 24, ..., 768); sigmoid
cross-entropy (summed over classes), no label smoothing. Deviations: optim.py
has no Adafactor, so Adam (b1 0.9, b2 0.999; big_vision notes its Adafactor
"almost always behaves exactly like adam"); App. C gives no warm-up or weight
decay, we use 10k warm-up steps and adamw weight_decay 0.1 (the ViT paper's
JFT setting; decay = lr_t x 0.1); App. C does not say whether 128 is global or
per core, we take it as the global batch. No paper number for JFT prec@1;
ImageNet 1-NN of the paper's JFT-ViT-MRL is ~53/63/68/70% at 12/24/48/96
dims and ~72% from 192 up (read off a figure, approximate). Wall time: not
measured.
"""
import os

import ml_collections
from ml_collections import config_dict

from mrl_jax import config_lib

_IMAGENET = config_lib.load_module(
    os.path.join(os.path.dirname(__file__), "vit_b16_imagenet.py"))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = config_lib.parse_arg(arg, **_IMAGENET.ARGS, dataset="jft",
                             num_classes=18291)
  labels = f"|multi_hot({arg.num_classes})"
  config = _IMAGENET.vit_b16(arg.head, arg.ff_dim, arg.dtype)
  # A run of 300k steps, not epochs.
  del config.total_epochs, config.total_steps
  config.total_epochs = config_dict.placeholder(float)
  config.total_steps = 300_000
  config.batch_size = 128
  config.log_every_steps = 100
  config.checkpoint_every_steps = 5000
  config.data.name = arg.dataset
  config.data.num_classes = arg.num_classes
  config.data.update(_IMAGENET.preprocess(224, labels))
  config.loss.name = "sigmoid"
  # The paper: Adafactor (not in optim.py), linear decay, no clipping.
  config.optimizer.schedule = "linear"
  del config.optimizer.grad_clip_norm
  if arg.smoke:
    _IMAGENET.smoke(config, labels)
  return config
