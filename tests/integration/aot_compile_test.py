"""--mode=aot end to end: the real train step of shipped configs compiled for
TPU topologies on this CPU (libtpu's compile-only devices, `.[aot]`)."""
import importlib.util
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from mrl_jax import aot

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
needs_libtpu = pytest.mark.skipif(
    importlib.util.find_spec("libtpu") is None,
    reason="libtpu not installed: pip install '.[aot]'")


@needs_libtpu
def test_launcher_compiles_tiny_resnet_for_v5e_2x2(tmp_path):
  workdir, cache = tmp_path / "aot", tmp_path / "xla_cache"
  proc = subprocess.run(
      [sys.executable, "-m", "mrl_jax.main", "--mode=aot",
       f"--config={REPO}/configs/resnet50_imagenet.py:smoke",
       f"--workdir={workdir}", "--topology=v5e:2x2"],
      cwd=REPO, capture_output=True, text=True, timeout=600,
      env={**os.environ, "JAX_COMPILATION_CACHE_DIR": str(cache)})
  assert proc.returncode == 0, proc.stderr[-3000:]
  # With a persistent cache on, the compile-only TPU step stays out of it (it
  # could not be loaded back: every later plan would warn).
  assert not [p for p in (os.listdir(cache) if cache.exists() else [])
              if "train_step" in p]
  with open(workdir / "aot_report.json") as f:
    report = json.load(f)
  assert report["topology"] == "v5e:2x2" and report["chips"] == 4
  assert report["mesh"] == {"data": 4, "fsdp": 1, "model": 1}
  assert report["global_batch"] == 16 and report["example_shapes"]["image"] == [64, 64, 3]
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


@needs_libtpu
def test_aot_compiles_smoke_config_with_its_eval_batch_on_64_chips(
    tmp_path, config_module):
  # The smoke train batch (16) is too small for 64 chips; its eval batch (16)
  # stays as shipped and no longer needs to split over them.
  config = config_module("resnet50_imagenet").get_config("smoke")
  config.batch_size = 64
  report = aot.run(config, str(tmp_path), "v4:4x4x4")
  assert report["chips"] == 64 and report["mesh"]["data"] == 64
  assert report["global_batch"] == 64 and report["fits"]
  with open(tmp_path / "aot_report.json") as f:
    assert json.load(f)["chips"] == 64
  np.testing.assert_array_less(0, report["compiled_flops_per_chip"])


@needs_libtpu
def test_aot_compiles_the_bert_mlm_smoke_config_fsdp_on_16_chips(
    tmp_path, config_module):
  """configs/bert_base_mlm.py's own mesh (FSDP over every chip) and nested
  MLM head, at smoke size, on the 16-chip slice of its committed report."""
  config = config_module("bert_base_mlm").get_config("smoke")
  report = aot.run(config, str(tmp_path), "v4:2x2x4")
  assert report["chips"] == 16
  assert report["mesh"] == {"data": 1, "fsdp": 16, "model": 1}
  assert report["example_shapes"]["input_ids"] == [64]
  assert report["example_shapes"]["masked_ids"] == [10]
  assert report["fits"] and 0.5 < report["compiled_over_model_flops"] < 3


def test_committed_reports_are_the_commands_run_reports_runs():
  """Each experiments/aot/<name> folder holds the report of the topology
  and batch its run_reports.sh command names."""
  script = open(os.path.join(REPO, "experiments/aot/run_reports.sh")).read()
  commands = dict(re.findall(r"^  \[(\w+)\]=\"([^\"]+)\"$", script, re.M))
  folders = {name for name in os.listdir(os.path.join(REPO, "experiments/aot"))
             if os.path.isdir(os.path.join(REPO, "experiments/aot", name))}
  assert set(commands) == folders
  for name, command in commands.items():
    with open(os.path.join(REPO, "experiments/aot", name,
                           "aot_report.json")) as f:
      report = json.load(f)
    topology = re.search(r"--topology=(\S+)", command).group(1)
    assert report["topology"] == topology, name
    assert f"_b{report['global_batch']}_" in name, name


@needs_libtpu
def test_aot_compiles_the_align_smoke_config_without_its_dataset(
    tmp_path, config_module):
  """configs/align_vit_b16_bert.py (two towers, Adafactor, the sharded
  nested softmax) at smoke size on 4 chips; its TFDS dataset is absent."""
  config = config_module("align_vit_b16_bert").get_config("smoke")
  config.data.data_dir = str(tmp_path / "no_tfds")
  report = aot.run(config, str(tmp_path), "v5e:2x2")
  assert report["chips"] == 4 and report["fits"]
  assert report["example_shapes"]["image"] == [32, 32, 3]
  assert report["example_shapes"]["input_ids"] == [64]
  assert not (tmp_path / "no_tfds").exists()
