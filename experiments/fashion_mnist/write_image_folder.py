r"""Writes Fashion-MNIST as an image folder, for configs/image_folder.py.

  .venv/bin/python experiments/fashion_mnist/write_image_folder.py \
      --out=workdirs/fmnist_folder --train_per_class=800

OUT/train/<class>/<i>.png: the first `train_per_class` images of each class
of the TFDS train split (8k with the default 800); OUT/test/<class>/<i>.png:
the whole 10k test split. Grayscale 28x28 PNGs, class folders named by the
TFDS label names ("/" written as "_"). Deterministic (the splits are read in order). The data
comes from the offline preparer the default config uses.
"""
from collections.abc import Sequence
import os

from absl import app
from absl import flags
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from mrl_jax.data import fashion_mnist

FLAGS = flags.FLAGS


def _define_flags() -> None:
  flags.DEFINE_string("out", "workdirs/fmnist_folder", "Folder to write.")
  flags.DEFINE_integer("train_per_class", 800,
                       "Train images per class (the test split is whole).")
  flags.DEFINE_string("data_dir", None, "TFDS data dir (default: TFDS's).")


def write(out: str, train_per_class: int,
          data_dir: str | None = None) -> dict[str, int]:
  """Writes the folder; returns {split: images written}."""
  if train_per_class < 1:
    raise ValueError(f"train_per_class={train_per_class}; pass a positive "
                     "count (at most 6000, the images per class)")
  if os.path.exists(out):
    raise ValueError(f"{out} exists; remove it or pass another --out")
  fashion_mnist.prepare(data_dir)
  builder = tfds.builder("fashion_mnist", data_dir=data_dir)
  # One folder per class: "T-shirt/top" would be two levels.
  names = [n.replace("/", "_") for n in builder.info.features["label"].names]
  counts = {}
  for split, per_class in (("train", train_per_class), ("test", None)):
    written = np.zeros(len(names), int)
    for example in tfds.as_numpy(builder.as_dataset(split=split)):
      label = int(example["label"])
      if per_class is not None and written[label] >= per_class:
        continue
      folder = os.path.join(out, split, names[label])
      os.makedirs(folder, exist_ok=True)
      Image.fromarray(example["image"][..., 0]).save(
          os.path.join(folder, f"{written[label]:05d}.png"))
      written[label] += 1
    counts[split] = int(written.sum())
  return counts


def main(argv: Sequence[str]) -> None:
  del argv
  print(write(FLAGS.out, FLAGS.train_per_class, FLAGS.data_dir))


if __name__ == "__main__":
  _define_flags()
  app.run(main)
