r"""MRL ViT-B/16 trained from scratch on ImageNet-1K (big_vision-style recipe).

  python -m mrl_jax.main --config=configs/vit_b16_imagenet.py:dtype=bfloat16 \
      --workdir=workdirs/vit_b16_mrl --config.data.data_dir=/path/to/tfds

Arguments (comma-separated): `smoke` (tiny ViT on 32x32 crops, < 1 min on
CPU; for tests and `tfds.testing.mock_data`), `head=mrl|mrl_e|ff`,
`ff_dim=<k>` (FF-k with `head=ff`; 0 or absent: k = 768),
`dtype=float32|bfloat16` (compute dtype; parameters stay float32).

The paper trained MRL ViT-B/16 on JFT-300M only (App. C; see
configs/vit_b16_jft.py): there is no ImageNet-from-scratch MRL number to
compare with. This config is our own baseline, not a reproduction.

Hardware: big_vision's batch 4096 is meant for a TPU pod slice or several
GPU hosts (not tested here); on fewer accelerators lower --config.batch_size
and scale the lr linearly. Wall time and accuracy here: not measured yet.

Data: TFDS `imagenet2012` (manual download: ILSVRC2012_img_train.tar and
ILSVRC2012_img_val.tar in `<data_dir>/downloads/manual/`, then `tfds build
imagenet2012 --data_dir=<data_dir>`); images read encoded
(`data.skip_decode`).

Recipe: big_vision `configs/vit_i1k.py` (arXiv 2106.10270) for B/16: 300
epochs, batch 4096, Adam (b1 0.9, b2 0.999), peak lr 1e-3, 10k warm-up steps
then cosine decay to 0, global-norm gradient clipping 1.0, softmax
cross-entropy without label smoothing, inception crop 224 + flip, pixels in
[-1, 1]; eval resize 256 -> centre crop 224. big_vision's decoupled weight
decay 1e-4 is applied as lr_schedule/peak x 1e-4; optax's adamw multiplies by
the lr itself, so the same decay is weight_decay = 1e-4 / 1e-3 = 0.1 here
(on all params with ndim > 1, incl. pos_embed/cls_token; big_vision decays
kernels only). Differences from big_vision, which lower accuracy: no
RandAugment(2, 15) or mixup (p=0.5) yet (no such ops here), no pre-logits
layer, full train split (big_vision holds out train[99%:] as minival),
Adam moments in float32. MRL heads: nesting (12, 24, ..., 768), losses summed
over the 7 dims (official MRL convention).
"""
import ml_collections
from ml_collections import config_dict

from mrl_jax import config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = config_lib.parse_arg(arg, smoke=False, head="mrl", ff_dim=0,
                             dtype="float32")
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.total_epochs = 300
  config.total_steps = config_dict.placeholder(int)
  config.batch_size = 4096
  config.grad_accum_steps = 1  # k > 1: k microbatches per update
  config.eval_batch_size = 1024

  config.data = ml_collections.ConfigDict()
  config.data.name = "imagenet2012"
  config.data.data_dir = config_dict.placeholder(str)
  config.data.train_split = "train"
  config.data.eval_split = "validation"
  config.data.num_classes = 1000
  config.data.cache = False  # ~150 GB encoded: does not fit in host memory.
  config.data.skip_decode = True  # decode_* ops read the encoded JPEG.
  config.data.shuffle_buffer = 50_000
  # S data shards, each shuffled and batched alone (pipeline.py): batches are
  # the same for any process count dividing S. None: one per device.
  config.data.num_shards = config_dict.placeholder(int)
  config.data.train_preprocess = (
      "decode_jpeg_and_inception_crop(224)|flip_lr|value_range(-1, 1)"
      "|keep('image', 'label')")
  config.data.eval_preprocess = (
      "decode|resize_small(256)|central_crop(224)|value_range(-1, 1)"
      "|keep('image', 'label')")

  config.model = config_lib.model_section("vit_b16", arg.dtype)

  config.mrl = config_lib.mrl_section(
      arg.head, nesting_dims=(12, 24, 48, 96, 192, 384, 768),
      ff_dim=arg.ff_dim)

  config.loss = ml_collections.ConfigDict()
  config.loss.name = "softmax"
  config.loss.label_smoothing = 0.0

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = "adamw"
  config.optimizer.state_dtype = "float32"  # or bfloat16 (momentum)
  config.optimizer.learning_rate = 1e-3
  config.optimizer.b1 = 0.9
  config.optimizer.b2 = 0.999
  config.optimizer.weight_decay = 0.1  # = big_vision's decoupled 1e-4
  config.optimizer.warmup_steps = 10_000
  config.optimizer.schedule = "cosine"
  config.optimizer.grad_clip_norm = 1.0

  config.mesh = (("data", -1),)  # axes data, fsdp, model; one size may be -1
  config.sharding = config_lib.sharding_section("dp")  # or fsdp, fsdp_tp
  config.log_every_steps = 50
  config.checkpoint_every_steps = 1000
  config.eval_every_steps = 0  # 0: evaluate only at the end
  config.keep_checkpoints = 2

  if arg.smoke:
    config.total_epochs = None
    config.total_steps = 4
    config.batch_size = 16
    config.eval_batch_size = 16
    config.data.train_split = "train[:64]"
    config.data.eval_split = "validation[:32]"
    config.data.shuffle_buffer = 64
    config.data.train_preprocess = (
        "decode_jpeg_and_inception_crop(32)|flip_lr|value_range(-1, 1)"
        "|keep('image', 'label')")
    config.data.eval_preprocess = (
        "decode|resize_small(36)|central_crop(32)|value_range(-1, 1)"
        "|keep('image', 'label')")
    config.model.name = "vit_mu"  # d = 32, 4x4 patches
    config.mrl.nesting_dims = (4, 8, 16, 32)
    if config.mrl.ff_dim is not None:
      config.mrl.ff_dim = min(config.mrl.ff_dim, 32)
    config.optimizer.warmup_steps = 1
    config.log_every_steps = 2
    config.checkpoint_every_steps = 2
  return config
