"""Evaluators over exported embeddings, for the launcher's knn / retrieval
modes: database = the exported train split, queries = the exported eval
split (`--mode=export` writes both), every nesting dim reported.

Writes DIR/<mode>_summary.json (flat, greppable metric names such as
`knn/top1/d=8` or `retrieval/mAP@10/d=32`).
"""
import os
from typing import Any

import ml_collections
import numpy as np

from mrl_jax import atomic_files
from mrl_jax import export
from mrl_jax import search
from mrl_jax.evaluators import knn
from mrl_jax.evaluators import retrieval

MODES = ("knn", "retrieval")
RETRIEVAL_KS = (10, 25, 50, 100)


def _exported_dirs(config: ml_collections.ConfigDict,
                   workdir: str) -> tuple[str, str]:
  dirs = tuple(export.split_dir(workdir, config.data.name, split)
               for split in (config.data.train_split, config.data.eval_split))
  for d in dirs:
    if not os.path.exists(os.path.join(d, "metadata.json")):
      raise ValueError(f"no exported embeddings in {d}; run --mode=export "
                       "with the same config and workdir first")
  return dirs


def _retrieval(train_dir: str, eval_dir: str) -> dict[str, Any]:
  database, db_labels, queries, q_labels, meta = (
      export.load_database_and_queries(train_dir, eval_dir))
  dims = meta["nesting"]
  ks = tuple(k for k in RETRIEVAL_KS if k <= len(database))
  index = search.build_index(database, boundaries=dims, normalize=True)
  out = retrieval.evaluate_per_dim(index, queries.astype(np.float32),
                                   q_labels, db_labels, dims, ks)
  return {"nesting": dims, "step": meta["step"], **out}


def run(mode: str, config: ml_collections.ConfigDict,
        workdir: str) -> dict[str, Any]:
  """Runs evaluator `mode` ("knn" or "retrieval") on workdir's exports."""
  if mode not in MODES:
    raise ValueError(f"unknown evaluator {mode!r}; use one of {MODES}")
  train_dir, eval_dir = _exported_dirs(config, workdir)
  result = (knn.evaluate_exported(train_dir, eval_dir) if mode == "knn"
            else _retrieval(train_dir, eval_dir))
  atomic_files.write_json(os.path.join(workdir, f"{mode}_summary.json"),
                          result)
  return result


def format_result(result: dict[str, Any]) -> str:
  """One line per metric name, grouped by dim as the names sort."""
  return "\n".join(f"{name:<32} {value:.4f}"
                   for name, value in sorted(result.items())
                   if isinstance(value, float))
