"""Smoke tests of the benchmarks in experiments/bench, on tiny models.

The train-step scripts run on one device (the first of conftest's 8 fake
CPU devices), as they do on a GPU: they measure one chip, so there is no
mesh to test. Their numbers mean nothing here; the tests check that every
field of the JSON is there, positive and finite. To stay fast (each compile
of the trainer's step costs seconds on CPU), each script compiles two
variants and the tests together cover all three head types.
"""
import importlib.util
import io
import json
import math
import pathlib
import sys
import types

from PIL import Image
import pytest

BENCH_DIR = pathlib.Path(__file__).resolve().parents[2] / "experiments/bench"


def _load(name: str) -> types.ModuleType:
  """Imports experiments/bench/<name>.py (a script dir, not a package)."""
  if str(BENCH_DIR) not in sys.path:  # as when run as a script
    sys.path.insert(0, str(BENCH_DIR))
  spec = importlib.util.spec_from_file_location(name, BENCH_DIR / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _assert_positive_finite(value, where: str) -> None:
  assert isinstance(value, (int, float)), where
  assert math.isfinite(value) and value > 0, f"{where} = {value}"


def _read_json(path: pathlib.Path, returned: dict) -> dict:
  on_disk = json.loads(path.read_text())
  assert on_disk.keys() == returned.keys()
  return on_disk


def test_mrl_overhead_reports_every_variant(tmp_path):
  out = tmp_path / "overhead.json"
  module = _load("mrl_overhead")
  returned = module.main([
      "--models=vit_mu", "--heads=ff,mrl", "--image_size=32", "--batch=8",
      "--rounds=2", f"--out={out}"])
  results = _read_json(out, returned)
  assert results["rounds"] == 2 and results["batch"] == 8
  res = results["models"]["vit_mu"]
  assert set(res["variants"]) == {"ff", "mrl"}
  for head, v in res["variants"].items():
    assert len(v["step_s"]) == 2
    for key in ("step_s_median", "step_s_min", "step_s_max", "compile_s",
                "xla_flops_per_image", "head_train_flops_per_image_analytic",
                "head_and_loss_alone_s"):
      _assert_positive_finite(v[key], f"{head}.{key}")
  assert set(res["ratios"]) == {"mrl/ff"}
  for key, value in res["ratios"]["mrl/ff"].items():
    _assert_positive_finite(value, f"mrl/ff.{key}")
  # vit_mu: d = 32, nesting (8, 16, 32) -> MRL reads 56 features, FF 32.
  assert res["variants"]["mrl"]["nesting_dims"] == [8, 16, 32]
  assert res["variants"]["mrl"]["head_train_flops_per_image_analytic"] == (
      pytest.approx(6 * 56 * 1000))
  assert res["variants"]["ff"]["head_train_flops_per_image_analytic"] == (
      pytest.approx(6 * 32 * 1000))


def test_mlm_step_reports_nested_over_plain(tmp_path):
  out = tmp_path / "mlm_step.json"
  returned = _load("mlm_step").main([
      "--models=bert_mu", "--heads=mrl_e,ff", "--batch=2", "--seq_len=32",
      "--rounds=2", f"--out={out}"])
  results = _read_json(out, returned)
  assert (results["batch"], results["seq_len"], results["rounds"]) == (2, 32,
                                                                       2)
  res = results["models"]["bert_mu"]
  assert set(res["variants"]) == {"mrl_e", "ff"}
  for head, v in res["variants"].items():
    assert len(v["step_s"]) == 2
    assert len(v["step_cpu_s"]) == 2
    for key in ("step_s_median", "step_s_min", "step_s_max",
                "step_cpu_s_median", "compile_s", "xla_flops_per_step",
                "temp_bytes", "decoder_alone_s", "decoder_alone_cpu_s",
                "decoder_alone_xla_flops"):
      _assert_positive_finite(v[key], f"{head}.{key}")
  # bert_mu: d = 32; MRL-E decodes every halving prefix, plain MLM all of d.
  assert res["variants"]["mrl_e"]["nesting_dims"] == [8, 16, 32]
  assert res["variants"]["ff"]["nesting_dims"] == [32]
  ratio = res["ratios"]["mrl_e/ff"]
  for key, value in ratio.items():
    _assert_positive_finite(value, f"mrl_e/ff.{key}")
  # The shared-table decoder's matmuls read 32 + 24 (the logits of dims 32,
  # then 16 and 8 by column blocks) + 32 + 32 (gradients) against 3 x 32.
  assert 1.1 < ratio["decoder_alone_xla_flops"] < 1.5
  assert ratio["xla_flops"] > 1.0
  per_dim = res["decoder_per_dim"]
  assert list(per_dim) == ["8", "16", "32"]
  flops = [per_dim[m]["xla_flops"] for m in per_dim]
  assert flops == sorted(flops)  # wider dims, more matmul work
  for m, alone in per_dim.items():
    for key, value in alone.items():
      _assert_positive_finite(value, f"decoder_per_dim.{m}.{key}")


# The TPU compile stays out of the tests' persistent cache (aot.py): a read
# of a compile-only executable would warn on the next run.
@pytest.mark.filterwarnings(
    "error:Error reading persistent compilation cache entry")
def test_contrastive_step_reports_nested_over_plain(tmp_path):
  """Tiny towers; the loss-alone compile on a 4-chip TPU slice when libtpu
  is installed."""
  out = tmp_path / "contrastive_step.json"
  topology = "v5e:2x2" if importlib.util.find_spec("libtpu") else ""
  returned = _load("contrastive_step").main([
      "--models=vit_mu:bert_mu", "--batch=2", "--rounds=1",
      f"--score_topology={topology}", "--score_batch=64",
      "--score_nesting=8,16", f"--out={out}"])
  results = _read_json(out, returned)
  res = results["models"]["vit_mu:bert_mu"]
  # The config's nesting on d = 768 projections of both tiny towers.
  assert res["variants"]["mrl"]["nesting_dims"] == [12, 24, 48, 96, 192,
                                                    384, 768]
  assert res["variants"]["ff"]["nesting_dims"] == [768]
  for head, v in res["variants"].items():
    assert len(v["step_s"]) == 1
    for key in ("step_s_median", "step_cpu_s_median", "compile_s",
                "xla_flops_per_step", "temp_bytes"):
      _assert_positive_finite(v[key], f"{head}.{key}")
  for key, value in res["ratios"]["mrl/ff"].items():
    _assert_positive_finite(value, f"mrl/ff.{key}")
  if topology:
    scores = results["score_memory"]
    assert (scores["chips"], scores["rows_per_chip"]) == (4, 16)
    assert (scores["nesting_dims"], scores["embed_dim"]) == ([8, 16], 16)
    assert set(scores["forms"]) == {"nested", "unrolled", "plain"}
    for form, mem in scores["forms"].items():
      _assert_positive_finite(mem["argument_bytes"], f"{form}.arguments")


def test_contrastive_step_rejects_a_model_without_its_pair():
  with pytest.raises(SystemExit):
    _load("contrastive_step").parse_args(["--models=vit_b16"])


def test_contrastive_step_rejects_unparsable_score_nesting():
  with pytest.raises(SystemExit):
    _load("contrastive_step").parse_args(["--score_nesting=12;24"])


def test_mlm_step_rejects_heads_without_baseline():
  with pytest.raises(SystemExit):
    _load("mlm_step").parse_args(["--heads=mrl_e,mrl"])


def test_mrl_overhead_rejects_heads_without_baseline():
  with pytest.raises(SystemExit):
    _load("mrl_overhead").parse_args(["--heads=mrl,mrl_e"])


def test_gpu_throughput_runs_on_cpu(tmp_path):
  out = tmp_path / "throughput.json"
  returned = _load("gpu_throughput").main([
      "--models=vit_mu", "--heads=mrl_e,ff", "--image_size=32", "--batch=8",
      "--steps=2", "--warmup=1", "--rounds=2", f"--out={out}"])
  results = _read_json(out, returned)
  assert results["dtype"] == "bfloat16" and results["device_kind"]
  res = results["models"]["vit_mu"]
  assert res["batch"] == 8 and set(res["heads"]) == {"mrl_e", "ff"}
  for head, v in res["heads"].items():
    assert len(v["step_s_windows"]) == 2
    for key in ("step_s", "img_per_s", "compile_s", "xla_flops_per_image",
                "mfu_xla"):
      _assert_positive_finite(v[key], f"{head}.{key}")
    # No published MAC count for the tiny model: no analytic MFU.
    assert v["analytic_flops_per_image"] is None
  ratio = res["throughput_over_ff"]["mrl_e"]
  _assert_positive_finite(ratio["of_medians"], "mrl_e/ff")
  assert len(ratio["rounds"]) == 2


def test_input_pipeline_reports_ratio_and_per_core_rates(tmp_path):
  out = tmp_path / "input.json"
  returned = _load("input_pipeline").main([
      "--images=4", "--rounds=2", "--per_round=32", "--size=32",
      f"--out={out}"])
  results = _read_json(out, returned)
  for key in ("mean_jpeg_kb", "ours_img_s_per_core", "naive_img_s_per_core",
              "ours_img_s_wall", "naive_img_s_wall", "ratio_median",
              "ratio_min", "ratio_max", "ours_img_s_16_cores_estimate",
              "cores_for_target"):
    _assert_positive_finite(results[key], key)
  assert results["ratio_min"] <= results["ratio_median"] <= results[
      "ratio_max"]
  assert isinstance(results["feeds_3500_img_s_with_16_cores"], bool)


def test_input_pipeline_jpegs_are_imagenet_like():
  jpegs = _load("input_pipeline").make_jpegs(2)
  for data in jpegs:
    with Image.open(io.BytesIO(data)) as image:
      assert (image.format, image.size, image.mode) == ("JPEG", (500, 375),
                                                       "RGB")
    assert 60_000 < len(data) < 200_000  # ImageNet averages ~110 KB


def _write_split(directory: pathlib.Path, embeddings, labels) -> None:
  """A minimal `--mode=export` split: one shard and its metadata."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  directory.mkdir(parents=True)
  np.savez(directory / "shard-p000-00000.npz", embeddings=embeddings,
           labels=labels)
  (directory / "metadata.json").write_text(json.dumps(
      {"model": "toy", "head": "mrl", "step": 1, "nesting": [4, 8, 16]}))


def test_search_bench_exact_and_adaptive(tmp_path):
  import numpy as np  # pylint: disable=import-outside-toplevel
  bench = _load("search_bench")
  exact = bench.exact_vs_faiss(rows=3000, dim=64, num_queries=20, k=10,
                               repeats=1)
  assert exact["id_agreement"] == 1.0  # both exact: same neighbours
  for key in ("jax_qps", "faiss_qps", "jax_over_faiss", "sgemm_gflops",
              "jax_fraction_of_sgemm", "faiss_fraction_of_sgemm"):
    _assert_positive_finite(exact[key], key)
  # Class signal in the leading coordinates, as in an MRL embedding.
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 4, 900)
  z = rng.normal(size=(900, 16)).astype(np.float32)
  z[:, :4] += 3 * np.eye(4)[labels]
  _write_split(tmp_path / "train", z[:800], labels[:800])
  _write_split(tmp_path / "test", z[800:], labels[800:])
  out = bench.adaptive_vs_exact(str(tmp_path), "train", [4], shortlist_k=50,
                                k=10, repeats=1, num_queries=60,
                                query_batch_size=25)
  assert out["rows"] == 800 and out["queries"] == 60 and out["dim"] == 16
  assert out["database"] == "train"
  assert [a["Ds"] for a in out["adaptive"]] == [4]
  for a in out["adaptive"]:
    _assert_positive_finite(a["speedup"], "speedup")
    assert 0.0 < a["mAP@10"] <= 1.0
    # The 4-d shortlist holds the class signal, the full-dim re-rank keeps
    # it: not worse than exact search (here better: it skips noise dims).
    assert a["mAP@10_minus_exact_points"] > -1.0
