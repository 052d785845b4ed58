"""Evaluators over exported embeddings, for the launcher's modes, every
nesting dim reported (`--mode=export` writes what they read):

  knn        k-NN accuracy: database = exported train split, queries = eval
  retrieval  mAP@k / P@k / R@k, same database and queries
  adaptive   the MRL-AC cascade on the eval split's exported per-dim
             (flip-TTA) logits; settings in config.adaptive
  probe      few-shot linear probes on frozen prefixes (fitted on the train
             split, scored on the eval split); settings in config.probe
  baselines  SVD and random-feature baselines from this (FF-full) model's
             embeddings: linear head and 1-NN; settings in config.baselines

Writes DIR/<mode>_summary.json (flat, greppable metric names such as
`knn/top1/d=8`, `retrieval/mAP@10/d=32`, `adaptive/ac_accuracy/d=64`,
`probe/top1@5shot/d=8`, `svd/linear_top1/d=8`).
"""
import os
from typing import Any

import ml_collections
import numpy as np

from mrl_jax import atomic_files
from mrl_jax import embedding_files
from mrl_jax import search
from mrl_jax.evaluators import adaptive_classification
from mrl_jax.evaluators import baselines
from mrl_jax.evaluators import knn
from mrl_jax.evaluators import linear_probe
from mrl_jax.evaluators import retrieval
from mrl_jax.mrl import nesting

MODES = ("knn", "retrieval", "adaptive", "probe", "baselines")
RETRIEVAL_KS = (10, 25, 50, 100)
# Defaults of the optional config sections (a config may omit them).
DEFAULTS = {
    # The notebook's protocol: thresholds fitted on a random 20% (10K of
    # ImageNet's 50K), evaluated on the rest, 30 seeds; flip-TTA logits.
    "adaptive": {"holdout": 0.2, "seeds": 30, "tta": True,
                 "tolerance": 0.0},
    # shots: examples per class; 0 = every train example.
    "probe": {"shots": (1, 5, 10, 0), "seeds": 3,
              "l2": linear_probe.DEFAULT_L2, "steps": linear_probe.DEFAULT_STEPS},
    # dims: feature counts; None = halving from the embedding dim down to 8.
    "baselines": {"methods": baselines.METHODS, "dims": None, "seeds": 1,
                  "l2": linear_probe.DEFAULT_L2,
                  "steps": linear_probe.DEFAULT_STEPS},
}


def settings(config: ml_collections.ConfigDict, mode: str) -> dict[str, Any]:
  """config.<mode> over DEFAULTS[mode]; unknown fields are an error."""
  section = dict(config.get(mode) or {})
  unknown = set(section) - set(DEFAULTS[mode])
  if unknown:
    raise ValueError(f"unknown config.{mode} fields {sorted(unknown)}; "
                     f"known: {sorted(DEFAULTS[mode])}")
  return {**DEFAULTS[mode], **section}


def _exported_dir(config: ml_collections.ConfigDict, workdir: str,
                  split: str) -> str:
  # The readers check the export is finished (and say how to make it).
  return embedding_files.split_dir(workdir, config.data.name, split)


def _exported_dirs(config: ml_collections.ConfigDict,
                   workdir: str) -> tuple[str, str]:
  return tuple(_exported_dir(config, workdir, split)
               for split in (config.data.train_split, config.data.eval_split))


def _retrieval(train_dir: str, eval_dir: str) -> dict[str, Any]:
  database, db_labels, queries, q_labels, meta = (
      embedding_files.load_database_and_queries(train_dir, eval_dir))
  dims = meta["nesting"]
  ks = tuple(k for k in RETRIEVAL_KS if k <= len(database))
  index = search.build_index(database, boundaries=dims, normalize=True)
  out = retrieval.evaluate_per_dim(index, queries.astype(np.float32),
                                   q_labels, db_labels, dims, ks)
  return {"nesting": dims, "step": meta["step"], **out}


def _adaptive(config: ml_collections.ConfigDict,
              workdir: str) -> dict[str, Any]:
  opts = settings(config, "adaptive")
  if config.loss.name != "softmax":
    raise ValueError("adaptive classification thresholds max-softmax "
                     f"confidences; config.loss.name={config.loss.name!r} "
                     "models have no softmax heads")
  eval_dir = _exported_dir(config, workdir, config.data.eval_split)
  keys = ("logits", "labels") + (("flip_logits",) if opts["tta"] else ())
  arrays, meta = embedding_files.load_arrays(eval_dir, keys)
  # Exported rows first ([N, G, C]); the cascade wants [G, N, C].
  probs = adaptive_classification.softmax_per_dim(
      arrays["logits"].swapaxes(0, 1),
      arrays["flip_logits"].swapaxes(0, 1) if opts["tta"] else None)
  out = adaptive_classification.evaluate(
      probs, arrays["labels"], meta["nesting"], holdout=opts["holdout"],
      seeds=int(opts["seeds"]))
  for cost in ("expected_dim", "expected_cost"):
    match = adaptive_classification.smallest_matching(
        out, tolerance=opts["tolerance"], cost=cost)
    out[f"smallest_{cost}_matching_full_dim"] = match
  out.update(adaptive_classification.as_scalars(out, "adaptive"))
  out.update(step=meta["step"], tta=bool(opts["tta"]))
  return out


def _probe(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  opts = settings(config, "probe")
  database, db_labels, queries, q_labels, meta = (
      embedding_files.load_database_and_queries(
          *_exported_dirs(config, workdir)))
  out = linear_probe.evaluate(
      database, db_labels, queries, q_labels, meta["nesting"],
      config.data.num_classes, shots=tuple(opts["shots"]),
      seeds=int(opts["seeds"]), l2=float(opts["l2"]),
      steps=int(opts["steps"]))
  return {**out, "step": meta["step"], "head": meta.get("head")}


def _baselines(config: ml_collections.ConfigDict,
               workdir: str) -> dict[str, Any]:
  opts = settings(config, "baselines")
  database, db_labels, queries, q_labels, meta = (
      embedding_files.load_database_and_queries(
          *_exported_dirs(config, workdir)))
  dims = opts["dims"] or nesting.default_nesting(database.shape[1])
  out = baselines.evaluate(
      database, db_labels, queries, q_labels, dims, config.data.num_classes,
      methods=tuple(opts["methods"]), seeds=int(opts["seeds"]),
      l2=float(opts["l2"]), steps=int(opts["steps"]))
  return {**out, "step": meta["step"], "head": meta.get("head")}


def run(mode: str, config: ml_collections.ConfigDict,
        workdir: str) -> dict[str, Any]:
  """Runs evaluator `mode` (one of MODES) on workdir's exports."""
  if mode not in MODES:
    raise ValueError(f"unknown evaluator {mode!r}; use one of {MODES}")
  if mode in ("knn", "retrieval"):
    train_dir, eval_dir = _exported_dirs(config, workdir)
    result = (knn.evaluate_exported(train_dir, eval_dir) if mode == "knn"
              else _retrieval(train_dir, eval_dir))
  else:
    result = {"adaptive": _adaptive, "probe": _probe,
              "baselines": _baselines}[mode](config, workdir)
  atomic_files.write_json(os.path.join(workdir, f"{mode}_summary.json"),
                          result)
  return result


def format_result(result: dict[str, Any]) -> str:
  """One line per metric name, grouped by dim as the names sort."""
  return "\n".join(f"{name:<32} {value:.4f}"
                   for name, value in sorted(result.items())
                   if isinstance(value, float))
