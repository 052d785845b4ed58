r"""What bounds the batch speed-up of an exact prefix shortlist on a machine.

  .venv/bin/python experiments/bench/shortlist_bound.py \
      --rows=1000000 --dim=2048 --classes=1000 --queries=1000 \
      --work_dir=<retrieval_bench.py's> --out=shortlist_bound.json

Adaptive retrieval with an exact D_s shortlist does at least one [Q, D_s] x
[D_s, N] matmul; exact search does one [Q, d] x [d, N] matmul. On a CPU a
narrow matmul runs far below a wide one's rate, so the ratio of their
times, not of their FLOPs (d / D_s), caps the speed-up; and the prefix
must carry the true neighbours within K. On retrieval_bench.py's database
(synthetic_db.py, reused from --work_dir), at one batch of --batch queries,
in one run:

  exact_ms          the engine's exact full-dim search (top --k) per query
  scan_ms[K]        the engine's exact D_s shortlist alone (top K, cosine,
                    no re-rank) per query
  sgemm_ms          the bare float32 matmul of the queries with every row's
                    D_s prefix (numpy / BLAS, no top-k) per query; at D_s = d
                    the full-dim matmul
  misses[K]         of the Q x k true top-k (exact full-dim cosine), how
                    many lie outside the exact D_s top K (numpy): the fewest
                    any D_s shortlist of K can miss
  bound_scan[K], bound_sgemm
                    exact_ms / scan_ms[K] and exact_ms / sgemm_ms: the
                    speed-up an exact-shortlist method cannot exceed (its
                    re-rank only adds time)

Writes --out (JSON) and prints a markdown table.
"""
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from absl import app
from absl import flags
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import synthetic_db  # pylint: disable=g-import-not-at-top,wrong-import-position

from mrl_jax import atomic_files  # pylint: disable=g-import-not-at-top
from mrl_jax import search
from mrl_jax.search import codes

FLAGS = flags.FLAGS
synthetic_db.define_flags()
synthetic_db.define_stored_flags()
flags.DEFINE_integer("k", 10, "true neighbours per query.")
flags.DEFINE_integer("batch", 1000, "queries per timed call.")
flags.DEFINE_list("shortlist_dims", ["32", "64", "128", "256"], "D_s.")
flags.DEFINE_list("shortlist_ks", ["100", "200", "400", "800", "1600"], "K.")
flags.DEFINE_integer("repeats", 3, "timed calls (median).")
flags.DEFINE_string("out", None, "JSON results.")

_SGEMM_ROWS = 8192  # rows per BLAS call (the [Q, rows] scores stay small)


def sgemm_seconds(rows: np.ndarray, queries: np.ndarray, repeats: int
                  ) -> float:
  """Median seconds of queries [Q, m] @ rows[:, :m].T over all rows."""
  n = rows.shape[0]
  # np.dot writes into a C-contiguous buffer of the block's exact shape.
  out = {size: np.empty((len(queries), size), np.float32)
         for size in {min(_SGEMM_ROWS, n), n % _SGEMM_ROWS or _SGEMM_ROWS}}

  def run():
    for r0 in range(0, n, _SGEMM_ROWS):
      block = rows[r0:r0 + _SGEMM_ROWS]
      np.dot(queries, block.T, out=out[len(block)])
  return synthetic_db.median_seconds(run, repeats)


def prefix_misses(db: dict[str, Any], truth: np.ndarray, dim: int,
                  ks: Sequence[int], chunk_rows: int = 1 << 17
                  ) -> dict[int, int]:
  """{K: true top-k ids [Q, k] outside the exact dim-prefix top K}."""
  q = codes.normalized_prefix(db["queries"], dim)
  top = max(ks)
  best_s = np.zeros((len(q), 0), np.float32)
  best_i = np.zeros((len(q), 0), np.int64)
  x = db["database"]
  for r0 in range(0, x.shape[0], chunk_rows):
    s = q @ codes.normalized_prefix(x[r0:r0 + chunk_rows], dim).T
    s = np.concatenate([best_s, s], 1)
    i = np.concatenate([best_i, np.broadcast_to(
        np.arange(r0, r0 + s.shape[1] - best_s.shape[1]),
        (len(q), s.shape[1] - best_s.shape[1]))], 1)
    keep = np.argpartition(-s, top - 1, axis=1)[:, :top]
    best_s, best_i = (np.take_along_axis(s, keep, 1),
                      np.take_along_axis(i, keep, 1))
  ranked = np.take_along_axis(best_i, np.argsort(-best_s, axis=1), 1)
  return {kk: int(sum(np.isin(t, r[:kk], invert=True).sum()
                      for t, r in zip(truth, ranked))) for kk in ks}


def run(work_dir: str) -> dict[str, Any]:
  dims = [int(d) for d in FLAGS.shortlist_dims]
  ks = [int(kk) for kk in FLAGS.shortlist_ks]
  if any(not 1 <= d < FLAGS.dim for d in dims) or min(ks) < FLAGS.k:
    raise ValueError(f"--shortlist_dims must be in [1, --dim={FLAGS.dim}) "
                     f"and --shortlist_ks >= --k={FLAGS.k}")
  db = synthetic_db.generate(work_dir, FLAGS.rows, FLAGS.dim, FLAGS.classes,
                             FLAGS.queries, subclusters=FLAGS.subclusters,
                             seed=FLAGS.seed)
  truth = synthetic_db.ground_truth(db)[:, :FLAGS.k]
  index = search.build_index(db["database"], boundaries=sorted(
      {*dims, FLAGS.dim}), normalize=True)
  queries = db["queries"][:FLAGS.batch]
  per_query = lambda s: 1e3 * s / len(queries)
  full = np.asarray(index.blocks[-1])  # [N, d] float32, a view
  out = {"exact_ms": per_query(synthetic_db.median_seconds(
      lambda: search.search(index, queries, FLAGS.dim, FLAGS.k),
      FLAGS.repeats)),
         "sgemm_full_ms": per_query(sgemm_seconds(full, queries,
                                                  FLAGS.repeats)),
         "dims": {}}
  for dim in dims:
    rows = np.ascontiguousarray(full[:, :dim])
    scan = {kk: per_query(synthetic_db.median_seconds(
        lambda kk=kk: search.search(index, queries, dim, kk),
        FLAGS.repeats)) for kk in ks}
    sgemm = per_query(sgemm_seconds(rows, np.ascontiguousarray(
        queries[:, :dim]), FLAGS.repeats))
    del rows
    out["dims"][dim] = {
        "sgemm_ms": sgemm, "scan_ms": scan,
        "misses": prefix_misses(db, truth, dim, ks),
        "bound_sgemm": out["exact_ms"] / sgemm,
        "bound_scan": {kk: out["exact_ms"] / t for kk, t in scan.items()}}
    print(json.dumps({dim: out["dims"][dim]}), flush=True)
  return {"database": db["spec"], "k": FLAGS.k, "batch": len(queries),
          "true_neighbours": int(truth.size), **out}


def markdown_table(res: dict[str, Any]) -> str:
  ks = list(next(iter(res["dims"].values()))["scan_ms"])
  lines = ["| D_s | sgemm ms/query | exact / sgemm | "
           + " | ".join(f"K={kk}: scan ms, exact / scan, misses"
                        for kk in ks) + " |",
           "|" + "---|" * (3 + len(ks))]
  for dim, r in res["dims"].items():
    cells = [f"{r['scan_ms'][kk]:.2f}, {r['bound_scan'][kk]:.1f}x, "
             f"{r['misses'][kk]}" for kk in ks]
    lines.append(f"| {dim} | {r['sgemm_ms']:.2f} | {r['bound_sgemm']:.1f}x | "
                 + " | ".join(cells) + " |")
  lines.append(f"| {FLAGS.dim} (exact) | {res['sgemm_full_ms']:.2f} | | "
               f"exact search {res['exact_ms']:.2f} ms/query |")
  return "\n".join(lines)


def main(argv: Sequence[str]) -> None:
  del argv
  out = synthetic_db.run_on_machine("shortlist_bound", run)
  print(markdown_table(out))
  if FLAGS.out:
    atomic_files.write_json(FLAGS.out, out)


if __name__ == "__main__":
  app.run(main)
