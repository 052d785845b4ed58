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
and scale the lr linearly. Wall time and accuracy here: not measured.

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

from mrl_jax import config_lib


# get_config's arguments and defaults (configs/vit_b16_jft.py adds its own).
ARGS = dict(smoke=False, head="mrl", ff_dim=0, dtype="float32")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = config_lib.parse_arg(arg, **ARGS)
  config = vit_b16(arg.head, arg.ff_dim, arg.dtype)
  if arg.smoke:
    smoke(config)
  return config


def vit_b16(head: str, ff_dim: int, dtype: str) -> ml_collections.ConfigDict:
  """The full-size config (configs/vit_b16_jft.py starts from it too)."""
  config = config_lib.base_config(total_epochs=300, batch_size=4096,
                                  eval_batch_size=1024, log_every_steps=50)
  config.data = config_lib.imagenet_data_section(**preprocess(224))
  config.model = config_lib.model_section("vit_b16", dtype)
  config.mrl = config_lib.mrl_section(
      head, nesting_dims=(12, 24, 48, 96, 192, 384, 768), ff_dim=ff_dim)
  config.loss = config_lib.loss_section("softmax", label_smoothing=0.0)
  config.optimizer = config_lib.optimizer_section(
      "adamw", learning_rate=1e-3, b1=0.9, b2=0.999,
      weight_decay=0.1,  # = big_vision's decoupled 1e-4
      warmup_steps=10_000, schedule="cosine", grad_clip_norm=1.0)
  return config


def preprocess(size: int, label_ops: str = "") -> dict[str, str]:
  """Inception crop + flip / resize + centre crop to `size`, pixels in [-1, 1].

  Args:
    size: the crop size in pixels (eval resizes to size x 8/7 first).
    label_ops: ops on the label inserted before `keep`, e.g. "|multi_hot(C)".
  Returns:
    config.data's train_preprocess and eval_preprocess.
  """
  tail = f"|value_range(-1, 1){label_ops}|keep('image', 'label')"
  return {"train_preprocess": (
              f"decode_jpeg_and_inception_crop({size})|flip_lr{tail}"),
          "eval_preprocess": (
              f"decode|resize_small({size * 8 // 7})|central_crop({size})"
              f"{tail}")}


def smoke(config: ml_collections.ConfigDict, label_ops: str = "") -> None:
  """4 steps of ViT-mu (d = 32, 4x4 patches) on 32 px crops, in place."""
  config_lib.apply_smoke(config, train_split="train[:64]",
                         eval_split="validation[:32]", shuffle_buffer=64,
                         **preprocess(32, label_ops))
  config_lib.smoke_model(config, "vit_mu", 32)
  config.mrl.nesting_dims = (4, 8, 16, 32)
  config.optimizer.warmup_steps = 1
