"""Image folders through the launcher: the README's smoke command, and
unreadable files listed by --mode=check_data and refused by training."""
import json
import os
import subprocess
import sys

from conftest import BAD_FILES
from conftest import copy_with_bad_files

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


def test_bad_files_through_the_launcher(image_tree, tmp_path):
  root = copy_with_bad_files(image_tree, tmp_path)
  runs = {mode: subprocess.run(
      [sys.executable, "-m", "mrl_jax.main",
       f"--config=configs/image_folder.py:root={root},smoke",
       f"--workdir={tmp_path / 'work'}", f"--mode={mode}"],
      cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
          for mode in ("check_data", "train")}
  for proc in runs.values():
    assert proc.returncode == 1
  listed = runs["check_data"].stderr
  assert all(f"unreadable image {root}/train/cat/{name}" in listed
             for name in BAD_FILES)
  assert listed.strip().splitlines()[-1].startswith(
      "mrl_jax: error: 3 unreadable image(s) in ")
  last = runs["train"].stderr.strip().splitlines()[-1]
  assert last.startswith("mrl_jax: error: unreadable image ")
  checkpoints = tmp_path / "work" / "checkpoints"
  assert not checkpoints.exists() or not os.listdir(checkpoints)  # no step


def test_smoke_trains_through_the_launcher(image_tree, tmp_path):
  # The README's command, with `smoke`.
  workdir = tmp_path / "work"
  proc = subprocess.run(
      [sys.executable, "-m", "mrl_jax.main",
       f"--config=configs/image_folder.py:root={image_tree},smoke",
       f"--workdir={workdir}"],
      cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  summary = json.loads((workdir / "eval_summary.json").read_text())
  assert summary["step"] == 4 and summary["num_examples"] == 9
  assert summary["nesting"] == [8, 16]  # 40x48 px: the small-image cnn_mu
  assert "eval at step 4 on 9 examples" in proc.stdout
  bad = subprocess.run(
      [sys.executable, "-m", "mrl_jax.main",
       f"--config=configs/image_folder.py:root={tmp_path}/none,smoke",
       f"--workdir={workdir}"],
      cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  assert bad.returncode != 0
  assert "none' does not exist" in bad.stderr
