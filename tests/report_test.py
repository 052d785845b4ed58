"""experiments/fashion_mnist/report.py on hand-made summaries: the table,
the claims check (holds / FAILS / missing) and the PNGs."""
import json
import pathlib

from conftest import REPO, load_script, write_summary

DIMS = (8, 16, 32, 64, 128)


def _retrieval_run(database, rows, points, speedup):
  """One database's entry of search_bench.json's "adaptive" list."""
  return {"database": database, "model": "small_cnn", "head": "mrl",
          "rows": rows, "queries": 2000, "dim": 2048, "shortlist_k": 200,
          "exact_seconds": speedup, "exact_mAP@10": 0.8,
          "adaptive": [{"Ds": 16, "Dr": 2048, "seconds": 1.0,
                        "speedup": speedup, "flop_ratio": 50.0,
                        "mAP@10": 0.8 + points / 100,
                        "mAP@10_minus_exact_points": points}]}


def test_report_table_claims_and_plots(tmp_path):
  root, out = tmp_path / "runs", tmp_path / "out"
  write_summary(root, "mrl", "eval",
                {"top1": {str(d): 0.90 + d / 10_000 for d in DIMS}})
  write_summary(root, "mrl", "knn", {f"knn/top1/d={d}": 0.88 for d in DIMS})
  # FF-8 one point above MRL-8 (a failed claim), FF-16 below; others absent.
  write_summary(root, "ff8", "eval", {"top1": {"8": 0.9108}})
  write_summary(root, "ff16", "eval", {"top1": {"16": 0.9000}})
  write_summary(root, "ff128", "baselines", {
      **{f"svd/linear_top1/d={d}": 0.5 for d in DIMS},
      **{f"random/linear_top1/d={d}": 0.3 for d in DIMS}})
  write_summary(root, "mrl", "adaptive", {
      "nesting": list(DIMS), "seeds": [0, 1], "num_fit": 2, "num_eval": 8,
      "accuracy": {"16": 0.90, "128": 0.92},
      "expected_dim": {"16": 10.0, "128": 20.0},
      "expected_cost": {"16": 12.0, "128": 30.0},
      "dim_accuracy": {str(d): 0.9 + d / 10_000 for d in DIMS},
      "smallest_expected_dim_matching_full_dim": 20.0})
  # Retrieval benchmark on two databases: equal mAP on the small one only.
  out.mkdir()
  (out / "search_bench.json").write_text(json.dumps({"adaptive": [
      _retrieval_run("train", 60_000, -0.05, 3.0),
      _retrieval_run("train_views16", 960_000, -0.25, 16.0)],
      "exact": {"dim": 2048, "rows": 50_000, "queries": 500,
                "jax_over_faiss": 0.95,
                "jax_over_faiss_per_round": [0.9, 1.05, 0.95],
                "jax_fraction_of_sgemm": 0.93,
                "faiss_fraction_of_sgemm": 0.98}}))
  report = load_script("experiments/fashion_mnist/report.py")
  r = report.write(str(root), str(out))
  text = (out / "results.md").read_text()
  assert "database train_views16: 960,000 rows, 2,000 queries" in text
  assert ("D_r=2048, 60,000 rows) matches exact 2048-d mAP@10: holds "
          "(79.95 vs 80.00); 3.0x faster") in text
  assert ("D_r=2048, 960,000 rows) matches exact 2048-d mAP@10: FAILS "
          "(79.75 vs 80.00); 16.0x faster") in text
  assert ("- Exact 2048-d search (50,000 rows, 500 queries) at least FAISS "
          "IndexFlatIP's throughput: FAILS (0.95x; same-round ratios "
          "0.90-1.05x; JAX at 0.93 and FAISS at 0.98 of a bare sgemm's "
          "speed)") in text
  assert "| 8 | 90.08 | missing | 91.08 | 50.00 | 30.00 |" in text
  assert "FAILS on k = [8, 16]" in text and "8: -1.00" in text
  assert "FF-k missing for k = [32, 64, 128]" in text
  assert "MRL above FF at the smallest dims [8, 16]: FAILS" in text
  assert "svd far below MRL at 8 dims (linear head): holds" in text
  assert "expected dim of 20.0 = 0.16 of 128: holds" in text
  assert sorted(p.name for p in out.glob("*.png")) == [
      "accuracy_vs_dim.png", "adaptive_classification.png",
      "adaptive_retrieval.png"]
  assert not (out / "results_lowdim.md").exists()  # nothing below 8 dims
  assert all(pathlib.Path(p).stat().st_size > 10_000 for p in r["plots"])
  assert json.loads((out / "results.json").read_text())["linear"]["ff"] == {
      "8": 0.9108, "16": 0.9}


def test_reproduce_script_report_stage(tmp_path):
  """The README's one command, limited to its last stage (the others train
  seven models): it must find the report and write into MRL_REPRO_OUT."""
  import os  # pylint: disable=import-outside-toplevel
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  root = tmp_path / "runs"
  write_summary(root, "mrl", "eval", {"top1": {str(d): 0.9 for d in DIMS}})
  env = {**os.environ, "STAGES": "train eval report", "MODELS": "",
         "PY": sys.executable, "MRL_REPRO_ROOT": str(root),
         "MRL_REPRO_OUT": str(tmp_path / "out")}
  proc = subprocess.run(["bash", str(REPO / "experiments/fashion_mnist/reproduce.sh")],
                        env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "| 8 | 90.00 | missing |" in proc.stdout
  assert (tmp_path / "out" / "accuracy_vs_dim.png").exists()


def test_lowdim_section_tables_claims_and_plot(tmp_path):
  root, out = tmp_path / "runs", tmp_path / "out"
  low = (1, 2, 4) + DIMS
  write_summary(root, "mrl_min1", "eval",
                {"top1": {str(d): 0.5 + d / 1000 for d in low}})
  write_summary(root, "mrl_min1", "knn", {f"knn/top1/d={d}": 0.4 for d in low})
  write_summary(root, "mrl_min1", "pairs", {
      **{f"pairs/knn_top1/d={d}": 0.2 for d in low},
      **{f"pairs/linear_top1/d={d}": 0.3 for d in low}})
  write_summary(root, "mrl", "eval",
                {"top1": {str(d): 0.5 + d / 1000 + 0.01 for d in DIMS}})
  # FF-1 above MRL-1 (a failed claim), FF-2 and FF-4 below; no FF-4 pairs.
  write_summary(root, "ff1", "eval", {"top1": {"1": 0.6}})
  write_summary(root, "ff2", "eval", {"top1": {"2": 0.4}})
  write_summary(root, "ff4", "eval", {"top1": {"4": 0.4}})
  write_summary(root, "ff1", "pairs", {"pairs/knn_top1/d=1": 0.1,
                                "pairs/linear_top1/d=1": 0.1})
  write_summary(root, "ff2", "pairs", {"pairs/knn_top1/d=2": 0.1,
                                "pairs/linear_top1/d=2": 0.1})
  write_summary(root, "ff128", "baselines", {
      **{f"svd/linear_top1/d={d}": 0.48 for d in low},
      **{f"random/linear_top1/d={d}": 0.2 for d in low}})
  report = load_script("experiments/fashion_mnist/report.py")
  r = report.write(str(root), str(out))
  assert "Low-dim" not in (out / "results.md").read_text()
  text = (out / "results_lowdim.md").read_text()
  assert text.startswith("# Fashion-MNIST reproduction: the low-dim "
                         "operating point, nesting (1, 2, 4, ..., 128)")
  assert json.loads((out / "results_lowdim.json").read_text())[
      "linear"]["ff"] == {"1": 0.6, "2": 0.4, "4": 0.4}
  # dim | MRL | FF-k | SVD | Rand. FS | MRL (8-128) (no MRL-E measured)
  assert "| 1 | 50.10 | 60.00 | 48.00 | 20.00 | missing |" in text
  assert "| 8 | 50.80 | missing | 48.00 | 20.00 | 51.80 |" in text
  assert ("- MRL above FF-k at [1, 2, 4] dims (linear): FAILS (1: 50.10 vs "
          "60.00 (-9.90), 2: 50.20 vs 40.00 (+10.20)") in text
  # From 2 dims: at 1 the normalised evaluators see a constant.
  assert ("- MRL above FF-k at [2] dims (100-class pair task, 1-NN): "
          "holds (2: 20.00 vs 10.00 (+10.00))") in text
  assert ("- svd on FF-128 far (> 5 points) below MRL at [2, 4] dims "
          "(linear): FAILS (2: 48.00 vs 50.20") in text
  assert ("- random on FF-128 far (> 5 points) below MRL at [2, 4] dims "
          "(linear): holds") in text
  assert "(vs MRL nested down to 8, linear): FAILS (8: -1.00" in text
  assert "MRL-E vs FF-k" not in text  # nothing measured, nothing claimed
  assert (out / "lowdim_accuracy_vs_dim.png").stat().st_size > 10_000
  assert str(out / "lowdim_accuracy_vs_dim.png") in r["plots"]
