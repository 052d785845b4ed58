"""A user's own TFDS dataset in a data_dir, selected from the config alone:
a generated JPEG dataset written with store_as_tfds_dataset, read encoded
and cropped by decode_jpeg_and_inception_crop (decode_and_crop_jpeg)."""
import json
import os
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from mrl_jax import sharding
from mrl_jax.data import pipeline
from mrl_jax.data import preprocess

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))
NAME = "mrl_test_jpegs"
CLASSES = ("ant", "bee", "cow", "dog")


@pytest.fixture(name="cfg", scope="module")
def fixture_cfg(tmp_path_factory):
  """ImageNet-like: JPEG photos of varying size, a 4-class ClassLabel."""
  data_dir = tmp_path_factory.mktemp("tfds")
  rng = np.random.default_rng(0)

  def split(n):
    for i in range(n):
      h, w = rng.integers(40, 80, 2)
      yield str(i), {"image": rng.integers(0, 256, (h, w, 3), np.uint8),
                     "label": int(rng.integers(0, len(CLASSES)))}

  tfds.dataset_builders.store_as_tfds_dataset(
      name=NAME, version="1.0.0", data_dir=str(data_dir),
      features=tfds.features.FeaturesDict({
          "image": tfds.features.Image(shape=(None, None, 3),
                                       encoding_format="jpeg"),
          "label": tfds.features.ClassLabel(names=CLASSES)}),
      split_datasets={"train": list(split(32)), "test": list(split(8))})
  return ml_collections.ConfigDict({
      "name": NAME, "data_dir": str(data_dir), "train_split": "train",
      "eval_split": "test", "num_classes": len(CLASSES), "skip_decode": True,
      "shuffle_buffer": 32,
      "train_preprocess": "decode_jpeg_and_inception_crop(24)|flip_lr|"
                          "normalize('imagenet')|keep('image', 'label')",
      "eval_preprocess": "decode|resize_small(28)|central_crop(24)|"
                         "normalize('imagenet')|keep('image', 'label')"})


def test_images_are_read_encoded_and_cropped(cfg):
  source = pipeline.open_source(cfg, "train")
  assert (source.num_examples, source.class_names) == (32, CLASSES)
  first = next(iter(source.read()))
  assert first["image"].dtype == tf.string
  assert bool(tf.io.is_jpeg(first["image"]))
  # The crop window is decoded from the JPEG: same pixels as cropping the
  # fully decoded image (up to JPEG's decoder rounding at block borders).
  spec = ("decode_jpeg_and_inception_crop(20, area_min=1.0, area_max=1.0, "
          "ratio_min=0.1, ratio_max=10.0)")
  full = preprocess.build(spec)(first, [0, 1])["image"]
  want = preprocess.build("decode|resize(20)")(first, [0, 1])["image"]
  np.testing.assert_allclose(full, want, atol=1e-3)
  mesh = sharding.make_mesh((("data", -1),))
  batch = next(pipeline.train_batches(cfg, source, 16, 0, 0,
                                      sharding.batch_sharding(mesh)))
  assert batch["image"].shape == (16, 24, 24, 3)
  assert batch["image"].sharding.spec == jax.sharding.PartitionSpec("data")
  assert np.isfinite(np.asarray(batch["image"])).all()


def test_data_dir_alone_finds_the_dataset(cfg):
  # A fresh process has no builder class for NAME: TFDS reads the prepared
  # files in data_dir, as it would for a user's dataset.
  script = (
      "import json, sys, ml_collections\n"
      "from mrl_jax.data import pipeline\n"
      "cfg = ml_collections.ConfigDict(json.loads(sys.argv[1]))\n"
      "s = pipeline.open_source(cfg, 'test')\n"
      "print(json.dumps([s.total_examples, s.class_names]))\n")
  proc = subprocess.run([sys.executable, "-c", script, cfg.to_json()],
                        cwd=REPO, capture_output=True, text=True, timeout=300,
                        check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  total, names = json.loads(proc.stdout.strip().splitlines()[-1])
  assert total == 8 and tuple(names) == CLASSES
