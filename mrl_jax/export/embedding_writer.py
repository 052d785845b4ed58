"""Embedding export (mode=export): full-dim embeddings of TFDS splits on disk.

What is embedded depends on the trainer task (task_inputs.py): config.data's
images through the backbone (and the heads' logits); for the mlm task, the
labelled text of config.export.dataset through the BERT encoder's pooled
embedding (the digest of the weights then covers the tokenizer too); for the
contrastive task, config.data's images through the image tower (and, with
config.export.text_embeddings, their captions through the text tower as
"text_embeddings" [n, d]); the shards, provenance and layout below are the
same.

Downstream evaluators (k-NN, retrieval, adaptive classification) read these
instead of re-running the backbone. Layout, per split:

  DIR/embeddings/<dataset>/<split>/
    metadata.json              model, step, checkpoint, nesting dims, dtype,
                               arrays; written last, once every shard is in
    shard-p<process>-<i>.npz   "embeddings" [n, d], "labels" [n] or [n, C],
                               "checkpoint" (the label of the checkpoint that
                               wrote it, see embedding_files);
                               for `config.export.logits_splits` also the
                               per-dim head logits "logits" [n, G, C] and,
                               with `config.export.flip_tta`, "flip_logits"
                               [n, G, C] of the horizontally flipped images
                               (adaptive classification reads these)
  DIR/embeddings/<dataset>/<split>_views<R>/   with config.export.views
    shard-p<process>-v<view>-<i>.npz  "embeddings", "labels" of R augmented
                               copies of a split (view v of example i is
                               preprocessed with the stateless seed (v, i)):
                               a larger database of real embeddings for
                               search benchmarks

Embeddings are the raw backbone output z (not normalised; MRL retrieval
normalises each prefix z[:m] separately). Splits stream through in shards of
`config.export.examples_per_shard` examples, so a split never has to fit in
host memory; each shard is written atomically, and a rerun skips the shards
that already exist (their data is not even decoded again). Each shard names
the checkpoint (step and a digest of the weights) that wrote it: a rerun from
another checkpoint removes metadata.json before touching a shard and redoes
the split, and readers refuse a split whose shards come from different
checkpoints. Read an export back with `mrl_jax.export.embedding_files` (numpy only,
no trainer or TensorFlow).
"""
import functools
import hashlib
import json
import os
import re
from typing import Any

from absl import logging
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_collections
import numpy as np

from mrl_jax import atomic_files
from mrl_jax.export import embedding_files
from mrl_jax.export import task_inputs
from mrl_jax import sharding
from mrl_jax import train
from mrl_jax.data import pipeline
from mrl_jax.data import preprocess as preprocess_lib

DTYPES = ("float16", "float32")


def _export_settings(config: ml_collections.ConfigDict,
                     inputs: task_inputs.ExportInputs) -> dict[str, Any]:
  """config.export with defaults; validated before any work."""
  export = config.get("export") or ml_collections.ConfigDict()
  data, logits = inputs.data, "logits" in inputs.arrays
  if not logits and export.get("logits_splits"):
    raise ValueError(
        f"config.export.logits_splits={tuple(export.logits_splits)}, but "
        f"the {config.get('task')} task's model has no class logits; leave "
        "it empty")
  settings = {
      "splits": tuple(export.get("splits") or (data.train_split,
                                               data.eval_split)),
      "dtype": export.get("dtype", "float16"),
      "examples_per_shard": int(export.get("examples_per_shard", 50_000)),
      # Per-dim logits are [n, G, C]: only for the (small) eval split by
      # default, never for a 1.28M-image train split unless asked.
      "logits_splits": tuple(export.get("logits_splits")
                             or ((data.eval_split,) if logits else ())),
      "flip_tta": bool(export.get("flip_tta", True)),
      "views": _views_settings(export.get("views")),
  }
  if settings["views"] and not inputs.views:
    raise ValueError(
        f"config.export.views: the {config.get('task')} task's inputs have "
        "no augmented views; set config.export.views.count=0")
  if settings["dtype"] not in DTYPES:
    raise ValueError(f"unknown export dtype {settings['dtype']!r}; set "
                     f"config.export.dtype to one of {DTYPES}")
  per_shard, batch = settings["examples_per_shard"], config.eval_batch_size
  local_batch = pipeline.eval_local_batch_size(
      batch, sharding.make_train_mesh(config.mesh))
  if per_shard <= 0 or per_shard % local_batch:
    raise ValueError(
        f"config.export.examples_per_shard={per_shard} must be a positive "
        f"multiple of the per-process eval batch {local_batch}")
  return settings


def _views_settings(views: Any) -> dict[str, Any] | None:
  """config.export.views (augmented copies of a split), checked; None: off."""
  if not views or not views.get("count"):
    return None
  count = views.get("count")
  if not isinstance(count, int) or count < 0:
    raise ValueError(f"config.export.views.count={count!r} must be an int "
                     ">= 0 (0: no augmented views)")
  spec = views.get("preprocess")
  if not spec:
    raise ValueError("config.export.views.preprocess is empty; give the "
                     "augmentation spec, e.g. \"pad_and_random_crop(2)|"
                     "flip_lr|normalize('fashion_mnist')\"")
  preprocess_lib.build(spec)  # a bad spec fails here, before any work
  return {"split": views.get("split", "train"), "count": count,
          "preprocess": spec}


def views_split_name(split: str, count: int) -> str:
  """Name (and directory) of `count` augmented views of `split`."""
  return f"{split}_views{count}"


def _local_rows(x: jax.Array, mesh: jax.sharding.Mesh) -> np.ndarray:
  """This process's rows of a batch-sharded global array."""
  return np.asarray(multihost_utils.global_array_to_host_local_array(
      x, mesh, sharding.batch_spec(mesh)))


def _word_sums(x: jax.Array) -> jax.Array:
  """[2] uint32: the sum of x's bit patterns, plain and position-weighted
  (so that moved values change it too); wrapping uint32 sums do not depend
  on the order a sharded reduction adds them in."""
  words = jax.lax.bitcast_convert_type(
      x, jnp.dtype(f"uint{8 * x.dtype.itemsize}")).astype(jnp.uint32).ravel()
  weights = jnp.arange(words.size, dtype=jnp.uint32) * jnp.uint32(
      2654435761) | jnp.uint32(1)
  return jnp.stack([words.sum(dtype=jnp.uint32),
                    (words * weights).sum(dtype=jnp.uint32)])


@functools.cache
def _word_sums_on(mesh: jax.sharding.Mesh):
  """_word_sums, jitted with its result on every device of `mesh` (one
  compilation per leaf shape: a ResNet-50 has 26)."""
  return jax.jit(_word_sums, out_shardings=sharding.replicated(mesh))


def weights_digest(weights: Any, mesh: jax.sharding.Mesh) -> str:
  """16 hex digits that change whenever any weight changes.

  Args:
    weights: the arrays embeddings depend on (params and batch stats),
      sharded over `mesh` in any way.
  Returns:
    The same digest on every process: each leaf is reduced on its devices to
    two uint32 sums, and the host hashes those with the leaves' paths, shapes
    and dtypes.
  """
  leaves, _ = jax.tree_util.tree_flatten_with_path(weights)
  sums = [_word_sums_on(mesh)(x) for _, x in leaves]
  digest = hashlib.sha256()
  for (path, x), pair in zip(leaves, sums):
    digest.update(f"{jax.tree_util.keystr(path)} {x.shape} {x.dtype} ".encode())
    digest.update(np.asarray(pair.addressable_data(0)).tobytes())
  return digest.hexdigest()[:16]


def _shard_has(path: str, keys: tuple[str, ...], checkpoint: str) -> bool:
  """True if the shard exists, holds every array in keys and was written
  from `checkpoint` (a label, see embedding_files.checkpoint_label)."""
  if not os.path.exists(path):
    return False
  with np.load(path) as shard:  # reads the zip directory and one string
    return (set(keys) <= set(shard.files) and "checkpoint" in shard.files
            and str(shard["checkpoint"]) == checkpoint)


def _remove_other_shards(out_dir: str, names: list[str], prefix: str) -> None:
  """Deletes this process's shards (named `prefix`-<i>.npz) not in names,
  e.g. left by an export with more shards per split: a finished split then
  holds no rows of another export."""
  pattern = re.compile(re.escape(prefix) + r"-\d{5}\.npz")
  for name in sorted(set(os.listdir(out_dir)) - set(names)):
    if pattern.fullmatch(name):
      logging.info("removing %s: not a shard of this export", name)
      os.remove(os.path.join(out_dir, name))


def _export_split(config, data: ml_collections.ConfigDict,
                  run_setup: train.Setup, embed, state,
                  source: pipeline.ExampleSource, settings: dict[str, Any],
                  keys: tuple[str, ...], out_dir: str, checkpoint: str,
                  view: tuple[str, int] | None = None) -> None:
  """Writes this process's missing shards of one split (`source`, opened
  from `data`, the export's dataset section).

  keys: arrays each shard holds, besides "labels"; a shard written earlier
  without some of them (e.g. before logits were asked for), or from another
  checkpoint than `checkpoint` (a label), is redone.
  view: (preprocess spec, v): write augmented view v of the split instead
    (shards named ...-v<v>-..., so that views sort in order).
  """
  split = source.whole_split
  per_shard = settings["examples_per_shard"]
  num_shards = -(-source.num_examples // per_shard)
  tag = "" if view is None else f"-v{view[1]:03d}"
  prefix = f"shard-p{jax.process_index():03d}{tag}"
  names = [f"{prefix}-{i:05d}.npz" for i in range(num_shards)]
  _remove_other_shards(out_dir, names, prefix)
  done = 0
  while done < num_shards and _shard_has(os.path.join(out_dir, names[done]),
                                         keys, checkpoint):
    done += 1
  if done:
    logging.info("%s%s: %d of %d shards already exported", split, tag, done,
                 num_shards)
  batches = pipeline.eval_batches(data, source, config.eval_batch_size,
                                  sharding.batch_sharding(run_setup.mesh),
                                  start=done * per_shard, view=view)
  rows = {key: [] for key in keys + ("labels",)}
  shard = done

  def write_shard() -> None:
    atomic_files.write_npz(
        os.path.join(out_dir, names[shard]),
        labels=np.concatenate(rows["labels"]), checkpoint=np.array(checkpoint),
        **{key: np.concatenate(rows[key]).astype(settings["dtype"])
           for key in keys})

  for batch in batches:
    mask = _local_rows(batch["mask"], run_setup.mesh).astype(bool)
    outputs = embed(state, batch)
    for key in keys:
      rows[key].append(_local_rows(outputs[key], run_setup.mesh)[mask])
    rows["labels"].append(_local_rows(batch["label"], run_setup.mesh)[mask])
    # Shards hold whole batches: per_shard is a multiple of the local batch.
    if sum(map(len, rows["labels"])) >= per_shard:
      write_shard()
      rows, shard = {key: [] for key in rows}, shard + 1
  if sum(map(len, rows["labels"])):
    write_shard()


def _make_embed(run_setup: train.Setup, inputs: task_inputs.ExportInputs,
                state_sh: Any, keys: tuple[str, ...]):
  """jit(state, batch) -> the arrays named in keys (`inputs.embed`),
  row-sharded, float32."""

  def embed(st, batch):
    variables = {"params": st.params, "batch_stats": st.batch_stats}
    return inputs.embed(run_setup.model, variables, batch, keys)

  batches = sharding.batch_sharding(run_setup.mesh)
  return jax.jit(embed, in_shardings=(state_sh, batches),
                 out_shardings=batches)


def _unfinish_if_stale(out_dir: str, checkpoint: dict[str, Any]) -> None:
  """Removes metadata.json if another checkpoint wrote it, before any shard
  is rewritten: until the split is redone it reads as unfinished."""
  path = os.path.join(out_dir, "metadata.json")
  if not os.path.exists(path):
    return
  with open(path) as f:
    old = json.load(f).get("checkpoint")
  if old != checkpoint:
    logging.info("%s was exported from checkpoint %s: redoing it", out_dir,
                 embedding_files.checkpoint_label(old))
    os.remove(path)


def export_embeddings(config: ml_collections.ConfigDict,
                      workdir: str) -> dict[str, str]:
  """Exports the latest checkpoint's embeddings of config.export.splits.

  Returns:
    {split: directory} of the exported splits.
  """
  inputs = task_inputs.get(config, workdir)
  settings = _export_settings(config, inputs)
  views = settings["views"]
  # Every split opens (a bad name fails) before the checkpoint is read.
  sources = {split: inputs.open_source(split) for split in
             settings["splits"] + ((views["split"],) if views else ())}
  run_setup, state, state_sh = train.restore_latest(config, workdir)
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  checkpoint = {"step": int(state.step),
                "weights": weights_digest({**variables, **inputs.provenance},
                                          run_setup.mesh)}
  label = embedding_files.checkpoint_label(checkpoint)
  logging.info("exporting embeddings of checkpoint %s", label)
  out = {}

  def export_one(name: str, split: str, keys: tuple[str, ...],
                 views: dict[str, Any] | None = None) -> None:
    out_dir = embedding_files.split_dir(workdir, inputs.data.name, name)
    os.makedirs(out_dir, exist_ok=True)
    if jax.process_index() == 0:
      _unfinish_if_stale(out_dir, checkpoint)
    embed = _make_embed(run_setup, inputs, state_sh, keys)
    for view in ([None] if views is None else
                 [(views["preprocess"], v) for v in range(views["count"])]):
      _export_split(config, inputs.data, run_setup, embed, state,
                    sources[split], settings, keys, out_dir, label, view)
    # metadata.json marks the split finished: only once every process is.
    multihost_utils.sync_global_devices(f"export {name}")
    metadata = {
        "model": config.model.name, "step": int(state.step),
        "checkpoint": checkpoint,
        "dataset": inputs.data.name, "split": name,
        "nesting": list(run_setup.nesting_dims), "head": config.mrl.head,
        "embedding_dim": inputs.encoder(run_setup.model).embedding_dim,
        "dtype": settings["dtype"], "normalisation": "none",
        "num_processes": jax.process_count(),
        "arrays": ["labels", *keys], **inputs.metadata,
    }
    if views is not None:  # per process: view 0 of its examples, view 1, ...
      metadata["views"] = {"of": split, "count": views["count"],
                           "preprocess": views["preprocess"],
                           "seeds": "stateless (view, position)"}
    if jax.process_index() == 0:
      atomic_files.write_json(os.path.join(out_dir, "metadata.json"), metadata)
    logging.info("exported %s to %s", name, out_dir)
    out[name] = out_dir

  for split in settings["splits"]:
    keys = tuple(inputs.split_arrays)
    if split in settings["logits_splits"]:
      keys += ("logits", "flip_logits") if settings["flip_tta"] else (
          "logits",)
    export_one(split, split, keys)
  if views:
    export_one(views_split_name(views["split"], views["count"]),
               views["split"], ("embeddings",), views)
  return out
