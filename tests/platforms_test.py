"""The launcher starts only the CPU backend on a machine without TPU or GPU
(detected from device files, without starting a backend). The console check
through the launcher is tests/integration/console_test.py."""
import fnmatch
import types

import pytest

from mrl_jax import platforms


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
