"""The launcher starts only the CPU backend on a machine without TPU or GPU,
so a CPU run prints no TPU start-up errors even with libtpu installed."""
import fnmatch
import importlib.util
import os
import re
import subprocess
import sys
import types

import pytest

from mrl_jax import platforms

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# glog/absl error and fatal lines, and what libtpu and JAX print when the TPU
# backend fails to start.
ERROR_LINE = re.compile(r"^[EF]\d{4} |ERROR|Unable to initialize|"
                        r"Failed to find host bounds", re.MULTILINE)


class _FakeConfig:
  """jax.config as the launcher sees it before anything chose a platform."""

  def __init__(self):
    self.jax_platforms = ""
    self.updates = []

  def update(self, name, value):
    self.updates.append((name, value))


@pytest.fixture(name="config")
def fixture_config(monkeypatch):
  """A machine with no accelerator device files and no platform chosen;
  returns the fake jax.config that records updates."""
  config = _FakeConfig()
  monkeypatch.setattr(platforms, "jax", types.SimpleNamespace(config=config))
  monkeypatch.setattr(platforms.glob, "glob", lambda pattern: [])
  monkeypatch.delenv("JAX_PLATFORMS", raising=False)
  monkeypatch.delenv("JAX_FORCE_TPU_INIT", raising=False)
  return config


def test_cpu_only_machine_gets_the_cpu_backend(config):
  assert platforms.use_cpu_if_no_accelerator()
  assert config.updates == [("jax_platforms", "cpu")]


@pytest.mark.parametrize("device", ["/dev/accel0", "/dev/vfio/0",
                                    "/dev/nvidia0", "/dev/kfd"])
def test_accelerator_device_files_leave_the_choice_to_jax(device, config,
                                                          monkeypatch):
  monkeypatch.setattr(platforms.glob, "glob", lambda pattern: (
      [device] if fnmatch.fnmatch(device, pattern) else []))
  assert not platforms.use_cpu_if_no_accelerator() and not config.updates


def test_google_pci_device_is_a_tpu(config, monkeypatch, tmp_path):
  (tmp_path / "vendor").write_text("0x1ae0\n")
  monkeypatch.setattr(platforms.glob, "glob", lambda pattern: (
      [str(tmp_path / "vendor")] if pattern.startswith("/sys/") else []))
  assert not platforms.use_cpu_if_no_accelerator() and not config.updates


@pytest.mark.parametrize("env", [{"JAX_PLATFORMS": "cuda"},
                                 {"JAX_FORCE_TPU_INIT": "1"}])
def test_users_choice_is_kept(env, config, monkeypatch):
  for key, value in env.items():
    monkeypatch.setenv(key, value)
  assert not platforms.use_cpu_if_no_accelerator() and not config.updates


def test_platform_set_in_jax_config_is_kept(config):
  config.jax_platforms = "cuda"
  assert not platforms.use_cpu_if_no_accelerator() and not config.updates


@pytest.mark.slow
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
