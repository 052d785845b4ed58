"""A CPU run through the launcher prints no error-level lines, even with
libtpu installed (the launcher starts only the CPU backend there), and none
of TensorFlow's import-time notices."""
import importlib.util
import os
import re
import subprocess
import sys

import pytest

from mrl_jax import platforms

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
# glog/absl error and fatal lines, and what libtpu and JAX print when the TPU
# backend fails to start.
ERROR_LINE = re.compile(r"^[EF]\d{4} |ERROR|Unable to initialize|"
                        r"Failed to find host bounds", re.MULTILINE)
CPP_NOTICE = re.compile(r"oneDNN custom operations|cpu_feature_guard|"
                        r"absl::InitializeLog")


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                    reason="without libtpu JAX prints no TPU errors anyway")
@pytest.mark.skipif(platforms.has_accelerator(),
                    reason="this machine has a TPU or GPU")
def test_cpu_run_prints_no_error_lines(tmp_path):
  # What a user's shell has: no platform chosen, TensorFlow's log level and
  # oneDNN switch unset (conftest sets the log level for the other tests).
  env = {k: v for k, v in os.environ.items()
         if k not in ("JAX_PLATFORMS", "TF_CPP_MIN_LOG_LEVEL",
                      "TF_ENABLE_ONEDNN_OPTS")}
  proc = subprocess.run(
      [sys.executable, "-m", "mrl_jax.main",
       f"--config={REPO}/configs/default.py:smoke",
       f"--workdir={tmp_path / 'run'}"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "top-1" in proc.stdout  # the eval table
  assert not ERROR_LINE.findall(proc.stderr), proc.stderr[-3000:]
  # Nor TensorFlow's import-time C++ notices (the CPU-instruction one on
  # every x86 CPU, oneDNN's on AVX-512 ones) and absl's line before them.
  assert not CPP_NOTICE.findall(proc.stderr), proc.stderr[-3000:]
