"""Where exported embeddings live and how to read them back (the layout is
described in embedding_writer.py, which writes them).

numpy and json only: downstream evaluation, the search benchmark and user
code read an export without importing the trainer, Flax or TensorFlow.
"""
import glob
import json
import os
import re

import numpy as np


def exported_dataset(config):
  """The config section of the dataset an export embeds (name,
  train_split, eval_split, num_classes): config.export.dataset when set
  (the mlm task's labelled text), else config.data.

  Args:
    config: the run's ml_collections.ConfigDict.
  """
  export = config.get("export") or {}
  return export.get("dataset") or config.data


def split_dir(workdir: str, dataset: str, split: str) -> str:
  """DIR/embeddings/<dataset>/<split>, with split slices made path-safe."""
  safe = re.sub(r"[^A-Za-z0-9.%-]+", "_", split).strip("_")
  return os.path.join(workdir, "embeddings", dataset, safe)


_SPLIT = ("embeddings", "labels")


def checkpoint_label(checkpoint: dict | None) -> str:
  """How shards and messages name the checkpoint an export came from.

  Args:
    checkpoint: metadata.json's "checkpoint": {"step", "weights" (digest)}.
  """
  if not checkpoint:
    return "unrecorded"
  return f"step {checkpoint['step']} weights {checkpoint['weights']}"


def _read_metadata(directory: str, keys: tuple[str, ...] = ()) -> dict:
  """An exported split's metadata.json, checked to list `keys` (no array
  is read).

  Raises:
    ValueError: if `directory` holds no finished export, or the export lacks
      one of the arrays (each with the fix).
  """
  meta_path = os.path.join(directory, "metadata.json")
  if not os.path.isfile(meta_path):  # written last, once the shards are in
    raise ValueError(f"{directory} holds no finished export (no "
                     "metadata.json); run --mode=export with the same config "
                     "and workdir")
  with open(meta_path) as f:
    metadata = json.load(f)
  missing = set(keys) - set(metadata.get("arrays", list(_SPLIT)))
  if missing:
    raise ValueError(
        f"{directory} has no {sorted(missing)}; add its split to "
        "config.export.logits_splits (flip_logits: config.export.flip_tta="
        "True) and run --mode=export again")
  return metadata


def _read_shards(directory: str, keys: tuple[str, ...], metadata: dict
                 ) -> dict[str, np.ndarray]:
  """{key: all shards' rows concatenated}.

  Raises:
    ValueError: if there are no shards, or (when metadata records the
      checkpoint, as --mode=export does) a shard comes from another one.
  """
  paths = sorted(glob.glob(os.path.join(directory, "shard-*.npz")))
  if not paths:
    raise ValueError(f"{directory} has metadata.json but no shard-*.npz "
                     "files; run --mode=export again")
  shards = [np.load(path) for path in paths]
  if "checkpoint" in metadata:  # hand-made splits may leave it out
    want = checkpoint_label(metadata["checkpoint"])
    for path, shard in zip(paths, shards):
      got = (str(shard["checkpoint"]) if "checkpoint" in shard.files
             else checkpoint_label(None))
      if got != want:
        raise ValueError(
            f"{path} comes from checkpoint {got}, the rest of the split from "
            f"{want}; run --mode=export again to redo the split")
  return {key: np.concatenate([sh[key] for sh in shards]) for key in keys}


def load_arrays(directory: str, keys: tuple[str, ...]
                ) -> tuple[dict[str, np.ndarray], dict]:
  """Reads the named arrays of an exported split, all shards concatenated.

  Returns:
    ({key: array with N rows}, metadata).
  Raises:
    ValueError: as `_read_metadata`, if the export has no shards, or if its
      shards come from different checkpoints.
  """
  metadata = _read_metadata(directory, keys)
  return _read_shards(directory, keys, metadata), metadata


def load_split(directory: str) -> tuple[np.ndarray, np.ndarray, dict]:
  """Reads an exported split: (embeddings [N, d], labels, metadata)."""
  arrays, metadata = load_arrays(directory, _SPLIT)
  return arrays["embeddings"], arrays["labels"], metadata


def _provenance(metadata: dict) -> str:
  """The checkpoint (or, for splits that do not record one, the step) and
  nesting list an export came from."""
  checkpoint = metadata.get("checkpoint") or {
      "step": metadata.get("step"), "weights": "unrecorded"}
  return (f"{checkpoint_label(checkpoint)}, nesting "
          f"{metadata.get('nesting')}")


def load_database_and_queries(train_dir: str, eval_dir: str
                              ) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                         np.ndarray, dict]:
  """Two exported splits of one checkpoint, as (database, its labels,
  queries, their labels, the queries' metadata). Both metadata files are
  checked before any shard is read.

  Raises:
    ValueError: as `_read_metadata`, or if the splits come from different
      checkpoints or nesting lists.
  """
  db_meta, q_meta = (_read_metadata(d, _SPLIT) for d in (train_dir, eval_dir))
  db_from, q_from = (_provenance(m) for m in (db_meta, q_meta))
  if db_from != q_from:
    raise ValueError(f"{train_dir} ({db_from}) and {eval_dir} ({q_from}) come "
                     "from different checkpoints or nesting lists; run "
                     "--mode=export again to export both from one checkpoint")
  database, queries = (_read_shards(d, _SPLIT, m)
                       for d, m in ((train_dir, db_meta), (eval_dir, q_meta)))
  return (database["embeddings"], database["labels"], queries["embeddings"],
          queries["labels"], q_meta)
