"""Test-wide setup: 8 fake CPU devices, set before jax is imported."""
import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# tf.data must not grab the (fake) accelerators or all host threads.
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
