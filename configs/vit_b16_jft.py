r"""MRL ViT-B/16 on JFT-style multi-label data (paper App. C), sigmoid loss.

  python -m mrl_jax.main \
      --config=configs/vit_b16_jft.py:dataset=my_multilabel,num_classes=5000 \
      --workdir=workdirs/vit_b16_jft --config.data.data_dir=/path/to/tfds

Arguments (comma-separated): `dataset=<tfds name>` (default "jft", a
placeholder: JFT-300M is private), `num_classes=<C>` (default 18291, JFT-300M),
`smoke` (tiny ViT on 32x32 crops, < 1 min on CPU; for tests),
`head=mrl|mrl_e|ff`, `ff_dim=<k>` (FF-k with `head=ff`),
`dtype=float32|bfloat16`.

Data: any prepared TFDS dataset with an encoded "image" (JPEG/PNG, read with
`data.skip_decode`) and a "label" feature that is a variable-length sequence
of class ids in [0, C), e.g. `tfds.features.Sequence(ClassLabel(C))`; the
`multi_hot(C)` op turns it into the [C] target. Splits "train" and
"validation" (override with --config.data.train_split / eval_split). If the
labels are already stored multi-hot ([C] of 0/1), drop `|multi_hot(...)` from
both preprocess strings. Reported top-1/top-5 are prec@1/prec@5 (the top
class(es) contain a positive), the usual JFT metric; the paper itself
evaluates JFT models by ImageNet-1K 1-NN (mrl.md section 6), which is not part
of this config.

Recipe (paper App. C; mrl.md section 3): 8x8 TPU pod, batch 128, 300K steps,
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
import ml_collections
from ml_collections import config_dict

from mrl_jax import config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = config_lib.parse_arg(arg, smoke=False, head="mrl", ff_dim=0,
                             dtype="float32", dataset="jft",
                             num_classes=18291)
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.total_epochs = config_dict.placeholder(float)
  config.total_steps = 300_000
  config.batch_size = 128
  config.grad_accum_steps = 1  # k > 1: k microbatches per update
  config.eval_batch_size = 1024

  c = arg.num_classes
  config.data = ml_collections.ConfigDict()
  config.data.name = arg.dataset
  config.data.data_dir = config_dict.placeholder(str)
  config.data.train_split = "train"
  config.data.eval_split = "validation"
  config.data.num_classes = c
  config.data.cache = False
  config.data.skip_decode = True  # decode_* ops read the encoded image.
  config.data.shuffle_buffer = 50_000
  # S data shards, each shuffled and batched alone (pipeline.py): batches are
  # the same for any process count dividing S. None: one per device.
  config.data.num_shards = config_dict.placeholder(int)
  config.data.train_preprocess = (
      "decode_jpeg_and_inception_crop(224)|flip_lr|value_range(-1, 1)"
      f"|multi_hot({c})|keep('image', 'label')")
  config.data.eval_preprocess = (
      "decode|resize_small(256)|central_crop(224)|value_range(-1, 1)"
      f"|multi_hot({c})|keep('image', 'label')")

  config.model = config_lib.model_section("vit_b16", arg.dtype)

  config.mrl = config_lib.mrl_section(
      arg.head, nesting_dims=(12, 24, 48, 96, 192, 384, 768),
      ff_dim=arg.ff_dim)

  config.loss = ml_collections.ConfigDict()
  config.loss.name = "sigmoid"
  config.loss.label_smoothing = 0.0

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = "adamw"  # the paper: Adafactor (not in optim.py)
  config.optimizer.state_dtype = "float32"  # or bfloat16 (momentum)
  config.optimizer.learning_rate = 1e-3
  config.optimizer.b1 = 0.9
  config.optimizer.b2 = 0.999
  config.optimizer.weight_decay = 0.1
  config.optimizer.warmup_steps = 10_000
  config.optimizer.schedule = "linear"

  config.mesh = (("data", -1),)  # axes data, fsdp, model; one size may be -1
  config.sharding = config_lib.sharding_section("dp")  # or fsdp, fsdp_tp
  config.log_every_steps = 100
  config.checkpoint_every_steps = 5000
  config.eval_every_steps = 0  # 0: evaluate only at the end
  config.keep_checkpoints = 2

  if arg.smoke:
    config.total_steps = 4
    config.batch_size = 16
    config.eval_batch_size = 16
    config.data.train_split = "train[:64]"
    config.data.eval_split = "validation[:32]"
    config.data.shuffle_buffer = 64
    config.data.train_preprocess = (
        "decode_jpeg_and_inception_crop(32)|flip_lr|value_range(-1, 1)"
        f"|multi_hot({c})|keep('image', 'label')")
    config.data.eval_preprocess = (
        "decode|resize_small(36)|central_crop(32)|value_range(-1, 1)"
        f"|multi_hot({c})|keep('image', 'label')")
    config.model.name = "vit_mu"  # d = 32, 4x4 patches
    config.mrl.nesting_dims = (4, 8, 16, 32)
    if config.mrl.ff_dim is not None:
      config.mrl.ff_dim = min(config.mrl.ff_dim, 32)
    config.optimizer.warmup_steps = 1
    config.log_every_steps = 2
    config.checkpoint_every_steps = 2
  return config
