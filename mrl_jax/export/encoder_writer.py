"""`--mode=export_encoder`: writes the latest checkpoint's encoder as a
bundle (layout and loading: export/encoder.py, which imports no training
code; this module reads the checkpoint through the trainer).

A new bundle is written to DIR/encoder.new and swapped in by renames once it
is complete, so a killed export leaves the previous bundle in place (between
the two renames it is DIR/encoder.old, which the next export puts back).
"""
import json
import os
import shutil

from absl import logging
import jax
from jax.experimental import multihost_utils
import ml_collections
import orbax.checkpoint as ocp

from mrl_jax import atomic_files
from mrl_jax import errors
from mrl_jax import train
from mrl_jax.export import encoder
from mrl_jax.export import task_inputs


def _tidy(out: str) -> None:
  """Undoes what a killed export left: puts a previous bundle caught between
  the swap's renames back, and removes an unfinished new one."""
  if not os.path.exists(out) and os.path.exists(f"{out}.old"):
    logging.info("restoring the previous bundle %s.old", out)
    os.rename(f"{out}.old", out)
  for leftover in (f"{out}.new", f"{out}.old"):
    if os.path.exists(leftover):
      shutil.rmtree(leftover)


def _swap_in(new: str, out: str) -> None:
  """Replaces the bundle `out` by the complete bundle `new`."""
  try:
    if os.path.exists(out):
      os.rename(out, f"{out}.old")
    os.rename(new, out)
    shutil.rmtree(f"{out}.old", ignore_errors=True)
  except OSError as e:
    raise errors.RunError(f"could not move the new bundle {new} to {out} "
                          f"({e.strerror}); the previous one, if any, is "
                          f"{out} or {out}.old") from e


def export_encoder(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Writes the latest checkpoint's encoder (backbone, the mlm task's BERT
  without the MLM head, or both towers of a two-tower model, each with its
  projection) as a bundle in DIR/encoder.

  Returns:
    the bundle directory (replaced, once the new bundle is complete, if it
    exists).
  """
  inputs = task_inputs.get(config, workdir)
  parts = inputs.bundle()
  run_setup, state, _ = train.restore_latest(config, workdir)
  variables = inputs.encoder_variables(state)
  out = os.path.join(os.path.abspath(workdir), "encoder")
  new = f"{out}.new"
  if jax.process_index() == 0:
    _tidy(out)
  multihost_utils.sync_global_devices("export_encoder: tidied")
  ckpt = ocp.StandardCheckpointer()
  for folder, tree in variables.items():
    ckpt.save(os.path.join(new, folder, "params"), tree)
  ckpt.wait_until_finished()
  provenance = {
      "format_version": encoder.FORMAT_VERSION,
      "embedding_dim": inputs.encoder(run_setup.model).embedding_dim,
      "nesting": list(run_setup.nesting_dims), "head": config.mrl.head,
      "step": int(state.step), "dataset": config.data.name,
  }
  if jax.process_index() == 0:
    for folder, (fields, files) in parts.items():
      for name, contents in files.items():
        atomic_files.write_bytes(os.path.join(new, folder, name), contents)
      atomic_files.write_json(
          os.path.join(new, folder, "encoder.json"),
          {**provenance, **fields, "config": json.loads(config.to_json())})
    _swap_in(new, out)
  multihost_utils.sync_global_devices("export_encoder: swapped")
  return out
