"""Retrieval metrics per nesting dim: 1-NN top-1, mAP@k, precision@k, recall@k.

An item is relevant to a query when it has the query's label; R is the
number of relevant database items (the query class's count in the database).

Two protocols, selected with `Protocol`, report under distinct names:
* STANDARD: AP@k = (sum over hit ranks i <= k of precision@i) / min(k, R)
  (`mAP@k`), recall@k = hits@k / R (`recall@k`); both 0 when R = 0.
* PAPER, the official MRL code's quirks (RAIVNLab/MRL retrieval code):
  AP@k divided by k, which the paper calls "corrected mAP@k"
  (`corrected_mAP@k`), and recall@k = hits@k / 1300, hard-coded as the
  approximate ImageNet images per class (`paper_recall@k`). The paper's
  mAP@10 numbers (e.g. 65.27 for adaptive 16 -> 2048 on ImageNet-1K) are
  this `corrected_mAP@10`; where a class has at least k items in the
  database both variants agree, otherwise the standard one is at least as
  high.
* BOTH: the union of the two (what `--mode=retrieval` reports).
All report top-1 (`top1`: label of the first neighbour), precision@k =
hits@k / k (`precision@k`) and the top-k hit rate (`hit@k`: any hit).

`evaluate_per_dim` / `evaluate_adaptive` / `evaluate_funnel` run the searches
of `mrl_jax.search` and return flat, greppable names such as
`retrieval/mAP@10/d=32`, `retrieval/mAP@10/Ds=16,K=200,Dr=2048` and
`retrieval/mAP@10/funnel=16:200,32:100,2048:10`.

`evaluate_exported` is `--mode=retrieval`: every nesting dim exactly, then
adaptive retrieval (D_s -> the full dim) with the shortlist picked by
`config.retrieval` (`DEFAULTS`): exact, a FAISS HNSW / IVF index on the
D_s prefix (built once and kept next to the exported database, under
ann/), or int8 / binary / bfloat16 codes of the prefix; approximate
shortlists also report their coverage of the exact one.
"""
from collections.abc import Sequence
import enum
import os
from typing import Any

import numpy as np

from mrl_jax.export import embedding_files
from mrl_jax import search as search_lib
from mrl_jax.search import ann
from mrl_jax.search import codes

# Approximate images per ImageNet-1K class, hard-coded by the official code.
PAPER_CLASS_SIZE = 1300


# config.retrieval of --mode=retrieval. ks: the k of the @k metrics (those
# above the database size are dropped). shortlist: exact | hnsw | ivf, the
# first stage of adaptive retrieval at D_s = dim_shortlist keeping
# K = k_shortlist (the paper: 16, 200; re-ranked at the full dim).
# hnsw_*/ef_*: IndexHNSWFlat's M, efConstruction, efSearch (>= K; the
# paper used FAISS's defaults with M = 32). ivf_nlist (0: about 4 sqrt(N)),
# ivf_nprobe, ivf_pq_m (0: IVF-Flat, else IVF-PQ with that many
# sub-quantisers). codes: none | int8 | binary | bfloat16, an exhaustive
# scan of prefix codes instead (with shortlist=exact only).
DEFAULTS = {"ks": (10, 25, 50, 100), "shortlist": "exact",
            "dim_shortlist": 16, "k_shortlist": 200, "hnsw_m": 32,
            "ef_construction": 40, "ef_search": 200,
            "ivf_nlist": 0, "ivf_nprobe": 16, "ivf_pq_m": 0, "codes": "none"}
SHORTLISTS = ("exact",) + ann.KINDS
CODES = ("none",) + codes.KINDS


class Protocol(enum.Enum):
  STANDARD = "standard"
  PAPER = "paper"
  BOTH = "both"


def relevance(query_labels: Any, retrieved_labels: Any) -> np.ndarray:
  """[Q, k] bool: retrieved_labels [Q, k] equal to query_labels [Q]."""
  query_labels = np.asarray(query_labels)
  retrieved_labels = np.asarray(retrieved_labels)
  if retrieved_labels.ndim != 2 or query_labels.shape != (
      retrieved_labels.shape[0],):
    raise ValueError(f"need query labels [Q] and retrieved labels [Q, k], got "
                     f"{query_labels.shape} and {retrieved_labels.shape}")
  return retrieved_labels == query_labels[:, None]


def num_relevant(query_labels: Any, class_counts: Any) -> np.ndarray:
  """[Q] R per query: class_counts [C] (database items per class) at the
  query's label; labels outside [0, C) have none."""
  query_labels = np.asarray(query_labels)
  counts = np.asarray(class_counts)
  inside = (query_labels >= 0) & (query_labels < counts.shape[0])
  return np.where(inside, counts[np.clip(query_labels, 0,
                                         counts.shape[0] - 1)], 0)


def hits_at_k(rel: np.ndarray, k: int) -> np.ndarray:
  """[Q] relevant items among the first k of rel [Q, >= k]."""
  _check_k(rel, k)
  return rel[:, :k].sum(axis=1)


def precision_at_k(rel: np.ndarray, k: int) -> np.ndarray:
  """[Q] hits@k / k (both protocols)."""
  return hits_at_k(rel, k) / k


def hit_rate_at_k(rel: np.ndarray, k: int) -> np.ndarray:
  """[Q] 1 when any of the first k is relevant (top-k accuracy)."""
  return (hits_at_k(rel, k) > 0).astype(np.float64)


def recall_at_k(rel: np.ndarray, relevant: np.ndarray, k: int) -> np.ndarray:
  """[Q] standard recall: hits@k / R (0 where R = 0)."""
  return _safe_div(hits_at_k(rel, k), relevant)


def paper_recall_at_k(rel: np.ndarray, k: int) -> np.ndarray:
  """[Q] the official code's recall: hits@k / 1300 whatever the class size."""
  return hits_at_k(rel, k) / PAPER_CLASS_SIZE


def _sum_precision_at_hits(rel: np.ndarray, k: int) -> np.ndarray:
  """[Q] sum over hit ranks i <= k of precision@i."""
  _check_k(rel, k)
  rel = rel[:, :k]
  precision = np.cumsum(rel, axis=1) / np.arange(1, k + 1)
  return (precision * rel).sum(axis=1)


def average_precision_at_k(rel: np.ndarray, relevant: np.ndarray,
                           k: int) -> np.ndarray:
  """[Q] standard AP@k: sum of precision at hit ranks / min(k, R)."""
  return _safe_div(_sum_precision_at_hits(rel, k), np.minimum(k, relevant))


def corrected_average_precision_at_k(rel: np.ndarray, k: int) -> np.ndarray:
  """[Q] the paper's "corrected" AP@k: sum of precision at hit ranks / k."""
  return _sum_precision_at_hits(rel, k) / k


def retrieval_metrics(query_labels: Any, retrieved_labels: Any,
                      class_counts: Any, ks: Sequence[int],
                      protocol: Protocol = Protocol.STANDARD
                      ) -> dict[str, float]:
  """Mean metrics over queries.

  Args:
    query_labels: [Q] int.
    retrieved_labels: [Q, k_max] labels of the ranked neighbours.
    class_counts: [C] database items per class (np.bincount(db_labels));
      unused by the PAPER protocol, which hard-codes 1300.
    ks: cut-offs, each <= k_max.
    protocol: STANDARD, PAPER or BOTH (see module doc for names and
      formulas).

  Returns:
    {"top1", "precision@k", "hit@k", and "mAP@k", "recall@k" (STANDARD)
    and/or "corrected_mAP@k", "paper_recall@k" (PAPER)}: float means over
    queries.
  """
  protocol = Protocol(protocol)
  rel = relevance(query_labels, retrieved_labels)
  relevant = num_relevant(query_labels, class_counts)
  out = {"top1": float(precision_at_k(rel, 1).mean())}
  for k in ks:
    out[f"precision@{k}"] = float(precision_at_k(rel, k).mean())
    out[f"hit@{k}"] = float(hit_rate_at_k(rel, k).mean())
    if protocol is not Protocol.PAPER:
      out[f"mAP@{k}"] = float(average_precision_at_k(rel, relevant, k).mean())
      out[f"recall@{k}"] = float(recall_at_k(rel, relevant, k).mean())
    if protocol is not Protocol.STANDARD:
      out[f"corrected_mAP@{k}"] = float(
          corrected_average_precision_at_k(rel, k).mean())
      out[f"paper_recall@{k}"] = float(paper_recall_at_k(rel, k).mean())
  return out


def evaluate_per_dim(index: search_lib.PrefixIndex, queries: Any,
                     query_labels: Any, db_labels: Any, dims: Sequence[int],
                     ks: Sequence[int], *,
                     protocol: Protocol = Protocol.STANDARD,
                     prefix: str = "retrieval",
                     **search_kwargs: Any) -> dict[str, float]:
  """Single-shot exact search at every dim; one search per dim at max(ks).

  Args:
    index: database index (normalised for the MRL protocol).
    queries: [Q, d]; query_labels [Q]; db_labels [N] (the index's row order).
    dims: prefix dims, e.g. the nesting list.
    ks: metric cut-offs.
    protocol: see `retrieval_metrics`.
    prefix: first part of every name.
    **search_kwargs: passed to `search.search` (chunk_rows, ...).

  Returns:
    {"<prefix>/<metric>/d=<m>": value} for every dim and metric.
  """
  db_labels, counts = _labels(index, db_labels)
  out = {}
  for m in dims:
    _, ids = search_lib.search(index, queries, m, max(ks), **search_kwargs)
    out.update(_named(prefix, f"d={m}", retrieval_metrics(
        query_labels, db_labels[np.asarray(ids)], counts, ks, protocol)))
  return out


def evaluate_adaptive(index: search_lib.PrefixIndex, queries: Any,
                      query_labels: Any, db_labels: Any,
                      dim_pairs: Sequence[tuple[int, int]], shortlist_k: int,
                      ks: Sequence[int], *,
                      protocol: Protocol = Protocol.STANDARD,
                      prefix: str = "retrieval",
                      **search_kwargs: Any) -> dict[str, float]:
  """Adaptive retrieval (shortlist K at D_s, re-rank at D_r) per pair.

  Args:
    dim_pairs: [(D_s, D_r), ...], e.g. [(16, 2048)].
    shortlist_k: K (the paper uses 200); must be >= max(ks).
    Others as in `evaluate_per_dim`.

  Returns:
    {"<prefix>/<metric>/Ds=<D_s>,K=<K>,Dr=<D_r>": value}.
  """
  db_labels, counts = _labels(index, db_labels)
  out = {}
  for ds, dr in dim_pairs:
    _, ids = search_lib.adaptive_search(index, queries, ds, shortlist_k, dr,
                                        max(ks), **search_kwargs)
    out.update(_named(prefix, f"Ds={ds},K={shortlist_k},Dr={dr}",
                      retrieval_metrics(query_labels, db_labels[np.asarray(ids)],
                                        counts, ks, protocol)))
  return out


def evaluate_funnel(index: search_lib.PrefixIndex, queries: Any,
                    query_labels: Any, db_labels: Any,
                    funnels: Sequence[Sequence[tuple[int, int]]],
                    ks: Sequence[int], *,
                    protocol: Protocol = Protocol.STANDARD,
                    prefix: str = "retrieval",
                    **search_kwargs: Any) -> dict[str, float]:
  """Funnel retrieval per cascade; each cascade's last K must be >= max(ks).

  Args:
    funnels: cascades of (dim, K) stages, e.g.
      [[(16, 200), (32, 100), (64, 50), (128, 25), (2048, 10)]].
    Others as in `evaluate_per_dim`.

  Returns:
    {"<prefix>/<metric>/funnel=<d0>:<K0>,<d1>:<K1>,...": value}.
  """
  db_labels, counts = _labels(index, db_labels)
  out = {}
  for stages in funnels:
    stages = [(int(m), int(kk)) for m, kk in stages]
    if stages and stages[-1][1] < max(ks):
      raise ValueError(f"funnel {stages} ends with K={stages[-1][1]} but "
                       f"metrics need k={max(ks)}; lower ks or raise the last K")
    _, ids = search_lib.funnel_search(index, queries, stages, **search_kwargs)
    name = "funnel=" + ",".join(f"{m}:{kk}" for m, kk in stages)
    out.update(_named(prefix, name, retrieval_metrics(
        query_labels, db_labels[np.asarray(ids)], counts, ks, protocol)))
  return out


def evaluate_exported(train_dir: str, eval_dir: str,
                      settings: dict[str, Any]) -> dict[str, Any]:
  """`--mode=retrieval` on an embedding export (both metric protocols).

  Args:
    train_dir: exported database split (`embedding_files.split_dir`).
    eval_dir: exported query split.
    settings: `DEFAULTS` with config.retrieval's fields over them.

  Returns:
    {"nesting", "step", "shortlist": settings, and metric names}:
    "retrieval/<metric>/d=<m>" per nesting dim (exact search) and
    "retrieval/<metric>/<name>" for adaptive retrieval, where <name> is
    "Ds=16,K=200,Dr=2048" for the exact shortlist or "<kind>,Ds=...,Dr=..."
    (kind hnsw, ivf, int8, binary, bfloat16), which also reports
    "retrieval/shortlist_coverage/<name>" (the fraction of the exact
    shortlist's K ids it found) and "retrieval/agreement@<k>/<name>" (of
    the exact-shortlist result's top k).

  Raises:
    ValueError: for bad settings (before the embeddings are read) or a
      D_s above the exported dim, or a saved ANN index built on other
      embeddings (before anything is searched or written).
    RunError: FAISS missing for an hnsw / ivf shortlist.
  """
  opts = _checked_settings(settings)
  database, db_labels, queries, q_labels, meta = (
      embedding_files.load_database_and_queries(train_dir, eval_dir))
  dims = meta["nesting"]
  full, ds = database.shape[1], opts["dim_shortlist"]
  kk = min(opts["k_shortlist"], len(database))
  ks = tuple(k for k in opts["ks"] if k <= len(database))
  stages = [(full, max(ks))]
  ann.check_stages(kk, stages, ds, full)
  index = search_lib.build_index(database, boundaries=sorted({*dims, ds}),
                                 normalize=True)
  queries = queries.astype(np.float32)
  out = evaluate_per_dim(index, queries, q_labels, db_labels, dims, ks,
                         protocol=Protocol.BOTH)
  _, exact_shortlist = search_lib.search(index, queries, ds, kk)
  _, exact = ann.rerank_shortlist(index, queries, exact_shortlist, stages)
  results = {f"Ds={ds},K={kk},Dr={full}": exact}
  kind = opts["codes"] if opts["codes"] != "none" else opts["shortlist"]
  if kind != "exact":
    shortlister, search_opts = _shortlister(kind, opts, database, meta,
                                            train_dir)
    shortlist = shortlister.shortlist(queries, kk, **search_opts)
    _, ids = ann.rerank_shortlist(index, queries, shortlist, stages)
    name = f"{kind},Ds={ds},K={kk},Dr={full}"
    results[name] = ids
    out[f"retrieval/shortlist_coverage/{name}"] = _overlap(shortlist,
                                                           exact_shortlist)
    out[f"retrieval/agreement@{max(ks)}/{name}"] = _overlap(ids, exact)
  counts = np.bincount(db_labels)
  for name, ids in results.items():
    out.update(_named("retrieval", name, retrieval_metrics(
        q_labels, db_labels[np.asarray(ids)], counts, ks, Protocol.BOTH)))
  return {"nesting": dims, "step": meta["step"], "shortlist": opts, **out}


def _checked_settings(settings: dict[str, Any]) -> dict[str, Any]:
  """settings with ints as ints, or a one-line ValueError naming the
  config.retrieval field to fix."""
  opts = {**DEFAULTS, **settings}
  if opts["shortlist"] not in SHORTLISTS:
    raise ValueError(f"config.retrieval.shortlist={opts['shortlist']!r}; use "
                     f"one of {SHORTLISTS}")
  if opts["codes"] not in CODES:
    raise ValueError(f"config.retrieval.codes={opts['codes']!r}; use one of "
                     f"{CODES}")
  if opts["codes"] != "none" and opts["shortlist"] != "exact":
    raise ValueError("config.retrieval.codes scans every row's codes, it "
                     "replaces an ANN shortlist; set shortlist='exact' or "
                     "codes='none'")
  ints = ("dim_shortlist", "k_shortlist", "hnsw_m", "ef_construction",
          "ef_search", "ivf_nlist", "ivf_nprobe", "ivf_pq_m")
  opts.update({key: int(opts[key]) for key in ints})
  if opts["k_shortlist"] < max(opts["ks"]):
    raise ValueError(f"config.retrieval.k_shortlist={opts['k_shortlist']} < "
                     f"k={max(opts['ks'])}, the largest metric cut-off; "
                     "raise it")
  if opts["shortlist"] == "hnsw" and opts["ef_search"] < opts["k_shortlist"]:
    raise ValueError(f"config.retrieval.ef_search={opts['ef_search']} < "
                     f"k_shortlist={opts['k_shortlist']}; HNSW returns at "
                     "most ef_search candidates: raise ef_search")
  if opts["shortlist"] != "exact":
    ann.import_faiss()  # a missing extra fails before the export is read
  return opts


def _shortlister(kind: str, opts: dict[str, Any], database: np.ndarray,
                 meta: dict[str, Any], train_dir: str
                 ) -> tuple[Any, dict[str, int]]:
  """The shortlist index for `kind` and its search options: codes built
  in memory; an ANN index loaded from train_dir/ann/ (checked to be built on
  this export with these parameters) or built and saved there."""
  ds = opts["dim_shortlist"]
  if kind in codes.KINDS:
    return codes.build(database, kind, ds), {}
  if kind == "hnsw":
    params = {"m": opts["hnsw_m"], "ef_construction": opts["ef_construction"]}
  else:
    params = {"nlist": opts["ivf_nlist"] or None, "pq_m": opts["ivf_pq_m"]}
  directory = os.path.join(train_dir, "ann")
  path = ann.index_path(directory, kind, ds)
  if os.path.exists(path):
    shortlister = ann.load(path, ann.provenance(*database.shape, meta))
    differ = {key: value for key, value in params.items()
              if value is not None and shortlister.params.get(key) != value}
    if differ:
      raise ValueError(f"{path} was built with {shortlister.params}, the "
                       f"config asks for {differ}; delete it and its .json "
                       "to rebuild it")
  else:
    if kind == "ivf":
      params["nprobe"] = opts["ivf_nprobe"]
    shortlister = ann.build(database, kind, ds, metadata=meta, **params)
    ann.save(shortlister, directory)
  if kind == "hnsw":
    return shortlister, {"ef_search": opts["ef_search"]}
  # A small database gets fewer lists than the configured nprobe.
  return shortlister, {"nprobe": min(opts["ivf_nprobe"],
                                     shortlister.params["nlist"])}


def _overlap(got: Any, want: Any) -> float:
  """Mean over queries of the fraction of want's ids [Q, K] in got's."""
  got, want = np.asarray(got), np.asarray(want)
  return float(np.mean([np.isin(w, g).mean() for g, w in zip(got, want)]))


def _labels(index: search_lib.PrefixIndex, db_labels: Any
            ) -> tuple[np.ndarray, np.ndarray]:
  """db_labels [N] as numpy and the per-class counts [C]."""
  db_labels = np.asarray(db_labels)
  if db_labels.shape != (index.num_rows,):
    raise ValueError(f"db_labels has shape {db_labels.shape}, the index has "
                     f"{index.num_rows} rows")
  return db_labels, np.bincount(db_labels)


def _named(prefix: str, suffix: str, metrics: dict[str, float]
           ) -> dict[str, float]:
  return {f"{prefix}/{name}/{suffix}": v for name, v in metrics.items()}


def _safe_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  return np.where(b > 0, a / np.maximum(b, 1), 0.0)


def _check_k(rel: np.ndarray, k: int) -> None:
  if not 1 <= k <= rel.shape[1]:
    raise ValueError(f"k={k} needs at least k retrieved items per query; "
                     f"got {rel.shape[1]}")
