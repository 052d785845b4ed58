"""Helpers shared by the torch-parity tests: save a torch model as the
official checkpoints are saved, and compare Flax outputs with torch's."""
import jax
import numpy as np
import torch

from mrl_jax.models import classifier


def save_state_dict(model: torch.nn.Module, path, ddp: bool) -> str:
  state = model.state_dict()
  if ddp:  # as the released checkpoints: every key under DDP's "module."
    state = {f"module.{k}": v for k, v in state.items()}
  torch.save(state, str(path))
  return str(path)


def random_images(size: int) -> np.ndarray:
  return np.random.default_rng(0).standard_normal(
      (2, size, size, 3)).astype(np.float32)


def flax_outputs(model: classifier.MRLClassifier, variables, images):
  with jax.default_matmul_precision("highest"):
    logits, aux = jax.jit(lambda v, x: model.apply(v, x, train=False))(
        variables, images)
  return np.asarray(logits), np.asarray(aux["embedding"])


def assert_close(got: np.ndarray, want: np.ndarray) -> None:
  """Equal within 1e-4 relative to the largest reference magnitude."""
  scale = np.abs(want).max()
  assert scale > 0
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * scale)
