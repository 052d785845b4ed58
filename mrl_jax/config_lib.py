"""Helpers for config files: loading, argument parsing, durations."""
import importlib.util
import os
from typing import Any

import ml_collections
from ml_collections import config_dict


def load_config(spec: str) -> ml_collections.ConfigDict:
  """Loads "path/to/config.py[:arg]" as the launcher's --config flag does.

  For notebooks and scripts that call `train.train_and_evaluate` directly.
  """
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise ValueError(f"config file {path} does not exist")
  module_spec = importlib.util.spec_from_file_location(
      f"mrl_jax_config_{os.path.basename(path)[:-3]}", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None)


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
  """Parses `get_config`'s argument string, big_vision-style.

  `"smoke,variant=B/16"` -> {smoke: True, variant: "B/16"}. Bare words are
  booleans; `key=value` values take the type of the default. Unknown keys are
  an error, so a typo in a command line never passes silently.
  """
  parsed = ml_collections.ConfigDict(defaults)
  for token in filter(None, (arg or "").split(",")):
    key, sep, value = token.partition("=")
    key = key.strip()
    if key not in defaults:
      raise ValueError(f"unknown config argument {key!r}; known: "
                       f"{', '.join(sorted(defaults))}")
    default = defaults[key]
    if not sep:
      value = True
    elif isinstance(default, bool):
      value = value.lower() in ("1", "true", "yes")
    elif default is not None:
      value = type(default)(value)
    parsed[key] = value
  return parsed


def steps(prefix: str, config: ml_collections.ConfigDict,
          steps_per_epoch: int) -> int:
  """Reads `<prefix>_steps`, else `<prefix>_epochs`, as a step count."""
  num_steps = config.get(f"{prefix}_steps")
  if num_steps is not None:
    return int(num_steps)
  num_epochs = config.get(f"{prefix}_epochs")
  if num_epochs is None:
    raise ValueError(f"set config.{prefix}_steps or config.{prefix}_epochs")
  return max(int(round(num_epochs * steps_per_epoch)), 1)


def model_section(name: str, dtype: str = "float32",
                  **kwargs: Any) -> ml_collections.ConfigDict:
  """config.model: registered backbone name, compute dtype, overrides.

  `remat` ("none", "full", "dots", "dots_no_batch"; ViT only) recomputes
  encoder-block activations in the backward pass to save memory.
  """
  return ml_collections.ConfigDict(
      {"name": name, "dtype": dtype, "remat": "none",
       "kwargs": ml_collections.ConfigDict(kwargs)})


def sharding_section(strategy: str = "dp") -> ml_collections.ConfigDict:
  """config.sharding: a named strategy (dp, fsdp, fsdp_tp) plus extra rules.

  `rules` are (regex, spec) pairs tried before the strategy's own; see
  mrl_jax/sharding_rules.py.
  """
  return ml_collections.ConfigDict({"strategy": strategy, "rules": ()})


def mrl_section(head: str, nesting_dims: tuple[int, ...] | None = None,
                ff_dim: int | None = None) -> ml_collections.ConfigDict:
  """config.mrl: the head and its nesting list.

  Args:
    head: "mrl", "mrl_e" or "ff".
    nesting_dims: ascending prefix sizes; None halves from d down to 8.
    ff_dim: k of the FF-k baseline (head="ff"); None or 0 means d.
  """
  mrl = ml_collections.ConfigDict()
  mrl.head = head
  mrl.nesting_dims = (config_dict.placeholder(tuple) if nesting_dims is None
                      else tuple(nesting_dims))
  mrl.relative_importance = config_dict.placeholder(tuple)  # None: all 1
  mrl.ff_dim = config_dict.placeholder(int)
  if ff_dim:
    mrl.ff_dim = ff_dim
  mrl.implementation = "fused"  # or "masked", the reference path
  return mrl


def robustness_eval_sets(split: str = "test") -> ml_collections.ConfigDict:
  """config.data.extra_eval_sets for ImageNet-V2 (matched frequency), -R, -A
  and -Sketch (TFDS names); R and A are scored on their 200 classes."""
  sets = {"imagenet_v2": ("imagenet_v2/matched-frequency", None),
          "imagenet_r": ("imagenet_r", "imagenet_r"),
          "imagenet_a": ("imagenet_a", "imagenet_a"),
          "imagenet_sketch": ("imagenet_sketch", None)}
  return ml_collections.ConfigDict({
      label: {"name": name, "split": split, "class_subset": subset}
      for label, (name, subset) in sets.items()})
