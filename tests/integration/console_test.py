"""A CPU run through the launcher prints no error-level lines, even with
libtpu installed (the launcher starts only the CPU backend there)."""
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


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                    reason="without libtpu JAX prints no TPU errors anyway")
@pytest.mark.skipif(platforms.has_accelerator(),
                    reason="this machine has a TPU or GPU")
def test_cpu_run_prints_no_error_lines(tmp_path):
  env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
  proc = subprocess.run(
      [sys.executable, "-m", "mrl_jax.main",
       f"--config={REPO}/configs/default.py:smoke",
       f"--workdir={tmp_path / 'run'}"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "top-1" in proc.stdout  # the eval table
  assert not ERROR_LINE.findall(proc.stderr), proc.stderr[-3000:]
