"""Two towers on a TFDS image-caption dataset by name, through the launcher:
configs/image_text_tfds.py:smoke on a coco_captions look-alike prepared in a
temporary data_dir (no label feature, so no zero-shot evaluation)."""
import json
import os

import pytest

from conftest import TINY_CAPTIONS, launch_ok, write_tiny_captions

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
CONFIG = os.path.join(REPO, "configs", "image_text_tfds.py")


@pytest.fixture(name="reference", scope="module")
def fixture_reference(tmp_path_factory):
  data_dir = write_tiny_captions(tmp_path_factory.mktemp("tfds"))
  workdir = str(tmp_path_factory.mktemp("coco_like"))
  proc = launch_ok(f"{CONFIG}:name={TINY_CAPTIONS},data_dir={data_dir},"
                   "id_key=image/id,vocab=64,smoke", workdir)
  return workdir, data_dir, proc


def test_launcher_trains_and_reports_retrieval_per_dim(reference):
  workdir, data_dir, proc = reference
  with open(os.path.join(workdir, "eval_summary.json")) as f:
    summary = json.load(f)
  assert summary["task"] == "contrastive" and summary["step"] == 6
  assert summary["nesting"] == [8, 16, 32]
  assert summary["num_examples"] == 16  # the whole val split
  for name in ("i2t/recall@1", "t2i/recall@1", "i2t/recall@5",
               "cosine/span"):
    assert set(summary[name]) == {"8", "16", "32"}, name
  assert not any(name.startswith("zero_shot") for name in summary)
  assert "t2i/recall@1" in proc.stdout and "zero_shot" not in proc.stdout
  # The derived dataset sits next to the source in data_dir.
  assert os.path.isdir(os.path.join(data_dir, "tfds_image_text"))
