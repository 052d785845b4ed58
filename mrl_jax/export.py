"""Embedding export (mode=export): full-dim embeddings of TFDS splits on disk.

Downstream evaluators (k-NN, retrieval, adaptive classification) read these
instead of re-running the backbone. Layout, per split:

  DIR/embeddings/<dataset>/<split>/
    metadata.json              model, step, nesting dims, dtype
    shard-p<process>-<i>.npz   "embeddings" [n, d], "labels" [n] or [n, C]

Embeddings are the raw backbone output z (not normalised; MRL retrieval
normalises each prefix z[:m] separately). Splits stream through in shards of
`config.export.examples_per_shard` examples, so a split never has to fit in
host memory; each shard is written atomically, and a rerun skips the shards
that already exist (their data is not even decoded again).
"""
import glob
import json
import os
import re
from typing import Any

from absl import logging
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from mrl_jax import atomic_files
from mrl_jax import sharding
from mrl_jax import train
from mrl_jax.data import pipeline

DTYPES = ("float16", "float32")


def _export_settings(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """config.export with defaults; validated before any work."""
  export = config.get("export") or ml_collections.ConfigDict()
  settings = {
      "splits": tuple(export.get("splits") or (config.data.train_split,
                                               config.data.eval_split)),
      "dtype": export.get("dtype", "float16"),
      "examples_per_shard": int(export.get("examples_per_shard", 50_000)),
  }
  if settings["dtype"] not in DTYPES:
    raise ValueError(f"unknown export dtype {settings['dtype']!r}; set "
                     f"config.export.dtype to one of {DTYPES}")
  per_shard, batch = settings["examples_per_shard"], config.eval_batch_size
  local_batch = pipeline.local_batch_size(batch)
  if per_shard <= 0 or per_shard % local_batch:
    raise ValueError(
        f"config.export.examples_per_shard={per_shard} must be a positive "
        f"multiple of the per-process eval batch {local_batch}")
  return settings


def split_dir(workdir: str, dataset: str, split: str) -> str:
  """DIR/embeddings/<dataset>/<split>, with split slices made path-safe."""
  safe = re.sub(r"[^A-Za-z0-9_.%-]+", "_", split).strip("_")
  return os.path.join(workdir, "embeddings", dataset, safe)


def _local_rows(x: jax.Array, mesh: jax.sharding.Mesh) -> np.ndarray:
  """This process's rows of a batch-sharded global array."""
  return np.asarray(multihost_utils.global_array_to_host_local_array(
      x, mesh, sharding.batch_spec(mesh)))


def _export_split(config, s: train.Setup, embed, state, split: str,
                  settings: dict[str, Any], out_dir: str) -> None:
  """Writes this process's missing shards of one split."""
  source = pipeline.open_source(config.data, split)
  per_shard = settings["examples_per_shard"]
  num_shards = -(-source.num_examples // per_shard)
  names = [f"shard-p{jax.process_index():03d}-{i:05d}.npz"
           for i in range(num_shards)]
  done = 0
  while done < num_shards and os.path.exists(os.path.join(out_dir,
                                                          names[done])):
    done += 1
  if done:
    logging.info("%s: %d of %d shards already exported", split, done,
                 num_shards)
  batches = pipeline.eval_batches(config.data, source, config.eval_batch_size,
                                  sharding.batch_sharding(s.mesh),
                                  start=done * per_shard)
  rows, labels, shard = [], [], done

  def write_shard() -> None:
    atomic_files.write_npz(
        os.path.join(out_dir, names[shard]),
        embeddings=np.concatenate(rows).astype(settings["dtype"]),
        labels=np.concatenate(labels))

  for batch in batches:
    mask = _local_rows(batch["mask"], s.mesh).astype(bool)
    rows.append(_local_rows(embed(state, batch), s.mesh)[mask])
    labels.append(_local_rows(batch["label"], s.mesh)[mask])
    # Shards hold whole batches: per_shard is a multiple of the local batch.
    if sum(map(len, rows)) >= per_shard:
      write_shard()
      rows, labels, shard = [], [], shard + 1
  if rows and sum(map(len, rows)):
    write_shard()


def export_embeddings(config: ml_collections.ConfigDict,
                      workdir: str) -> dict[str, str]:
  """Exports the latest checkpoint's embeddings of config.export.splits.

  Returns:
    {split: directory} of the exported splits.
  """
  settings = _export_settings(config)
  s, state, state_sh = train.restore_latest(config, workdir)
  embed = jax.jit(
      lambda st, batch: s.model.apply(
          {"params": st.params, "batch_stats": st.batch_stats},
          batch["image"], train=False)[1]["embedding"].astype(np.float32),
      in_shardings=(state_sh, sharding.batch_sharding(s.mesh)),
      out_shardings=sharding.batch_sharding(s.mesh))
  out = {}
  for split in settings["splits"]:
    out_dir = split_dir(workdir, config.data.name, split)
    os.makedirs(out_dir, exist_ok=True)
    _export_split(config, s, embed, state, split, settings, out_dir)
    metadata = {
        "model": config.model.name, "step": int(state.step),
        "dataset": config.data.name, "split": split,
        "nesting": list(s.nesting_dims), "head": config.mrl.head,
        "embedding_dim": s.model.backbone.embedding_dim,
        "dtype": settings["dtype"], "normalisation": "none",
        "num_processes": jax.process_count(),
    }
    if jax.process_index() == 0:
      atomic_files.write_json(os.path.join(out_dir, "metadata.json"), metadata)
    logging.info("exported %s to %s", split, out_dir)
    out[split] = out_dir
  return out


def load_split(directory: str) -> tuple[np.ndarray, np.ndarray, dict]:
  """Reads an exported split: (embeddings [N, d], labels, metadata)."""
  with open(os.path.join(directory, "metadata.json")) as f:
    metadata = json.load(f)
  shards = [np.load(path) for path in
            sorted(glob.glob(os.path.join(directory, "shard-*.npz")))]
  return (np.concatenate([sh["embeddings"] for sh in shards]),
          np.concatenate([sh["labels"] for sh in shards]), metadata)


def load_database_and_queries(train_dir: str, eval_dir: str
                              ) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                         np.ndarray, dict]:
  """Two exported splits of one checkpoint, as (database, its labels,
  queries, their labels, the queries' metadata).

  Raises:
    ValueError: if they come from different checkpoints or nesting lists.
  """
  database, db_labels, db_meta = load_split(train_dir)
  queries, q_labels, q_meta = load_split(eval_dir)
  if (db_meta.get("step"), db_meta.get("nesting")) != (q_meta.get("step"),
                                                         q_meta.get("nesting")):
    raise ValueError(f"{train_dir} and {eval_dir} come from different "
                     "checkpoints or nesting lists; export both again")
  return database, db_labels, queries, q_labels, q_meta
