"""Test-wide setup, done before jax is imported (subprocesses inherit it).

Two layers: unit tests (this folder and its package-shaped subfolders:
in-process, tiny models) and tests/integration/ (the launcher and CLIs as
subprocesses, several processes, AOT compiles, notebooks, torch parity,
benchmark scripts). Every integration test is marked `slow`, so
`pytest -m "not slow"` runs the unit layer.

* 8 fake CPU devices, so sharded code paths run for real.
* Most XLA optimisations off: tests run tiny models for a few steps, where
  compile time dominates (the flax examples' tests do the same).
"""
import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import shutil
import tempfile

import numpy as np
from PIL import Image
import pytest  # does not import jax

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
# Tests run on (fake) CPU devices. With libtpu installed (the test extra, for
# --mode=aot) JAX would otherwise probe for a TPU in every process (~1 s and
# error lines); the aot tests get their compile-only TPU devices from
# libtpu's topology API, which does not need the TPU backend.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# tf.data must not grab the (fake) accelerators.
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
# One persistent XLA compilation cache for every process of a test run (the
# pytest workers and the launchers and multi-process runs they start): the
# same smoke programs compile in dozens of processes. Entries are keyed by
# program, compile options, flags and jax version, so none is reused for
# anything else; the size bound turns on JAX's LRU eviction and file lock.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    tempfile.gettempdir(), f"mrl_jax-tests-xla-cache-{os.getuid()}"))
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(2 << 30))

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "configs"
INTEGRATION_DIR = pathlib.Path(__file__).resolve().parent / "integration"


def pytest_collection_modifyitems(items):
  for item in items:
    if INTEGRATION_DIR in item.path.parents:
      item.add_marker(pytest.mark.slow)


def run_offline_mode(config: str, workdir: str, mode: str, **export):
  """Runs launcher mode `mode` in-process through the modes table, as the
  launcher does after parsing its flags; returns (result, printed text).

  config: "path/to/config.py:arg"; export: config.export fields to
  override (e.g. logits_splits).
  """
  from mrl_jax import config_lib  # pylint: disable=import-outside-toplevel
  from mrl_jax import modes  # pylint: disable=import-outside-toplevel
  loaded = config_lib.load_config(config)
  loaded.export.update(export)
  entry = modes.MODES[mode]
  result = modes.resolve(entry.runner)(loaded, workdir)
  return result, modes.resolve(entry.printer)(result)


@pytest.fixture(name="copy_of")
def fixture_copy_of(tmp_path):
  """copy(workdir) -> a copy of a module's reference workdir for one test to
  change."""
  def copy(workdir):
    dst = str(tmp_path / "workdir")
    shutil.copytree(workdir, dst)
    return dst
  return copy


# Configs whose `root=<dir>` argument is required (a user's folder).
FOLDER_CONFIGS = ("image_folder", "text_folder", "image_text_folder")


@pytest.fixture(name="config_module", scope="session")
def fixture_config_module():
  """Returns load(name) -> the module configs/<name>.py (not a package)."""
  return lambda name: load_script(f"configs/{name}.py")


def load_script(path: str):
  """Imports a repository file that is not in a package (configs/*.py,
  experiments/*/report.py) as a module; `path` is relative to the repo."""
  name = path.removesuffix(".py").replace("/", "_")
  spec = importlib.util.spec_from_file_location(name, REPO / path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def write_summary(workdir_root: pathlib.Path, name: str, kind: str,
                  summary: dict) -> None:
  """workdir_root/name/<kind>_summary.json, as a run's mode writes it."""
  (workdir_root / name).mkdir(parents=True, exist_ok=True)
  (workdir_root / name / f"{kind}_summary.json").write_text(
      json.dumps(summary))


def write_image_tree(root: pathlib.Path, splits: dict[str, int],
                     classes=("cat", "dog", "fish"), size=(40, 48),
                     gray: bool = False) -> pathlib.Path:
  """root/<split>/<class>/<i>.jpg|png with random pixels; returns root.

  splits: split name -> images per class; even files are JPEG, odd PNG.
  """
  from PIL import Image  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  shape = size if gray else (*size, 3)
  for split, count in splits.items():
    for name in classes:
      folder = root / split / name
      folder.mkdir(parents=True)
      for i in range(count):
        pixels = rng.integers(0, 256, shape, dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.{'png' if i % 2 else 'jpg'}")
  return root


@pytest.fixture(name="image_tree", scope="session")
def fixture_image_tree(tmp_path_factory):
  """A tiny RGB image folder: train 3 classes x 8, val 3 classes x 3."""
  return write_image_tree(tmp_path_factory.mktemp("images"),
                          {"train": 8, "val": 3})


BAD_FILES = ("cut.png", "cut.jpg", "noise.jpg")


def copy_with_bad_files(tree, tmp_path):
  """A copy of the tree whose train/cat holds a PNG and a JPEG cut in half
  and a file of random bytes (BAD_FILES); returns the copy's root."""
  import shutil  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  root = tmp_path / "images"
  shutil.copytree(tree, root)
  cat = root / "train" / "cat"
  for bad, good in (("cut.png", "1.png"), ("cut.jpg", "0.jpg")):
    data = (cat / good).read_bytes()
    (cat / bad).write_bytes(data[:len(data) // 2])
  (cat / "noise.jpg").write_bytes(
      np.random.default_rng(0).integers(0, 256, 3000, np.uint8).tobytes())
  return root


_WORDS = ("a red blue green small large dog cat bird house tree car on "
          "the").split()


def _write_image(path: pathlib.Path, seed: int, size=(20, 16),
                 mode="RGB") -> None:
  rng = np.random.default_rng(seed)
  path.parent.mkdir(parents=True, exist_ok=True)
  pixels = rng.integers(0, 256, (size[1], size[0], 3), np.uint8)
  Image.fromarray(pixels).convert(mode).save(path)


def _caption(i: int) -> str:
  rng = np.random.default_rng(i)
  return " ".join(rng.choice(_WORDS, 5))


def write_image_text_folder(root: pathlib.Path, count: int = 24,
                 rows: list[dict] | None = None) -> list[dict]:
  """`count` images (PNG and JPEG, some in a subfolder, one grayscale) and
  captions.jsonl with one row each, two for image 0; returns the rows."""
  for i in range(count):
    name = f"sub/img_{i:02d}.jpg" if i % 3 == 0 else f"img_{i:02d}.png"
    _write_image(root / name, i, mode="L" if i == 1 else "RGB")
  if rows is None:
    rows = [{"image": f"sub/img_{i:02d}.jpg" if i % 3 == 0
             else f"img_{i:02d}.png", "caption": _caption(i)}
            for i in range(count)]
    rows.append({"image": "sub/img_00.jpg", "caption": "a second caption"})
  (root / "captions.jsonl").write_text(
      "".join(json.dumps(r) + "\n" for r in rows))
  return rows


def setup_error(config) -> str:
  """The one-line ValueError `train.setup(config)` raises (asserted one
  line)."""
  from mrl_jax import train  # pylint: disable=import-outside-toplevel
  with pytest.raises(ValueError) as e:
    train.setup(config)
  assert "\n" not in str(e.value)
  return str(e.value)


def launch_ok(config_spec: str, workdir: str, *flags: str,
              timeout: int = 900) -> subprocess.CompletedProcess:
  """`python -m mrl_jax.main --config=config_spec --workdir=workdir flags`
  from the repository root; asserts it succeeded (its stderr tail if
  not)."""
  repo = pathlib.Path(__file__).resolve().parents[1]
  proc = subprocess.run(
      [sys.executable, "-m", "mrl_jax.main", f"--config={config_spec}",
       f"--workdir={workdir}", *flags], cwd=repo, capture_output=True,
      text=True, timeout=timeout)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


def _tiny_captions_builder():
  """The class of a TFDS dataset shaped like `coco_captions` (image,
  image/id, captions/{text, id} sequences) plus a ClassLabel `category`,
  defined on first use (TFDS registers builder classes by name)."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  class MrlTestCaptions(tfds.core.GeneratorBasedBuilder):
    """Random JPEG images with word captions; train 64, val 16 (less the
    train example without captions)."""
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self, features=tfds.features.FeaturesDict({
              "image": tfds.features.Image(encoding_format="jpeg"),
              "image/id": np.int64,
              "category": tfds.features.ClassLabel(names=["cat", "dog",
                                                          "bird"]),
              "captions": tfds.features.Sequence({"text": np.str_,
                                                  "id": np.int64}),
          }))

    def _split_generators(self, dl_manager):
      del dl_manager
      return {"train": self._generate_examples(0, 64),
              "val": self._generate_examples(100, 16)}

    def _generate_examples(self, start, count):
      for i in range(start, start + count):
        rng = np.random.default_rng(i)
        size = (int(rng.integers(36, 48)), int(rng.integers(36, 48)), 3)
        texts = [_caption(i), _caption(i + 1000)]
        if i == 3:
          texts = []  # no caption: skipped
        elif i == 4:
          texts = ["  ", "the first real caption"]
        yield i, {"image": rng.integers(0, 256, size, np.uint8),
                  "image/id": 10_000 + i, "category": i % 3,
                  "captions": {"text": texts, "id": list(range(len(texts)))}}
  return MrlTestCaptions


TINY_CAPTIONS = "mrl_test_captions"
_TINY_CAPTIONS_CLASS = []


def write_tiny_captions(data_dir: pathlib.Path) -> pathlib.Path:
  """Prepares TINY_CAPTIONS (a coco_captions look-alike) in data_dir, as
  `tfds build` would; returns data_dir."""
  if not _TINY_CAPTIONS_CLASS:
    _TINY_CAPTIONS_CLASS.append(_tiny_captions_builder())
  _TINY_CAPTIONS_CLASS[0](data_dir=str(data_dir)).download_and_prepare()
  return data_dir


def check_batches_resume_and_split(cfg, source, batch: int) -> None:
  """Asserts, for 2 data shards, that pipeline.process_batches resumed a
  batch before an epoch's end continues the uninterrupted stream exactly,
  and that the 2 processes' batches concatenate to the 1-process batch, so
  image i stays with caption i."""
  from mrl_jax.data import pipeline  # pylint: disable=import-outside-toplevel

  def batches(start, process, processes, n):
    stream = pipeline.process_batches(cfg, source, batch, 7, start, process,
                                      processes)
    return [next(stream) for _ in range(n)]

  per_epoch = pipeline.steps_per_epoch(source, batch, 2)
  whole = batches(0, 0, 1, per_epoch + 2)
  resumed = batches(per_epoch - 1, 0, 1, 3)
  halves = zip(batches(0, 0, 2, per_epoch + 2),
               batches(0, 1, 2, per_epoch + 2))
  for a, b in zip(whole[per_epoch - 1:], resumed):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  for a, (first, second) in zip(whole, halves):
    for key in a:
      np.testing.assert_array_equal(
          a[key], np.concatenate([first[key], second[key]]))
