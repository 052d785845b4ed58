"""Two towers on a TFDS image-caption dataset by name, through the launcher:
configs/image_text_tfds.py:smoke on a coco_captions look-alike prepared in a
temporary data_dir (no label feature, so no zero-shot evaluation)."""
import json
import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import TINY_CAPTIONS, launch_ok, write_tiny_captions

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
CONFIG = os.path.join(REPO, "configs", "image_text_tfds.py")


@pytest.fixture(name="reference", scope="module")
def fixture_reference(tmp_path_factory):
  data_dir = write_tiny_captions(tmp_path_factory.mktemp("tfds"))
  workdir = str(tmp_path_factory.mktemp("coco_like"))
  spec = (f"{CONFIG}:name={TINY_CAPTIONS},data_dir={data_dir},"
          "id_key=image/id,vocab=64,smoke")
  return workdir, data_dir, launch_ok(spec, workdir), spec


def test_launcher_trains_and_reports_retrieval_per_dim(reference):
  workdir, data_dir, proc, _ = reference
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


def test_resumed_run_ends_bitwise_where_the_uninterrupted_one_did(
    reference, copy_of):
  """Resumed from its step-3 checkpoint (as after a crash before the step-6
  save), the run reads the same image-text batches and ends with the same
  state, temperature included."""
  workdir = copy_of(reference[0])
  shutil.rmtree(os.path.join(workdir, "checkpoints", "6"))
  proc = launch_ok(reference[3], workdir)
  assert "resumed from checkpoint at step 3" in proc.stderr
  checkpointer = ocp.StandardCheckpointer()
  resumed, uninterrupted = (
      checkpointer.restore(os.path.join(w, "checkpoints", "6", "state"))
      for w in (workdir, reference[0]))
  jax.tree.map(np.testing.assert_array_equal, resumed, uninterrupted)
