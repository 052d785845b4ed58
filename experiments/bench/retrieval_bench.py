r"""Adaptive retrieval as a retrieval engineer measures it: recall against
exact full-dim search vs queries/s, on a synthetic database of distinct items.

  .venv/bin/python experiments/bench/retrieval_bench.py \
      --rows=1000000 --dim=2048 --classes=1000 --queries=1000 \
      --work_dir=<scratch dir> --out=retrieval_bench.json \
      --plot=retrieval_bench.png [--fit_from=DIR/embeddings/<ds>/train]

Database: `synthetic_db.py` (float16 memmap, per-dimension class /
sub-cluster / noise variances with an MRL-like decay, or fitted to a real
export with --fit_from), generated once from --seed into --work_dir and
reused; ground truth = exact full-dim cosine top-100 per query (numpy,
cached there). Every method returns k = --k ids per query:

  faiss_flat    FAISS IndexFlatIP on the normalised full rows (exact)
  jax_exact     mrl_jax exact search at the full dim (the reference)
  jax_adaptive  exact D_s shortlist of K, exact re-rank at the full dim
  hnsw / ivf    FAISS HNSW (efSearch sweep) / IVF (nprobe sweep) shortlist
                on the normalised D_s prefix + exact re-rank
  int8/binary/bfloat16  D_s prefix codes scanned (bfloat16: by the JAX
                engine), + exact re-rank
  hnsw_full     FAISS HNSW on the full rows, no re-rank (the baseline the
                MRL paper's "14x" is measured against); slow to build

over D_s in --shortlist_dims and K in --shortlist_ks, each re-ranked
straight at the full dim or through the funnels in --funnels (e.g. 256:50:
re-rank the K at 256 dims, keep 50, re-rank those at the full dim). Metrics per
configuration: recall@k against the ground truth; shortlist coverage (the
fraction of the true top-k inside the K candidates); mAP@10 (standard and
the official code's corrected mAP) and a paired bootstrap 95% interval of
the per-query standard-AP difference to jax_exact; queries/s on one batch
of --batch queries and p50 / p99 latency of --latency_queries single
queries; build seconds and first-stage memory (the re-rank reads the
shared PrefixIndex). Headline: the largest speed-up over jax_exact at
recall@k >= --min_recall with the mAP interval containing 0, for batch and
single queries separately. Writes --out (JSON) and --plot (recall vs
queries/s and vs p50 latency, Pareto fronts).

FAISS threads: all cores (OpenMP default); XLA:CPU its own pool.
Needs `pip install -e '.[bench]'` (faiss-cpu, matplotlib).
"""
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from absl import app
from absl import flags
import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import synthetic_db  # pylint: disable=g-import-not-at-top,wrong-import-position

from mrl_jax import atomic_files  # pylint: disable=g-import-not-at-top
from mrl_jax import search
from mrl_jax.evaluators import retrieval
from mrl_jax.search import ann
from mrl_jax.search import codes

FLAGS = flags.FLAGS
synthetic_db.define_flags()
synthetic_db.define_stored_flags()
flags.DEFINE_string("fit_from", None, "an exported split to fit the "
                    "variances to (default: the MRL-like decay).")
flags.DEFINE_integer("k", 10, "neighbours returned (recall@k).")
flags.DEFINE_list("methods", ["faiss_flat", "jax_exact", "jax_adaptive",
                              "hnsw", "ivf", "int8", "binary", "bfloat16"],
                  "methods (add hnsw_full for HNSW at the full dim).")
flags.DEFINE_list("shortlist_dims", ["8", "16", "32", "64"], "D_s sweep.")
flags.DEFINE_list("shortlist_ks", ["50", "100", "200", "400", "800"],
                  "K sweep.")
flags.DEFINE_list("ef_search", ["1", "2", "4"], "HNSW efSearch sweep, as "
                  "multiples of K (efSearch >= K).")
flags.DEFINE_list("nprobe", ["8", "32", "128"], "IVF nprobe sweep.")
flags.DEFINE_integer("hnsw_m", 32, "HNSW M.")
flags.DEFINE_integer("ef_construction", 40, "HNSW efConstruction.")
flags.DEFINE_integer("ivf_nlist", 0, "IVF lists (0: about 4 sqrt(N)).")
flags.DEFINE_list("full_ef_searches", ["16", "64", "256"],
                  "hnsw_full efSearch sweep.")
flags.DEFINE_list("funnels", ["none"], "re-rank paths swept for every "
                  "shortlist: none (straight to the full dim) or the "
                  "intermediate dim:k stages joined by '+', e.g. 256:50 or "
                  "128:100+512:30, before the full-dim re-rank.")
flags.DEFINE_integer("batch", 1000, "queries per timed batch call.")
flags.DEFINE_integer("latency_queries", 100, "single queries timed.")
flags.DEFINE_integer("rerank_batch", 100, "queries per re-rank call "
                     "(bounds the [Q, K, d] gather).")
flags.DEFINE_integer("repeats", 3, "timed batch calls (median).")
flags.DEFINE_integer("bootstrap", 1000, "bootstrap resamples.")
flags.DEFINE_float("min_recall", 0.99, "headline recall@k floor.")
flags.DEFINE_string("out", None, "JSON results.")
flags.DEFINE_string("plot", None, "PNG Pareto plot.")

METHODS = ("faiss_flat", "jax_exact", "jax_adaptive", "hnsw", "ivf", "int8",
           "binary", "bfloat16", "hnsw_full")
_TRUTH_K = 100
Runner = Callable[[np.ndarray], tuple[Any, Any]]  # queries -> (ids, shortlist)


def _timed(fn: Callable[[], Any]) -> float:
  start = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - start


def measure(run: Runner, queries: np.ndarray, batch: int, latency_queries: int,
            repeats: int) -> dict[str, Any]:
  """ids of every query (in batches) and the timings of one runner."""
  outs = [run(queries[i:i + batch]) for i in range(0, len(queries), batch)]
  ids = np.concatenate([np.asarray(o[0]) for o in outs])
  shortlist = (None if outs[0][1] is None else
               np.concatenate([np.asarray(o[1]) for o in outs]))
  head = queries[:batch]
  seconds = statistics.median(_timed(lambda: run(head)[0])
                              for _ in range(repeats))
  run(queries[:1])  # compiles the single-query shapes
  single = [_timed(lambda i=i: run(queries[i:i + 1])[0]) * 1e3
            for i in range(min(latency_queries, len(queries)))]
  return {"ids": ids, "shortlist": shortlist,
          "qps_batch": len(head) / seconds,
          "p50_ms": float(np.percentile(single, 50)),
          "p99_ms": float(np.percentile(single, 99))}


def _recall(got: np.ndarray, truth: np.ndarray) -> float:
  return float(np.mean([np.isin(t, g).mean() for g, t in zip(got, truth)]))


def _per_query_ap(ids: np.ndarray, db: dict[str, Any], k: int
                  ) -> dict[str, np.ndarray]:
  rel = retrieval.relevance(db["query_labels"], db["labels"][ids[:, :k]])
  relevant = retrieval.num_relevant(db["query_labels"],
                                    np.bincount(db["labels"]))
  return {"standard": retrieval.average_precision_at_k(rel, relevant, k),
          "official": retrieval.corrected_average_precision_at_k(rel, k)}


def paired_bootstrap(diff: np.ndarray, resamples: int, seed: int = 0
                     ) -> tuple[float, float]:
  """95% interval of the mean of per-query differences [Q]."""
  rng = np.random.default_rng(seed)
  means = diff[rng.integers(0, len(diff), (resamples, len(diff)))].mean(1)
  return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def quality(result: dict[str, Any], reference_ap: np.ndarray,
            truth: np.ndarray, db: dict[str, Any], k: int,
            resamples: int) -> dict[str, Any]:
  ids = result.pop("ids")
  shortlist = result.pop("shortlist")
  ap = _per_query_ap(ids, db, 10)
  lo, hi = paired_bootstrap(ap["standard"] - reference_ap, resamples)
  return {f"recall@{k}": _recall(ids[:, :k], truth[:, :k]),
          "shortlist_coverage": (None if shortlist is None else
                                 _recall(shortlist, truth[:, :k])),
          "mAP@10": float(ap["standard"].mean()),
          "corrected_mAP@10": float(ap["official"].mean()),
          "mAP@10_diff_ci95": [lo, hi], **result}


def funnel_stages(funnel: str, dim: int, k: int) -> list[tuple[int, int]]:
  """The re-rank stages [(dim, k), ...] of a --funnels entry."""
  if funnel == "none":
    return [(dim, k)]
  try:
    stages = [tuple(int(v) for v in stage.split(":"))
              for stage in funnel.split("+")]
  except ValueError:
    stages = [()]
  if any(len(stage) != 2 for stage in stages):
    raise ValueError(f"--funnels entry {funnel!r} is not dim:k stages "
                     "joined by '+' (e.g. 256:50) or none")
  return stages + [(dim, k)]


def _rerank(index: search.PrefixIndex, shortlist: Any, queries: np.ndarray,
            stages: list[tuple[int, int]]) -> Any:
  return ann.rerank_shortlist(index, queries, shortlist, stages,
                              query_batch_size=min(FLAGS.rerank_batch,
                                                   len(queries)))[1]


def _shortlisted(index, shortlister, kk, stages, **kw) -> Runner:
  def run(q):
    shortlist = shortlister.shortlist(q, kk, **kw)
    return _rerank(index, shortlist, q, stages), shortlist
  return run


def configurations(db: dict[str, Any], index: search.PrefixIndex,
                   methods: Sequence[str]
                   ) -> Iterator[tuple[dict[str, Any], Runner]]:
  """(description, runner) of every method x sweep point; builds each
  first-stage index (timed) just before its configurations."""
  import faiss  # pylint: disable=import-outside-toplevel
  x, d, k = db["database"], index.dim, FLAGS.k
  index_bytes = sum(b.nbytes for b in index.blocks)
  # First: every other configuration's mAP is compared with it.
  yield ({"method": "jax_exact", "memory_bytes": index_bytes},
         lambda q: (search.search(index, q, d, k)[1], None))
  if "faiss_flat" in methods:
    start = time.perf_counter()
    flat = faiss.IndexFlatIP(d)
    for r0 in range(0, x.shape[0], 1 << 16):
      flat.add(codes.normalized_prefix(x[r0:r0 + (1 << 16)], d))
    yield ({"method": "faiss_flat", "build_s": time.perf_counter() - start,
            "memory_bytes": 4 * x.shape[0] * d},
           lambda q: (flat.search(codes.normalized_prefix(q, d), k)[1], None))
  if "hnsw_full" in methods:
    start = time.perf_counter()
    full = ann.build(x, "hnsw", d, m=FLAGS.hnsw_m,
                     ef_construction=FLAGS.ef_construction)
    info = {"method": "hnsw_full", "build_s": time.perf_counter() - start,
            "memory_bytes": len(faiss.serialize_index(full.faiss_index))}
    for ef in map(int, FLAGS.full_ef_searches):
      yield ({**info, "ef_search": max(ef, k)},
             lambda q, ef=max(ef, k): (full.shortlist(q, k, ef_search=ef),
                                       None))
  for ds in map(int, FLAGS.shortlist_dims):
    first = {}
    for kind in ann.KINDS + codes.KINDS:
      if kind not in methods:
        continue
      start = time.perf_counter()
      if kind in ann.KINDS:
        built = ann.build(x, kind, ds, m=FLAGS.hnsw_m,
                          ef_construction=FLAGS.ef_construction,
                          nlist=FLAGS.ivf_nlist or None)
        size = len(faiss.serialize_index(built.faiss_index))
      else:
        built = codes.build(x, kind, ds)
        size = built.bytes_per_row * built.num_rows
      first[kind] = (built, {"build_s": time.perf_counter() - start,
                             "memory_bytes": size})
    for kk in map(int, FLAGS.shortlist_ks):
      for funnel in FLAGS.funnels:
        base = {"Ds": ds, "K": kk,
                "funnel": None if funnel == "none" else funnel}
        yield from _shortlist_configurations(
            index, index_bytes, first, methods, base,
            funnel_stages(funnel, d, k))


def _shortlist_configurations(index: search.PrefixIndex, index_bytes: int,
                              first: dict[str, tuple[Any, dict[str, Any]]],
                              methods: Sequence[str], base: dict[str, Any],
                              stages: list[tuple[int, int]]
                              ) -> Iterator[tuple[dict[str, Any], Runner]]:
  """(description, runner) of every first stage at one (D_s, K, funnel)."""
  ds, kk = base["Ds"], base["K"]
  if "jax_adaptive" in methods:
    def adaptive(q):
      _, shortlist = search.search(index, q, ds, kk)
      return _rerank(index, shortlist, q, stages), shortlist
    yield ({"method": "jax_adaptive", **base, "memory_bytes": index_bytes},
           adaptive)
  for kind, (built, info) in first.items():
    desc = {"method": kind, **base, **info}
    if kind == "hnsw":
      for mult in map(float, FLAGS.ef_search):
        ef = max(kk, int(mult * kk))
        yield ({**desc, "ef_search": ef},
               _shortlisted(index, built, kk, stages, ef_search=ef))
    elif kind == "ivf":
      for probe in map(int, FLAGS.nprobe):
        probe = min(probe, built.params["nlist"])
        yield ({**desc, "nprobe": probe},
               _shortlisted(index, built, kk, stages, nprobe=probe))
    else:
      yield desc, _shortlisted(index, built, kk, stages)


def headline(results: list[dict[str, Any]], k: int,
             min_recall: float) -> dict[str, Any]:
  """Largest speed-up over jax_exact at recall@k >= min_recall with the mAP
  interval containing 0, batch and single-query separately."""
  exact = next(r for r in results if r["method"] == "jax_exact")
  ok = [r for r in results if r[f"recall@{k}"] >= min_recall
        and r["mAP@10_diff_ci95"][0] <= 0 <= r["mAP@10_diff_ci95"][1]
        and r["method"] != "jax_exact"]
  out = {"min_recall": min_recall}
  for key, better in (("qps_batch", max), ("p50_ms", min)):
    if not ok:
      out[key] = None
      continue
    best = better(ok, key=lambda r: r[key])
    speedup = (best[key] / exact[key] if key == "qps_batch"
               else exact[key] / best[key])
    out[key] = {"speedup_over_jax_exact": speedup,
                **{n: best.get(n) for n in ("method", "Ds", "K", "ef_search",
                                            "nprobe", "funnel",
                                            f"recall@{k}")}}
  return out


def markdown_table(results: list[dict[str, Any]], k: int) -> str:
  """The exact baselines and every configuration on either Pareto front
  (recall vs batch queries/s, recall vs p50 latency), best recall first."""
  fronts = set()
  for key, larger in (("qps_batch", True), ("p50_ms", False)):
    front = set(_pareto([(r[key], r[f"recall@{k}"]) for r in results], larger))
    fronts |= {i for i, r in enumerate(results)
               if (r[key], r[f"recall@{k}"]) in front}
  exact = next(r for r in results if r["method"] == "jax_exact")
  rows = [r for i, r in enumerate(results)
          if i in fronts or r["method"] in ("jax_exact", "faiss_flat")]
  lines = [f"| method | D_s | K | ef / nprobe | recall@{k} | coverage | "
           "mAP@10 points vs exact (95% CI) | queries/s | x exact | p50 ms | p99 ms | "
           "build s | first-stage MB |", "|" + "---|" * 13]
  for r in sorted(rows, key=lambda r: (-r[f"recall@{k}"], -r["qps_batch"])):
    lo, hi = r["mAP@10_diff_ci95"]
    cov = r["shortlist_coverage"]
    funnel = f" -> {r['funnel']}" if r.get("funnel") else ""
    lines.append(
        f"| {r['method']}{funnel} | {r.get('Ds', '')} | {r.get('K', '')} | "
        f"{r.get('ef_search', r.get('nprobe', ''))} | "
        f"{r[f'recall@{k}']:.3f} | {'' if cov is None else f'{cov:.3f}'} | "
        f"{100 * (r['mAP@10'] - exact['mAP@10']):+.2f} "
        f"({100 * lo:+.2f}, {100 * hi:+.2f}) | "
        f"{r['qps_batch']:.0f} | {r['qps_batch'] / exact['qps_batch']:.1f} | "
        f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
        f"{r.get('build_s', 0):.1f} | {r['memory_bytes'] / 1e6:.1f} |")
  return "\n".join(lines)


def plot(results: list[dict[str, Any]], k: int, path: str) -> None:
  """recall@k vs queries/s (batch) and vs p50 latency, Pareto fronts."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  import matplotlib.ticker  # pylint: disable=import-outside-toplevel
  fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
  methods = sorted({r["method"] for r in results})
  for ax, key, title in ((axes[0], "qps_batch", "queries/s, batch"),
                         (axes[1], "p50_ms", "p50 ms, single query")):
    for method in methods:
      pts = [(r[key], r[f"recall@{k}"]) for r in results
             if r["method"] == method]
      ax.scatter(*zip(*pts), label=method, s=18)
    front = _pareto([(r[key], r[f"recall@{k}"]) for r in results],
                    faster_is_larger=key == "qps_batch")
    ax.plot(*zip(*front), "k--", lw=0.8, label="Pareto front")
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel(title)
    ax.set_ylabel(f"recall@{k} vs exact full dim")
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(f"{path}.tmp.png", dpi=110)
  os.replace(f"{path}.tmp.png", path)


def _pareto(points: list[tuple[float, float]], faster_is_larger: bool
            ) -> list[tuple[float, float]]:
  """Points no other point beats on both speed and recall, by speed."""
  ordered = sorted(points, key=lambda p: (-p[0] if faster_is_larger
                                          else p[0], -p[1]))
  front, best = [], -1.0
  for speed, recall in ordered:
    if recall > best:
      front.append((speed, recall))
      best = recall
  return front


def check_flags() -> None:
  """One-line ValueErrors for flag values, before anything is generated."""
  if not 1 <= FLAGS.k <= _TRUTH_K:
    raise ValueError(f"--k={FLAGS.k} must be in [1, {_TRUTH_K}] (the "
                     "ground truth keeps the top 100)")
  bad_k = [kk for kk in map(int, FLAGS.shortlist_ks) if kk < FLAGS.k]
  if bad_k:
    raise ValueError(f"--shortlist_ks {bad_k} are below --k={FLAGS.k}; a "
                     "shortlist must hold k candidates")
  bad_ds = [ds for ds in map(int, FLAGS.shortlist_dims)
            if not 1 <= ds <= FLAGS.dim]
  if bad_ds:
    raise ValueError(f"--shortlist_dims {bad_ds} outside [1, --dim="
                     f"{FLAGS.dim}]")
  unknown = set(FLAGS.methods) - set(METHODS)
  if unknown:
    raise ValueError(f"unknown --methods {sorted(unknown)}; use {METHODS}")
  for funnel in FLAGS.funnels:
    stages = funnel_stages(funnel, FLAGS.dim, FLAGS.k)
    for kk in map(int, FLAGS.shortlist_ks):
      ann.check_stages(kk, stages, 1, FLAGS.dim)  # D_s: checked above


def run(work_dir: str) -> dict[str, Any]:
  check_flags()
  start = time.perf_counter()
  variances = (synthetic_db.fit(FLAGS.fit_from, FLAGS.dim) if FLAGS.fit_from
               else None)
  db = synthetic_db.generate(work_dir, FLAGS.rows, FLAGS.dim, FLAGS.classes,
                             FLAGS.queries, subclusters=FLAGS.subclusters,
                             seed=FLAGS.seed, variances=variances,
                             fitted_from=FLAGS.fit_from)
  truth = synthetic_db.ground_truth(db, _TRUTH_K)
  prepare_s = time.perf_counter() - start
  k = FLAGS.k
  start = time.perf_counter()
  index = search.build_index(db["database"], boundaries=sorted(
      {*map(int, FLAGS.shortlist_dims), FLAGS.dim}), normalize=True)
  index_s = time.perf_counter() - start
  queries = db["queries"]
  results = []
  reference_ap = None
  for desc, runner in configurations(db, index, FLAGS.methods):
    measured = measure(runner, queries, FLAGS.batch, FLAGS.latency_queries,
                       FLAGS.repeats)
    if desc["method"] == "jax_exact":
      reference_ap = _per_query_ap(measured["ids"], db, 10)["standard"]
    results.append({**desc, **quality(measured, reference_ap, truth, db, k,
                                      FLAGS.bootstrap)})
    print(json.dumps(results[-1]), flush=True)
  return {"database": {**db["spec"], "prepare_s": prepare_s,
                       "prefix_index_build_s": index_s},
          "k": k, "results": results,
          "headline": headline(results, k, FLAGS.min_recall)}


def main(argv: Sequence[str]) -> None:
  del argv
  out = synthetic_db.run_on_machine("retrieval_bench", run)
  print(markdown_table(out["results"], out["k"]))
  print(json.dumps(out["headline"], indent=1))
  if FLAGS.out:
    atomic_files.write_json(FLAGS.out, out)
  if FLAGS.plot:
    plot(out["results"], out["k"], FLAGS.plot)


if __name__ == "__main__":
  app.run(main)
