"""Nested MLM end to end: the launcher on a user text folder
(configs/text_folder.py:smoke), --mode=eval, and resume after losing the
last checkpoint."""
import json
import os
import shutil

import numpy as np
import pytest

from mrl_jax import config_lib
from mrl_jax import modes
from mrl_jax import train
from mrl_jax.tasks import workdir_tokenizer
from conftest import launch_ok

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
CONFIG = os.path.join(REPO, "configs", "text_folder.py")
_WORDS = ("river stone light water small large animal plant moves quickly "
          "green red bird flies over under the a of and which is has with "
          "tool made by people used for cutting wood metal house food").split()


@pytest.fixture(name="arg", scope="module")
def fixture_arg(tmp_path_factory):
  """The config argument: a generated text folder, a private data_dir."""
  root = tmp_path_factory.mktemp("texts")
  rng = np.random.default_rng(1)
  for f in range(2):
    with open(root / f"part{f}.jsonl", "w") as out:
      for _ in range(300):
        text = " ".join(rng.choice(_WORDS, rng.integers(8, 40)))
        out.write(json.dumps({"text": text}) + "\n")
  return f"root={root},data_dir={tmp_path_factory.mktemp('tfds')},smoke"


@pytest.fixture(name="reference", scope="module")
def fixture_reference(arg, tmp_path_factory):
  """One launcher run: (workdir, its stdout, its stderr)."""
  workdir = str(tmp_path_factory.mktemp("mlm"))
  proc = launch_ok(f"{CONFIG}:{arg}", workdir, timeout=600)
  return workdir, proc.stdout, proc.stderr


def _summary(workdir):
  with open(os.path.join(workdir, "eval_summary.json")) as f:
    return json.load(f)


def test_launcher_trains_and_prints_mlm_accuracy_per_dim(reference):
  workdir, stdout, stderr = reference
  summary = _summary(workdir)
  assert summary["task"] == "mlm" and summary["step"] == 6
  assert summary["nesting"] == [8, 16, 32]
  assert set(summary["mlm_accuracy"]) == {"8", "16", "32"}
  assert summary["num_predictions"] > summary["num_examples"] > 0
  assert "MLM acc" in stdout and "Traceback" not in stderr
  assert os.path.exists(os.path.join(workdir, workdir_tokenizer.FILE))
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    names = set().union(*(json.loads(line) for line in f))
  assert {"train/mlm_accuracy/d=8", "val/mlm_accuracy/d=32"} <= names


def test_eval_mode_reproduces_the_trainers_numbers(reference, arg, tmp_path):
  workdir = str(tmp_path / "workdir")
  shutil.copytree(reference[0], workdir)
  config = config_lib.load_config(f"{CONFIG}:{arg}")
  entry = modes.MODES["eval"]
  summary = modes.resolve(entry.runner)(config, workdir)
  assert summary == _summary(reference[0])
  assert "MLM acc" in modes.resolve(entry.printer)(summary)


def test_resume_after_losing_the_last_checkpoint_gives_the_same_model(
    reference, arg, tmp_path):
  """Steps 4..6 rerun from the step-3 checkpoint (same batches, masks and
  dropout) give the uninterrupted run's evaluation."""
  workdir = str(tmp_path / "workdir")
  shutil.copytree(reference[0], workdir)
  shutil.rmtree(os.path.join(workdir, "checkpoints", "6"))
  os.remove(os.path.join(workdir, "eval_summary.json"))
  resumed = train.train_and_evaluate(
      config_lib.load_config(f"{CONFIG}:{arg}"), workdir)
  expected = _summary(reference[0])
  for metric in ("mlm_accuracy", "mlm_loss"):
    for dim, value in expected[metric].items():
      assert resumed[metric][dim] == pytest.approx(value, rel=1e-5), metric
