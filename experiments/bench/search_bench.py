r"""Search benchmarks: (a) exact full-dim MIPS, our JAX engine vs FAISS
IndexFlatIP; (b) adaptive retrieval vs exact full-dim search on a real
model's exported embeddings, at equal mAP@10.

  .venv/bin/python experiments/bench/search_bench.py --out=search.json \
      [--exact_rows=50000 --exact_dim=2048 --exact_queries=500] \
      [--embeddings=W/embeddings/fashion_mnist]  # enables (b)
      [--databases=train,train_views16 --num_queries=2000]

(a) Gaussian database [N, d] float32 and queries [Q, d] (values do not change
the work of an exact scan), k = 10. Both engines return the exact top-k by
inner product; the script checks that their ids agree. FAISS uses all cores
(OpenMP), XLA:CPU its intra-op thread pool; both are warmed up first
(compile / first-touch), then each is timed `--repeats` times, interleaved,
and the median is reported as queries/s. The bare score matmul
(`queries @ database.T` in numpy, OpenBLAS sgemm, no top-k) is timed in the
same rounds: the work both engines share, so their fraction of its
throughput says how much the top-k and the scan around the matmul cost.

(b) Database = an exported split (`--databases`: the train split, or its
augmented views `train_views16` from `config.export.views`, 960k rows of
real embeddings), queries = the exported test split (`--mode=export` of a
trained model), per-prefix cosine as in MRL. Exact search at the full dim D
vs adaptive retrieval (shortlist K at D_s, re-rank at D); mAP@10 (standard
definition) of each, wall-clock medians, speed-up. Every D_s in
`--shortlist_dims` is reported (the plot of mAP@10 vs shortlist dim and
speed reads this). Both run in query batches of `--query_batch_size`,
with the engine's default chunk sizes (8192 rows for the full-dim scan,
1024 for shortlists of at most 64 dims).

Both parts need `pip install -e '.[bench]'` (faiss-cpu) for (a).
"""
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

from absl import app
from absl import flags
import jax
import numpy as np

from mrl_jax import atomic_files
from mrl_jax.export import embedding_files
from mrl_jax import search
from mrl_jax.evaluators import retrieval

FLAGS = flags.FLAGS
flags.DEFINE_string("out", None, "JSON file for the results.")
flags.DEFINE_integer("exact_rows", 50_000, "(a) database rows N.")
flags.DEFINE_integer("exact_dim", 2048, "(a) dimension d.")
flags.DEFINE_integer("exact_queries", 500, "(a) queries Q.")
flags.DEFINE_integer("k", 10, "neighbours returned.")
flags.DEFINE_integer("repeats", 3, "timed repetitions per engine "
                     "(the exact scan of (a) runs at least 7).")
flags.DEFINE_string("embeddings", None,
                    "(b) DIR/embeddings/<dataset> with exported train and "
                    "test splits; (b) is skipped without it.")
flags.DEFINE_list("databases", ["train"],
                  "(b) exported splits under --embeddings used as the "
                  "database, each measured on its own.")
flags.DEFINE_list("shortlist_dims", ["8", "16", "32", "64"], "(b) D_s.")
flags.DEFINE_integer("shortlist_k", 200, "(b) K.")
flags.DEFINE_integer("num_queries", 0, "(b) a fixed random subset of this "
                     "many test queries (0: all).")
flags.DEFINE_integer("query_batch_size", 1000, "(b) queries per search call.")


def _interleaved_times(fns: dict[str, Callable[[], Any]], repeats: int,
                       settle: float = 0.5) -> dict[str, list[float]]:
  """Seconds of each fn per round (one call of each per round, so that load
  drifts on a shared machine hit every fn alike). Call each once before
  (compile, first touch).

  Each call waits `settle` seconds first: a BLAS or OpenMP pool keeps its
  threads spin-waiting after a call (OpenBLAS for ~0.1 s), which would slow
  whichever fn runs next; on this 2-core box the fn timed right after a
  numpy sgemm lost about 8%. Odd rounds run the fns in reverse order.
  """
  times = {name: [] for name in fns}
  for r in range(repeats):
    for name in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
      time.sleep(settle)
      start = time.perf_counter()
      jax.block_until_ready(fns[name]())
      times[name].append(time.perf_counter() - start)
  return times


def _interleaved_medians(fns: dict[str, Callable[[], Any]],
                         repeats: int) -> dict[str, float]:
  """Median seconds of each fn over `_interleaved_times` rounds."""
  return {name: statistics.median(t)
          for name, t in _interleaved_times(fns, repeats).items()}


def exact_vs_faiss(rows: int, dim: int, num_queries: int, k: int,
                   repeats: int, seed: int = 0) -> dict[str, Any]:
  """(a): queries/s of exact top-k inner-product search, JAX vs FAISS."""
  import faiss  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(seed)
  database = rng.standard_normal((rows, dim), np.float32)
  queries = rng.standard_normal((num_queries, dim), np.float32)
  index = search.build_index(database, normalize=False)
  flat = faiss.IndexFlatIP(dim)
  flat.add(database)
  fns = {"jax": lambda: search.search(index, queries, dim, k),
         "faiss": lambda: flat.search(queries, k),
         # What both engines are built on: the [Q, N] score matmul alone
         # (numpy's OpenBLAS sgemm, no top-k).
         "sgemm": lambda: queries @ database.T}
  warm = {name: fn() for name, fn in fns.items()}  # compiles JAX's scan
  agree = float(np.mean(np.asarray(warm["jax"][1]) == warm["faiss"][1]))
  rounds = _interleaved_times(fns, repeats)
  jax_s, faiss_s, sgemm_s = (statistics.median(rounds[n])
                             for n in ("jax", "faiss", "sgemm"))
  return {"rows": rows, "dim": dim, "queries": num_queries, "k": k,
          "jax_seconds": jax_s, "faiss_seconds": faiss_s,
          "jax_qps": num_queries / jax_s, "faiss_qps": num_queries / faiss_s,
          "jax_over_faiss": faiss_s / jax_s,
          # Same-round ratios: how much the machine's noise moves the figure.
          "jax_over_faiss_per_round": [
              f / j for j, f in zip(rounds["jax"], rounds["faiss"])],
          "sgemm_seconds": sgemm_s,
          "sgemm_gflops": 2 * num_queries * rows * dim / sgemm_s / 1e9,
          "jax_fraction_of_sgemm": sgemm_s / jax_s,
          "faiss_fraction_of_sgemm": sgemm_s / faiss_s,
          "id_agreement": agree,
          "faiss_threads": faiss.omp_get_max_threads()}


def _map_at(ids: Any, q_labels: np.ndarray, db_labels: np.ndarray,
            k: int) -> float:
  out = retrieval.retrieval_metrics(q_labels, db_labels[np.asarray(ids)],
                                    np.bincount(db_labels), (k,))
  return out[f"mAP@{k}"]


def adaptive_vs_exact(embeddings_dir: str, database: str,
                      shortlist_dims: Sequence[int], shortlist_k: int, k: int,
                      repeats: int, num_queries: int = 0,
                      query_batch_size: int | None = None
                      ) -> dict[str, Any]:
  """(b): adaptive retrieval vs exact full-dim search on exported splits."""
  db, db_labels, queries, q_labels, meta = (
      embedding_files.load_database_and_queries(
          os.path.join(embeddings_dir, database),
          os.path.join(embeddings_dir, "test")))
  if 0 < num_queries < len(queries):
    pick = np.sort(np.random.default_rng(0).choice(len(queries), num_queries,
                                                   replace=False))
    queries, q_labels = queries[pick], q_labels[pick]
  queries = queries.astype(np.float32)
  rows, full = db.shape
  index = search.build_index(db, boundaries=sorted(
      set(meta["nesting"]) | set(shortlist_dims)), normalize=True)
  del db  # the index holds its own float32 copy
  runs = {"exact": lambda: search.search(
      index, queries, full, k, query_batch_size=query_batch_size)}
  for ds in shortlist_dims:
    runs[ds] = lambda ds=ds: search.adaptive_search(
        index, queries, ds, shortlist_k, full, k,
        query_batch_size=query_batch_size)
  ids = {name: run()[1] for name, run in runs.items()}  # warm-up
  seconds = _interleaved_medians(runs, repeats)
  exact_map = _map_at(ids["exact"], q_labels, db_labels, 10)
  out = {"database": database, "model": meta["model"], "head": meta["head"],
         "step": meta["step"], "rows": rows, "queries": len(queries),
         "dim": full, "shortlist_k": shortlist_k, "k": k,
         "query_batch_size": query_batch_size,
         "exact_seconds": seconds["exact"], "exact_mAP@10": exact_map,
         "adaptive": []}
  for ds in shortlist_dims:
    ap = _map_at(ids[ds], q_labels, db_labels, 10)
    out["adaptive"].append({
        "Ds": ds, "Dr": full, "seconds": seconds[ds],
        "speedup": seconds["exact"] / seconds[ds],
        "flop_ratio": full / (ds + shortlist_k * full / rows),
        "mAP@10": ap, "mAP@10_minus_exact_points": 100 * (ap - exact_map)})
  return out


def main(argv: Sequence[str]) -> None:
  del argv
  result = {"machine": {"platform": platform.platform(),
                        "cpus": os.cpu_count(),
                        "load_avg": os.getloadavg(),
                        "jax_devices": str(jax.devices())}}
  result["exact"] = exact_vs_faiss(FLAGS.exact_rows, FLAGS.exact_dim,
                                   FLAGS.exact_queries, FLAGS.k,
                                   max(FLAGS.repeats, 7))
  if FLAGS.embeddings:
    result["adaptive"] = [adaptive_vs_exact(
        FLAGS.embeddings, database, [int(d) for d in FLAGS.shortlist_dims],
        FLAGS.shortlist_k, FLAGS.k, FLAGS.repeats, FLAGS.num_queries,
        FLAGS.query_batch_size) for database in FLAGS.databases]
  result["machine"]["load_avg_end"] = os.getloadavg()
  print(json.dumps(result, indent=1))
  if FLAGS.out:
    atomic_files.write_json(FLAGS.out, result)


if __name__ == "__main__":
  app.run(main)
