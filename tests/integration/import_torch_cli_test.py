"""Official-checkpoint import end to end: ResNet-50 parity with the torch
reference, and the import CLI writing a checkpoint that eval and export read."""
import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest
import torch_parity  # tests/torch_parity.py
import torch_resnet  # tests/torch_resnet.py

from mrl_jax.models import classifier
from mrl_jax.tools import import_torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
CONFIG = os.path.join(REPO, "configs", "resnet50_imagenet.py")
NESTING_50 = tuple(2**i for i in range(3, 12))  # official 8..2048
NESTING_MU = (8, 16, 32, 64)


def _config(config_module, arg: str) -> ml_collections.ConfigDict:
  return config_module("resnet50_imagenet").get_config(arg)


@pytest.mark.parametrize("blurpool", [False, True])
def test_resnet50_parity_with_torch(blurpool, tmp_path, config_module):
  torch_model = torch_resnet.build("resnet50", "mrl", NESTING_50, 1000,
                                   seed=1, blurpool=blurpool)
  path = torch_parity.save_state_dict(torch_model, tmp_path / "r50.pt",
                                      ddp=True)
  config = _config(config_module, f"head=mrl,blurpool={blurpool}")
  model = classifier.build_model(config)
  variables = import_torch.convert(import_torch.load_state_dict(path), model)
  images = torch_parity.random_images(64)
  want_logits, want_z = torch_resnet.run(torch_model, images)
  logits, z = torch_parity.flax_outputs(model, variables, images)
  assert logits.shape == (9, 2, 1000) and z.shape == (2, 2048)
  torch_parity.assert_close(z, want_z)
  for g, m in enumerate(NESTING_50):  # per-dim logits
    torch_parity.assert_close(logits[g], want_logits[g])
  # The blur matters: without it the outputs would differ.
  if blurpool:
    plain = classifier.build_model(_config(config_module, "head=mrl,"
                                           "blurpool=False"))
    _, z_plain = torch_parity.flax_outputs(plain, variables, images)
    assert np.abs(z_plain - want_z).max() > 1e-2 * np.abs(want_z).max()


def test_cli_writes_a_checkpoint_that_eval_and_export_read(tmp_path,
                                                           config_module):
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  # pylint: disable-next=import-outside-toplevel
  from mrl_jax.export import embedding_files, embedding_writer
  from mrl_jax import train  # pylint: disable=import-outside-toplevel
  torch_model = torch_resnet.build("resnet_mu", "mrl", NESTING_MU, 1000,
                                   seed=4, blurpool=True)
  path = torch_parity.save_state_dict(torch_model, tmp_path / "mu.pt", ddp=True)
  workdir = str(tmp_path / "work")
  cmd = [sys.executable, "-m", "mrl_jax.tools.import_torch",
         f"--checkpoint={path}", f"--config={CONFIG}:smoke",
         f"--workdir={workdir}"]
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "--mode=eval" in proc.stdout
  config = _config(config_module, "smoke")
  # A second import into the same workdir is refused.
  with pytest.raises(ValueError, match="already holds checkpoints"):
    import_torch.import_checkpoint(path, config, workdir)
  config.data.data_dir = str(tmp_path / "tfds")
  config.export = ml_collections.ConfigDict({"splits": ("validation",),
                                             "examples_per_shard": 16})
  with tfds.testing.mock_data(num_examples=32):
    summary = train.evaluate(config, workdir)
    out = embedding_writer.export_embeddings(config, workdir)
    _, state, _ = train.restore_latest(config, workdir)
  assert summary["step"] == 0 and summary["nesting"] == list(NESTING_MU)
  z, _, meta = embedding_files.load_split(out["validation"])
  assert z.shape == (32, 64) and meta["step"] == 0
  # The restored state computes the torch model's embeddings.
  model = train.setup(config).model
  images = torch_parity.random_images(32)
  _, want_z = torch_resnet.run(torch_model, images)
  _, got_z = torch_parity.flax_outputs(model, {"params": state.params,
                                   "batch_stats": state.batch_stats}, images)
  torch_parity.assert_close(got_z, want_z)
