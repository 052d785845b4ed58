r"""MRL on your own images: a folder tree root/<split>/<class>/*.jpg|png.

  python -m mrl_jax.main --config=configs/image_folder.py:root=/data/pets \
      --workdir=workdirs/pets

Arguments (comma-separated): `root=<dir>` (required), `smoke` (4 steps on
a tiny model, for tests), `head=mrl|mrl_e|ff`, `model=<name>`, `size=<px>`,
`epochs=<n>`, `batch=<n>` (a multiple of the device count; model, size,
epochs and batch default to the recipe's, below), `flip=true|false`
(random horizontal flip in training, default true; set false where a
mirrored image is another class, e.g. digits or text).

Inferred from the folder when the config is loaded: the classes (class
folders of all splits, sorted; names kept in config.data.class_names), the
channels (1 if every peeked file is grayscale, else 3) and the image size
(the median short side of a few files per class). The train split is
`train`; the eval split is the first of `val`, `validation`, `test` that
exists, else the last 10% of `train` (then training uses the first 90%).

The recipe follows the image size (the `size=` argument, else the median
short side), and is logged (an absl WARNING line, shown before the flags
set the log level) when the config loads:
- below 64 px, small images (MNIST / CIFAR-like): the short side resized to
  `size` (default the short side itself) and the centre square kept, then
  zero-padded by ceil(size / 8) px (4 at 28-32 px) and randomly cropped
  back, optional flip; eval resizes and centre-crops only.
  `small_cnn` (a 128-d representation, nesting 8..128), batch 128, AdamW
  at 3e-3 with cosine decay, and as many epochs as make about 240k training
  examples (4 to 30; Fashion-MNIST's 60k images x 4 epochs, minutes on a
  2-core CPU). An Inception crop (8-100% of the area) would cut most of
  such an image away.
- from 64 px, ImageNet-shaped: Inception crop + optional flip for training,
  resize + centre crop (224/256) for eval, at `size` (default the short
  side in multiples of 8, at most 224); ResNet-18 (a 512-d representation,
  nesting 8..512), batch 64, AdamW at 1e-3, 30 epochs: sized for an
  accelerator.
Both use label smoothing 0.1. Nothing here is tuned for a particular
dataset; expect to adjust epochs and the learning rate.
"""
import dataclasses
import math
import os

from absl import logging
import ml_collections

from mrl_jax import config_lib
from mrl_jax.data import image_folder

_EVAL_SPLITS = ("val", "validation", "test")
# Below this many pixels on the short side an image gets the small-image
# recipe (an Inception crop would cut most of it away).
_SMALL_IMAGE_PX = 64
# The small recipe's training budget in examples: default.py's Fashion-MNIST
# run (60k x 4 epochs, minutes on a 2-core CPU).
_SMALL_EXAMPLES = 240_000
_SMALL_EPOCHS = (4, 30)


@dataclasses.dataclass(frozen=True)
class Recipe:
  """What the image size decides; `why` is logged with it."""
  name: str
  size: int
  model: str
  embed_dim: int | None
  epochs: int
  batch: int
  learning_rate: float
  weight_decay: float
  warmup_epochs: float
  train_preprocess: str
  eval_preprocess: str
  why: str


def _size(short_side: int) -> int:
  return max(8, min(224, short_side // 8 * 8))


def _count_images(split_dir: str) -> int:
  return sum(f.lower().endswith(image_folder.EXTENSIONS)
             for _, _, files in os.walk(split_dir) for f in files)


def _small_recipe(arg: ml_collections.ConfigDict, short_side: int,
                  channels: int, stats: str, num_train: int) -> Recipe:
  """Resize, pad-and-random-crop (+ flip), small_cnn, CPU-sized epochs."""
  size = arg.size or short_side
  pad = math.ceil(size / 8)
  # Short side to `size`, then the centre square (a no-op on square images
  # of that size).
  fit = f"decode({channels})|resize_small({size})|central_crop({size})"
  flip = "flip_lr|" if arg.flip else ""
  lo, hi = _SMALL_EPOCHS
  epochs = arg.epochs or max(lo, min(hi, round(_SMALL_EXAMPLES / num_train)))
  return Recipe(
      "small-image", size, arg.model or "small_cnn",
      None if arg.model else 128, epochs, arg.batch or 128,
      learning_rate=3e-3, weight_decay=1e-4, warmup_epochs=0.5,
      train_preprocess=(f"{fit}|pad_and_random_crop({pad})|{flip}{stats}|"
                        "keep('image', 'label')"),
      eval_preprocess=f"{fit}|{stats}|keep('image', 'label')",
      why=(f"{size} px < {_SMALL_IMAGE_PX} px: pad {pad} + random crop"
           f"{' + flip' if arg.flip else ''}, epochs for about "
           f"{_SMALL_EXAMPLES:,} examples of {num_train} train images"))


def _imagenet_recipe(arg: ml_collections.ConfigDict, short_side: int,
                     channels: int, stats: str) -> Recipe:
  """Inception crop (+ flip), ResNet-18, accelerator-sized epochs."""
  size = arg.size or _size(short_side)
  # decode_jpeg_and_inception_crop decodes only the crop of a JPEG, but
  # always to RGB; grayscale folders decode to 1 channel first.
  crop = (f"decode_jpeg_and_inception_crop({size})" if channels == 3 else
          f"decode(1)|inception_crop({size})")
  flip = "flip_lr|" if arg.flip else ""
  return Recipe(
      "ImageNet-shaped", size, arg.model or "resnet18", None,
      arg.epochs or 30, arg.batch or 64, learning_rate=1e-3,
      weight_decay=0.05, warmup_epochs=1.0,
      train_preprocess=f"{crop}|{flip}{stats}|keep('image', 'label')",
      eval_preprocess=(
          f"decode({channels})|resize_small({size * 256 // 224})|"
          f"central_crop({size})|{stats}|keep('image', 'label')"),
      why=(f"{size} px >= {_SMALL_IMAGE_PX} px: Inception crop"
           f"{' + flip' if arg.flip else ''}, accelerator-sized defaults"))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  # model="", size=0, epochs=0, batch=0: the recipe's (see the docstring).
  arg = config_lib.parse_arg(arg, root="", smoke=False, head="mrl",
                             model="", size=0, epochs=0, batch=0, flip=True)
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
  eval_splits = [s for s in _EVAL_SPLITS if s in splits]
  stats = "normalize('imagenet')" if channels == 3 else "value_range(-1, 1)"
  short_side = min(height, width)
  if (arg.size or short_side) < _SMALL_IMAGE_PX:
    num_train = _count_images(os.path.join(arg.root, "train"))
    if not eval_splits:
      num_train = max(1, num_train * 9 // 10)  # train[:90%]
    recipe = _small_recipe(arg, short_side, channels, stats, num_train)
  else:
    recipe = _imagenet_recipe(arg, short_side, channels, stats)
  # WARNING, not INFO: the config loads while flags are parsed, before absl
  # lowers the threshold to INFO, so an INFO line would be dropped.
  logging.warning("configs/image_folder.py: %s recipe for %s (%dx%d px median, "
               "%d channel(s)): %s; model %s, batch %d, %d epochs", recipe.name,
               arg.root, height, width, channels, recipe.why, recipe.model,
               recipe.batch, recipe.epochs)

  config = config_lib.base_config(
      total_epochs=recipe.epochs, batch_size=recipe.batch,
      eval_batch_size=recipe.batch, log_every_steps=50,
      checkpoint_every_steps=500)
  config.data = config_lib.data_section(
      image_folder.NAME, num_classes=len(names), data_dir=arg.root,
      train_split="train" if eval_splits else "train[:90%]",
      eval_split=eval_splits[0] if eval_splits else "train[90%:]",
      cache=False, shuffle_buffer=10_000,
      train_preprocess=recipe.train_preprocess,
      eval_preprocess=recipe.eval_preprocess,
      class_names=tuple(names),
      skip_decode=True,  # files stay encoded until preprocessing
      # True: leave files that do not decode out (each is logged), instead
      # of refusing the split.
      skip_bad_files=False)
  config.model = config_lib.model_section(
      recipe.model, "float32",
      **({"embed_dim": recipe.embed_dim} if recipe.embed_dim else {}))
  config.mrl = config_lib.mrl_section(arg.head)
  config.loss = config_lib.loss_section("softmax", label_smoothing=0.1)
  config.optimizer = config_lib.optimizer_section(
      "adamw", learning_rate=recipe.learning_rate,
      weight_decay=recipe.weight_decay, warmup_epochs=recipe.warmup_epochs,
      schedule="cosine")
  if arg.smoke:
    config_lib.apply_smoke(config, total_steps=4, batch_size=8)
    # nesting (8, 16) or (8, ..., 64)
    tiny = ("cnn_mu", 16) if recipe.model == "small_cnn" else ("resnet_mu", 64)
    config.model.kwargs = ml_collections.ConfigDict()
    config_lib.smoke_model(config, *tiny)
    config.optimizer.warmup_epochs = 0.5
  return config
