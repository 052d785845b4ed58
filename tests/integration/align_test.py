"""Two towers end to end: the launcher on openclipart
(configs/align_openclipart.py:smoke; the Debian packages scripts/setup.sh
installs), then --mode=eval."""
import json
import os
import shutil

import pytest

from mrl_jax import config_lib
from mrl_jax import modes
from mrl_jax.data import openclipart
from mrl_jax.tasks import workdir_tokenizer
from conftest import launch_ok

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
CONFIG = os.path.join(REPO, "configs", "align_openclipart.py")

pytestmark = pytest.mark.skipif(
    not openclipart.SVG_DIR.is_dir() or shutil.which("rsvg-convert") is None,
    reason="needs openclipart-svg and librsvg2-bin (scripts/setup.sh)")


@pytest.fixture(name="reference", scope="module")
def fixture_reference(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("align"))
  proc = launch_ok(f"{CONFIG}:smoke", workdir, timeout=900)
  return workdir, proc.stdout, proc.stderr


def test_launcher_trains_and_reports_every_dim(reference):
  workdir, stdout, stderr = reference
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
  shutil.copytree(reference[0], workdir)
  entry = modes.MODES["eval"]
  summary = modes.resolve(entry.runner)(
      config_lib.load_config(f"{CONFIG}:smoke"), workdir)
  with open(os.path.join(reference[0], "eval_summary.json")) as f:
    assert summary == json.load(f)
