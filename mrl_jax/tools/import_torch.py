r"""Imports official RAIVNLab/MRL PyTorch ResNet checkpoints into mrl_jax.

  python -m mrl_jax.tools.import_torch --checkpoint=r50_mrl1_e0_ff2048.pt \
      --config=configs/resnet50_imagenet.py:head=mrl --workdir=workdirs/official_mrl

writes an mrl_jax checkpoint (step 0, fresh optimizer state) that the
launcher's `--mode=eval`, `--mode=export` and `--mode=export_encoder` read
with the same `--config`, and that `--mode=train` fine-tunes from.

The config says what the checkpoint must hold; the torch keys are checked
against it strictly (every key used exactly once, every shape equal, errors
name the key):
  * head: `head=mrl` (fc.nesting_classifier_{0..8}), `head=mrl_e`
    (fc.nesting_classifier_0, or the old single-head format fc.weight/fc.bias
    of the uploaded checkpoints), `head=ff,ff_dim=k` (fc.weight [C, k]).
    FF-2048 and old-format MRL-E files have the same keys and shapes: the
    config picks the reading, and the import logs a warning naming both.
  * BlurPool: `blurpool=True` (the default of configs/resnet50_imagenet.py,
    as the released checkpoints) expects `<conv>.conv.weight` and the fixed
    `<conv>.blur_filter` for layer{2,3,4}.0.conv2 / .downsample.0.
Keys may carry DDP's `module.` prefix or not. Reading uses
`torch.load(..., weights_only=True)`: a file whose pickle would run code is
refused. torch is only needed here (`pip install -e '.[torch]'`).
"""
from collections.abc import Mapping
import os
import re
import sys
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mrl_jax import checkpointing
from mrl_jax import optim
from mrl_jax import platforms
from mrl_jax import train
from mrl_jax import train_step as step_lib
from mrl_jax.models import classifier
from mrl_jax.models import resnet

StateDict = dict[str, np.ndarray]

_DDP_PREFIX = "module."
# BatchNorm: flax leaf (in params or batch_stats) -> torch state_dict suffix.
_BN_NAMES = {"scale": "weight", "bias": "bias", "mean": "running_mean",
             "var": "running_var"}
_MODULE_NAMES = {"downsample_conv": "downsample.0",
                 "downsample_bn": "downsample.1"}


def load_state_dict(path: str) -> StateDict:
  """Reads a torch state dict as numpy arrays, without running pickled code.

  Accepts a bare state dict or {"state_dict": ...}; strips `module.` from
  the keys that have it.

  Raises:
    ValueError: the file is missing, or is not a plain tensor dict (e.g. a
      pickle that would import or call arbitrary objects).
  """
  import pickle  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  if not os.path.isfile(path):
    raise ValueError(f"checkpoint {path} does not exist; fix --checkpoint")
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except (pickle.UnpicklingError, RuntimeError, AttributeError) as e:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e)
    raise ValueError(
        f"refusing {path}: not a plain tensor state dict (torch.load with "
        f"weights_only=True said: {first}); only load files you trust, and "
        "re-save them as a state_dict") from None
  if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
    obj = obj["state_dict"]
  if not isinstance(obj, Mapping):
    raise ValueError(f"{path} holds a {type(obj).__name__}, not a state dict")
  out = {}
  for key, value in obj.items():
    if not isinstance(value, torch.Tensor):
      raise ValueError(f"{path}: key {key!r} is a {type(value).__name__}, "
                       "not a tensor; pass a model state_dict")
    name = key[len(_DDP_PREFIX):] if key.startswith(_DDP_PREFIX) else key
    out[name] = value.detach().cpu().numpy()
  return out


def _blurred_convs(backbone: resnet.ResNet, params: Any) -> set[str]:
  """Flax module paths ("layer2_0/conv2") that BlurPool wraps.

  The strided convs are the first 3x3 conv of each later stage's first block
  (conv2 of a bottleneck, conv1 of a basic block) and its downsample conv;
  BlurPool takes those reading >= 16 channels.
  """
  if not backbone.blurpool:
    return set()
  strided = "conv1" if backbone.block == "basic" else "conv2"
  out = set()
  for i in range(2, len(backbone.stage_sizes) + 1):
    block = params[f"layer{i}_0"]
    for name in (strided, "downsample_conv"):
      kernel = block[name]["kernel"]
      if kernel.shape[2] >= resnet.BLURPOOL_MIN_CHANNELS:
        out.add(f"layer{i}_0/{name}")
  return out


def _torch_module(path: tuple[str, ...]) -> str:
  """("layer2_0", "downsample_conv") -> "layer2.0.downsample.0"."""
  parts = []
  for name in path:
    name = _MODULE_NAMES.get(name, name)
    parts.append(re.sub(r"^layer(\d+)_(\d+)$", r"layer\1.\2", name))
  return ".".join(parts)


class _Reader:
  """Takes keys out of a state dict once each, checking shapes."""

  def __init__(self, state_dict: StateDict):
    self.state_dict = state_dict
    self.used: set[str] = set()

  def take(self, key: str, shape: tuple[int, ...], hint: str) -> np.ndarray:
    if key not in self.state_dict:
      raise ValueError(f"checkpoint has no key {key!r} ({hint})")
    value = self.state_dict[key]
    if tuple(value.shape) != tuple(shape):
      raise ValueError(f"checkpoint key {key!r} has shape "
                       f"{tuple(value.shape)}, expected {tuple(shape)} "
                       f"({hint})")
    self.used.add(key)
    return value

  def unused(self) -> list[str]:
    return sorted(k for k in self.state_dict if k not in self.used
                  and not k.endswith("num_batches_tracked"))


def _backbone_leaf(reader: _Reader, path: tuple[str, ...],
                   leaf: jax.ShapeDtypeStruct, blurred: set[str]) -> np.ndarray:
  module, name = path[:-1], path[-1]
  prefix = _torch_module(module)
  hint = "check config.model.name and its kwargs"
  if name == "kernel":  # conv: torch OIHW -> flax HWIO
    plain_key, blur_key = f"{prefix}.weight", f"{prefix}.conv.weight"
    is_blurred = "/".join(module) in blurred
    if not is_blurred and blur_key in reader.state_dict:
      raise ValueError(f"checkpoint key {blur_key!r} is a BlurPool conv but "
                       "the config has no BlurPool; set "
                       "config.model.kwargs.blurpool=True (resnet50_imagenet "
                       "argument blurpool=True)")
    if is_blurred and plain_key in reader.state_dict:
      raise ValueError(f"checkpoint key {plain_key!r} is a plain conv but "
                       "the config uses BlurPool; set "
                       "config.model.kwargs.blurpool=False (resnet50_imagenet "
                       "argument blurpool=False)")
    h, w, i, o = leaf.shape
    key = blur_key if is_blurred else plain_key
    if is_blurred:
      blur = reader.take(f"{prefix}.blur_filter", (i, 1, 3, 3), hint)
      want = resnet.blur_filter(i).transpose(3, 2, 0, 1)
      if not np.allclose(blur, want):
        raise ValueError(f"checkpoint key {prefix}.blur_filter is not the "
                         "[1, 2, 1] x [1, 2, 1] / 16 BlurPool filter")
    return reader.take(key, (o, i, h, w), hint).transpose(2, 3, 1, 0)
  return reader.take(f"{prefix}.{_BN_NAMES[name]}", leaf.shape, hint)


def _head_leaf(reader: _Reader, head_type: str, path: tuple[str, ...],
               leaf: jax.ShapeDtypeStruct) -> np.ndarray:
  module, name = path
  hint = ("check config.mrl.head / nesting_dims / ff_dim and "
          "config.data.num_classes")
  prefix = f"fc.{module}" if module != "fc" else "fc"
  if head_type == "mrl_e" and f"{prefix}.weight" not in reader.state_dict:
    prefix = "fc"  # old single-head format of the uploaded MRL-E checkpoint
  if name == "kernel":  # torch Linear weight [C, m] -> flax kernel [m, C]
    return reader.take(f"{prefix}.weight", leaf.shape[::-1], hint).T
  return reader.take(f"{prefix}.bias", leaf.shape, hint)


def _warn_if_head_is_ambiguous(state_dict: StateDict,
                               model: classifier.MRLClassifier) -> None:
  """Logs a warning when the head was read from a full-width plain fc.*.

  fc.weight [C, d] / fc.bias [C] is both how FF-d stores its classifier and
  how the uploaded (old-format) MRL-E checkpoint stores its one shared head,
  so the keys cannot tell them apart: only the config does.
  """
  weight = state_dict.get("fc.weight")
  d = model.backbone.embedding_dim
  if weight is None or tuple(weight.shape)[1:] != (d,):
    return
  readings = {"mrl_e": ("MRL-E (old single-head format)", "head=mrl_e"),
              "ff": (f"FF-{d}", f"head=ff,ff_dim={d}")}
  chosen = model.head.head_type
  other = "ff" if chosen == "mrl_e" else "mrl_e"
  logging.warning(
      "checkpoint head fc.weight %s / fc.bias is ambiguous: FF-%d and MRL-E "
      "in the old single-head format (the uploaded MRL-E file) store the same "
      "keys and shapes. Importing it as %s, as config.mrl.head=%r says; if "
      "the file is %s, import it with config.mrl.head=%r (%s of "
      "configs/resnet50_imagenet.py).", list(weight.shape), d,
      readings[chosen][0], chosen, readings[other][0], other,
      readings[other][1])


def convert(state_dict: StateDict, model: classifier.MRLClassifier,
            in_channels: int = 3) -> dict[str, Any]:
  """Converts a torchvision-layout ResNet state dict to `model`'s variables.

  Args:
    state_dict: torch key -> array, without the `module.` prefix
      (`load_state_dict` strips it).
    model: the MRL classifier the config builds (ResNet backbone).
    in_channels: image channels (3 for ImageNet).
  Returns:
    {"params": ..., "batch_stats": ...} as float32 numpy arrays.
  Raises:
    ValueError: naming the first missing, mis-shaped or unused key.
  """
  if not isinstance(model.backbone, resnet.ResNet):
    raise ValueError(f"only ResNet backbones can be imported, config has "
                     f"{type(model.backbone).__name__}; set config.model.name "
                     "to a resnet")
  abstract = jax.eval_shape(
      lambda x: model.init(jax.random.key(0), x, train=False),
      jax.ShapeDtypeStruct((1, 64, 64, in_channels), jnp.float32))
  blurred = _blurred_convs(model.backbone, abstract["params"]["backbone"])
  reader = _Reader(state_dict)

  def one(path, leaf):
    names = tuple(p.key for p in path)
    part, rest = names[1], names[2:]  # names[0]: params / batch_stats
    if part == "backbone":
      value = _backbone_leaf(reader, rest, leaf, blurred)
    else:
      value = _head_leaf(reader, model.head.head_type, rest, leaf)
    return np.asarray(value, np.float32)

  variables = jax.tree_util.tree_map_with_path(one, dict(abstract))
  unused = reader.unused()
  if unused:
    raise ValueError(f"checkpoint keys not used by the config's model: "
                     f"{', '.join(unused[:5])}"
                     f"{' ...' if len(unused) > 5 else ''} (check "
                     "config.model.name, config.mrl.head and blurpool)")
  _warn_if_head_is_ambiguous(state_dict, model)
  return variables


def write_checkpoint(config: ml_collections.ConfigDict,
                     variables: Mapping[str, Any], workdir: str) -> str:
  """Writes `variables` as the step-0 checkpoint of `workdir`.

  The state has a fresh optimizer state for config.optimizer, so eval and
  export read it like any checkpoint and train fine-tunes from it.

  Returns:
    the checkpoint directory.
  Raises:
    ValueError: if workdir already holds checkpoints.
  """
  s = train.setup(config)
  directory = os.path.join(workdir, "checkpoints")
  ckpt = checkpointing.Checkpointer(directory, s.fingerprint,
                                    config.keep_checkpoints)
  if ckpt.latest_step() is not None:
    ckpt.close()
    raise ValueError(f"{directory} already holds checkpoints; use a new "
                     "--workdir")
  params = jax.tree.map(jnp.asarray, variables["params"])
  tx = optim.build_optimizer(config.optimizer, 1, 1)
  state = step_lib.TrainState(
      step=jnp.zeros((), jnp.int32), params=params,
      batch_stats=jax.tree.map(jnp.asarray, variables["batch_stats"]),
      opt_state=tx.init(params), nonfinite_step=jnp.full((), -1, jnp.int32))
  ckpt.save(0, state, config.to_json())
  ckpt.wait()
  ckpt.close()
  return directory


def import_checkpoint(checkpoint: str, config: ml_collections.ConfigDict,
                      workdir: str) -> str:
  """Reads an official torch checkpoint and writes it as workdir's checkpoint.

  Everything is validated (config, keys, shapes) before anything is written.

  Returns:
    the checkpoint directory.
  """
  model = train.setup(config).model  # validates the config first
  state_dict = load_state_dict(checkpoint)
  in_channels = state_dict.get("conv1.weight", np.zeros((0, 3))).shape[1]
  variables = convert(state_dict, model, in_channels)
  return write_checkpoint(config, variables, workdir)


def main(argv: list[str]) -> None:
  # pylint: disable=import-outside-toplevel
  from absl import app
  from absl import flags
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  platforms.use_cpu_if_no_accelerator()  # as the launcher: no TPU probe
  flags_ = flags.FLAGS
  try:
    directory = import_checkpoint(flags_.checkpoint, flags_.config,
                                  flags_.workdir)
  except ValueError as e:
    sys.exit(f"mrl_jax: error: {e}")
  print(f"wrote {directory}; evaluate it with python -m mrl_jax.main "
        f"--mode=eval --workdir={flags_.workdir} and the same --config")


def _define_flags() -> None:
  # pylint: disable=import-outside-toplevel
  from absl import flags
  from ml_collections import config_flags
  config_flags.DEFINE_config_file(
      "config", None, "Config of the imported model (the one eval uses).",
      lock_config=True)
  flags.DEFINE_string("checkpoint", None, "Official PyTorch .pt state dict.")
  flags.DEFINE_string("workdir", None, "Where to write the checkpoint.")
  flags.mark_flags_as_required(["config", "checkpoint", "workdir"])


if __name__ == "__main__":
  from absl import app as _app  # pylint: disable=g-import-not-at-top
  _define_flags()
  _app.run(main)
