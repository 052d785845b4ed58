"""User image folders as a pipeline source: `root/<split>/<class>/*.jpg|png`.

Selected from the config alone: `config.data.name = "image_folder"` and
`config.data.data_dir = root`. Classes are the class folders of all splits,
sorted by name (label i = i-th name, as TFDS's ImageFolder and torchvision's
ImageFolder do), kept as `FolderSource.class_names` and in
`config.data.class_names` (checked against the folder when given). Files are
served encoded, like TFDS datasets read with `skip_decode`, so the
preprocess specs start with `decode` or `decode_jpeg_and_inception_crop`.
Split strings may slice (`train[:90%]`, `train[100:]`) as TFDS ones do; for
evaluation each process reads its own contiguous part, for training the
pipeline reads contiguous data shards (`FolderSource.shard`).

Opening a split checks its files cheaply: a file whose first and last bytes
are not those of a whole JPEG or PNG (cut short, empty, not an image) is
decoded, and if decoding fails the split is refused naming the file, or,
with `config.data.skip_bad_files`, the file is left out and logged.
`--mode=check_data` (mrl_jax/data/check.py) decodes every file.
"""
from collections.abc import Sequence
from concurrent import futures
import dataclasses
import os
import random
import re

from absl import logging
import jax
import ml_collections
import numpy as np
from PIL import Image
import tensorflow as tf
import tensorflow_datasets as tfds

from mrl_jax import errors

NAME = "image_folder"
EXTENSIONS = (".jpg", ".jpeg", ".png")
_LAYOUT = "root/<split>/<class>/*.jpg|jpeg|png"


def _subdirs(path: str) -> list[str]:
  return sorted(d for d in os.listdir(path)
                if os.path.isdir(os.path.join(path, d)))


def _images(path: str) -> list[str]:
  return sorted(f for f in os.listdir(path)
                if f.lower().endswith(EXTENSIONS))


def splits(root: str) -> list[str]:
  """Sorted split folder names under `root`; ValueError if there are none."""
  if not os.path.isdir(root):
    raise ValueError(f"image folder {root!r} does not exist; point it at a "
                     f"directory laid out as {_LAYOUT}")
  found = _subdirs(root)
  if not found:
    raise ValueError(f"image folder {root!r} has no split folders; lay it out"
                     f" as {_LAYOUT}")
  return found


def classes(root: str) -> list[str]:
  """Sorted class names over all splits; ValueError for an empty class."""
  names = set()
  for split in splits(root):
    split_dir = os.path.join(root, split)
    found = _subdirs(split_dir)
    if not found:
      raise ValueError(f"split folder {split_dir!r} has no class folders; lay"
                       f" it out as {_LAYOUT}")
    for name in found:
      if not _images(os.path.join(split_dir, name)):
        raise ValueError(f"class folder {os.path.join(split_dir, name)!r} has"
                         f" no {'/'.join(EXTENSIONS)} files; add images or "
                         "remove it")
    names.update(found)
  if len(names) < 2:
    raise ValueError(f"image folder {root!r} has one class folder "
                     f"({sorted(names)[0]!r}); classification needs at least "
                     "2: add a folder per class under each split")
  return sorted(names)


def _examples(root: str, split: str, names: Sequence[str]
              ) -> tuple[list[str], list[int]]:
  """(paths, labels) of a whole split, in a fixed class-mixed order."""
  index = {name: i for i, name in enumerate(names)}
  examples = [(os.path.join(root, split, c, f), index[c])
              for c in _subdirs(os.path.join(root, split))
              for f in _images(os.path.join(root, split, c))]
  # Fixed shuffle, so that a slice like train[:10%] holds every class.
  random.Random(split).shuffle(examples)
  return [p for p, _ in examples], [y for _, y in examples]


def peek(root: str, split: str, count: int = 8) -> tuple[int, int, int]:
  """(channels, median height, median width) of up to `count` files of each
  class of `split`: 1 if all are grayscale, else 3."""
  paths = [os.path.join(root, split, c, f)
           for c in _subdirs(os.path.join(root, split))
           for f in _images(os.path.join(root, split, c))[:count]]
  modes, heights, widths = set(), [], []
  for path in paths:
    try:
      with Image.open(path) as image:
        modes.add(image.mode)
        widths.append(image.width)
        heights.append(image.height)
    except (OSError, SyntaxError):  # bad files are named when a split opens
      continue
  if not heights:
    raise ValueError(f"none of the first {count} files of each class of "
                     f"{os.path.join(root, split)!r} is a readable image; "
                     "replace them with JPEG or PNG files")
  channels = 1 if modes <= {"L", "I", "I;16", "1"} else 3
  return channels, int(np.median(heights)), int(np.median(widths))


# Signatures at the start and end of whole JPEG and PNG files.
_WHOLE = ((b"\xff\xd8", b"\xff\xd9"), (b"\x89PNG\r\n\x1a\n", b"IEND\xaeB`\x82"))


def _looks_whole(path: str) -> bool:
  """True if the file starts and ends like a whole JPEG or PNG (reads 16
  bytes; valid files with trailing bytes fail it, so it only picks whom to
  decode)."""
  with open(path, "rb") as f:
    head = f.read(8)
    f.seek(max(os.fstat(f.fileno()).st_size - 8, 0))
    tail = f.read()
  return any(head.startswith(start) and tail.endswith(end)
             for start, end in _WHOLE)


def decode_error(path: str) -> str | None:
  """Why the pipeline's decoder (tf.io.decode_image) cannot decode the file,
  in one line; None if it can."""
  try:
    tf.io.decode_image(tf.io.read_file(path), expand_animations=False)
  except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError,
          tf.errors.PermissionDeniedError) as e:
    # TF prefixes "{{function_node ...}} " and appends " [Op:DecodeImage]
    # name:".
    message = re.sub(r"^\{\{.*?\}\}\s*|\s*\[Op:\w+\].*$", "", e.message)
    return " ".join(message.split())
  return None


def unreadable(paths: Sequence[str], thorough: bool = False,
               threads: int = 32) -> list[tuple[str, str]]:
  """(path, reason) of each file the pipeline could not decode, in order.

  thorough: decode every file (about 0.5 ms for a small image, more for
    photos); else only those that do not look whole (`_looks_whole`, tens of
    microseconds a file), which finds files cut short or not images at all.
  """
  def check(path: str) -> str | None:
    if not thorough and _looks_whole(path):
      return None
    return decode_error(path)

  with futures.ThreadPoolExecutor(threads) as pool:
    reasons = list(pool.map(check, paths))
  return [(p, r) for p, r in zip(paths, reasons) if r is not None]


def _part(n: int, index: int, count: int) -> slice:
  """Contiguous, near-equal part `index` of `count` of n items."""
  return slice(index * n // count, (index + 1) * n // count)


@dataclasses.dataclass(frozen=True)
class FolderSource:
  """One split of an image folder, as read by this process."""
  split: str
  paths: tuple[str, ...]  # this process's part (or one data shard)
  labels: tuple[int, ...]
  total_examples: int  # in the whole split, over all processes
  class_names: tuple[str, ...]
  split_paths: tuple[str, ...]  # the whole split, over all processes
  split_labels: tuple[int, ...]

  @property
  def num_examples(self) -> int:
    return len(self.paths)

  @property
  def whole_split(self) -> str:
    return self.split

  def shard(self, index: int, count: int) -> "FolderSource":
    """Data shard `index` of `count`: a contiguous, near-equal part of the
    whole split, whichever process reads it."""
    part = _part(len(self.split_paths), index, count)
    return dataclasses.replace(self, paths=self.split_paths[part],
                               labels=self.split_labels[part])

  def read(self, shuffle_seed: int | None = None) -> tf.data.Dataset:
    """{"image": encoded file bytes [], "label": int64 []} examples."""
    ds = tf.data.Dataset.from_tensor_slices(
        (list(self.paths), np.asarray(self.labels, np.int64)))
    if shuffle_seed is not None:
      ds = ds.shuffle(len(self.paths), seed=shuffle_seed)
    return ds.map(lambda path, label: {"image": tf.io.read_file(path),
                                       "label": label},
                  num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def split_files(cfg: ml_collections.ConfigDict, split: str
                ) -> tuple[list[str], list[int], list[str]]:
  """(paths, labels, class names) of `split` (optionally sliced) of the
  folder cfg.data_dir, over all processes; files are not read.

  Raises:
    ValueError: for a bad folder, split or setting (one line, with the fix).
  """
  root = cfg.get("data_dir")
  if not root:
    raise ValueError("config.data.name='image_folder' needs "
                     "config.data.data_dir=<root> laid out as " + _LAYOUT)
  if not cfg.get("skip_decode"):
    raise ValueError("image_folder serves encoded files: set "
                     "config.data.skip_decode=True and start the preprocess "
                     "specs with decode or decode_jpeg_and_inception_crop")
  names = classes(root)
  if cfg.get("class_names") and tuple(cfg.class_names) != tuple(names):
    raise ValueError(f"classes in {root!r} ({len(names)}) differ from "
                     f"config.data.class_names ({len(cfg.class_names)}); the "
                     "folder changed since the config was made")
  if cfg.get("num_classes") != len(names):
    raise ValueError(f"{root!r} has {len(names)} classes but "
                     f"config.data.num_classes={cfg.get('num_classes')}")
  try:
    instructions = tfds.core.ReadInstruction.from_spec(split)
    name = getattr(instructions, "split_name", None)
    if name is None:
      raise ValueError("image folders take one split at a time")
    if name not in splits(root):
      raise ValueError(f"no split folder {name!r} (found: {splits(root)})")
    paths, labels = _examples(root, name, names)
    (absolute,) = instructions.to_absolute({name: tfds.core.SplitInfo(
        name=name, shard_lengths=[len(paths)], num_bytes=0)})
  except (AssertionError, KeyError, ValueError) as e:
    raise ValueError(f"bad split {split!r} for image folder {root!r}: "
                     f"{' '.join(str(e).split())}") from None
  part = slice(absolute.from_, absolute.to)
  paths, labels = paths[part], labels[part]
  if not paths:
    raise ValueError(f"split {split!r} of {root!r} is empty")
  return paths, labels, names


def refuse_or_skip(bad: dict[str, str], total: int, where: str,
                   skip_bad_files: bool, hint: str = "") -> None:
  """Refuses the unreadable files `bad` ({path: reason}) among the `total`
  files of `where` (e.g. "split 'train'"), or, with skip_bad_files, logs
  each and their count; nothing happens when `bad` is empty.

  Raises:
    errors.RunError: naming the first bad file (unless skip_bad_files), or
      when all `total` files are bad.
  """
  if not bad:
    return
  if not skip_bad_files:
    path, reason = next(iter(bad.items()))
    more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
    raise errors.RunError(
        f"unreadable image {path} ({reason}){more} in {where}; replace or "
        "remove it, or set config.data.skip_bad_files=True to leave "
        f"unreadable files out{hint}")
  for path, reason in bad.items():
    logging.warning("skipping unreadable image %s (%s)", path, reason)
  logging.warning("%s: skipped %d unreadable of %d files "
                  "(config.data.skip_bad_files)", where, len(bad), total)
  if len(bad) == total:
    raise errors.RunError(f"every file of {where} is unreadable")


def _drop_unreadable(cfg: ml_collections.ConfigDict, split: str,
                     paths: list[str], labels: list[int]
                     ) -> tuple[list[str], list[int]]:
  """The split without files that do not decode (`unreadable`, quick).

  Raises:
    errors.RunError: naming the first such file, unless
      config.data.skip_bad_files, which leaves them out and logs each.
  """
  bad = dict(unreadable(paths))
  refuse_or_skip(bad, len(paths), f"split {split!r}",
                 cfg.get("skip_bad_files", False),
                 " (--mode=check_data lists them all)")
  kept = [(p, y) for p, y in zip(paths, labels) if p not in bad]
  return [p for p, _ in kept], [y for _, y in kept]


def open_source(cfg: ml_collections.ConfigDict, split: str) -> FolderSource:
  """Opens `split` (optionally sliced) of the folder cfg.data_dir, its
  unreadable files refused or left out (see `_drop_unreadable`)."""
  paths, labels, names = split_files(cfg, split)
  paths, labels = _drop_unreadable(cfg, split, paths, labels)
  # Contiguous, near-equal parts per process (as tfds.split_for_jax_process).
  mine = _part(len(paths), jax.process_index(), jax.process_count())
  return FolderSource(split, tuple(paths[mine]), tuple(labels[mine]),
                      len(paths), tuple(names), tuple(paths), tuple(labels))
