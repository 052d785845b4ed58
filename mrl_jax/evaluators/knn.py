"""k-NN classification on exported embeddings, per nesting dim.

The MRL 1-NN protocol (paper Table 2): database = train embeddings, queries =
eval embeddings; for each nesting dim m, slice z[:, :m], L2-normalise each
prefix separately (normalising the full vector and then slicing gives other
neighbours), and search exactly. For unit vectors ||q - x||^2 = 2 - 2 q.x, so
the L2 ranking (the paper's FAISS IndexFlatL2) is the cosine ranking used
here.

The search is `mrl_jax.search` with per-prefix cosine (`normalize=True`):
exact, blockwise with a running top-k, sharded over devices; among equal
scores the lower database index ranks first.
"""
from collections.abc import Sequence
from typing import Any

import numpy as np

from mrl_jax.export import embedding_files
from mrl_jax import search
from mrl_jax.mrl import metrics

# --mode=knn's settings (config.knn overrides them): neighbour counts.
DEFAULTS = {"ks": (1, 10)}


def majority_vote(neighbour_labels: np.ndarray,
                  chunk: int = 4096) -> np.ndarray:
  """Most frequent label per row; ties go to the class seen nearest.

  Args:
    neighbour_labels: [Q, k] labels of each query's neighbours, nearest
      first.
    chunk: rows per step (the vote is O(k^2) memory per row).

  Returns:
    [Q] predicted labels. Among classes with the most votes, the one whose
    first occurrence has the smallest rank wins; so a tie that includes the
    1-NN class goes to the 1-NN class.
  """
  out = []
  for s in range(0, len(neighbour_labels), chunk):
    lab = neighbour_labels[s:s + chunk]
    votes = (lab[:, :, None] == lab[:, None, :]).sum(-1)  # [c, k]
    # argmax returns the first (nearest) position among the maxima.
    out.append(np.take_along_axis(lab, votes.argmax(1)[:, None], 1)[:, 0])
  return np.concatenate(out) if out else np.zeros(0, neighbour_labels.dtype)


def _check_labels(labels: np.ndarray, n: int, what: str) -> np.ndarray:
  labels = np.asarray(labels)
  if labels.shape != (n,):
    raise ValueError(f"{what} labels have shape {labels.shape}; k-NN needs "
                     f"one integer class per example ({n},), not multi-hot")
  return labels


def metric_key(k: int, dim: int) -> str:
  """"knn/top1/d=<dim>" for 1-NN, "knn/vote<k>/d=<dim>" for a k-NN vote."""
  return metrics.metric_name("knn", "top1" if k == 1 else f"vote{k}", dim)


def evaluate(database: Any, database_labels: Any, queries: Any,
             query_labels: Any, nesting_dims: Sequence[int],
             ks: Sequence[int] = (1, 10),
             **search_kwargs: int) -> dict[str, Any]:
  """k-NN accuracy per nesting dim.

  Args:
    database: [N, d] train embeddings (raw, unnormalised).
    database_labels: [N] integer classes.
    queries: [Q, d] eval embeddings (raw).
    query_labels: [Q] integer classes.
    nesting_dims: prefix lengths m <= d to evaluate.
    ks: neighbour counts; k = 1 is 1-NN accuracy, k > 1 the accuracy of a
      majority vote over k neighbours (ties toward the nearest neighbour's
      class; k is capped at N). One search per dim with max(ks) neighbours
      serves all ks.
    **search_kwargs: block sizes for `search.search` (chunk_rows,
      query_batch_size, ...).

  Returns:
    {"nesting": [...], "num_database": N, "num_queries": Q, "ks": [...],
     "knn/top1/d=<m>": fraction, "knn/vote<k>/d=<m>": fraction, ...}.
  """
  database, queries = np.asarray(database), np.asarray(queries)
  db_labels = _check_labels(database_labels, len(database), "database")
  q_labels = _check_labels(query_labels, len(queries), "query")
  dims, ks = [int(d) for d in nesting_dims], sorted({int(k) for k in ks})
  if max(dims) > database.shape[1] or database.shape[1] != queries.shape[1]:
    raise ValueError(f"nesting dims {dims} vs database {database.shape} and "
                     f"queries {queries.shape}")
  k_max = min(max(ks), len(database))
  out = {"nesting": dims, "num_database": len(database),
         "num_queries": len(queries), "ks": ks}
  # Blocks cut at the nesting dims: each prefix scan reads only its columns.
  index = search.build_index(database, boundaries=sorted(set(dims)),
                             normalize=True)
  for dim in dims:
    _, ids = search.search(index, queries, dim, k_max, **search_kwargs)
    neighbour_labels = db_labels[np.asarray(ids)]
    for k in ks:
      pred = majority_vote(neighbour_labels[:, :k])
      out[metric_key(k, dim)] = float(np.mean(pred == q_labels))
  return out


def evaluate_exported(train_dir: str, eval_dir: str,
                      ks: Sequence[int] = (1, 10),
                      nesting_dims: Sequence[int] | None = None,
                      **search_kwargs: int) -> dict[str, Any]:
  """k-NN accuracy of an embedding export (`embedding_files.load_split`
  directories).

  Args:
    train_dir: exported database split (e.g. train).
    eval_dir: exported query split (e.g. validation).
    ks: see `evaluate`.
    nesting_dims: default the "nesting" of the eval split's metadata.
    **search_kwargs: passed to `evaluate`.

  Returns:
    `evaluate`'s dict plus "model" and "step" of the export.
  """
  database, db_labels, queries, q_labels, q_meta = (
      embedding_files.load_database_and_queries(train_dir, eval_dir))
  dims = q_meta["nesting"] if nesting_dims is None else nesting_dims
  out = evaluate(database, db_labels, queries, q_labels, dims, ks=ks,
                 **search_kwargs)
  out.update(model=q_meta.get("model"), step=q_meta.get("step"))
  return out
