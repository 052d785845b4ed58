"""Evaluators over exported embeddings, for the launcher's modes, every
nesting dim reported (`--mode=export` writes what they read):

  knn        k-NN accuracy: database = exported train split, queries = eval;
             settings in config.knn
  retrieval  mAP@k / P@k / R@k, same database and queries; settings in
             config.retrieval
  adaptive   the MRL-AC cascade on the eval split's exported per-dim
             (flip-TTA) logits; settings in config.adaptive
  probe      few-shot linear probes on frozen prefixes (fitted on the train
             split, scored on the eval split); settings in config.probe
  baselines  SVD and random-feature baselines from this (FF-full) model's
             embeddings: linear head and 1-NN; settings in config.baselines
  pairs      1-NN and linear probe on the C^2-class task of ordered class
             pairs built from the eval split (evaluators/pair_task.py);
             settings in config.pairs

The exported dataset is config.data, or config.export.dataset when set (the
mlm task's labelled text). Writes DIR/<mode>_summary.json (flat, greppable
metric names such as `knn/top1/d=8`, `retrieval/mAP@10/d=32`,
`adaptive/ac_accuracy/d=64`, `probe/top1@5shot/d=8`, `svd/linear_top1/d=8`).
Each evaluator declares the defaults of its config section (`DEFAULTS` in
mrl_jax/evaluators/); a config may omit the section or set any of its
fields.
"""
import os
from typing import Any

import ml_collections

from mrl_jax import atomic_files
from mrl_jax.export import embedding_files
from mrl_jax.evaluators import adaptive_classification
from mrl_jax.evaluators import baselines as baselines_lib
from mrl_jax.evaluators import knn as knn_lib
from mrl_jax.evaluators import linear_probe
from mrl_jax.evaluators import pair_task
from mrl_jax.evaluators import retrieval as retrieval_lib
from mrl_jax.mrl import nesting


def settings(config: ml_collections.ConfigDict, mode: str,
             defaults: dict[str, Any]) -> dict[str, Any]:
  """config.<mode> over the evaluator's DEFAULTS; unknown fields are an error.

  The section is optional: a config without it gets the defaults.
  """
  section = dict(config.get(mode) or {})
  unknown = set(section) - set(defaults)
  if unknown:
    raise ValueError(f"unknown config.{mode} fields {sorted(unknown)}; "
                     f"known: {sorted(defaults)}")
  return {**defaults, **section}


def _exported_dirs(config: ml_collections.ConfigDict, workdir: str,
                   which: tuple[str, ...] = ("train_split", "eval_split")
                   ) -> tuple[str, ...]:
  """The exported splits (default train = database, eval = queries) of the
  exported dataset (config.data, or config.export.dataset)."""
  # The readers check the export is finished (and say how to make it).
  data = embedding_files.exported_dataset(config)
  return tuple(embedding_files.split_dir(workdir, data.name, data[field])
               for field in which)


def _num_classes(config: ml_collections.ConfigDict) -> int:
  return embedding_files.exported_dataset(config).num_classes


def _write_summary(workdir: str, mode: str,
                   result: dict[str, Any]) -> dict[str, Any]:
  atomic_files.write_json(os.path.join(workdir, f"{mode}_summary.json"),
                          result)
  return result


def knn(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """--mode=knn: k-NN accuracy per dim, settings in config.knn."""
  opts = settings(config, "knn", knn_lib.DEFAULTS)
  result = knn_lib.evaluate_exported(*_exported_dirs(config, workdir),
                                     ks=tuple(opts["ks"]))
  return _write_summary(workdir, "knn", result)


def retrieval(config: ml_collections.ConfigDict,
              workdir: str) -> dict[str, Any]:
  """--mode=retrieval: mAP@k, P@k, R@k per dim and adaptive retrieval
  (exact, HNSW or IVF shortlist, or quantised codes), settings in
  config.retrieval."""
  opts = settings(config, "retrieval", retrieval_lib.DEFAULTS)
  result = retrieval_lib.evaluate_exported(*_exported_dirs(config, workdir),
                                           opts)
  return _write_summary(workdir, "retrieval", result)


def adaptive(config: ml_collections.ConfigDict,
             workdir: str) -> dict[str, Any]:
  """--mode=adaptive: the MRL-AC cascade, settings in config.adaptive."""
  opts = settings(config, "adaptive", adaptive_classification.DEFAULTS)
  loss = (config.get("loss") or {}).get("name")
  if loss != "softmax":
    raise ValueError(
        "adaptive classification thresholds max-softmax confidences; "
        + (f"config.loss.name={loss!r} models have no softmax heads" if loss
           else f"the {config.get('task')} task's model has no class heads"))
  eval_dir, = _exported_dirs(config, workdir, ("eval_split",))
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
  return _write_summary(workdir, "adaptive", out)


def probe(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """--mode=probe: few-shot linear probes, settings in config.probe."""
  opts = settings(config, "probe", linear_probe.DEFAULTS)
  database, db_labels, queries, q_labels, meta = (
      embedding_files.load_database_and_queries(
          *_exported_dirs(config, workdir)))
  out = linear_probe.evaluate(
      database, db_labels, queries, q_labels, meta["nesting"],
      _num_classes(config), shots=tuple(opts["shots"]),
      seeds=int(opts["seeds"]), l2=float(opts["l2"]),
      steps=int(opts["steps"]))
  return _write_summary(workdir, "probe",
                        {**out, "step": meta["step"], "head": meta.get("head")})


def baselines(config: ml_collections.ConfigDict,
              workdir: str) -> dict[str, Any]:
  """--mode=baselines: SVD and random features, settings in
  config.baselines."""
  opts = settings(config, "baselines", baselines_lib.DEFAULTS)
  database, db_labels, queries, q_labels, meta = (
      embedding_files.load_database_and_queries(
          *_exported_dirs(config, workdir)))
  dims = opts["dims"] or nesting.default_nesting(database.shape[1])
  out = baselines_lib.evaluate(
      database, db_labels, queries, q_labels, dims, _num_classes(config),
      methods=tuple(opts["methods"]), seeds=int(opts["seeds"]),
      l2=float(opts["l2"]), steps=int(opts["steps"]))
  return _write_summary(workdir, "baselines",
                        {**out, "step": meta["step"], "head": meta.get("head")})


def pairs(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """--mode=pairs: the ordered-class-pair task, settings in config.pairs."""
  opts = settings(config, "pairs", pair_task.DEFAULTS)
  pair_task.check_counts(opts["database_per_pair"], opts["queries_per_pair"])
  embeddings, labels, meta = embedding_files.load_split(
      *_exported_dirs(config, workdir, ("eval_split",)))
  out = pair_task.evaluate(
      embeddings, labels, meta["nesting"], _num_classes(config),
      database_per_pair=int(opts["database_per_pair"]),
      queries_per_pair=int(opts["queries_per_pair"]), seed=int(opts["seed"]),
      l2=float(opts["l2"]), steps=int(opts["steps"]))
  return _write_summary(workdir, "pairs",
                        {**out, "step": meta["step"], "head": meta.get("head")})


def format_result(result: dict[str, Any]) -> str:
  """One line per metric name, grouped by dim as the names sort."""
  return "\n".join(f"{name:<32} {value:.4f}"
                   for name, value in sorted(result.items())
                   if isinstance(value, float))
