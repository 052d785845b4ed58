"""What an export reads and runs, per trainer task: the seam between the
export machinery (embedding_writer.py's shards and provenance, encoder.py's
bundles) and a task's model and data.

  classification  config.data's images through the backbone; per-dim head
                  logits too (and those of flipped images)
  mlm             a labelled text dataset (config.export.dataset: WordNet
                  glosses -> lexicographer classes in configs/text_mlm.py),
                  tokenized with the workdir's tokenizer.model as the model
                  was trained ([CLS] ids [SEP] padded to the corpus's
                  seq_len), through the encoder's pooled sentence embedding
                  (config.model.kwargs.pool); no logits: the MLM head has no
                  classes
  contrastive     config.data's image-text pairs (their category labels)
                  through the image tower: its raw embeddings, and with
                  config.export.text_embeddings those of the captions
                  through the text tower as "text_embeddings"; its bundle
                  holds each tower (with its projection to d) as a bundle
                  of its own, the text one with the workdir's tokenizer

`get(config, workdir)` picks and checks them before any checkpoint is read.
"""
import hashlib
import os
from typing import Any, Protocol

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from mrl_jax import errors
from mrl_jax.data import pipeline
from mrl_jax.data import preprocess
from mrl_jax.data import text_eval
from mrl_jax.models import two_tower
from mrl_jax.tasks import workdir_tokenizer

Batch = dict[str, jax.Array]
# An encoder bundle's parts: {folder: (its encoder.json fields, {file name:
# contents})}; "" is the bundle itself, a two-tower bundle has a folder per
# tower.
BundleParts = dict[str, tuple[dict[str, Any], dict[str, bytes]]]


class ExportInputs(Protocol):
  """The task-specific parts of --mode=export and --mode=export_encoder.

  Attributes:
    data: the config.data-like section of the labelled dataset to embed
      (name, train_split, eval_split, data_dir, eval_preprocess giving the
      model's inputs and "label"); its splits are the default export splits.
    arrays: what `embed` can compute per example, besides the labels.
    split_arrays: those every exported split holds (per-split logits come
      on top).
    views: whether augmented views (config.export.views) apply.
    provenance: arrays, besides the weights, that the embeddings depend on;
      the export's checkpoint digest covers them too.
    metadata: extra fields for each split's metadata.json.
  """
  data: ml_collections.ConfigDict
  arrays: tuple[str, ...]
  split_arrays: tuple[str, ...]
  views: bool
  provenance: dict[str, np.ndarray]
  metadata: dict[str, Any]

  def open_source(self, split: str) -> pipeline.ExampleSource:
    """A split of `data`, for pipeline.eval_batches (prepared if needed)."""

  def bundle(self) -> BundleParts:
    """What an encoder bundle holds besides the params and the checkpoint's
    provenance: per folder, encoder.json fields (the model, how to prepare
    inputs) and files to store."""

  def encoder(self, model: nn.Module) -> nn.Module:
    """The module whose output is the embedding (has `embedding_dim`)."""

  def encoder_variables(self, state: Any) -> dict[str, dict[str, Any]]:
    """{folder: the variables its params/ holds} from a train state (the
    encoder's, no heads)."""

  def embed(self, model: nn.Module, variables: dict[str, Any], batch: Batch,
            keys: tuple[str, ...]) -> dict[str, jax.Array]:
    """{key: float32 [B, ...]} for keys (a subset of `arrays`):
    "embeddings" [B, d], "logits" / "flip_logits" [B, G, C] (rows first, to
    shard like the batch)."""


class ImageInputs:
  """Images -> backbone z, and the heads' logits."""

  arrays = ("embeddings", "logits", "flip_logits")
  split_arrays = ("embeddings",)
  views = True

  def __init__(self, config: ml_collections.ConfigDict):
    self.data, self._model = config.data, config.model
    self.provenance, self.metadata = {}, {}

  def open_source(self, split: str) -> pipeline.ExampleSource:
    return pipeline.open_source(self.data, split)

  def bundle(self) -> BundleParts:
    return {"": ({"model": _model_fields(self._model),
                  **self.image_preparation()}, {})}

  def image_preparation(self) -> dict[str, Any]:
    """encoder.json's preprocessing (eval spec, input shape) and pixel
    normalisation of config.data's images."""
    spec = self.data.eval_preprocess
    source = self.open_source(self.data.eval_split)
    return {"preprocessing": {
                "spec": spec,
                "input_shape": list(pipeline.image_shape(self.data, source))},
            "normalisation": _normalisation(spec)}

  def encoder(self, model: nn.Module) -> nn.Module:
    return model.backbone

  def encoder_variables(self, state: Any) -> dict[str, dict[str, Any]]:
    variables = {"params": state.params["backbone"]}
    if state.batch_stats:
      variables["batch_stats"] = state.batch_stats["backbone"]
    return {"": variables}

  def embed(self, model: nn.Module, variables: dict[str, Any], batch: Batch,
            keys: tuple[str, ...]) -> dict[str, jax.Array]:
    logits, aux = model.apply(variables, batch["image"], train=False)
    out = {"embeddings": aux["embedding"].astype(np.float32),
           "logits": logits.swapaxes(0, 1).astype(np.float32)}
    if "flip_logits" in keys:  # images are [B, H, W, C]: flip the width
      flipped, _ = model.apply(variables, batch["image"][:, :, ::-1],
                               train=False)
      out["flip_logits"] = flipped.swapaxes(0, 1).astype(np.float32)
    return {key: out[key] for key in keys}


class TextInputs:
  """Labelled text -> the encoder's pooled sentence embedding."""

  arrays = split_arrays = ("embeddings",)
  views = False

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    """Reads the workdir's tokenizer.

    Raises:
      errors.RunError: the workdir has no tokenizer.model.
    """
    self._path, self._tokenizer = _read_workdir_tokenizer(
        workdir, "it is the corpus's tokenizer.model in the prepared "
        "mrl_text_corpus directory")
    self._model = config.model
    self._dataset = (config.get("export") or {}).get("dataset")
    seq_len = config.data.corpus.seq_len
    self.provenance = {"tokenizer": np.frombuffer(self._tokenizer, np.uint8)}
    self.metadata = {"pool": config.model.kwargs.get("pool"),
                     "seq_len": seq_len,
                     "tokenizer_sha256": hashlib.sha256(
                         self._tokenizer).hexdigest()}

  @property
  def data(self) -> ml_collections.ConfigDict:
    """config.export.dataset, tokenized for the model.

    Raises:
      ValueError: config.export.dataset is missing.
    """
    if not self._dataset:
      raise ValueError(
          "the mlm task exports a labelled text dataset; set "
          "config.export.dataset (name, train_split, eval_split, "
          "num_classes), e.g. as configs/text_mlm.py does for "
          f"{text_eval.LEXNAMES}")
    return text_eval.data_section(self._dataset, self._path,
                                  self.metadata["seq_len"])

  def open_source(self, split: str) -> pipeline.ExampleSource:
    text_eval.prepare(self.data)
    return pipeline.open_source(self.data, split)

  def bundle(self) -> BundleParts:
    return {"": _text_part(self._model, self._tokenizer,
                           self.metadata["seq_len"])}

  def encoder(self, model: nn.Module) -> nn.Module:
    return model.encoder

  def encoder_variables(self, state: Any) -> dict[str, dict[str, Any]]:
    return {"": {"params": state.params["encoder"]}}

  def embed(self, model: nn.Module, variables: dict[str, Any], batch: Batch,
            keys: tuple[str, ...]) -> dict[str, jax.Array]:
    del keys  # embeddings only
    out = model.encoder.apply({"params": variables["params"]["encoder"]},
                              batch["input_ids"], None, batch["input_mask"],
                              train=False)
    return {"embeddings": out.embedding.astype(np.float32)}


class ContrastiveInputs:
  """Image-text pairs -> the image tower's raw embeddings (and, optionally,
  the text tower's of their captions), labelled by category."""

  arrays = ("embeddings", "text_embeddings")
  views = False

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    text = (config.get("export") or {}).get("text_embeddings", False)
    self.split_arrays = self.arrays if text else ("embeddings",)
    self._images = ImageInputs(config)
    self.data, self._text_model = config.data, config.text_model
    self._embed_dim = config.contrastive.embed_dim
    self._workdir = workdir
    self.provenance = {}
    self.metadata = {"tower": "image"}

  def open_source(self, split: str) -> pipeline.ExampleSource:
    return self._images.open_source(split)

  def bundle(self) -> BundleParts:
    """Raises errors.RunError: the workdir has no tokenizer.model."""
    _, tokenizer = _read_workdir_tokenizer(
        self._workdir, "it is the tokenizer.model stored with the prepared "
        f"{self.data.name} dataset")
    # The captions' token length as evaluation feeds them (caption_tokens
    # may shorten the dataset's).
    args = preprocess.op_arguments(self.data.eval_preprocess,
                                   "caption_tokens") or {}
    max_length = args.get("length") or self.data.image_text.seq_len
    image, _ = self._images.bundle()[""]
    text, files = _text_part(self._text_model, tokenizer, max_length)
    projection = {"projection": self._embed_dim}  # each tower's Dense to d
    return {"": ({"modality": "image_text",
                  "towers": list(two_tower.SIDES)}, {}),
            "image": ({**image, **projection}, {}),
            "text": ({**text, **projection}, files)}

  def encoder(self, model: nn.Module) -> nn.Module:
    return model.towers

  def encoder_variables(self, state: Any) -> dict[str, dict[str, Any]]:
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    return {side: two_tower.tower_variables(variables, side)
            for side in two_tower.SIDES}

  def embed(self, model: nn.Module, variables: dict[str, Any], batch: Batch,
            keys: tuple[str, ...]) -> dict[str, jax.Array]:
    out = {"embeddings": model.apply(variables, batch["image"], train=False,
                                     method=model.encode_image)}
    if "text_embeddings" in keys:
      out["text_embeddings"] = model.apply(
          variables, batch["input_ids"], batch["input_mask"], train=False,
          method=model.encode_text)
    return {key: out[key].astype(np.float32) for key in keys}


def _read_workdir_tokenizer(workdir: str, origin: str) -> tuple[str, bytes]:
  """(path, contents) of the workdir's tokenizer.model.

  origin: where a user finds a copy, for the error.
  Raises:
    errors.RunError: the workdir has no tokenizer.model.
  """
  path = os.path.join(os.path.abspath(workdir), workdir_tokenizer.FILE)
  if not os.path.isfile(path):
    raise errors.RunError(
        f"{path} is missing: the tokenizer this workdir's model was trained "
        f"with; copy it there ({origin}) or train with --mode=train, which "
        "writes it")
  with open(path, "rb") as f:
    return path, f.read()


def _model_fields(section: ml_collections.ConfigDict) -> dict[str, Any]:
  """encoder.json's "model" of a config model section."""
  return {"name": section.name, "dtype": section.dtype,
          "kwargs": dict(section.get("kwargs", {}))}


def _text_part(section: ml_collections.ConfigDict, tokenizer: bytes,
               max_length: int) -> tuple[dict[str, Any], dict[str, bytes]]:
  """A text bundle's encoder.json fields and its tokenizer file."""
  return {"modality": "text", "model": _model_fields(section),
          "pool": section.kwargs.get("pool"),
          "preprocessing": {
              "tokenizer": workdir_tokenizer.FILE,
              "tokenizer_sha256": hashlib.sha256(tokenizer).hexdigest(),
              "max_length": max_length,
              "format": "[CLS] ids [SEP], [PAD]-padded to max_length"}}, {
                  workdir_tokenizer.FILE: tokenizer}


def _normalisation(spec: str) -> dict[str, Any] | None:
  """The pixel normalisation of a preprocess spec's `normalize` op, or of
  its `value_range(vmin, vmax)` op written the same way (vmin + pixel /
  255 * (vmax - vmin) is (pixel / 255 - mean) / std with std = 1 / (vmax -
  vmin), mean = -vmin * std); None when it has neither."""
  args = preprocess.op_arguments(spec, "normalize")
  if args is not None:
    mean, std = preprocess.normalization_stats(**args)
  else:
    args = preprocess.op_arguments(spec, "value_range")
    if args is None:
      return None
    std = 1.0 / (args["vmax"] - args["vmin"])
    mean = -args["vmin"] * std
  return {"formula": "(pixel / 255 - mean) / std",
          "mean": np.atleast_1d(mean).tolist(),
          "std": np.atleast_1d(std).tolist()}


def get(config: ml_collections.ConfigDict, workdir: str) -> ExportInputs:
  """The export inputs of config.task, checked without reading a checkpoint.

  Raises:
    ValueError: a task without export inputs.
    errors.RunError: as the inputs' constructors.
  """
  task = config.get("task", "classification")
  if task == "mlm":
    return TextInputs(config, workdir)
  if task == "classification":
    return ImageInputs(config)
  if task == "contrastive":
    return ContrastiveInputs(config, workdir)
  raise ValueError(f"config.task={task!r}: --mode=export and "
                   "--mode=export_encoder support the classification, mlm "
                   "and contrastive tasks")
