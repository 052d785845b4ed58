"""A user's image-caption pairs as a TFDS dataset: a folder of images and a
caption file.

Layout: root/captions.jsonl, one {"image": "<path relative to root>",
"caption": "<text>"} object per line, or root/captions.csv with a header
naming the columns image and caption. An optional "split" field / column
(train, validation or test, on every row) gives the splits; otherwise a hash
of the image path decides, so all captions of one image share a split. An
image may have several rows (one example each). Images are .jpg, .jpeg or
.png files anywhere under root, stored as given (decoded to [H, W, 3]).

`read_pairs` checks the whole folder before anything is written and raises
a one-line error naming the problem and the fix: no caption file or two,
a bad row (with its line number), an empty caption, a caption whose image is
missing, an image without a caption, no images. Images that do not decode
refuse the folder, or, with skip_bad_files, are left out, each logged, with
a count (as image_folder.py does).

`ImageTextFolder` (tfds name `image_text_folder`) is prepared per folder
content: `image_text.make_builder` names its config by a hash of the caption
file, the image files' sizes and times, and the options, so a changed folder
is prepared again. Labels are -1. See captioned_images.py for the features.
"""
import csv
import dataclasses
import hashlib
import json
import os
import pathlib

import tensorflow_datasets as tfds

from mrl_jax.data import captioned_images
from mrl_jax.data import image_folder

NAME = "image_text_folder"
CAPTION_FILES = ("captions.jsonl", "captions.csv")
_ROW = ('{"image": "<path relative to the folder>", "caption": "<text>"} '
        '(optional "split": train, validation or test)')


@dataclasses.dataclass(frozen=True)
class Row:
  """One row of the caption file."""
  line: int
  image: str  # relative to the folder, "/"-separated
  caption: str
  split: str | None


def caption_file(root: str | os.PathLike) -> pathlib.Path:
  """root/captions.jsonl or root/captions.csv.

  Raises:
    ValueError: the folder is missing, or it has neither or both files.
  """
  root = pathlib.Path(root)
  if not root.is_dir():
    raise ValueError(f"image-text folder {root} does not exist; point "
                     "config.data.image_text.folder at a folder of images "
                     "with captions.jsonl or captions.csv")
  found = [root / name for name in CAPTION_FILES if (root / name).is_file()]
  if len(found) != 1:
    what = "both" if found else "neither"
    raise ValueError(f"image-text folder {root} has {what} of "
                     f"{' and '.join(CAPTION_FILES)}; keep exactly one, one "
                     f"pair per row: {_ROW}")
  return found[0]


def _row(path: pathlib.Path, line: int, fields) -> Row:
  """Checks one row's fields; ValueError names the file, line and fix."""
  where = f"{path} line {line}"
  if not isinstance(fields, dict):
    raise ValueError(f"{where} is not an object; write one per line: {_ROW}")
  for key in ("image", "caption"):
    if not isinstance(fields.get(key), str):
      raise ValueError(f"{where} has no string {key!r} field; write {_ROW}")
  image = fields["image"].strip()
  parts = pathlib.PurePosixPath(image).parts
  if not image or image.startswith("/") or ".." in parts:
    raise ValueError(f"{where}: image {image!r} is not a path inside the "
                     "folder; give it relative to the folder, without '..'")
  if not fields["caption"].strip():
    raise ValueError(f"{where}: the caption of {image} is empty; write a "
                     "caption or remove the line")
  split = fields.get("split") or None
  if split is not None and split not in captioned_images.SPLITS:
    raise ValueError(f"{where}: split {split!r} is not one of "
                     f"{', '.join(captioned_images.SPLITS)}")
  return Row(line, image, " ".join(fields["caption"].split()), split)


def read_rows(path: pathlib.Path) -> list[Row]:
  """The rows of a captions.jsonl / captions.csv file (blank lines
  skipped).

  Raises:
    ValueError: a bad row, naming its line; no rows; splits given on some
      rows only, or an image given two splits.
  """
  rows = []
  with open(path, encoding="utf-8", newline="") as f:
    if path.suffix == ".csv":
      reader = csv.DictReader(f)
      missing = {"image", "caption"} - set(reader.fieldnames or ())
      if missing:
        raise ValueError(f"{path} line 1: the header lacks the column(s) "
                         f"{', '.join(sorted(missing))}; start the file with "
                         "image,caption")
      for fields in reader:
        if None in fields:  # more cells than the header has columns
          raise ValueError(f"{path} line {reader.line_num} has more cells "
                           "than the header; quote captions with commas")
        if any(fields.values()):
          rows.append(_row(path, reader.line_num, fields))
    else:
      for line, text in enumerate(f, 1):
        if not text.strip():
          continue
        try:
          fields = json.loads(text)
        except json.JSONDecodeError as e:
          raise ValueError(f"{path} line {line} is not JSON ({e.msg}); write "
                           f"one object per line: {_ROW}") from None
        rows.append(_row(path, line, fields))
  if not rows:
    raise ValueError(f"{path} has no rows; add one per pair: {_ROW}")
  given = {row.split is not None for row in rows}
  if len(given) > 1:
    row = next(r for r in rows if r.split is None)
    raise ValueError(f"{path} line {row.line} has no split but other rows "
                     "do; give a split on every row or on none")
  splits = {}
  for row in rows:
    if splits.setdefault(row.image, row.split) != row.split:
      raise ValueError(f"{path} line {row.line}: image {row.image} is also "
                       f"in split {splits[row.image]!r}; give all of an "
                       "image's rows one split")
  return rows


def image_files(root: str | os.PathLike) -> list[str]:
  """Relative paths of the images under `root`, sorted."""
  root = pathlib.Path(root)
  return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                if p.suffix.lower() in image_folder.EXTENSIONS
                and p.is_file())


def _check_matching(root: pathlib.Path, path: pathlib.Path, rows: list[Row],
                    images: list[str]) -> None:
  """Raises ValueError for a caption without its image, an image without
  a caption, or no images at all."""
  if not images:
    raise ValueError(f"image-text folder {root} has no "
                     f"{'/'.join(image_folder.EXTENSIONS)} files; add the "
                     f"images that {path.name} names")
  present = set(images)
  kinds = "/".join(image_folder.EXTENSIONS)
  for row in rows:
    if row.image not in present:
      raise ValueError(f"{path} line {row.line}: image {row.image} is not "
                       f"in {root} (or is not {kinds}); add the file or "
                       "remove the line")
  captioned = {row.image for row in rows}
  orphans = [image for image in images if image not in captioned]
  if orphans:
    more = f" and {len(orphans) - 1} more" if len(orphans) > 1 else ""
    raise ValueError(f"image {orphans[0]}{more} in {root} has no caption in "
                     f"{path.name}; add a row for each image or move it out "
                     "of the folder")


def _drop_unreadable(root: pathlib.Path, rows: list[Row],
                     skip_bad_files: bool) -> list[Row]:
  """The rows whose images decode; see the module docstring.

  Raises:
    errors.RunError: naming the first image that does not decode (unless
      skip_bad_files), or every image does not.
  """
  images = sorted({row.image for row in rows})
  bad = dict(image_folder.unreadable([str(root / i) for i in images],
                                     thorough=True))
  image_folder.refuse_or_skip(bad, len(images), f"image-text folder {root}",
                              skip_bad_files)
  return [row for row in rows if str(root / row.image) not in bad]


def read_rows_checked(root: str | os.PathLike,
                      skip_bad_files: bool = False) -> list[Row]:
  """The folder's caption rows after every check of the module docstring
  (images decoded); nothing is written.

  Raises:
    ValueError: a bad folder or caption file (one line, with the fix).
    errors.RunError: an image does not decode (see `_drop_unreadable`).
  """
  root = pathlib.Path(root)
  path = caption_file(root)
  rows = read_rows(path)
  _check_matching(root, path, rows, image_files(root))
  return _drop_unreadable(root, rows, skip_bad_files)


def fingerprint(root: str | os.PathLike) -> str:
  """A hash of the caption file and of each image's path, size and time."""
  root = pathlib.Path(root)
  digest = hashlib.sha256(caption_file(root).read_bytes())
  for image in image_files(root):
    stat = (root / image).stat()
    digest.update(f"{image}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
  return digest.hexdigest()


@dataclasses.dataclass(eq=False)
class ImageTextFolderConfig(captioned_images.CaptionedImagesConfig):
  """Attributes (besides the tokenizer's and split's):
    skip_bad_files: leave images that do not decode out (logged) instead of
      refusing the folder.
  """
  skip_bad_files: bool = False


class ImageTextFolder(captioned_images.CaptionedImages):
  """A user's folder of images with captions.jsonl or captions.csv."""

  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = [ImageTextFolderConfig(name="default")]

  def __init__(self, *, folder: str | os.PathLike | None = None, **kwargs):
    self._folder = folder
    self._rows = None
    super().__init__(**kwargs)

  @property
  def folder(self) -> pathlib.Path | None:
    return None if self._folder is None else pathlib.Path(self._folder)

  def use_rows(self, rows: list[Row]) -> None:
    """Prepares from `rows`, already checked by `read_rows_checked`, so
    that the images are not decoded again."""
    self._rows = rows

  def _image_feature(self) -> tfds.features.Image:
    return tfds.features.Image(shape=(None, None, 3))

  def _pairs(self) -> list[captioned_images.Pair]:
    if self._folder is None:
      raise ValueError("image_text_folder needs folder=<root> (images with "
                       "captions.jsonl or captions.csv)")
    root = pathlib.Path(self._folder)
    rows = self._rows or read_rows_checked(
        root, self.builder_config.skip_bad_files)
    # The file's bytes as given (decoded with 3 channels when read).
    return [captioned_images.Pair(
                key=f"{row.line:08d}", id=row.image,
                image=os.fspath(root / row.image), caption=row.caption,
                label=captioned_images.NO_LABEL,
                split_key=row.image, split=row.split) for row in rows]
