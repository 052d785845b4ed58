r"""MRL on your own images: a folder tree root/<split>/<class>/*.jpg|png.

  python -m mrl_jax.main --config=configs/image_folder.py:root=/data/pets \
      --workdir=workdirs/pets

Arguments (comma-separated): `root=<dir>` (required), `smoke` (4 steps on
a tiny model, for tests), `head=mrl|mrl_e|ff`, `model=<name>` (default
resnet18), `size=<px>` (default: inferred), `epochs=<n>` (default 30),
`batch=<n>` (default 64; a multiple of the device count).

Inferred from the folder when the config is loaded: the classes (class
folders of all splits, sorted; names kept in config.data.class_names), the
channels (1 if every peeked file is grayscale, else 3) and the training size
(the median short side of a few files per class, in multiples of 8, at most
224). The train split is `train`; the eval split is the first of `val`,
`validation`, `test` that exists, else the last 10% of `train` (then
training uses the first 90%).

Recipe: Inception crop + flip for training, resize + centre crop (224/256)
for eval, ResNet-18 (a 512-d representation, nesting 8..512), AdamW with
cosine decay, label smoothing 0.1. Nothing here is tuned for a particular
dataset; expect to adjust epochs and the learning rate.
"""
import ml_collections

from mrl_jax import config_lib
from mrl_jax.data import image_folder

_EVAL_SPLITS = ("val", "validation", "test")


def _size(short_side: int) -> int:
  return max(8, min(224, short_side // 8 * 8))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = config_lib.parse_arg(arg, root="", smoke=False, head="mrl",
                             model="resnet18", size=0, epochs=30, batch=64)
  if not arg.root:
    raise ValueError("configs/image_folder.py needs root=<dir> (a folder laid"
                     " out as root/<split>/<class>/*.jpg), e.g. "
                     "--config=configs/image_folder.py:root=/data/pets")
  splits = image_folder.splits(arg.root)
  if "train" not in splits:
    raise ValueError(f"no train split folder in {arg.root!r} (found: "
                     f"{splits}); name the training split 'train'")
  names = image_folder.classes(arg.root)
  channels, height, width = image_folder.peek(arg.root, "train")
  size = arg.size or _size(min(height, width))
  eval_splits = [s for s in _EVAL_SPLITS if s in splits]

  config = config_lib.base_config(
      total_epochs=arg.epochs, batch_size=arg.batch, eval_batch_size=arg.batch,
      log_every_steps=50, checkpoint_every_steps=500)
  stats = "normalize('imagenet')" if channels == 3 else "value_range(-1, 1)"
  # decode_jpeg_and_inception_crop decodes only the crop of a JPEG, but
  # always to RGB; grayscale folders decode to 1 channel first.
  crop = (f"decode_jpeg_and_inception_crop({size})" if channels == 3 else
          f"decode(1)|inception_crop({size})")
  config.data = config_lib.data_section(
      image_folder.NAME, num_classes=len(names), data_dir=arg.root,
      train_split="train" if eval_splits else "train[:90%]",
      eval_split=eval_splits[0] if eval_splits else "train[90%:]",
      cache=False, shuffle_buffer=10_000,
      train_preprocess=f"{crop}|flip_lr|{stats}|keep('image', 'label')",
      eval_preprocess=(
          f"decode({channels})|resize_small({size * 256 // 224})|"
          f"central_crop({size})|{stats}|keep('image', 'label')"),
      class_names=tuple(names),
      skip_decode=True,  # files stay encoded until preprocessing
      # True: leave files that do not decode out (each is logged), instead
      # of refusing the split.
      skip_bad_files=False)
  config.model = config_lib.model_section(arg.model, "float32")
  config.mrl = config_lib.mrl_section(arg.head)
  config.loss = config_lib.loss_section("softmax", label_smoothing=0.1)
  config.optimizer = config_lib.optimizer_section(
      "adamw", learning_rate=1e-3, weight_decay=0.05, warmup_epochs=1.0,
      schedule="cosine")
  if arg.smoke:
    config_lib.apply_smoke(config, total_steps=4, batch_size=8)
    config_lib.smoke_model(config, "resnet_mu", 64)  # nesting (8, ..., 64)
    config.optimizer.warmup_epochs = 0.5
  return config
