r"""Exact and adaptive search on an accelerator: the engine against plain
`q @ db.T` + `lax.top_k` on a database generated on the device.

  python experiments/bench/search_accel.py --out=search_accel.json
  (defaults: --rows=1000000 --dim=2048 --classes=1000
  --batches=1,100,10000 --shortlist_dims=16,32,64 --shortlist_k=200
  --chunk_rows=default,16384,65536)

Database: synthetic_db.py's model (class + sub-cluster + noise per
dimension, its default MRL-like variances), drawn with jax.random on the
device from --seed (the database in chunks folded into the key, queries
from their own stream), rows L2-normalised, float32: nothing is read from
disk or sent from the host. Per query batch size Q in --batches (median of
--repeats timed calls after a warm-up call, each ending in
block_until_ready):

  matmul       q @ db.T alone (the work every exact method shares)
  plain        lax.top_k(q @ db.T, k): the obvious baseline
  engine_f32   mrl_jax.search.search at the full dim, float32 index, at
               every --chunk_rows ("default" = the engine's own default)
  engine_bf16  the same on a bfloat16 index
  adaptive     mrl_jax.search.adaptive_search: exact D_s shortlist of
               --shortlist_k, exact float32 re-rank at the full dim, in
               query batches of --rerank_query_batch

matmul and plain run in query slices of at most --plain_query_batch (their
[Q, N] scores would not fit at Q = 10k, N = 1M); their time is the sum.
Checks (exit code 1 when broken): engine_f32 returns plain's ids wherever
their scores differ by more than --tie_tol (a swap inside a float tie is
reported, not failed: two matmul kernels round differently), and
engine_bf16 / adaptive report their recall@k against plain's ids. Results:
JSON (--out) with the device kind, and a table.

Imports neither TensorFlow, Flax nor FAISS: on a machine whose Python has
jax with its CUDA plugin it needs numpy, absl and the project on
PYTHONPATH (README.md here, "GPU training throughput").
"""
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import synthetic_db  # pylint: disable=g-import-not-at-top,wrong-import-position

from mrl_jax import atomic_files  # pylint: disable=g-import-not-at-top
from mrl_jax import platforms
from mrl_jax import search

FLAGS = flags.FLAGS
synthetic_db.define_flags()
flags.DEFINE_integer("k", 10, "neighbours returned.")
flags.DEFINE_list("batches", ["1", "100", "10000"], "query batch sizes Q.")
flags.DEFINE_list("shortlist_dims", ["16", "32", "64"], "adaptive D_s.")
flags.DEFINE_integer("shortlist_k", 200, "adaptive shortlist K.")
flags.DEFINE_list("chunk_rows", ["default", "16384", "65536"],
                  "engine chunk sizes to time ('default': the engine's).")
flags.DEFINE_integer("plain_query_batch", 2000, "queries per plain / "
                     "matmul call (bounds their [Q, N] scores).")
flags.DEFINE_integer("rerank_query_batch", 1000, "queries per adaptive "
                     "call (bounds the re-rank's [Q, K, d] candidates).")
flags.DEFINE_integer("repeats", 5, "timed calls per measurement (median).")
flags.DEFINE_float("tie_tol", 1e-5, "score difference below which two "
                   "different ids count as a float tie.")
flags.DEFINE_string("out", None, "JSON results.")

_CHUNK = 1 << 16


def generate(rows: int, dim: int, classes: int, subclusters: int,
             num_queries: int, seed: int) -> tuple[jax.Array, jax.Array]:
  """(database [rows, dim], queries [num_queries, dim]) float32 on the
  default device, rows L2-normalised."""
  var = {n: jnp.asarray(v, jnp.float32)
         for n, v in synthetic_db.default_variances(dim).items()}
  key = jax.random.key(seed)
  k_c, k_s = jax.random.split(jax.random.fold_in(key, 0))
  centres = jax.random.normal(k_c, (classes, dim)) * jnp.sqrt(var["class"])
  subs = (jax.random.normal(k_s, (classes, subclusters, dim))
          * jnp.sqrt(var["sub"]))

  @jax.jit
  def draw(k):
    k_l, k_u, k_n = jax.random.split(k, 3)
    n = _CHUNK
    labels = jax.random.randint(k_l, (n,), 0, classes)
    sub = jax.random.randint(k_u, (n,), 0, subclusters)
    x = (var["mean"] + centres[labels] + subs[labels, sub]
         + jax.random.normal(k_n, (n, dim)) * jnp.sqrt(var["noise"]))
    return x / jnp.linalg.norm(x, axis=1, keepdims=True)

  chunks = [draw(jax.random.fold_in(key, 1 + i))
            for i in range(-(-rows // _CHUNK))]
  database = jnp.concatenate(chunks)[:rows]
  queries = draw(jax.random.fold_in(key, 1 << 30))[:num_queries]
  return jax.block_until_ready((database, queries))


@jax.jit
def _scores(q, db):
  return jnp.matmul(q, db.T, precision=jax.lax.Precision.HIGHEST)


def _plain_top_k(k: int) -> Callable[[jax.Array, jax.Array], Any]:
  return jax.jit(lambda q, db: jax.lax.top_k(_scores(q, db), k))


def sliced(fn: Callable[[jax.Array], Any], queries: jax.Array,
           size: int, keep: bool = True) -> list[Any]:
  """fn over query slices of at most `size` rows; keep=False waits for each
  slice and drops it (a [2000, 1M] float32 score block is 8 GB)."""
  outs = []
  for i in range(0, len(queries), size):
    out = jax.block_until_ready(fn(queries[i:i + size]))
    if keep:
      outs.append(out)
  return outs


def check_ties(plain: tuple[np.ndarray, np.ndarray],
               engine: tuple[np.ndarray, np.ndarray], tol: float
               ) -> dict[str, Any]:
  """Agreement of two exact top-k results [Q, k] (scores, ids)."""
  (ps, pi), (es, ei) = plain, engine
  differ = pi != ei
  # A differing position is a float tie when both lists' scores there
  # agree to tol (the same score reached by two kernels' roundings).
  broken = differ & (np.abs(ps - es) > tol)
  return {"ids_equal": float((~differ).all(axis=1).mean()),
          "positions_differing": int(differ.sum()),
          "positions_beyond_tol": int(broken.sum()),
          "max_score_diff": float(np.abs(ps - es).max())}


def recall(got: np.ndarray, truth: np.ndarray) -> float:
  return float(np.mean([np.isin(t, g).mean() for g, t in zip(got, truth)]))


def measure_batch(database: jax.Array, queries: jax.Array,
                  indexes: dict[str, search.PrefixIndex], q: int
                  ) -> dict[str, Any]:
  """Every method's seconds per call at batch size q, and the checks."""
  k, reps, size = FLAGS.k, FLAGS.repeats, FLAGS.plain_query_batch
  qs = queries[:q]
  top_k = _plain_top_k(k)
  out: dict[str, Any] = {"batch": q}
  timed = synthetic_db.median_seconds
  out["matmul_s"] = timed(lambda: sliced(lambda x: _scores(x, database), qs,
                                         size, keep=False), reps)
  out["plain_s"] = timed(lambda: sliced(lambda x: top_k(x, database), qs,
                                        size), reps)
  parts = sliced(lambda x: top_k(x, database), qs, size)
  plain = tuple(np.concatenate([np.asarray(p[j]) for p in parts])
                for j in (0, 1))
  for name, index in indexes.items():
    for chunk in FLAGS.chunk_rows:
      rows = None if chunk == "default" else int(chunk)
      run = lambda index=index, rows=rows: search.search(
          index, qs, FLAGS.dim, k, chunk_rows=rows)
      key = f"{name}_chunk{chunk}"
      out[f"{key}_s"] = timed(run, reps)
      got = tuple(np.asarray(x) for x in run())
      out[f"{key}_recall"] = recall(got[1], plain[1])
      if name == "engine_f32":
        out[f"{key}_ties"] = check_ties(plain, got, FLAGS.tie_tol)
  for ds in map(int, FLAGS.shortlist_dims):
    run = lambda ds=ds: search.adaptive_search(
        indexes["engine_f32"], qs, ds, FLAGS.shortlist_k, FLAGS.dim, k,
        query_batch_size=min(q, FLAGS.rerank_query_batch))
    out[f"adaptive_Ds{ds}_s"] = timed(run, reps)
    out[f"adaptive_Ds{ds}_recall"] = recall(np.asarray(run()[1]), plain[1])
  return out


def print_table(results: dict[str, Any]) -> None:
  print(f"device: {results['device']}  database {results['rows']} x "
        f"{results['dim']}  k {results['k']}")
  for res in results["batches"]:
    q = res["batch"]
    print(f"-- batch {q}")
    for key, value in res.items():
      if key.endswith("_s"):
        name = key[:-2]
        rec = res.get(f"{name}_recall")
        print(f"  {name:<28}{value * 1e3:10.2f} ms  {q / value:12.1f} q/s  "
              f"{res['plain_s'] / value:6.2f}x plain"
              + ("" if rec is None else f"  recall@k {rec:.4f}"))
    for key, value in res.items():
      if key.endswith("_ties"):
        print(f"  {key}: {value}")


def main(argv: Sequence[str]) -> None:
  del argv
  platforms.use_cpu_if_no_accelerator()  # no libtpu noise on a CPU box
  start = time.perf_counter()
  batches = sorted(map(int, FLAGS.batches))
  database, queries = generate(FLAGS.rows, FLAGS.dim, FLAGS.classes,
                               FLAGS.subclusters, batches[-1], FLAGS.seed)
  generate_s = time.perf_counter() - start
  boundaries = sorted({*map(int, FLAGS.shortlist_dims), FLAGS.dim})
  indexes = {"engine_f32": search.build_index(database,
                                              boundaries=boundaries),
             "engine_bf16": search.build_index(
                 database, boundaries=boundaries, dtype=jnp.bfloat16)}
  device = jax.devices()[0]
  results = {"device": f"{device.platform}:{device.device_kind}",
             "jax": jax.__version__, "rows": FLAGS.rows, "dim": FLAGS.dim,
             "classes": FLAGS.classes, "seed": FLAGS.seed, "k": FLAGS.k,
             "generate_s": generate_s,
             "batches": [measure_batch(database, queries, indexes, q)
                         for q in batches]}
  results["wall_s"] = time.perf_counter() - start
  print_table(results)
  if FLAGS.out:
    atomic_files.write_json(FLAGS.out, results)
  broken = [f"batch {r['batch']} {key}: {v}" for r in results["batches"]
            for key, v in r.items()
            if key.endswith("_ties") and v["positions_beyond_tol"]]
  if broken:
    print("engine ids differ from plain top_k beyond float ties:\n  "
          + "\n  ".join(broken), file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
