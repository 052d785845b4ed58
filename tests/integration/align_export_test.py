"""Two towers end to end: the launcher trains on openclipart
(configs/align_openclipart.py:smoke; the Debian packages scripts/setup.sh
installs) and reports every dim, --mode=eval reproduces it; --mode=export
writes the image tower's embeddings with their categories (the paper's
image-tower 1-NN per dim through knn / probe / baselines), and
--mode=export_encoder the two-tower bundle, equal to the model and
retrieving as the trainer's evaluation.

One smoke run (6 steps of tiny towers) is shared by the tests; each test
that changes a workdir copies it first (conftest's copy_of).
"""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from conftest import launch_ok
from conftest import run_offline_mode
import mrl_jax
from mrl_jax import config_lib
from mrl_jax import modes
from mrl_jax import train
from mrl_jax.data import image_text
from mrl_jax.data import openclipart
from mrl_jax.data import preprocess
from mrl_jax.evaluators import cross_modal
from mrl_jax.export import embedding_files
from mrl_jax.export import encoder as encoder_lib
from mrl_jax.tasks import workdir_tokenizer

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
CONFIG = os.path.join(REPO, "configs", "align_openclipart.py")
SMOKE = f"{CONFIG}:smoke"
DIMS = (8, 16, 32)

pytestmark = pytest.mark.skipif(
    not openclipart.SVG_DIR.is_dir() or shutil.which("rsvg-convert") is None,
    reason="needs openclipart-svg and librsvg2-bin (scripts/setup.sh)")


@pytest.fixture(scope="module", name="trained")
def fixture_trained(tmp_path_factory):
  """The smoke run through the launcher: (workdir, stdout, stderr)."""
  workdir = str(tmp_path_factory.mktemp("align_export"))
  proc = launch_ok(SMOKE, workdir, timeout=900)
  return workdir, proc.stdout, proc.stderr


@pytest.fixture(scope="module", name="reference")
def fixture_reference(trained):
  """The smoke run, exported (float32, both towers) and bundled by the
  launcher."""
  workdir = trained[0]
  proc = launch_ok(SMOKE, workdir, "--mode=export",
                   "--config.export.dtype=float32",
                   "--config.export.text_embeddings=True", timeout=300)
  assert f"validation[:128]: {split_dirs(workdir)[1]}" in proc.stdout
  proc = launch_ok(SMOKE, workdir, "--mode=export_encoder", timeout=300)
  assert f"encoder bundle: {workdir}/encoder" in proc.stdout
  return workdir


def test_launcher_trains_and_reports_every_dim(trained):
  workdir, stdout, stderr = trained
  with open(os.path.join(workdir, "eval_summary.json")) as f:
    summary = json.load(f)
  assert summary["task"] == "contrastive" and summary["step"] == 6
  assert summary["nesting"] == [8, 16, 32]
  for name in ("i2t/recall@1", "t2i/recall@5", "zero_shot/top1",
               "cosine/span"):
    assert set(summary[name]) == {"8", "16", "32"}, name
    assert all(-1 <= v <= 1 for v in summary[name].values()), name
  assert "zero_shot/top1" in stdout and "Traceback" not in stderr
  # Zero-shot on Fashion-MNIST's class names too (an image-only extra set).
  fmnist = summary["extra_eval"]["fashion_mnist"]
  assert fmnist["num_examples"] == 256
  assert set(fmnist["zero_shot/top1"]) == {"8", "16", "32"}
  assert "zero-shot top-1 on fashion_mnist (256 images)" in stdout
  assert os.path.exists(os.path.join(workdir, workdir_tokenizer.FILE))


def test_eval_mode_reproduces_the_trainers_numbers(reference, tmp_path):
  workdir = str(tmp_path / "workdir")
  shutil.copytree(reference, workdir)
  entry = modes.MODES["eval"]
  summary = modes.resolve(entry.runner)(config_lib.load_config(SMOKE),
                                        workdir)
  with open(os.path.join(reference, "eval_summary.json")) as f:
    assert summary == json.load(f)


def split_dirs(workdir):
  root = os.path.join(workdir, "embeddings", "openclipart")
  return os.path.join(root, "train_512"), os.path.join(root, "validation_128")


def eval_pairs(count=None, spec=None):
  """The eval split as the trainer's evaluation feeds it: (images [N, 32,
  32, 3] preprocessed, raw captions, their input_ids and input_mask,
  labels); spec: another preprocess spec for the images."""
  config = config_lib.load_config(SMOKE)
  builder = image_text.open_image_text(config.data)
  prepare = preprocess.build(spec or config.data.eval_preprocess)
  rows = list(builder.as_dataset(split=config.data.eval_split)
              .take(count or -1).as_numpy_iterator())
  ready = [jax_free(prepare(
      {k: tf.constant(v) for k, v in row.items()},
      seed=tf.constant([0, 0], tf.int64))) for row in rows]
  stack = lambda key: np.stack([r[key] for r in ready])
  return (stack("image"), [r["caption"].decode() for r in rows],
          stack("input_ids"), stack("input_mask"), stack("label"))


def jax_free(example):
  return {k: v.numpy() for k, v in example.items()}


def recall_at_1(images, texts):
  flat = cross_modal.recall(images, texts, np.arange(len(texts)), DIMS,
                            ks=(1,))
  return {name: {str(d): flat[f"{name}/d={d}"] for d in DIMS}
          for name in ("i2t/recall@1", "t2i/recall@1")}


def eval_summary(workdir):
  with open(os.path.join(workdir, "eval_summary.json")) as f:
    summary = json.load(f)
  return {name: summary[name] for name in ("i2t/recall@1", "t2i/recall@1")}


def test_export_writes_the_image_towers_embeddings_with_categories(
    reference):
  train_dir, eval_dir = split_dirs(reference)
  emb, labels, meta = embedding_files.load_split(train_dir)
  assert emb.shape == (512, 32) and emb.dtype == np.float32
  assert np.isfinite(emb).all() and np.abs(emb).max() > 0
  assert set(labels) <= set(range(22)) and len(set(labels)) > 15
  assert meta["arrays"] == ["labels", "embeddings", "text_embeddings"]
  assert meta["tower"] == "image" and meta["dataset"] == "openclipart"
  assert meta["nesting"] == list(DIMS) and meta["step"] == 6
  assert meta["embedding_dim"] == 32 and meta["normalisation"] == "none"
  assert meta["checkpoint"]["step"] == 6
  # The eval split's rows in order, with their categories; image->text
  # retrieval on them is the trainer's evaluation.
  arrays, _ = embedding_files.load_arrays(
      eval_dir, ("embeddings", "text_embeddings", "labels"))
  np.testing.assert_array_equal(arrays["labels"], eval_pairs()[-1])
  assert recall_at_1(arrays["embeddings"], arrays["text_embeddings"]) == (
      eval_summary(reference))


def test_knn_probe_and_baselines_score_every_dim(reference, copy_of):
  workdir = copy_of(reference)
  names = {"knn": "knn/top1", "probe": "probe/top1@all",
           "baselines": "svd/knn_top1"}
  for mode, name in names.items():
    result, printed = run_offline_mode(SMOKE, workdir, mode)
    with open(os.path.join(workdir, f"{mode}_summary.json")) as f:
      assert json.load(f)["step"] == 6
    for d in DIMS:
      assert 0.0 <= result[f"{name}/d={d}"] <= 1.0
      assert f"{name}/d={d}" in printed


def test_image_only_export_is_the_default(reference, copy_of):
  workdir = copy_of(reference)
  shutil.rmtree(os.path.join(workdir, "embeddings"))
  run_offline_mode(SMOKE, workdir, "export", dtype="float32")
  for directory in split_dirs(workdir):
    arrays, meta = embedding_files.load_arrays(directory, ("embeddings",))
    assert meta["arrays"] == ["labels", "embeddings"]
    want, _ = embedding_files.load_arrays(
        directory.replace(workdir, reference), ("embeddings",))
    np.testing.assert_array_equal(arrays["embeddings"], want["embeddings"])


def _normalised(z, m):
  return z[:, :m] / np.linalg.norm(z[:, :m], axis=1, keepdims=True)


def test_bundle_embeddings_equal_the_models(reference):
  encoder = mrl_jax.load_encoder(os.path.join(reference, "encoder"))
  assert isinstance(encoder, encoder_lib.TwoTowerEncoder)
  assert encoder.embedding_dim == 32 and encoder.nesting == DIMS
  images, captions, ids, mask, _ = eval_pairs(5)
  run_setup, state, _ = train.restore_latest(
      config_lib.load_config(SMOKE), reference)
  model, variables = run_setup.model, {"params": state.params,
                                       "batch_stats": state.batch_stats}
  want = {"image": np.asarray(model.apply(
              variables, images, train=False, method=model.encode_image)),
          "text": np.asarray(model.apply(
              variables, ids, mask, train=False, method=model.encode_text))}
  # Captions are tokenized by the bundle as the dataset stored them.
  got = {"image": lambda **kw: encoder.embed_images(images, **kw),
         "text": lambda **kw: encoder.embed_texts(captions, **kw)}
  for side in ("image", "text"):
    np.testing.assert_allclose(np.asarray(got[side](normalize=False)),
                               want[side], rtol=1e-5, atol=1e-6)
    for m in DIMS:  # each prefix normalised on its own
      z = np.asarray(got[side](dim=m))
      assert z.shape == (5, m) and z.dtype == np.float32
      np.testing.assert_allclose(z, _normalised(want[side], m), rtol=1e-5,
                                 atol=1e-6)


def test_retrieval_through_the_bundle_matches_the_eval(reference):
  encoder = mrl_jax.load_encoder(os.path.join(reference, "encoder"))
  # Resized pixels (0..255) through the bundle's own normalisation, as a
  # user feeds them.
  pixels, captions, *_ = eval_pairs(spec="caption_tokens|resize(32)")
  assert encoder.image.metadata["normalisation"]["mean"] == [0.5]
  z_images = encoder.embed_images(encoder.image.normalize_pixels(pixels),
                                  normalize=False)
  z_texts = encoder.embed_texts(captions, normalize=False)
  assert recall_at_1(np.asarray(z_images), np.asarray(z_texts)) == (
      eval_summary(reference))


def test_two_tower_bundle_loads_without_training_code_or_tensorflow(
    reference):
  script = (
      "import sys, numpy as np, mrl_jax\n"
      f"enc = mrl_jax.load_encoder({reference + '/encoder'!r})\n"
      "zi = enc.embed_images(np.zeros((2, 32, 32, 3), np.float32), dim=8)\n"
      "zt = enc.embed_texts(['a red car', 'a tree'], dim=8)\n"
      "assert zi.shape == zt.shape == (2, 8), (zi.shape, zt.shape)\n"
      "bad = [m for m in ('mrl_jax.train', 'mrl_jax.train_step', "
      "'mrl_jax.tasks', 'mrl_jax.mrl.contrastive', 'optax', 'tensorflow') "
      "if m in sys.modules]\n"
      "assert not bad, bad\n")
  proc = subprocess.run([sys.executable, "-c", script], cwd=REPO,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]


_IMAGES = np.zeros((2, 32, 32, 3), np.float32)


@pytest.mark.parametrize("method, inputs, dim, match", [
    ("embed_images", _IMAGES, 0, r"dim=0 must be in 1\.\.32"),
    ("embed_images", _IMAGES, 33, r"dim=33 must be in 1\.\.32"),
    ("embed_texts", ["a red car"], 33, r"dim=33 must be in 1\.\.32"),
    ("embed_images", ["a red car"], None, r"images must be an array "
     r"\[B, H, W, 3\] of preprocessed pixels, got text"),
    ("embed_images", _IMAGES[..., :1], None, r"images must be an array "
     r"\[B, H, W, 3\] .*got float32 of shape \(2, 32, 32, 1\)"),
    ("embed_texts", _IMAGES, None, "texts must be a list of strings"),
    ("embed_texts", "a red car", None, "texts must be a list of strings"),
])
def test_bad_calls_are_one_line_errors(reference, method, inputs, dim, match):
  encoder = mrl_jax.load_encoder(os.path.join(reference, "encoder"))
  with pytest.raises(ValueError, match=match) as e:
    getattr(encoder, method)(inputs, dim=dim)
  assert "\n" not in str(e.value)


def _edit_json(path, change):
  with open(path) as f:
    meta = json.load(f)
  change(meta)
  with open(path, "w") as f:
    json.dump(meta, f)


def _swap_towers(bundle):
  os.rename(os.path.join(bundle, "image"), os.path.join(bundle, "tmp"))
  os.rename(os.path.join(bundle, "text"), os.path.join(bundle, "image"))
  os.rename(os.path.join(bundle, "tmp"), os.path.join(bundle, "text"))


@pytest.mark.parametrize("corrupt, match", [
    (lambda b: os.remove(os.path.join(b, "text", "tokenizer.model")),
     r"text/tokenizer\.model is missing: the bundle's tokenizer"),
    (lambda b: shutil.rmtree(os.path.join(b, "image", "params")),
     r"image/params holds no params checkpoint"),
    (lambda b: _edit_json(os.path.join(b, "encoder.json"),
                          lambda m: m.update(towers=["image"])),
     r"encoder\.json: 'towers' is \['image'\], not \['image', 'text'\]"),
    (lambda b: _edit_json(os.path.join(b, "image", "encoder.json"),
                          lambda m: m.update(projection=16)),
     r"image/encoder\.json: 'model' \(small_cnn\) does not match the params"),
    (lambda b: _edit_json(os.path.join(b, "text", "encoder.json"),
                          lambda m: m.update(projection="32")),
     r"text/encoder\.json: 'projection' is '32', not null or a positive "
     "int"),
    (_swap_towers, r"image holds a TextEncoder, not the image tower"),
])
def test_corrupt_two_tower_bundle_is_one_line_value_error(
    reference, tmp_path, corrupt, match):
  bundle = str(tmp_path / "encoder")
  shutil.copytree(os.path.join(reference, "encoder"), bundle)
  corrupt(bundle)
  with pytest.raises(ValueError, match=match) as e:
    mrl_jax.load_encoder(bundle)
  assert "\n" not in str(e.value)
  assert str(e.value).endswith("export the bundle again with "
                               "--mode=export_encoder")
