"""Parity of imported ResNet-50 weights with the torch reference, per size.

  PYTHONPATH=.:tests .venv/bin/python experiments/bench/import_parity.py

Builds the test suite's torch ResNet-50 (tests/torch_resnet.py: official MRL
key layout, random weights and BN statistics) with and without BlurPool,
converts it with mrl_jax.tools.import_torch and prints the largest embedding
and logit differences relative to torch's largest value, at 64 and 224 px.
"""
import jax
import numpy as np

import torch_resnet  # tests/torch_resnet.py (PYTHONPATH)
from mrl_jax import config_lib
from mrl_jax.models import classifier
from mrl_jax.tools import import_torch

NESTING = tuple(2**i for i in range(3, 12))


def main() -> None:
  for blurpool in (False, True):
    torch_model = torch_resnet.build("resnet50", "mrl", NESTING, 1000, seed=1,
                                     blurpool=blurpool)
    config = config_lib.load_config(
        f"configs/resnet50_imagenet.py:head=mrl,blurpool={blurpool}")
    model = classifier.build_model(config)
    state = {k: v.numpy() for k, v in torch_model.state_dict().items()}
    variables = import_torch.convert(state, model)
    apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
    for size in (64, 224):
      images = np.random.default_rng(0).standard_normal(
          (2, size, size, 3)).astype(np.float32)
      want_logits, want_z = torch_resnet.run(torch_model, images)
      with jax.default_matmul_precision("highest"):
        logits, aux = apply(variables, images)
      logits, z = np.asarray(logits), np.asarray(aux["embedding"])
      rel = lambda a, b: np.abs(a - b).max() / np.abs(b).max()
      print(f"blurpool={blurpool} {size}px: embedding {rel(z, want_z):.1e}, "
            f"logits {rel(logits, want_logits):.1e}, argmax equal: "
            f"{(logits.argmax(-1) == want_logits.argmax(-1)).all()}")


if __name__ == "__main__":
  main()
