"""Retrieval metrics per nesting dim: 1-NN top-1, mAP@k, precision@k, recall@k.

An item is relevant to a query when it has the query's label; R is the
number of relevant database items (the query class's count in the database).

Two protocols, selected with `Protocol`, report under distinct names:
* STANDARD: AP@k = (sum over hit ranks i <= k of precision@i) / min(k, R)
  (`mAP@k`), recall@k = hits@k / R (`recall@k`); both 0 when R = 0.
* PAPER, the official MRL code's quirks (RAIVNLab/MRL retrieval code):
  AP@k divided by k, which the paper calls "corrected mAP@k"
  (`corrected_mAP@k`), and recall@k = hits@k / 1300, hard-coded as the
  approximate ImageNet images per class (`paper_recall@k`).
Both report top-1 (`top1`: label of the first neighbour), precision@k =
hits@k / k (`precision@k`) and the top-k hit rate (`hit@k`: any hit).

`evaluate_per_dim` / `evaluate_adaptive` / `evaluate_funnel` run the searches
of `mrl_jax.search` and return flat, greppable names such as
`retrieval/mAP@10/d=32`, `retrieval/mAP@10/Ds=16,K=200,Dr=2048` and
`retrieval/mAP@10/funnel=16:200,32:100,2048:10`.
"""
from collections.abc import Sequence
import enum
from typing import Any

import numpy as np

from mrl_jax import search as search_lib

# Approximate images per ImageNet-1K class, hard-coded by the official code.
PAPER_CLASS_SIZE = 1300


class Protocol(enum.Enum):
  STANDARD = "standard"
  PAPER = "paper"


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
    protocol: STANDARD or PAPER (see module doc for names and formulas).

  Returns:
    {"top1", "precision@k", "hit@k", and "mAP@k", "recall@k" (STANDARD) or
    "corrected_mAP@k", "paper_recall@k" (PAPER)}: float means over queries.
  """
  protocol = Protocol(protocol)
  rel = relevance(query_labels, retrieved_labels)
  relevant = num_relevant(query_labels, class_counts)
  out = {"top1": float(precision_at_k(rel, 1).mean())}
  for k in ks:
    out[f"precision@{k}"] = float(precision_at_k(rel, k).mean())
    out[f"hit@{k}"] = float(hit_rate_at_k(rel, k).mean())
    if protocol is Protocol.STANDARD:
      out[f"mAP@{k}"] = float(average_precision_at_k(rel, relevant, k).mean())
      out[f"recall@{k}"] = float(recall_at_k(rel, relevant, k).mean())
    else:
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
