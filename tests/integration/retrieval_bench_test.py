"""The retrieval benchmark and its synthetic database, at a tiny scale."""
import json
import os
import subprocess
import sys

import numpy as np

BENCH_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "experiments", "bench")
sys.path.insert(0, BENCH_DIR)
import synthetic_db  # pylint: disable=wrong-import-position


def test_synthetic_db_is_reproducible_and_reused(tmp_path):
  a = synthetic_db.generate(str(tmp_path / "a"), 300, 32, 5, 20, seed=3)
  b = synthetic_db.generate(str(tmp_path / "b"), 300, 32, 5, 20, seed=3)
  assert a["database"].dtype == np.float16 and a["database"].shape == (300,
                                                                       32)
  np.testing.assert_array_equal(a["database"], b["database"])
  np.testing.assert_array_equal(a["queries"], b["queries"])
  assert set(np.unique(a["labels"])) == set(range(5))
  # Early dims carry more class signal (MRL-like): larger variance.
  var = np.var(np.asarray(a["database"], np.float32), axis=0)
  assert var[:4].mean() > var[-4:].mean()
  mtime = os.stat(a["path"] + ".f16.npy").st_mtime_ns
  synthetic_db.generate(str(tmp_path / "a"), 300, 32, 5, 20, seed=3)
  assert os.stat(a["path"] + ".f16.npy").st_mtime_ns == mtime
  other = synthetic_db.generate(str(tmp_path / "a"), 300, 32, 5, 20, seed=4)
  assert not np.array_equal(other["database"], a["database"])


def test_ground_truth_is_a_stable_cosine_argsort(tmp_path):
  db = synthetic_db.generate(str(tmp_path), 500, 16, 4, 10)
  gt = synthetic_db.ground_truth(db, 20, chunk_rows=128)
  x = np.asarray(db["database"], np.float32)
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  q = db["queries"] / np.linalg.norm(db["queries"], axis=1, keepdims=True)
  want = np.argsort(-(q @ x.T), axis=1, kind="stable")[:, :20]
  np.testing.assert_array_equal(gt, want)
  assert os.path.exists(db["path"] + ".gt20.npy")


def _script(name, *flags):
  """experiments/bench/<name> with flags, in a subprocess."""
  return subprocess.run([sys.executable, os.path.join(BENCH_DIR, name),
                         *flags], capture_output=True, text=True,
                        check=False, timeout=600)


def _bench(tmp_path, *flags):
  return _script("retrieval_bench.py", f"--work_dir={tmp_path}", *flags)


def test_retrieval_bench_end_to_end(tmp_path):
  out, png = tmp_path / "out.json", tmp_path / "out.png"
  proc = _bench(tmp_path, "--rows=2000", "--dim=64", "--classes=20",
                "--queries=40", "--shortlist_dims=16", "--shortlist_ks=40",
                "--ef_search=1,8", "--nprobe=1000", "--latency_queries=3",
                "--repeats=1", "--bootstrap=50", f"--out={out}",
                f"--plot={png}", "--funnels=none,32:20",
                "--methods=faiss_flat,jax_exact,jax_adaptive,hnsw,ivf,"
                "int8,binary,bfloat16,hnsw_full")
  assert proc.returncode == 0, proc.stderr[-2000:]
  result = json.loads(out.read_text())
  assert png.stat().st_size > 0
  by = {}
  for r in result["results"]:
    by.setdefault(r["method"], []).append(r)
    for key in ("qps_batch", "p50_ms", "p99_ms", "memory_bytes"):
      assert r[key] > 0, (r["method"], key)
    lo, hi = r["mAP@10_diff_ci95"]
    assert lo <= hi
  assert set(by) == {"faiss_flat", "jax_exact", "jax_adaptive", "hnsw", "ivf",
                     "int8", "binary", "bfloat16", "hnsw_full"}
  assert by["bfloat16"][0]["memory_bytes"] == 2000 * 16 * 2
  # Every shortlist configuration straight to 64 dims and through 32:20.
  assert [r["funnel"] for r in by["jax_adaptive"]] == [None, "32:20"]
  assert [r["funnel"] for r in by["hnsw"]] == [None, None, "32:20", "32:20"]
  assert by["jax_exact"][0]["recall@10"] == 1.0
  assert by["faiss_flat"][0]["recall@10"] == 1.0
  assert by["jax_exact"][0]["mAP@10_diff_ci95"] == [0.0, 0.0]
  # Every IVF list scanned: the exact shortlist, the same quality.
  exact_shortlist = by["jax_adaptive"][0]
  assert by["ivf"][0]["shortlist_coverage"] == exact_shortlist[
      "shortlist_coverage"]
  assert by["ivf"][0]["mAP@10"] == exact_shortlist["mAP@10"]
  assert [r["ef_search"] for r in by["hnsw"]] == [40, 320] * 2
  assert result["headline"]["min_recall"] == 0.99
  assert result["database"]["rows"] == 2000
  # The CPU (its vector extension decides the kernels' speed ratios).
  assert result["machine"]["cpu"] == synthetic_db.cpu_model() != ""


def test_retrieval_bench_bad_flags_write_nothing(tmp_path):
  proc = _bench(tmp_path / "w", "--rows=100", "--dim=16", "--k=10",
                "--shortlist_ks=5,20")
  assert proc.returncode != 0
  assert proc.stderr.strip().splitlines()[-1] == (
      "retrieval_bench: error: --shortlist_ks [5] are below --k=10; a "
      "shortlist must hold k candidates")
  assert not (tmp_path / "w").exists()
  proc = _bench(tmp_path / "w", "--rows=100", "--dim=16",
                "--shortlist_dims=8,32")
  assert "--shortlist_dims [32] outside [1, --dim=16]" in proc.stderr
  assert not (tmp_path / "w").exists()
  for funnel, error in (("8-20", "--funnels entry '8-20' is not dim:k"),
                        ("8:30", "re-rank sizes [30, 10] must not increase")):
    proc = _bench(tmp_path / "w", "--rows=100", "--dim=16",
                  "--shortlist_dims=8", "--shortlist_ks=20",
                  f"--funnels=none,{funnel}")
    assert error in proc.stderr.strip().splitlines()[-1], proc.stderr
    assert not (tmp_path / "w").exists()


def test_fit_measures_an_exports_variances(tmp_path):
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 8, 4000)
  class_sd = np.linspace(2.0, 0.1, 16)  # class signal decays with the dim
  emb = (5.0 + rng.normal(size=(8, 16))[labels] * class_sd
         + 0.3 * rng.normal(size=(4000, 16)))
  np.savez(tmp_path / "shard-p000-00000.npz", embeddings=emb.astype(
      np.float16), labels=labels)
  (tmp_path / "metadata.json").write_text(json.dumps(
      {"step": 1, "nesting": [8, 16], "arrays": ["embeddings", "labels"]}))
  v = synthetic_db.fit(str(tmp_path), 31, subclusters=2)
  assert {name: curve.shape for name, curve in v.items()} == {
      name: (31,) for name in ("mean", "class", "sub", "noise")}
  # Interpolated to 31 dims: the ends are the export's first and last dim.
  np.testing.assert_allclose(v["mean"][[0, -1]], emb.mean(0)[[0, -1]],
                             atol=0.01)
  assert v["class"][0] > 1.0 > 0.1 > v["class"][-1]
  total = v["sub"] + v["noise"]  # the within-class variance, split in two
  np.testing.assert_allclose(total, 0.09, rtol=0.15)
  db = synthetic_db.generate(str(tmp_path / "db"), 200, 31, 4, 5,
                             variances=v, fitted_from=str(tmp_path))
  assert db["spec"]["variances"] == str(tmp_path)


def test_search_accel_checks_the_engine_against_plain_top_k(tmp_path):
  """The accelerator script on CPU at a tiny scale: every method timed,
  engine_f32 equal to lax.top_k (the tie check passes), recall reported."""
  out = tmp_path / "accel.json"
  proc = _script(
      "search_accel.py", "--rows=70000", "--dim=64", "--classes=20",
      "--batches=1,40", "--shortlist_dims=8", "--shortlist_k=40",
      "--chunk_rows=default,4096", "--plain_query_batch=16", "--repeats=1",
      f"--out={out}")
  assert proc.returncode == 0, proc.stderr[-2000:]
  with open(out) as f:
    results = json.load(f)
  assert results["device"].startswith("cpu") and results["rows"] == 70000
  assert [r["batch"] for r in results["batches"]] == [1, 40]
  for res in results["batches"]:
    for key, value in res.items():
      if key.endswith("_s"):
        assert value > 0, key
    for chunk in ("default", "4096"):
      ties = res[f"engine_f32_chunk{chunk}_ties"]
      assert ties["positions_beyond_tol"] == 0, ties
      assert res[f"engine_f32_chunk{chunk}_recall"] == 1.0
      assert 0.9 <= res[f"engine_bf16_chunk{chunk}_recall"] <= 1.0
    assert 0.0 < res["adaptive_Ds8_recall"] <= 1.0


def test_shortlist_bound_counts_prefix_misses_and_times_scans(tmp_path):
  out = tmp_path / "bound.json"
  proc = _script(
      "shortlist_bound.py", f"--work_dir={tmp_path}", "--rows=3000",
      "--dim=64", "--classes=10", "--queries=30", "--shortlist_dims=8,32",
      "--shortlist_ks=10,100,3000", "--repeats=1", f"--out={out}")
  assert proc.returncode == 0, proc.stderr[-2000:]
  res = json.loads(out.read_text())
  db = synthetic_db.generate(str(tmp_path), 3000, 64, 10, 30)
  truth = synthetic_db.ground_truth(db)[:, :10]
  x = np.asarray(db["database"], np.float32)
  for dim, r in res["dims"].items():
    # Independent count: rank every row by the prefix cosine.
    p = x[:, :int(dim)] / np.linalg.norm(x[:, :int(dim)], axis=1,
                                         keepdims=True)
    q = db["queries"][:, :int(dim)]
    order = np.argsort(-(q @ p.T), axis=1)
    for kk, got in r["misses"].items():
      want = sum(np.isin(t, o[:int(kk)], invert=True).sum()
                 for t, o in zip(truth, order))
      assert got == want, (dim, kk)
    assert r["misses"]["3000"] == 0  # K = N holds every row
    assert r["sgemm_ms"] > 0 and all(t > 0 for t in r["scan_ms"].values())
    assert r["bound_sgemm"] == res["exact_ms"] / r["sgemm_ms"]
  assert res["true_neighbours"] == 300


def test_shortlist_bound_bad_flags_write_nothing(tmp_path):
  proc = _script("shortlist_bound.py", f"--work_dir={tmp_path / 'w'}",
                 "--rows=100", "--dim=16", "--shortlist_dims=16")
  assert proc.returncode != 0
  assert proc.stderr.strip().splitlines()[-1].startswith(
      "shortlist_bound: error: --shortlist_dims must be in [1, --dim=16)")
  assert not (tmp_path / "w").exists()
