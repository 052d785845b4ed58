"""Which JAX backends the launcher starts on a machine without accelerators.

With libtpu installed (the `aot` and `test` extras), JAX tries the TPU backend
first in every process. On a machine without a TPU that costs about a second
and prints error-level lines from libtpu ("Failed to find host bounds",
"E0000 ... TPU_WORKER_HOSTNAMES", "Unable to initialize backend 'tpu'") that
read like a broken install. The launcher therefore starts only the CPU backend
when the user chose no platform (JAX_PLATFORMS) and the machine shows no TPU
or GPU. `--mode=aot` needs no TPU backend: libtpu's topology API gives it
compile-only devices.
"""
import glob
import os

import jax

# TPU chips are PCI devices of Google's vendor id (how JAX's own TPU set-up
# finds them); TPU VMs also expose them as /dev/accel* (v2-v4) or VFIO groups
# (v5e and later). GPUs: the device nodes of the NVIDIA (native, container,
# WSL2) and AMD (KFD) drivers.
_GOOGLE_PCI_VENDOR = "0x1ae0"
_ACCELERATOR_NODES = ("/dev/accel*", "/dev/vfio/[0-9]*", "/dev/nvidia0",
                      "/dev/nvidiactl", "/dev/dxg", "/dev/kfd")


def _google_pci_device() -> bool:
  for path in glob.glob("/sys/bus/pci/devices/*/vendor"):
    try:
      with open(path) as f:
        if f.read().strip() == _GOOGLE_PCI_VENDOR:
          return True
    except OSError:
      continue
  return False


def has_accelerator() -> bool:
  """Whether this machine shows a TPU or GPU, judged from device files only
  (starting a JAX backend to find out is what prints the errors)."""
  if any(glob.glob(pattern) for pattern in _ACCELERATOR_NODES):
    return True
  return _google_pci_device()


def use_cpu_if_no_accelerator() -> bool:
  """Selects the CPU backend when nothing else was chosen and no TPU or GPU
  is present; returns whether it did. Call before JAX starts a backend.

  A platform set by the user (JAX_PLATFORMS, jax.config) and
  JAX_FORCE_TPU_INIT are left alone.
  """
  if (os.environ.get("JAX_PLATFORMS") or jax.config.jax_platforms
      or "JAX_FORCE_TPU_INIT" in os.environ or has_accelerator()):
    return False
  jax.config.update("jax_platforms", "cpu")
  return True
