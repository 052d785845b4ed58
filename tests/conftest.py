"""Test-wide setup, done before jax is imported (subprocesses inherit it).

* 8 fake CPU devices, so sharded code paths run for real.
* Most XLA optimisations off: tests run tiny models for a few steps, where
  compile time dominates (the flax examples' tests do the same).
"""
import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# tf.data must not grab the (fake) accelerators.
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
