"""Import of official PyTorch checkpoints: parity with torch, strict keys,
refusal of pickles that run code, and the launcher reading the result."""
import os
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest
import torch

import torch_resnet  # tests/torch_resnet.py
from mrl_jax.models import classifier
from mrl_jax.tools import import_torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
CONFIG = os.path.join(REPO, "configs", "resnet50_imagenet.py")
NESTING_50 = tuple(2**i for i in range(3, 12))  # official 8..2048
NESTING_MU = (8, 16, 32, 64)
PLAIN_MU = "smoke,blurpool=False"  # resnet_mu (d = 64) without BlurPool


def _config(config_module, arg: str) -> ml_collections.ConfigDict:
  return config_module("resnet50_imagenet").get_config(arg)


def _save(model: torch.nn.Module, path, ddp: bool) -> str:
  state = model.state_dict()
  if ddp:  # as the released checkpoints: every key under DDP's "module."
    state = {f"module.{k}": v for k, v in state.items()}
  torch.save(state, str(path))
  return str(path)


def _images(size: int) -> np.ndarray:
  return np.random.default_rng(0).standard_normal(
      (2, size, size, 3)).astype(np.float32)


def _flax_outputs(model: classifier.MRLClassifier, variables, images):
  with jax.default_matmul_precision("highest"):
    logits, aux = jax.jit(lambda v, x: model.apply(v, x, train=False))(
        variables, images)
  return np.asarray(logits), np.asarray(aux["embedding"])


def _assert_close(got: np.ndarray, want: np.ndarray) -> None:
  """Equal within 1e-4 relative to the largest reference magnitude."""
  scale = np.abs(want).max()
  assert scale > 0
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * scale)


@pytest.mark.parametrize("blurpool", [False, True])
def test_resnet50_parity_with_torch(blurpool, tmp_path, config_module):
  torch_model = torch_resnet.build("resnet50", "mrl", NESTING_50, 1000,
                                   seed=1, blurpool=blurpool)
  path = _save(torch_model, tmp_path / "r50.pt", ddp=True)
  config = _config(config_module, f"head=mrl,blurpool={blurpool}")
  model = classifier.build_model(config)
  variables = import_torch.convert(import_torch.load_state_dict(path), model)
  images = _images(64)
  want_logits, want_z = torch_resnet.run(torch_model, images)
  logits, z = _flax_outputs(model, variables, images)
  assert logits.shape == (9, 2, 1000) and z.shape == (2, 2048)
  _assert_close(z, want_z)
  for g, m in enumerate(NESTING_50):  # per-dim logits
    _assert_close(logits[g], want_logits[g])
  # The blur matters: without it the outputs would differ.
  if blurpool:
    plain = classifier.build_model(_config(config_module, "head=mrl,"
                                           "blurpool=False"))
    _, z_plain = _flax_outputs(plain, variables, images)
    assert np.abs(z_plain - want_z).max() > 1e-2 * np.abs(want_z).max()


@pytest.mark.parametrize("head,ddp,old_format", [
    ("mrl", False, False), ("mrl_e", True, False), ("mrl_e", True, True),
    ("ff", False, False)])
def test_every_head_format_matches_torch(head, ddp, old_format, tmp_path,
                                         config_module):
  torch_model = torch_resnet.build("resnet_mu", head, NESTING_MU, 1000,
                                   seed=2, ff_dim=16)
  state = torch_model.state_dict()
  if old_format:  # uploaded MRL-E checkpoints: the one head is plain fc.*
    state = {k.replace("fc.nesting_classifier_0.", "fc."): v
             for k, v in state.items()}
  if ddp:
    state = {f"module.{k}": v for k, v in state.items()}
  torch.save(state, str(tmp_path / "mu.pt"))
  arg = "smoke,blurpool=False," + (
      "head=ff,ff_dim=16" if head == "ff" else f"head={head}")
  model = classifier.build_model(_config(config_module, arg))
  variables = import_torch.convert(
      import_torch.load_state_dict(str(tmp_path / "mu.pt")), model)
  images = _images(32)
  want_logits, want_z = torch_resnet.run(torch_model, images)
  logits, z = _flax_outputs(model, variables, images)
  assert logits.shape == want_logits.shape
  _assert_close(z, want_z)
  _assert_close(logits, want_logits)


def _mu_state(**kwargs) -> dict[str, np.ndarray]:
  model = torch_resnet.build("resnet_mu", "mrl", NESTING_MU, 1000, seed=3,
                             **kwargs)
  return {k: v.numpy() for k, v in model.state_dict().items()}


def test_shape_mismatch_names_the_key(config_module):
  model = classifier.build_model(_config(config_module, PLAIN_MU))
  state = _mu_state()
  state["layer3.0.conv2.weight"] = np.zeros((32, 32, 1, 3), np.float32)
  with pytest.raises(ValueError, match=r"'layer3\.0\.conv2\.weight' has "
                     r"shape \(32, 32, 1, 3\), expected \(32, 32, 3, 3\)"):
    import_torch.convert(state, model)
  # A nesting list that differs from the checkpoint's heads.
  model = classifier.build_model(_config(config_module, PLAIN_MU))
  state = _mu_state()
  del state["fc.nesting_classifier_3.weight"]
  with pytest.raises(ValueError, match="no key 'fc.nesting_classifier_3"):
    import_torch.convert(state, model)


def test_unused_and_blurpool_keys_are_errors(config_module):
  model = classifier.build_model(_config(config_module, PLAIN_MU))
  state = _mu_state()
  state["fc.extra.weight"] = np.zeros(3, np.float32)
  with pytest.raises(ValueError, match="keys not used .*fc.extra.weight"):
    import_torch.convert(state, model)
  # resnet_mu: layer3.0 / layer4.0 read 16 / 32 channels, so they blur.
  blurred = _mu_state(blurpool=True)
  assert "layer3.0.conv1.blur_filter" in blurred
  plain_model = classifier.build_model(_config(config_module, PLAIN_MU))
  with pytest.raises(ValueError, match="'layer3.0.conv1.conv.weight' is a "
                     "BlurPool conv .* blurpool=True"):
    import_torch.convert(blurred, plain_model)
  with pytest.raises(ValueError, match="'layer3.0.conv1.weight' is a plain "
                     "conv .* blurpool=False"):
    import_torch.convert(_mu_state(), classifier.build_model(
        _config(config_module, "smoke")))


class _RunsCode:
  """Unpickling this would call os.system: what weights_only must refuse."""

  def __init__(self, marker: str):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused(tmp_path):
  marker = tmp_path / "pwned"
  path = tmp_path / "evil.pt"
  torch.save({"conv1.weight": torch.zeros(1), "x": _RunsCode(str(marker))},
             str(path))
  with pytest.raises(ValueError, match="refusing .*weights_only=True"):
    import_torch.load_state_dict(str(path))
  assert not marker.exists()
  with pytest.raises(ValueError, match="does not exist"):
    import_torch.load_state_dict(str(tmp_path / "missing.pt"))


@pytest.mark.slow
def test_cli_writes_a_checkpoint_that_eval_and_export_read(tmp_path,
                                                           config_module):
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  # pylint: disable-next=import-outside-toplevel
  from mrl_jax import embedding_files, export
  from mrl_jax import train  # pylint: disable=import-outside-toplevel
  torch_model = torch_resnet.build("resnet_mu", "mrl", NESTING_MU, 1000,
                                   seed=4, blurpool=True)
  path = _save(torch_model, tmp_path / "mu.pt", ddp=True)
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
    out = export.export_embeddings(config, workdir)
    _, state, _ = train.restore_latest(config, workdir)
  assert summary["step"] == 0 and summary["nesting"] == list(NESTING_MU)
  z, _, meta = embedding_files.load_split(out["validation"])
  assert z.shape == (32, 64) and meta["step"] == 0
  # The restored state computes the torch model's embeddings.
  model = train.setup(config).model
  images = _images(32)
  _, want_z = torch_resnet.run(torch_model, images)
  _, got_z = _flax_outputs(model, {"params": state.params,
                                   "batch_stats": state.batch_stats}, images)
  _assert_close(got_z, want_z)


def _single_fc_state(width: int) -> dict[str, np.ndarray]:
  """A plain-fc state dict: FF-<width>, or old-format MRL-E at full width."""
  state = {k: v for k, v in _mu_state().items()
           if not k.startswith("fc.")}
  state["fc.weight"] = np.zeros((1000, width), np.float32)
  state["fc.bias"] = np.zeros(1000, np.float32)
  return state


@pytest.mark.parametrize("arg, reading, other", [
    ("head=mrl_e", "as MRL-E", "config.mrl.head='ff' (head=ff,ff_dim=64 "),
    ("head=ff,ff_dim=64", "as FF-64", "config.mrl.head='mrl_e' (head=mrl_e ")])
def test_full_width_plain_fc_warns_of_both_readings(arg, reading, other,
                                                    config_module, caplog):
  model = classifier.build_model(_config(config_module, f"{PLAIN_MU},{arg}"))
  import_torch.convert(_single_fc_state(64), model)
  warnings = [r.getMessage() for r in caplog.records
              if r.levelname == "WARNING"]
  assert len(warnings) == 1
  assert "fc.weight [1000, 64] / fc.bias is ambiguous" in warnings[0]
  assert "FF-64 and MRL-E in the old single-head format" in warnings[0]
  assert f"Importing it {reading}" in warnings[0] and other in warnings[0]


@pytest.mark.parametrize("arg, state", [
    ("head=ff,ff_dim=16", lambda: _single_fc_state(16)),  # FF-k, k < d
    ("head=mrl", _mu_state)])
def test_unambiguous_heads_do_not_warn(arg, state, config_module, caplog):
  model = classifier.build_model(_config(config_module, f"{PLAIN_MU},{arg}"))
  import_torch.convert(state(), model)
  assert not [r for r in caplog.records if r.levelname == "WARNING"]
