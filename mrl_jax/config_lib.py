"""Helpers for config files: loading, argument parsing, durations, and the
sections every config shares."""
from collections.abc import Iterator, Sequence
import difflib
import importlib.util
import os
import re
import sys
import types
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
  return load_module(path).get_config(arg or None)


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
    kind = type(default).__name__
    raise ValueError(f"config argument {key}={value!r} is not of type "
                     f"{kind}; write {key}=<{kind}>") from None


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


# Sections shared by configs/*.py (big_vision's configs/common.py plays this
# part there). Config files are loaded by path, not as a package, so the
# sections live here, where every config can import them.


def load_module(path: str) -> types.ModuleType:
  """Loads a config file as a module, e.g. to derive one config from another."""
  name = os.path.splitext(os.path.basename(path))[0]
  module_spec = importlib.util.spec_from_file_location(
      f"mrl_jax_config_{name}", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module


def base_config(*, batch_size: int, eval_batch_size: int,
                total_epochs: int | None = None,
                total_steps: int | None = None,
                log_every_steps: int = 100,
                checkpoint_every_steps: int = 1000) -> ml_collections.ConfigDict:
  """The top level every config has: run length, batches, mesh, cadence.

  Args:
    batch_size: the global training batch.
    eval_batch_size: the global evaluation batch.
    total_epochs: run length in epochs; None leaves a float placeholder.
    total_steps: run length in steps (wins over epochs); None leaves an int
      placeholder.
    log_every_steps: training-metric logging period.
    checkpoint_every_steps: checkpoint period.
  """
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.total_epochs = (config_dict.placeholder(float) if total_epochs is None
                         else total_epochs)
  config.total_steps = (config_dict.placeholder(int) if total_steps is None
                        else total_steps)
  config.batch_size = batch_size
  config.grad_accum_steps = 1  # k > 1: k microbatches per update
  config.eval_batch_size = eval_batch_size
  config.mesh = (("data", -1),)  # axes data, fsdp, model; one size may be -1
  config.sharding = sharding_section("dp")  # or fsdp, fsdp_tp
  config.log_every_steps = log_every_steps
  config.checkpoint_every_steps = checkpoint_every_steps
  config.eval_every_steps = 0  # 0: evaluate only at the end
  config.keep_checkpoints = 2
  return config


def data_section(name: str, *, num_classes: int | None, eval_split: str,
                 train_preprocess: str, eval_preprocess: str,
                 shuffle_buffer: int, cache: bool,
                 train_split: str = "train", data_dir: str | None = None,
                 **extra: Any) -> ml_collections.ConfigDict:
  """config.data: the dataset, its splits and preprocessing strings.

  `num_shards` is left as a placeholder: S data shards, each shuffled and
  batched alone (data/pipeline.py), give the same batches for any process
  count dividing S; None means one shard per device.

  Args:
    name: TFDS name (or image_folder.NAME).
    num_classes: C (None: a task without classes, e.g. mlm).
    eval_split: TFDS split (slicing allowed) scored by evaluation.
    train_preprocess: the training preprocess string (data/preprocess.py).
    eval_preprocess: the evaluation preprocess string.
    shuffle_buffer: examples in the training shuffle buffer.
    cache: cache the decoded split in host memory.
    train_split: TFDS split used for training.
    data_dir: TFDS data_dir; None leaves a placeholder (TFDS's default).
    **extra: further fields, e.g. skip_decode, class_names, resolution.
  """
  data = ml_collections.ConfigDict()
  data.name = name
  data.data_dir = (config_dict.placeholder(str) if data_dir is None
                   else data_dir)
  data.train_split = train_split
  data.eval_split = eval_split
  data.num_classes = num_classes
  data.cache = cache
  data.shuffle_buffer = shuffle_buffer
  data.num_shards = config_dict.placeholder(int)
  data.train_preprocess = train_preprocess
  data.eval_preprocess = eval_preprocess
  data.update(extra)
  return data


def imagenet_data_section(train_preprocess: str, eval_preprocess: str,
                          **extra: Any) -> ml_collections.ConfigDict:
  """config.data for TFDS imagenet2012, read encoded (~150 GB: not cached).

  `skip_decode` keeps images encoded so that the decode_* ops decode only
  the crop window.
  """
  return data_section(
      "imagenet2012", num_classes=1000, eval_split="validation",
      train_preprocess=train_preprocess, eval_preprocess=eval_preprocess,
      shuffle_buffer=50_000, cache=False, skip_decode=True, **extra)


def text_corpus_section(name: str | None = None, *,
                        sources: tuple[str, ...] = ("wordnet", "gcide"),
                        seq_len: int = 128, vocab_size: int = 8192,
                        **extra: Any) -> ml_collections.ConfigDict:
  """config.data.corpus: the packed MLM corpus (data/text_corpus.py).

  Args:
    name: a named corpus ("debian_128", "debian_512"), or None for one
      described by the other fields (prepared under a name hashed from them).
    sources: documents to read: wordnet, gcide (Debian packages), folder
      (`folder=<root>` of .txt / .jsonl files), tfds (`tfds_name=`,
      `tfds_split=`, `text_key=`).
    seq_len: tokens per packed sequence, [CLS] and [SEP] included.
    vocab_size: pieces of the tokenizer trained on the train documents.
    **extra: folder, tokenizer_path (a sentencepiece .model or a BERT
      vocab.txt to use instead of training one), tfds_name, tfds_split, text_key, max_documents,
      validation_fraction (None: text_corpus.py's defaults).
  """
  corpus = {"name": name, "sources": tuple(sources), "seq_len": seq_len,
            "vocab_size": vocab_size, "folder": None, "tokenizer_path": None,
            "tfds_name": None, "tfds_split": None, "text_key": None,
            "max_documents": None, "validation_fraction": None, **extra}
  return ml_collections.ConfigDict(corpus)


def mlm_data_section(corpus: ml_collections.ConfigDict, *,
                     vocab_size: int, max_predictions: int,
                     mask_rate: float = 0.15, cache: bool = True,
                     data_dir: str | None = None
                     ) -> ml_collections.ConfigDict:
  """config.data of the mlm task: the corpus, masked by `mlm_mask` (15% of
  the tokens, at most `max_predictions` per sequence, 80/10/10); the
  validation split is masked with fixed seeds.

  Args:
    corpus: `text_corpus_section(...)`.
    vocab_size: the model's vocabulary (random replacements come from it).
    max_predictions: P, prediction slots per sequence (BERT: 20 at 128
      tokens, 80 at 512).
    mask_rate: share of the tokens to predict.
    cache: keep the packed corpus in host memory.
    data_dir: TFDS data_dir; None leaves a placeholder (TFDS's default).
  """
  mask = f"mlm_mask({vocab_size}, {max_predictions}, {mask_rate})"
  return data_section("mrl_text_corpus", num_classes=None,
                      eval_split="validation", train_preprocess=mask,
                      eval_preprocess=mask, shuffle_buffer=10_000,
                      cache=cache, data_dir=data_dir, corpus=corpus)


def loss_section(name: str,
                 label_smoothing: float = 0.0) -> ml_collections.ConfigDict:
  """config.loss: "softmax" or "sigmoid" cross-entropy, label smoothing."""
  return ml_collections.ConfigDict(
      {"name": name, "label_smoothing": label_smoothing})


def optimizer_section(name: str, *, learning_rate: float, schedule: str,
                      weight_decay: float,
                      **extra: Any) -> ml_collections.ConfigDict:
  """config.optimizer (mrl_jax/optim.py), state kept in float32.

  `state_dtype` "bfloat16" stores SGD's momentum / Adam's first moment in
  bfloat16. `extra` holds warm-up, momentum, betas, clipping and the like.
  """
  return ml_collections.ConfigDict(
      {"name": name, "state_dtype": "float32", "learning_rate": learning_rate,
       "schedule": schedule, "weight_decay": weight_decay, **extra})


def apply_smoke(config: ml_collections.ConfigDict, *, total_steps: int = 4,
                batch_size: int = 16, eval_batch_size: int | None = None,
                every_steps: int = 2, **data: Any) -> None:
  """Shrinks a config in place to a run of a few steps, for tests.

  Args:
    config: a config built on `base_config`.
    total_steps: the run length (epochs are unset).
    batch_size: the training batch.
    eval_batch_size: the evaluation batch; None means batch_size.
    every_steps: the logging and checkpoint period.
    **data: config.data fields to override, e.g. smaller splits.
  """
  config.total_epochs = None
  config.total_steps = total_steps
  config.batch_size = batch_size
  config.eval_batch_size = eval_batch_size or batch_size
  config.log_every_steps = every_steps
  config.checkpoint_every_steps = every_steps
  config.data.update(data)


def smoke_model(config: ml_collections.ConfigDict, name: str,
                width: int) -> None:
  """Swaps in a tiny backbone of representation size `width`, in place.

  An FF-k head keeps k <= width.
  """
  config.model.name = name
  if config.mrl.ff_dim is not None:
    config.mrl.ff_dim = min(config.mrl.ff_dim, width)
