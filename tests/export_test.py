"""Export settings are validated before any work; exports record the
checkpoint they come from (the end-to-end exports run through the launcher
in tests/integration/)."""
import json
import os
import subprocess
import sys
import types

import jax
import numpy as np
import pytest

from mrl_jax import embedding_eval
from mrl_jax import errors
from mrl_jax.data import text_sources
from mrl_jax.data import tokenizer as tok
from mrl_jax.export import embedding_files
from mrl_jax.export import embedding_writer
from mrl_jax.export import encoder_writer
from mrl_jax.export import task_inputs
from mrl_jax import sharding




def test_defaults_and_path_safe_split_names(config_module):
  config = config_module("default").get_config()
  settings = embedding_writer._export_settings(  # pylint: disable=protected-access
      config, task_inputs.ImageInputs(config))
  assert settings == {"splits": ("train", "test"), "dtype": "float16",
                      "examples_per_shard": 20_000,
                      "logits_splits": ("test",), "flip_tta": True,
                      "views": None}
  assert embedding_files.split_dir("W", "ds", "train[:10%]").endswith(
      os.path.join("embeddings", "ds", "train_10%"))


@pytest.mark.parametrize("field,value,match", [
    ("dtype", "int8", "config.export.dtype"),
    ("examples_per_shard", 100, "multiple of the per-process eval batch 64"),
    ("views.count", -2, "views.count=-2 must be an int >= 0"),
    ("views.preprocess", "flip_lr|blur", "unknown preprocess op 'blur'"),
])
def test_bad_export_settings(field, value, match, config_module):
  config = config_module("default").get_config("smoke")
  config.export.views.count = 2  # views are checked when asked for
  *path, name = f"export.{field}".split(".")
  section = config
  for key in path:
    section = section[key]
  section[name] = value
  with pytest.raises(ValueError, match=match):
    embedding_writer._export_settings(  # pylint: disable=protected-access
        config, task_inputs.ImageInputs(config))


def test_reading_and_evaluating_an_export_imports_neither_tf_nor_flax():
  # Downstream evaluation (and the search benchmark on a bare GPU image) reads
  # exports with numpy and jax alone; a fresh interpreter shows what loads.
  code = ("import sys, mrl_jax.embedding_eval, mrl_jax.export.embedding_files; "
          "print(sorted(m for m in ('tensorflow', 'flax', 'orbax.checkpoint')"
          " if m in sys.modules))")
  out = subprocess.run([sys.executable, "-c", code], check=True,
                       capture_output=True, text=True).stdout
  assert out.strip() == "[]"


def test_reading_a_missing_or_empty_export_says_how_to_fix_it(tmp_path):
  with pytest.raises(ValueError, match="no finished export.*--mode=export"):
    embedding_files.load_split(str(tmp_path / "nothing_here"))
  (tmp_path / "metadata.json").write_text('{"step": 1}')
  with pytest.raises(ValueError, match="no shard-.*run --mode=export again"):
    embedding_files.load_split(str(tmp_path))


def test_database_and_queries_are_checked_before_any_shard_is_read(tmp_path):
  # Metadata only, no shards: the checkpoint mismatch is found without I/O of
  # the (possibly huge) database.
  for name, step in (("train", 1), ("test", 2)):
    (tmp_path / name).mkdir()
    (tmp_path / name / "metadata.json").write_text(json.dumps(
        {"step": 1, "nesting": [8],
         "checkpoint": {"step": 1, "weights": f"{step:016x}"}}))
  with pytest.raises(ValueError, match="step 1 weights 0+1, nesting .8.* and "
                     ".*step 1 weights 0+2.*different checkpoints.*"
                     "--mode=export"):
    embedding_files.load_database_and_queries(str(tmp_path / "train"),
                                              str(tmp_path / "test"))
  with pytest.raises(ValueError, match="no finished export"):
    embedding_files.load_database_and_queries(str(tmp_path / "train"),
                                              str(tmp_path / "missing"))


def _write_split(directory, checkpoints: list[str]) -> dict:
  """A split whose shard i says it comes from checkpoint label
  checkpoints[i]; its metadata records the first one's."""
  directory.mkdir()
  for i, label in enumerate(checkpoints):
    np.savez(directory / f"shard-p000-{i:05d}.npz", labels=np.arange(2),
             embeddings=np.ones((2, 4), np.float16),
             checkpoint=np.array(label))
  checkpoint = {"step": 3, "weights": "ab"}
  (directory / "metadata.json").write_text(json.dumps(
      {"step": 3, "nesting": [4], "checkpoint": checkpoint}))
  return checkpoint


def test_a_split_mixing_two_checkpoints_is_refused(tmp_path):
  label = embedding_files.checkpoint_label({"step": 3, "weights": "ab"})
  _write_split(tmp_path / "same", [label, label])
  emb, _, meta = embedding_files.load_split(str(tmp_path / "same"))
  assert emb.shape == (4, 4) and meta["checkpoint"]["weights"] == "ab"
  _write_split(tmp_path / "mixed", [label, "step 3 weights cd"])
  with pytest.raises(ValueError, match=r"shard-p000-00001.npz comes from "
                     "checkpoint step 3 weights cd, the rest of the split "
                     "from step 3 weights ab; run --mode=export again"):
    embedding_files.load_split(str(tmp_path / "mixed"))


def test_weights_digest_changes_with_any_weight_not_with_sharding():
  mesh = sharding.make_mesh((("data", 8),))
  rng = np.random.default_rng(0)
  weights = {"a": rng.normal(size=(16, 8)).astype(np.float32),
             "b": {"c": rng.normal(size=(8,)).astype(np.float32)}}
  on_one = embedding_writer.weights_digest(jax.device_put(weights), mesh)
  split_rows = jax.device_put(weights["a"], sharding.batch_sharding(mesh))
  assert embedding_writer.weights_digest({**weights, "a": split_rows}, mesh) == on_one
  assert len(on_one) == 16
  nudged = weights["a"].copy()
  nudged[5, 3] = np.nextafter(nudged[5, 3], np.float32(np.inf))
  swapped = weights["a"][::-1].copy()  # same values, other places
  for a in (nudged, swapped):
    assert embedding_writer.weights_digest({**weights, "a": a}, mesh) != on_one


def _text_inputs_stub(config):
  """What _export_settings reads of the mlm task's inputs."""
  return types.SimpleNamespace(data=config.export.dataset,
                               arrays=("embeddings",), views=False)


def test_mlm_export_defaults_to_the_labelled_text_splits(config_module):
  config = config_module("text_mlm").get_config()
  settings = embedding_writer._export_settings(  # pylint: disable=protected-access
      config, _text_inputs_stub(config))
  assert settings["splits"] == ("train", "validation")
  assert settings["logits_splits"] == () and settings["views"] is None
  assert embedding_files.exported_dataset(config).num_classes == 45


@pytest.mark.parametrize("field,value,match", [
    ("logits_splits", ("validation",), "model has no class logits; leave it "
     "empty"),
    ("views", {"count": 2, "preprocess": "flip_lr"}, "no augmented views; set "
     "config.export.views.count=0"),
])
def test_mlm_export_refuses_logits_and_views(field, value, match,
                                             config_module):
  config = config_module("text_mlm").get_config("smoke")
  config.export[field] = value
  with pytest.raises(ValueError, match=match):
    embedding_writer._export_settings(  # pylint: disable=protected-access
        config, _text_inputs_stub(config))


@pytest.mark.parametrize("export", [embedding_writer.export_embeddings,
                                    encoder_writer.export_encoder])
def test_mlm_export_without_the_workdirs_tokenizer_says_where_it_is(
    tmp_path, config_module, export):
  config = config_module("text_mlm").get_config("smoke")
  with pytest.raises(errors.RunError, match=r"tokenizer\.model is missing: "
                     "the tokenizer this workdir's model was trained with; "
                     "copy it there .* or train with --mode=train"):
    export(config, str(tmp_path))
  assert os.listdir(tmp_path) == []


def _workdir_with_tokenizer(tmp_path) -> str:
  tmp_path.mkdir(exist_ok=True)
  tok.train(["a small river flows over green stones toward the sea"] * 20,
            vocab_size=40).save(tmp_path / "tokenizer.model")
  return str(tmp_path)


def test_mlm_export_of_a_bad_split_fails_before_the_checkpoint_is_read(
    tmp_path, config_module):
  # The workdir has no checkpoint: the split is what is reported.
  config = config_module("text_mlm").get_config("smoke")
  config.export.dataset.eval_split = "test"
  with pytest.raises(ValueError, match="bad split 'test' for "
                     "'wordnet_lexnames'.*'train', 'validation'"):
    embedding_writer.export_embeddings(config,
                                       _workdir_with_tokenizer(tmp_path))
  assert os.listdir(tmp_path) == ["tokenizer.model"]


def test_mlm_export_without_wordnet_names_the_debian_package(
    tmp_path, config_module, monkeypatch):
  monkeypatch.setattr(text_sources, "WORDNET_DIR", tmp_path / "no_wordnet")
  config = config_module("text_mlm").get_config("smoke")
  config.export.dataset.data_dir = str(tmp_path / "tfds")  # not prepared
  workdir = _workdir_with_tokenizer(tmp_path / "workdir")
  with pytest.raises(errors.RunError, match="install the Debian package "
                     "wordnet-base"):
    embedding_writer.export_embeddings(config, workdir)
  assert os.listdir(workdir) == ["tokenizer.model"]


def test_adaptive_on_an_mlm_config_says_it_has_no_class_heads(
    tmp_path, config_module):
  config = config_module("text_mlm").get_config("smoke")
  with pytest.raises(ValueError, match="the mlm task's model has no class "
                     "heads"):
    embedding_eval.adaptive(config, str(tmp_path))


def test_export_of_a_task_without_export_inputs_is_one_line_error(
    tmp_path, config_module):
  config = config_module("default").get_config("smoke")
  config.task = "segmentation"
  for export in (embedding_writer.export_embeddings, encoder_writer.export_encoder):
    with pytest.raises(ValueError, match="config.task='segmentation': "
                       "--mode=export and --mode=export_encoder support"):
      export(config, str(tmp_path))


def test_contrastive_export_defaults_to_the_image_towers_embeddings(
    config_module, tmp_path):
  config = config_module("align_openclipart").get_config()
  inputs = task_inputs.get(config, str(tmp_path))
  settings = embedding_writer._export_settings(  # pylint: disable=protected-access
      config, inputs)
  assert settings["splits"] == ("train", "validation")
  assert settings["logits_splits"] == () and settings["views"] is None
  assert inputs.split_arrays == ("embeddings",)
  config.export.text_embeddings = True
  assert task_inputs.get(config, str(tmp_path)).split_arrays == (
      "embeddings", "text_embeddings")
  assert embedding_files.exported_dataset(config).num_classes == 22


@pytest.mark.parametrize("field,value,match", [
    ("logits_splits", ("validation",), "model has no class logits"),
    ("views", {"count": 2, "preprocess": "flip_lr"}, "no augmented views"),
])
def test_bad_contrastive_export_settings_fail_before_any_work(
    field, value, match, config_module, tmp_path):
  config = config_module("align_openclipart").get_config("smoke")
  config.export[field] = value
  with pytest.raises(ValueError, match=match):
    embedding_writer.export_embeddings(config, str(tmp_path))
  assert os.listdir(tmp_path) == []


def test_two_tower_bundle_without_the_workdirs_tokenizer_says_where_it_is(
    tmp_path, config_module):
  config = config_module("align_openclipart").get_config("smoke")
  with pytest.raises(errors.RunError, match=r"tokenizer\.model is missing: "
                     "the tokenizer this workdir's model was trained with; "
                     r"copy it there \(it is the tokenizer.model stored with "
                     r"the prepared openclipart dataset\)"):
    encoder_writer.export_encoder(config, str(tmp_path))
  assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("spec,mean,std", [
    ("resize(32)|value_range(-1, 1)", 0.5, 0.5),
    ("value_range(0, 1)", 0.0, 1.0),
    ("normalize('fashion_mnist')", None, None),
])
def test_bundle_normalisation_reproduces_the_preprocess_op(spec, mean, std):
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from mrl_jax.data import preprocess  # pylint: disable=import-outside-toplevel
  norm = task_inputs._normalisation(spec)  # pylint: disable=protected-access
  if mean is not None:
    assert (norm["mean"], norm["std"]) == ([mean], [std])
  pixels = np.arange(256, dtype=np.uint8).reshape(16, 16, 1)
  want = preprocess.build(spec.split("|")[-1])(
      {"image": tf.constant(pixels)}, seed=[0, 0])["image"].numpy()
  got = (pixels / 255.0 - np.asarray(norm["mean"])) / np.asarray(norm["std"])
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
