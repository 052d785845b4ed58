"""--mode=aot: the real train step compiled for a TPU topology on this CPU.

The compile test needs libtpu (`pip install '.[aot]'`, in the test extra).
"""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from mrl_jax import aot

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAVE_LIBTPU = importlib.util.find_spec("libtpu") is not None
needs_libtpu = pytest.mark.skipif(
    not HAVE_LIBTPU, reason="libtpu not installed: pip install '.[aot]'")


@needs_libtpu
def test_launcher_compiles_tiny_resnet_for_v5e_2x2(tmp_path):
  workdir = tmp_path / "aot"
  proc = subprocess.run(
      [sys.executable, "-m", "mrl_jax.main", "--mode=aot",
       f"--config={REPO}/configs/resnet50_imagenet.py:smoke",
       f"--workdir={workdir}", "--topology=v5e:2x2"],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(workdir / "aot_report.json") as f:
    report = json.load(f)
  assert report["topology"] == "v5e:2x2" and report["chips"] == 4
  assert report["mesh"] == {"data": 4, "fsdp": 1, "model": 1}
  assert report["global_batch"] == 16 and report["image_shape"] == [64, 64, 3]
  mem = report["memory_per_chip_bytes"]
  assert mem["hbm"] == 16 * 2**30
  assert all(mem[k] > 0 for k in ("arguments", "outputs", "generated_code"))
  # The state is donated: its outputs reuse the argument buffers.
  assert mem["aliased"] > 0.9 * mem["outputs"]
  assert mem["total"] == (mem["arguments"] + mem["outputs"] - mem["aliased"]
                          + mem["temporaries"] + mem["generated_code"])
  assert report["fits"] and mem["headroom"] == mem["hbm"] - mem["total"]
  assert report["compiled_flops_per_step"] == pytest.approx(
      4 * report["compiled_flops_per_chip"])
  # A real train step: backward and optimizer included, nothing lost.
  assert 0.5 < report["compiled_over_model_flops"] < 3
  assert report["step_seconds_at_peak"] == pytest.approx(
      report["compiled_flops_per_chip"] / 197e12)
  with open(workdir / "aot_report.txt") as f:
    text = f.read()
  assert "fits" in text and text.strip() in proc.stdout


def test_bad_topology_names_fail_in_one_line():
  with pytest.raises(ValueError, match="not GENERATION:AxBxC"):
    aot.parse_topology("v5e-256")
  with pytest.raises(ValueError, match="unknown TPU generation 'v9'.*v5e"):
    aot.parse_topology("v9:2x2")


@needs_libtpu
def test_shape_libtpu_rejects_is_a_value_error():
  with pytest.raises(ValueError, match="cannot build topology 'v5e:3x7'"):
    aot.topology_devices("v5e:3x7")


def test_missing_libtpu_names_the_extra(monkeypatch):
  # None in sys.modules is how Python marks a module as not importable.
  monkeypatch.setitem(sys.modules, "libtpu", None)
  with pytest.raises(ValueError, match=r"pip install '\.\[aot\]'"):
    aot.topology_devices("v5e:2x2")


def test_example_spec_follows_the_preprocessing(config_module):
  jft = config_module("vit_b16_jft").get_config("num_classes=50")
  spec = aot.example_spec(jft)
  assert spec["image"].shape == (224, 224, 3)
  assert spec["label"].shape == (50,)  # multi-hot targets
  rn50 = config_module("resnet50_imagenet").get_config("smoke")
  spec = aot.example_spec(rn50)
  # Progressive resizing 32 -> 64 in smoke: the largest size (memory peak).
  assert spec["image"].shape == (64, 64, 3)
  assert spec["label"].shape == () and spec["label"].dtype.kind == "i"
