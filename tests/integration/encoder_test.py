"""Encoder bundles: --mode=export_encoder through the launcher, load_encoder
equal to the trainer's embeddings, truncation + re-normalisation, and loading
without training code."""
import json
import os
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

import mrl_jax
from mrl_jax.export import encoder_writer
from mrl_jax import train

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
CONFIG = os.path.join(REPO, "configs", "default.py")



@pytest.fixture(scope="module", name="bundle")
def fixture_bundle(tmp_path_factory, config_module):
  """A smoke run of the default config, exported by the launcher."""
  workdir = str(tmp_path_factory.mktemp("encoder"))
  config = config_module("default").get_config("smoke")
  config.total_steps = 2
  train.train_and_evaluate(config, workdir)
  proc = subprocess.run(
      [sys.executable, "-m", "mrl_jax.main", f"--config={CONFIG}:smoke",
       "--config.total_steps=2", f"--workdir={workdir}",
       "--mode=export_encoder"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  path = os.path.join(workdir, "encoder")
  assert f"encoder bundle: {path}" in proc.stdout
  return config, workdir, path


def _trainer_embeddings(config, workdir, images):
  s, state, _ = train.restore_latest(config, workdir)
  _, aux = s.model.apply({"params": state.params,
                          "batch_stats": state.batch_stats}, images,
                         train=False)
  return np.asarray(aux["embedding"], np.float32), s.nesting_dims


def _images(shape):
  return np.random.default_rng(0).standard_normal((4, *shape)).astype(
      np.float32)


def test_bundle_metadata_and_no_optimizer_state(bundle):
  config, _, path = bundle
  with open(os.path.join(path, "encoder.json")) as f:
    meta = json.load(f)
  assert meta["model"]["name"] == config.model.name
  assert meta["embedding_dim"] == 32 and meta["step"] == 2
  assert meta["nesting"] == [8, 16, 32]
  assert meta["preprocessing"]["spec"] == config.data.eval_preprocess
  assert meta["preprocessing"]["input_shape"] == [28, 28, 1]
  assert meta["normalisation"]["formula"] == "(pixel / 255 - mean) / std"
  assert len(meta["normalisation"]["mean"]) == 1
  saved = os.listdir(os.path.join(path, "params"))
  assert not any("opt_state" in name for name in saved)


def test_embeddings_equal_the_trainers(bundle):
  config, workdir, path = bundle
  encoder = mrl_jax.load_encoder(path)
  images = _images(encoder.metadata["preprocessing"]["input_shape"])
  want, nesting = _trainer_embeddings(config, workdir, images)
  np.testing.assert_allclose(np.asarray(encoder(images, normalize=False)),
                             want, rtol=1e-5, atol=1e-6)
  for m in nesting:  # truncate, then re-normalise each prefix separately
    prefix = want[:, :m] / np.linalg.norm(want[:, :m], axis=1, keepdims=True)
    got = np.asarray(encoder.embed(images, dim=m))
    assert got.shape == (4, m)
    np.testing.assert_allclose(got, prefix, rtol=1e-5, atol=1e-6)
  # jit-able as a whole, e.g. inside a user's serving function.
  jitted = jax.jit(lambda x: encoder(x, dim=16))(images)
  np.testing.assert_allclose(np.asarray(jitted),
                             np.asarray(encoder(images, dim=16)), atol=1e-6)
  with pytest.raises(ValueError, match=r"dim=33 must be in 1\.\.32"):
    encoder(images, dim=33)


def test_pixel_normalisation_matches_the_preprocess_op(bundle):
  _, _, path = bundle
  encoder = mrl_jax.load_encoder(path)
  from mrl_jax.data import fashion_mnist  # pylint: disable=import-outside-toplevel
  pixels = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
  want = (pixels / 255.0 - fashion_mnist.MEAN) / fashion_mnist.STD
  np.testing.assert_allclose(np.asarray(encoder.normalize_pixels(pixels)),
                             want, rtol=1e-5)


def test_loading_needs_no_training_code_or_tensorflow(bundle):
  _, _, path = bundle
  script = (
      "import sys, numpy as np, mrl_jax\n"
      f"enc = mrl_jax.load_encoder({path!r})\n"
      "z = enc(np.zeros((2, 28, 28, 1), np.float32), dim=8)\n"
      "assert z.shape == (2, 8), z.shape\n"
      "bad = [m for m in ('mrl_jax.train', 'mrl_jax.train_step', 'optax',"
      " 'tensorflow') if m in sys.modules]\n"
      "assert not bad, bad\n")
  proc = subprocess.run([sys.executable, "-c", script], cwd=REPO,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]


def test_missing_bundle_is_one_line_error(tmp_path):
  with pytest.raises(ValueError, match="has no encoder.json"):
    mrl_jax.load_encoder(str(tmp_path))


def _forge(bundle_path, tmp_path, change) -> str:
  """A copy of the bundle whose encoder.json is change(its dict) (or, if
  change returns a str, that text)."""
  path = str(tmp_path / "forged")
  shutil.copytree(bundle_path, path)
  with open(os.path.join(path, "encoder.json")) as f:
    meta = json.load(f)
  forged = change(meta)
  with open(os.path.join(path, "encoder.json"), "w") as f:
    f.write(forged if isinstance(forged, str) else json.dumps(forged))
  return path


def _set(meta, dotted, value):
  *parents, last = dotted.split(".")
  for key in parents:
    meta = meta[key]
  if value is _DELETE:
    del meta[last]
  else:
    meta[last] = value


_DELETE = object()


@pytest.mark.parametrize("field, value, match", [
    ("embedding_dim", 64, "'embedding_dim' is 64, but its params give "
     "32-dim embeddings"),
    ("model.kwargs.embed_dim", 64, r"'model' \(small_cnn\) does not match "
     r"the params .*: \(32,\) in the params, \(64,\) in the model"),
    ("model.name", "vit_nope", "'model' 'vit_nope' .* cannot be built "
     "\\(unknown model"),
    ("model.dtype", _DELETE, "has no 'model.dtype'"),
    ("model", _DELETE, "has no 'model.name'"),
    ("embedding_dim", "32", "'embedding_dim' is '32', expected int"),
    ("nesting", "8,16,32", "'nesting' is '8,16,32', expected list"),
    ("nesting", [8, 64], r"'nesting' \[8, 64\] is not increasing within "
     "1..embedding_dim=32"),
    ("preprocessing.input_shape", [28, None, 1], "'preprocessing.input_shape'"
     " is .*, not a list of positive ints"),
    ("normalisation", {"mean": 0.5}, "'normalisation' is"),
])
def test_forged_or_malformed_bundle_is_one_line_value_error(
    bundle, tmp_path, field, value, match):
  path = _forge(bundle[2], tmp_path, lambda m: _set(m, field, value) or m)
  with pytest.raises(ValueError, match=match) as e:
    mrl_jax.load_encoder(path)
  message = str(e.value)
  assert "\n" not in message and "encoder.json" in message
  assert message.endswith("export the bundle again with "
                          "--mode=export_encoder")


@pytest.mark.parametrize("text, match", [
    ("{\"model\": ", "encoder.json is not JSON"),
    ("[1, 2]", "encoder.json holds list, not an object"),
])
def test_encoder_json_that_is_no_object_is_one_line_error(bundle, tmp_path,
                                                          text, match):
  path = _forge(bundle[2], tmp_path, lambda m: text)
  with pytest.raises(ValueError, match=match):
    mrl_jax.load_encoder(path)


# The real launcher, SIGKILLed while the new bundle's params are being saved.
KILL_DURING_SAVE = """
import os, signal, sys
import orbax.checkpoint as ocp
from absl import app
from mrl_jax import main
original_save = ocp.StandardCheckpointer.save
def save(self, *args, **kwargs):
  original_save(self, *args, **kwargs)
  os.kill(os.getpid(), signal.SIGKILL)
ocp.StandardCheckpointer.save = save
sys.argv = ["mrl_jax.main"] + sys.argv[1:]
app.run(main.main)
"""


def test_killed_export_encoder_keeps_the_previous_bundle(bundle, tmp_path):
  _, workdir, path = bundle
  copy = str(tmp_path / "workdir")
  shutil.copytree(workdir, copy)
  bundle_dir = os.path.join(copy, "encoder")
  with open(os.path.join(bundle_dir, "encoder.json")) as f:
    before = f.read()
  images = _images(mrl_jax.load_encoder(path).metadata["preprocessing"]
                   ["input_shape"])
  want = np.asarray(mrl_jax.load_encoder(path)(images))
  cmd = [f"--config={CONFIG}:smoke", "--config.total_steps=2",
         f"--workdir={copy}", "--mode=export_encoder"]
  killed = subprocess.run([sys.executable, "-c", KILL_DURING_SAVE, *cmd],
                          cwd=REPO, capture_output=True, text=True,
                          timeout=300)
  assert killed.returncode == -signal.SIGKILL
  with open(os.path.join(bundle_dir, "encoder.json")) as f:
    assert f.read() == before
  np.testing.assert_array_equal(
      np.asarray(mrl_jax.load_encoder(bundle_dir)(images)), want)
  again = subprocess.run([sys.executable, "-m", "mrl_jax.main", *cmd],
                         cwd=REPO, capture_output=True, text=True,
                         timeout=300)
  assert again.returncode == 0, again.stderr[-3000:]
  assert sorted(os.listdir(copy)).count("encoder") == 1
  assert not {"encoder.new", "encoder.old"} & set(os.listdir(copy))
  np.testing.assert_array_equal(
      np.asarray(mrl_jax.load_encoder(bundle_dir)(images)), want)


def test_tidy_puts_back_a_bundle_caught_between_renames(tmp_path):
  out = tmp_path / "encoder"
  (tmp_path / "encoder.old").mkdir()
  (tmp_path / "encoder.old" / "encoder.json").write_text("{}")
  (tmp_path / "encoder.new").mkdir()  # complete or not: it is redone
  encoder_writer._tidy(str(out))  # pylint: disable=protected-access
  assert sorted(os.listdir(tmp_path)) == ["encoder"]
  assert (out / "encoder.json").read_text() == "{}"


def test_tf_saved_model_gives_the_same_embeddings(bundle, tmp_path):
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from mrl_jax.export import encoder as encoder_lib  # pylint: disable=import-outside-toplevel
  _, _, path = bundle
  encoder = mrl_jax.load_encoder(path)
  saved = encoder_lib.save_tf_saved_model(encoder, str(tmp_path / "sm"))
  serve = tf.saved_model.load(saved).signatures["serving_default"]
  images = _images(encoder.metadata["preprocessing"]["input_shape"])
  for batch in (images, images[:1]):  # any batch size
    got = serve(images=tf.constant(batch))["embedding"].numpy()
    np.testing.assert_allclose(
        got, np.asarray(encoder(batch, normalize=False)), rtol=1e-5,
        atol=1e-5)
