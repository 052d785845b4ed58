"""Open Clip Art drawings with their human-written captions, offline.

Debian's `openclipart-svg` puts 7458 public-domain SVG drawings under
/usr/share/openclipart/svg/<category>/.../*.svg (plus 663 symbolic links
filing some drawings under a second category, which are not read). Each
file carries Dublin Core metadata in its <metadata><rdf:RDF><cc:Work>:
dc:title, dc:description and dc:subject/rdf:Bag/rdf:li keywords.

`Openclipart` (tfds name `openclipart`) prepares, fully offline:
* images: each drawing rasterised by `rsvg-convert` (Debian `librsvg2-bin`)
  to fit `image_size` pixels, aspect ratio kept, centred on white, RGB;
  several rsvg-convert processes run at once (`processes`). Files that do
  not parse or render, and renders that come out blank, are skipped, each
  logged with its reason, and counted;
* caption:
    "{title}. keywords: {k1}, {k2}, .... {description}"
  title without a "Clipart by <author> - " prefix and with "_" as spaces;
  keywords cleaned (no empty, "unsorted", "hash(...)" or numeric ones, none
  equal to the title, no repeats); the description only when it has at
  least 3 words and differs from the title; missing parts are left out;
* label: the top-level folder, one of CATEGORIES (22);
* split by the normalised title (`title_key`: lower case, letters only), so
  one caption never appears in two splits; at most `max_per_title` drawings
  per normalised title (chosen by a hash of their paths), since some series
  share one caption (1375 "gramastar" stars, 226 playing cards "card") and
  would flood contrastive batches with identical captions;
* `computer/icons` is left out: its 1691 icons are captioned by their icon
  theme ("Part of the Flat Icon Collection (...)"), not by what they show.
See captioned_images.py for the features, tokenizer and splits.
"""
from collections.abc import Iterable, Sequence
import collections
from concurrent import futures
import dataclasses
import hashlib
import io
import os
import pathlib
import re
import shutil
import subprocess
import time
import xml.etree.ElementTree as ET

from absl import logging
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from mrl_jax.data import captioned_images
from mrl_jax.errors import RunError

NAME = "openclipart"
SVG_DIR = pathlib.Path("/usr/share/openclipart/svg")
CATEGORIES = (
    "animals", "buildings", "buttons", "computer", "containers",
    "decorations", "education", "electronics", "food", "geography", "logos",
    "office", "people", "plants", "recreation", "science", "shapes",
    "signs_and_symbols", "special", "tools", "transportation", "unsorted")
EXCLUDED = ("computer/icons",)
RENDER_TIMEOUT_S = 60
_DC = "{http://purl.org/dc/elements/1.1/}"
_RDF = "{http://www.w3.org/1999/02/22-rdf-syntax-ns#}"
_CC = "{http://web.resource.org/cc/}"
_DROPPED_KEYWORDS = ("", "unsorted")


@dataclasses.dataclass(frozen=True)
class Drawing:
  """One SVG file's metadata; `path` is relative to the SVG folder."""
  path: str
  category: str
  title: str
  keywords: tuple[str, ...]
  description: str


def read_metadata(svg: bytes) -> tuple[str, tuple[str, ...], str]:
  """(title, keywords, description) of the first cc:Work in an SVG file;
  empty where absent.

  Raises:
    ET.ParseError: the file is not well-formed XML.
  """
  root = ET.fromstring(svg)
  work = next(root.iter(_CC + "Work"), None)
  if work is None:
    return "", (), ""

  def text(tag: str) -> str:
    element = work.find(_DC + tag)
    return " ".join((element.text or "").split()) if element is not None else ""

  subject = work.find(_DC + "subject")
  keywords = () if subject is None else tuple(
      " ".join((li.text or "").split()) for li in subject.iter(_RDF + "li"))
  return text("title"), keywords, text("description")


def clean_title(title: str) -> str:
  """"Clipart by Nicu Buculei - baloon1_04" -> "baloon1 04"."""
  title = re.sub(r"^clipart by .*? - ", "", title, flags=re.IGNORECASE)
  return " ".join(title.replace("_", " ").split())


def title_key(title: str) -> str:
  """The split key: the clean title in lower case, letters only, so that
  "Arrow 3" and "arrow_07" share one."""
  return " ".join(re.sub(r"[^a-z]+", " ", clean_title(title).lower()).split())


def split_key(drawing: Drawing) -> str:
  """What decides the split: the title's key, or for a title without
  letters the caption; equal captions always share it."""
  return title_key(drawing.title) or caption(drawing)


def clean_keywords(keywords: Iterable[str], title: str) -> list[str]:
  """Keywords worth reading, "_" as spaces, in order, without repeats."""
  seen, out = {title.lower()}, []
  for keyword in keywords:
    keyword = " ".join(keyword.replace("_", " ").split())
    low = keyword.lower()
    if (low in _DROPPED_KEYWORDS or low.startswith("hash") or low.isdigit()
        or low in seen):
      continue
    seen.add(low)
    out.append(keyword)
  return out


def caption(drawing: Drawing) -> str:
  """The caption of `drawing` (the module docstring's template)."""
  title = clean_title(drawing.title)
  keywords = clean_keywords(drawing.keywords, title)
  parts = [title] if title else []
  if keywords:
    parts.append("keywords: " + ", ".join(keywords))
  description = drawing.description
  if len(description.split()) >= 3 and description.lower() != title.lower():
    parts.append(description.rstrip("."))
  return ". ".join(parts)


def _log_skipped(what: str, skipped: dict[str, str], total: int) -> None:
  """Each skipped file at INFO (in the log file), the count as a WARNING."""
  for path, reason in skipped.items():
    logging.info("openclipart: skipping %s (%s)", path, reason)
  if skipped:
    logging.warning("openclipart: skipped %d of %d %s (each file is named "
                    "in the INFO log)", len(skipped), total, what)


def read_drawings(svg_dir: str | os.PathLike,
                  excluded: Sequence[str] = EXCLUDED) -> list[Drawing]:
  """The drawings under `svg_dir`, sorted by path.

  Links, files under `excluded` folders and files outside CATEGORIES are
  not read (counted in the log); files whose XML does not parse are skipped,
  each logged.
  """
  root = pathlib.Path(svg_dir)
  paths = sorted(root.rglob("*.svg"))
  drawings, skipped, left_out = [], {}, collections.Counter()
  for path in paths:
    if path.is_symlink():
      left_out["links"] += 1
      continue
    rel = path.relative_to(root).as_posix()
    category = rel.split("/")[0] if "/" in rel else ""
    if any(rel.startswith(folder + "/") for folder in excluded):
      left_out["excluded folders"] += 1
      continue
    if category not in CATEGORIES:
      skipped[rel] = (f"not in a category folder ({', '.join(CATEGORIES)})")
      continue
    try:
      title, keywords, description = read_metadata(path.read_bytes())
    except ET.ParseError as e:
      skipped[rel] = f"not well-formed XML: {e}"
      continue
    drawings.append(Drawing(rel, category, title, keywords, description))
  logging.info("openclipart: %d drawings in %s; left out: %s", len(drawings),
               root, dict(left_out))
  _log_skipped("SVG files", skipped, len(paths) - sum(left_out.values()))
  return drawings


def with_captions(drawings: Sequence[Drawing]) -> list[Drawing]:
  """The drawings with a non-empty caption (the others logged)."""
  kept = [d for d in drawings if caption(d)]
  for d in drawings:
    if not caption(d):
      logging.warning("openclipart: skipping %s (no title, keywords or "
                      "description)", d.path)
  if len(kept) < len(drawings):
    logging.warning("openclipart: skipped %d of %d drawings without a "
                    "caption", len(drawings) - len(kept), len(drawings))
  return kept


def at_most_per_title(drawings: Sequence[Drawing], limit: int | None
                      ) -> list[Drawing]:
  """At most `limit` drawings per `title_key` (those first by a hash of
  their path), in input order; None keeps all."""
  if limit is None:
    return list(drawings)
  by_hash = sorted(drawings,
                   key=lambda d: hashlib.sha256(d.path.encode()).digest())
  counts, kept = collections.Counter(), set()
  for d in by_hash:
    key = split_key(d)
    counts[key] += 1
    if counts[key] <= limit:
      kept.add(d.path)
  logging.info("openclipart: kept %d of %d drawings (at most %d per "
               "normalised title)", len(kept), len(drawings), limit)
  return [d for d in drawings if d.path in kept]


def check_renderer() -> None:
  """Raises RunError if rsvg-convert is not installed."""
  if shutil.which("rsvg-convert") is None:
    raise RunError("rsvg-convert is not installed; install the Debian "
                   "package librsvg2-bin (scripts/setup.sh does)")


def render(path: str | os.PathLike, size: int) -> np.ndarray:
  """One SVG file as uint8 [size, size, 3]: fit into the square with its
  aspect ratio, centred on white.

  Raises:
    ValueError: rsvg-convert failed or timed out, or the result is blank.
  """
  try:
    done = subprocess.run(
        ["rsvg-convert", "--keep-aspect-ratio", f"--width={size}",
         f"--height={size}", "--background-color=white", "--format=png",
         os.fspath(path)], capture_output=True, timeout=RENDER_TIMEOUT_S,
        check=False)
  except subprocess.TimeoutExpired:
    raise ValueError(f"rsvg-convert took over {RENDER_TIMEOUT_S} s") from None
  if done.returncode:
    message = " ".join(done.stderr.decode(errors="replace").split())
    raise ValueError(f"rsvg-convert failed: {message[:200]}")
  with Image.open(io.BytesIO(done.stdout)) as drawn:
    drawn = drawn.convert("RGB")
    canvas = Image.new("RGB", (size, size), "white")
    canvas.paste(drawn, ((size - drawn.width) // 2,
                         (size - drawn.height) // 2))
  image = np.asarray(canvas)
  if image.min() == 255:
    raise ValueError("renders blank (nothing drawn)")
  return image


def render_all(svg_dir: str | os.PathLike, paths: Sequence[str], size: int,
               processes: int) -> list[np.ndarray | None]:
  """`render` of each of `paths` (relative to svg_dir), `processes`
  rsvg-convert processes at a time; None where it failed (each logged)."""
  def one(rel: str) -> np.ndarray | str:
    try:
      return render(os.path.join(svg_dir, rel), size)
    except (ValueError, OSError) as e:  # OSError: PIL cannot read the PNG
      return str(e)

  start = time.perf_counter()
  # Threads suffice: the work happens in the rsvg-convert subprocesses.
  with futures.ThreadPoolExecutor(processes) as pool:
    results = list(pool.map(one, paths))
  skipped = {p: r for p, r in zip(paths, results) if isinstance(r, str)}
  logging.info("openclipart: rendered %d SVGs at %dx%d in %.1f s with %d "
               "processes", len(paths) - len(skipped), size, size,
               time.perf_counter() - start, processes)
  _log_skipped("drawings that did not render", skipped, len(paths))
  return [None if isinstance(r, str) else r for r in results]


@dataclasses.dataclass(eq=False)
class OpenclipartConfig(captioned_images.CaptionedImagesConfig):
  """Attributes (besides the tokenizer's and split's):
    image_size: S, images are uint8 [S, S, 3].
    max_per_title: drawings kept per normalised title (None: all).
  """
  image_size: int = 64
  max_per_title: int | None = 20


class Openclipart(captioned_images.CaptionedImages):
  """Open Clip Art drawings (Debian openclipart-svg) with their title,
  keywords and description as captions, labelled by their 22 top-level
  categories."""

  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = [OpenclipartConfig(name="rgb64", image_size=64)]

  def __init__(self, *, svg_dir: str | os.PathLike | None = None,
               processes: int = 2, **kwargs):
    """svg_dir: the drawings (default SVG_DIR); processes: rsvg-convert
    processes run at once."""
    self._svg_dir = pathlib.Path(svg_dir or SVG_DIR)
    self._processes = processes
    super().__init__(**kwargs)

  @property
  def svg_dir(self) -> pathlib.Path:
    return self._svg_dir

  def _image_feature(self) -> tfds.features.Image:
    size = self.builder_config.image_size
    return tfds.features.Image(shape=(size, size, 3), encoding_format="png")

  def _label_feature(self) -> tfds.features.ClassLabel:
    return tfds.features.ClassLabel(names=list(CATEGORIES))

  def _pairs(self) -> list[captioned_images.Pair]:
    check_sources(self._svg_dir)
    config = self.builder_config
    drawings = with_captions(read_drawings(self._svg_dir))
    drawings = at_most_per_title(drawings, config.max_per_title)
    images = render_all(self._svg_dir, [d.path for d in drawings],
                        config.image_size, self._processes)
    return [captioned_images.Pair(
                key=d.path, id=d.path, image=image, caption=caption(d),
                label=CATEGORIES.index(d.category),
                split_key=split_key(d))
            for d, image in zip(drawings, images) if image is not None]


def check_sources(svg_dir: str | os.PathLike) -> None:
  """Raises RunError if the SVG folder or rsvg-convert is missing."""
  if not pathlib.Path(svg_dir).is_dir():
    raise RunError(f"{svg_dir} is missing; install the Debian package "
                   "openclipart-svg (scripts/setup.sh does)")
  check_renderer()
