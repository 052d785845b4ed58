"""The mlm task's sentence embeddings leave the trainer: --mode=export of
WordNet glosses (wordnet_lexnames slices), scored per dim by knn / probe /
baselines on the 45 lexicographer classes; --mode=export_encoder's text
bundle embeds raw strings as the exporter does.

One smoke run of configs/text_mlm.py (6 steps of bert_mu) is shared by the
tests; each test copies its workdir (conftest's copy_of) before touching it.
"""
import hashlib
import itertools
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from conftest import run_offline_mode
import mrl_jax
from mrl_jax.data import text_sources
from mrl_jax.data import tokenizer as tok
from mrl_jax.export import embedding_files

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
CONFIG = os.path.join(REPO, "configs", "text_mlm.py")
DIMS = (8, 16, 32)


def launch(workdir, *flags):
  proc = subprocess.run(
      [sys.executable, "-m", "mrl_jax.main", f"--config={CONFIG}:smoke",
       f"--workdir={workdir}", *flags],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


def run_mode(workdir, mode, **export):
  """conftest.run_offline_mode with the smoke config."""
  return run_offline_mode(f"{CONFIG}:smoke", workdir, mode, **export)


@pytest.fixture(scope="module", name="reference")
def fixture_reference(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("text_reference"))
  launch(workdir)
  return workdir


def split_dirs(workdir):
  root = os.path.join(workdir, "embeddings", "wordnet_lexnames")
  return os.path.join(root, "train_2048"), os.path.join(root, "validation_512")


def test_export_writes_labelled_sentence_embeddings(reference, copy_of):
  workdir = copy_of(reference)
  proc = launch(workdir, "--mode=export")
  train_dir, eval_dir = split_dirs(workdir)
  assert f"validation[:512]: {eval_dir}" in proc.stdout
  emb, labels, meta = embedding_files.load_split(train_dir)
  assert emb.shape == (2048, 32) and emb.dtype == np.float16
  assert np.isfinite(emb).all() and np.abs(emb).max() > 0
  assert labels.shape == (2048,) and set(labels) <= set(range(45))
  assert len(set(labels)) > 20  # a slice of all 45 classes
  assert meta["arrays"] == ["labels", "embeddings"]  # no logits
  assert meta["dataset"] == "wordnet_lexnames" and meta["step"] == 6
  assert meta["nesting"] == list(DIMS) and meta["pool"] == "mean"
  assert meta["seq_len"] == 64 and len(meta["tokenizer_sha256"]) == 64
  # A rerun skips the finished shard and redoes only the missing one, equal.
  shards = sorted(f for f in os.listdir(train_dir) if f.startswith("shard"))
  assert shards == ["shard-p000-00000.npz", "shard-p000-00001.npz"]
  mtime = os.path.getmtime(os.path.join(train_dir, shards[0]))
  os.remove(os.path.join(train_dir, shards[1]))
  run_mode(workdir, "export")
  assert os.path.getmtime(os.path.join(train_dir, shards[0])) == mtime
  np.testing.assert_array_equal(embedding_files.load_split(train_dir)[0], emb)


def _chance(workdir):
  """(1-NN's chance: the probability that a random database row shares the
  query's class; the majority-class rate of the queries)."""
  _, db, _ = embedding_files.load_split(split_dirs(workdir)[0])
  _, queries, _ = embedding_files.load_split(split_dirs(workdir)[1])
  p_db, p_q = (np.bincount(x, minlength=45) / len(x) for x in (db, queries))
  return float(p_db @ p_q), float(p_q[p_db.argmax()])


def test_knn_probe_and_baselines_score_every_dim(reference, copy_of):
  workdir = copy_of(reference)
  run_mode(workdir, "export")
  results = {mode: run_mode(workdir, mode)
             for mode in ("knn", "probe", "baselines")}
  names = {"knn": "knn/top1", "probe": "probe/top1@all",
           "baselines": "svd/linear_top1"}
  for mode, (result, printed) in results.items():
    with open(os.path.join(workdir, f"{mode}_summary.json")) as f:
      assert json.load(f)["step"] == 6
    for d in DIMS:
      assert 0.0 <= result[f"{names[mode]}/d={d}"] <= 1.0
      assert f"{names[mode]}/d={d}" in printed
  # Six steps already beat chance at the full dim: glosses of one class
  # share words, which even a barely trained encoder's mean pools.
  neighbour_chance, majority = _chance(workdir)
  assert results["knn"][0]["knn/top1/d=32"] > 1.5 * neighbour_chance
  assert results["probe"][0]["probe/top1@all/d=32"] > majority


@pytest.fixture(scope="module", name="bundle")
def fixture_bundle(reference, tmp_path_factory):
  """The reference run's text encoder bundle, and a copy of the run with it."""
  workdir = str(tmp_path_factory.mktemp("text_bundle") / "workdir")
  shutil.copytree(reference, workdir)
  proc = launch(workdir, "--mode=export_encoder")
  path = os.path.join(workdir, "encoder")
  assert f"encoder bundle: {path}" in proc.stdout
  return workdir, path


def test_text_bundle_embeddings_equal_the_exporters(bundle):
  workdir, path = bundle
  run_mode(workdir, "export", dtype="float32")
  exported, labels, _ = embedding_files.load_split(split_dirs(workdir)[1])
  rows = tfds.builder("wordnet_lexnames").as_dataset(
      split="validation[:512]").as_numpy_iterator()
  texts, want_labels = zip(*((r["text"].decode(), r["label"]) for r in rows))
  np.testing.assert_array_equal(labels, want_labels)  # the same rows
  encoder = mrl_jax.load_encoder(path)
  assert encoder.metadata["modality"] == "text"
  assert encoder.metadata["pool"] == "mean" and encoder.max_length == 64
  assert "mlm" not in encoder.variables["params"]  # no MLM head
  np.testing.assert_allclose(
      np.asarray(encoder.embed(list(texts), normalize=False)), exported,
      rtol=1e-4, atol=1e-5)
  for m in DIMS:  # each prefix normalised on its own
    prefix = exported[:5, :m] / np.linalg.norm(exported[:5, :m], axis=1,
                                               keepdims=True)
    got = np.asarray(encoder.embed(list(texts[:5]), dim=m))
    assert got.shape == (5, m) and got.dtype == np.float32
    np.testing.assert_allclose(got, prefix, rtol=1e-4, atol=1e-5)


def test_text_bundle_loads_without_training_code_or_tensorflow(bundle):
  script = (
      "import sys, mrl_jax\n"
      f"enc = mrl_jax.load_encoder({bundle[1]!r})\n"
      "z = enc.embed(['a small dog', 'the sea'], dim=8)\n"
      "assert z.shape == (2, 8), z.shape\n"
      "bad = [m for m in ('mrl_jax.train', 'mrl_jax.train_step', "
      "'mrl_jax.tasks', 'optax', 'tensorflow') if m in sys.modules]\n"
      "assert not bad, bad\n")
  proc = subprocess.run([sys.executable, "-c", script], cwd=REPO,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.parametrize("texts, dim, match", [
    ([], None, "texts is empty; pass at least one string"),
    ("a dog", None, "texts must be a list of strings"),
    (["a dog", 3], None, "texts must be a list of strings"),
    (["a dog"], 0, r"dim=0 must be in 1\.\.32"),
    (["a dog"], 33, r"dim=33 must be in 1\.\.32"),
])
def test_text_bundle_bad_calls_are_one_line_errors(bundle, texts, dim,
                                                   match):
  encoder = mrl_jax.load_encoder(bundle[1])
  with pytest.raises(ValueError, match=match):
    encoder.embed(texts, dim=dim)


def _forge_tokenizer(bundle_path, tmp_path, tokenizer, record: bool):
  """A copy of the bundle with another tokenizer.model; record: also write
  its sha256 into encoder.json."""
  path = str(tmp_path / "forged")
  shutil.copytree(bundle_path, path)
  tokenizer.save(os.path.join(path, "tokenizer.model"))
  if record:
    with open(os.path.join(path, "encoder.json")) as f:
      meta = json.load(f)
    meta["preprocessing"]["tokenizer_sha256"] = hashlib.sha256(
        tokenizer.model_proto).hexdigest()
    with open(os.path.join(path, "encoder.json"), "w") as f:
      json.dump(meta, f)
  return path


def test_text_bundle_with_another_tokenizer_is_refused(bundle, tmp_path):
  glosses = itertools.islice(text_sources.wordnet_glosses(), 4000)
  bigger = tok.train((g.gloss for g in glosses), vocab_size=1000)
  assert bigger.vocab_size > 512  # the smoke model's vocabulary
  swapped = _forge_tokenizer(bundle[1], tmp_path / "a", bigger, record=False)
  with pytest.raises(ValueError, match="tokenizer.model is not the tokenizer "
                     "the params were trained with"):
    mrl_jax.load_encoder(swapped)
  recorded = _forge_tokenizer(bundle[1], tmp_path / "b", bigger, record=True)
  with pytest.raises(ValueError, match=f"has {bigger.vocab_size} pieces, more "
                     r"than the params' vocabulary \(512 word embeddings\)"):
    mrl_jax.load_encoder(recorded)


@pytest.mark.parametrize("field, value, match", [
    ("modality", "audio", "'modality' is 'audio', not one of 'image', "
     "'text', 'image_text'"),
    ("preprocessing.max_length", "64", "'preprocessing.max_length' is '64', "
     "expected int"),
    ("preprocessing.max_length", 100, "'preprocessing.max_length' is 100, "
     r"beyond the model's position table \(max_len=64\)"),
    ("preprocessing.tokenizer", None, "has no 'preprocessing.tokenizer'"),
])
def test_forged_text_bundle_is_one_line_value_error(bundle, tmp_path, field,
                                                     value, match):
  path = str(tmp_path / "forged")
  shutil.copytree(bundle[1], path)
  with open(os.path.join(path, "encoder.json")) as f:
    meta = json.load(f)
  *parents, last = field.split(".")
  section = meta
  for key in parents:
    section = section[key]
  if value is None:
    del section[last]
  else:
    section[last] = value
  with open(os.path.join(path, "encoder.json"), "w") as f:
    json.dump(meta, f)
  with pytest.raises(ValueError, match=match) as e:
    mrl_jax.load_encoder(path)
  assert "\n" not in str(e.value)
  assert str(e.value).endswith("export the bundle again with "
                               "--mode=export_encoder")
