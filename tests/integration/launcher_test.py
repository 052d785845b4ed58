"""The launcher's errors: one line `mrl_jax: error: <what>; <fix>`, exit 1.

Every case fails before any training, so each launcher run takes seconds.
"""
import errno
import os
import subprocess
import sys

import pytest

from mrl_jax import errors
from mrl_jax import modes

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
DEFAULT = os.path.join(REPO, "configs", "default.py")
IMAGE_FOLDER = os.path.join(REPO, "configs", "image_folder.py")

# Runs the launcher with its runner for --mode=train replaced by one that
# fails the way a full or read-only disk makes a write fail.
FAILING_WRITE = """
import os, sys
from mrl_jax import main, train
def train_and_evaluate(config, workdir):
  raise OSError({errno}, os.strerror({errno}),
                os.path.join(workdir, "metrics.jsonl"))
train.train_and_evaluate = train_and_evaluate
sys.argv = ["mrl_jax.main"] + sys.argv[1:]
main.run()
"""


def launch(*flags, script=None):
  cmd = [sys.executable] + (["-c", script] if script else
                            ["-m", "mrl_jax.main"])
  return subprocess.run(cmd + list(flags), cwd=REPO, capture_output=True,
                        text=True, timeout=120)


def error_line(proc) -> str:
  """The launcher's one error line; fails if it is not alone or exit != 1."""
  assert proc.returncode == 1, proc.stderr
  assert "Traceback" not in proc.stderr, proc.stderr
  assert "FATAL" not in proc.stderr and "--helpshort" not in proc.stderr
  mrl_lines = [l for l in proc.stderr.splitlines() if "mrl_jax" in l]
  assert len(mrl_lines) == 1, proc.stderr
  assert proc.stderr.rstrip().endswith(mrl_lines[0]), proc.stderr
  assert mrl_lines[0].startswith("mrl_jax: error: ")
  return mrl_lines[0]


@pytest.mark.parametrize("config,match", [
    (f"{DEFAULT}:dim=abc",
     "config argument dim='abc' is not of type int; write dim=<int>"),
    (f"{DEFAULT}:foo=1", "unknown config argument 'foo'; known: dim, head"),
    (os.path.join(REPO, "configs", "nope.py"),
     "nope.py does not exist; pass --config=path/to/config.py"),
    (f"{IMAGE_FOLDER}:root=/nonexistent",
     "image folder '/nonexistent' does not exist; point it at"),
])
def test_bad_config_argument_or_file(config, match, tmp_path):
  line = error_line(launch(f"--config={config}", f"--workdir={tmp_path}"))
  assert f"--config={config}" in line and match in line
  assert not os.listdir(tmp_path)


def test_empty_image_folder(tmp_path):
  (tmp_path / "images").mkdir()
  line = error_line(launch(f"--config={IMAGE_FOLDER}:root={tmp_path}/images",
                           f"--workdir={tmp_path}/run"))
  assert "has no split folders; lay it out as" in line


def test_config_file_that_fails_to_read_a_file(tmp_path):
  config = tmp_path / "reads.py"
  config.write_text("def get_config(arg=None):\n"
                    "  open('/nonexistent/classes.txt')\n")
  line = error_line(launch(f"--config={config}", f"--workdir={tmp_path}/w"))
  assert line == ("mrl_jax: error: No such file or directory: "
                  "/nonexistent/classes.txt; check that path")


def test_unknown_config_field_names_the_flag_and_close_fields(tmp_path):
  line = error_line(launch(f"--config={DEFAULT}:smoke",
                           "--config.optimizer.lr=1", f"--workdir={tmp_path}"))
  assert "--config.optimizer.lr names no config field" in line
  assert "config.optimizer has learning_rate, name," in line


def test_all_zero_relative_importance_is_refused_before_training(tmp_path):
  line = error_line(launch(f"--config={DEFAULT}:smoke",
                           "--config.mrl.relative_importance=(0,0,0)",
                           f"--workdir={tmp_path}"))
  assert "relative importance (0.0, 0.0, 0.0) is all zero" in line
  assert not os.listdir(tmp_path)


def test_failed_write_names_the_path_and_the_errno(tmp_path):
  flags = (f"--config={DEFAULT}:smoke", f"--workdir={tmp_path}")
  line = error_line(launch(*flags,
                           script=FAILING_WRITE.format(errno=errno.ENOSPC)))
  assert line == (f"mrl_jax: error: {os.strerror(errno.ENOSPC)}: "
                  f"{tmp_path}/metrics.jsonl; free space there or point "
                  "--workdir at another disk")
  # The traceback is there for whoever asks for it, the error line last.
  proc = launch(*flags, "--verbosity=1",
                script=FAILING_WRITE.format(errno=errno.EROFS))
  assert proc.returncode == 1 and "Traceback" in proc.stderr
  assert proc.stderr.rstrip().endswith(
      f"{os.strerror(errno.EROFS)}: {tmp_path}/metrics.jsonl; point "
      "--workdir at a writable directory")


def test_mode_flag_lists_every_registered_mode():
  proc = launch(f"--config={DEFAULT}", "--mode=trian", "--workdir=unused")
  line = error_line(proc)
  assert "--mode=trian" in line and "|".join(modes.MODES) in line


def test_one_line_of_an_os_error():
  error = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/w/checkpoints")
  assert errors.one_line(error) == (
      f"{os.strerror(errno.ENOSPC)}: /w/checkpoints; free space there or "
      "point --workdir at another disk")
  assert errors.one_line(ValueError("bad; fix it")) == "bad; fix it"


def test_every_mode_resolves_to_a_runner_and_a_printer():
  for name, mode in modes.MODES.items():
    assert callable(modes.resolve(mode.runner)), name
    assert callable(modes.resolve(mode.printer)), name
    writes = f" (DIR/{mode.writes})" if mode.writes else ""
    assert f"{name}: {mode.help}{writes}" in modes.help_text()


@pytest.mark.parametrize("content,match", [
    (b"", "is empty; pass a file written by torch.save"),
    (b"hello\n", "is not a torch checkpoint .*; pass a file written by"),
])
def test_import_torch_refuses_an_empty_or_foreign_file(content, match,
                                                       tmp_path):
  pytest.importorskip("torch")
  # pylint: disable-next=import-outside-toplevel
  from mrl_jax.tools import import_torch
  path = tmp_path / "model.pt"
  path.write_bytes(content)
  with pytest.raises(ValueError, match=match):
    import_torch.load_state_dict(str(path))


def test_without_jax_cluster_detection_runs_are_single_process(monkeypatch):
  from absl import logging  # pylint: disable=import-outside-toplevel
  from jax._src import clusters  # pylint: disable=import-outside-toplevel
  from mrl_jax import distributed  # pylint: disable=import-outside-toplevel
  # As in a JAX that keeps its detectors elsewhere.
  monkeypatch.delattr(clusters.ClusterEnv, "_cluster_types")
  warnings = []
  monkeypatch.setattr(logging, "warning", lambda msg, *a: warnings.append(
      msg % a))
  assert distributed.detected_cluster() is None
  assert "pass --coordinator_address, --num_processes" in warnings[0]
