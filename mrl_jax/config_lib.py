"""Helpers for config files: loading, argument parsing, durations."""
from collections.abc import Iterator, Sequence
import difflib
import importlib.util
import os
import re
import sys
from typing import Any

from absl import flags
import ml_collections
from ml_collections import config_dict
from ml_collections import config_flags


def load_config(spec: str) -> ml_collections.ConfigDict:
  """Loads "path/to/config.py[:arg]" as the launcher's --config flag does.

  For notebooks and scripts that call `train.train_and_evaluate` directly.

  Raises:
    ValueError: the file does not exist, or its `get_config` refused `arg`.
  """
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise ValueError(f"config file {path} does not exist; pass "
                     "--config=path/to/config.py[:arg], e.g. "
                     "--config=configs/default.py:smoke")
  module_spec = importlib.util.spec_from_file_location(
      f"mrl_jax_config_{os.path.basename(path)[:-3]}", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None)


def _fields(config: ml_collections.ConfigDict,
            prefix: str = "") -> Iterator[str]:
  """Dotted names of every leaf field of config, e.g. "optimizer.name"."""
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict) and value:
      yield from _fields(value, f"{prefix}{key}.")
    else:
      yield f"{prefix}{key}"


def check_field(config: ml_collections.ConfigDict, path: str) -> None:
  """Checks that `--config.<path>` names a field of config.

  Raises:
    ValueError: one line naming the flag and the closest fields of the
      deepest section that exists (or all of that section's fields).
  """
  node = config
  keys = path.split(".")
  for depth, key in enumerate(keys):
    if not isinstance(node, ml_collections.ConfigDict) or "[" in key:
      return  # an index into a tuple or dict: ml_collections checks it
    if key not in node:
      section = "".join(f".{k}" for k in keys[:depth])  # "" or ".optimizer"
      close = difflib.get_close_matches(".".join(keys[depth:]),
                                        list(_fields(node)), n=3, cutoff=0.6)
      hint = (f"config{section} has {', '.join(sorted(node))}" if not close
              else "did you mean "
              f"{_one_of([f'--config{section}.{c}' for c in close])}?")
      raise ValueError(f"--config.{path} names no config field; {hint}")
    node = node[key]


def _one_of(names: Sequence[str]) -> str:
  """"a", "a or b", "a, b or c"."""
  *rest, last = names
  return f"{', '.join(rest)} or {last}" if rest else last


def _override_paths(flag_name: str, argv: Sequence[str]) -> list[str]:
  """The <path> of every --<flag_name>.<path>[=value] in argv."""
  pattern = re.compile(rf"-{{1,2}}(?:no)?{re.escape(flag_name)}\.([^=]+)")
  return [m.group(1) for arg in argv if (m := pattern.match(arg))]


class _ConfigFileParser(flags.ArgumentParser):
  """Parses --config=path.py[:arg] into a locked config, with one-line errors.

  Stands in for ml_collections' own parser, which embeds the config file's
  traceback in its error, defers a missing file to the first use of the
  config, and lets an unknown `--config.<field>` override end in a bare
  AttributeError. This one raises a one-line ValueError for each, which absl
  reports as a bad --config value.
  """

  def __init__(self, name: str):
    self.name = name

  def parse(self, argument: str) -> ml_collections.ConfigDict:
    config = load_config(argument)
    # The overrides ml_collections applies next, found the way it finds them.
    argv = flags.FLAGS.read_flags_from_files(sys.argv, force_gnu=False)
    for field in _override_paths(self.name, argv):
      check_field(config, field)
    config.lock()
    return config

  def flag_type(self) -> str:
    return "config object"


def define_config_flag(name: str, help_string: str) -> flags.FlagHolder:
  """`config_flags.DEFINE_config_file` (locked), with one-line errors."""
  holder = config_flags.DEFINE_config_file(name, None, help_string,
                                           lock_config=True)
  flags.FLAGS[name].parser = _ConfigFileParser(name)
  return holder


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
      value = _typed(key, value, default)
    parsed[key] = value
  return parsed


def _typed(key: str, value: str, default: Any) -> Any:
  """value as the type of default; a one-line ValueError if it is not one."""
  try:
    return type(default)(value)
  except ValueError:
    raise ValueError(f"config argument {key}={value!r} is not of type "
                     f"{type(default).__name__}; write e.g. {key}={default}"
                     ) from None


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
