"""Import of official PyTorch checkpoints: parity with torch, strict keys,
refusal of pickles that run code, and the launcher reading the result."""
import os

import ml_collections
import numpy as np
import pytest
import torch

import torch_parity  # tests/torch_parity.py
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
  images = torch_parity.random_images(32)
  want_logits, want_z = torch_resnet.run(torch_model, images)
  logits, z = torch_parity.flax_outputs(model, variables, images)
  assert logits.shape == want_logits.shape
  torch_parity.assert_close(z, want_z)
  torch_parity.assert_close(logits, want_logits)


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
