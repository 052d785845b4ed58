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
from mrl_jax.tasks import workdir_tokenizer

Batch = dict[str, jax.Array]


class ExportInputs(Protocol):
  """The task-specific parts of --mode=export and --mode=export_encoder.

  Attributes:
    data: the config.data-like section of the labelled dataset to embed
      (name, train_split, eval_split, data_dir, eval_preprocess giving the
      model's inputs and "label"); its splits are the default export splits.
    arrays: what `embed` can compute per example, besides the labels.
    views: whether augmented views (config.export.views) apply.
    provenance: arrays, besides the weights, that the embeddings depend on;
      the export's checkpoint digest covers them too.
    metadata: extra fields for each split's metadata.json.
  """
  data: ml_collections.ConfigDict
  arrays: tuple[str, ...]
  views: bool
  provenance: dict[str, np.ndarray]
  metadata: dict[str, Any]

  def open_source(self, split: str) -> pipeline.ExampleSource:
    """A split of `data`, for pipeline.eval_batches (prepared if needed)."""

  def bundle(self) -> tuple[dict[str, Any], dict[str, bytes]]:
    """What an encoder bundle needs besides the params: (encoder.json fields
    that say how to prepare inputs, {file name: contents} to store)."""

  def encoder(self, model: nn.Module) -> nn.Module:
    """The module whose output is the embedding (has `embedding_dim`)."""

  def encoder_variables(self, state: Any) -> dict[str, Any]:
    """The encoder's variables in a train state (no heads)."""

  def embed(self, model: nn.Module, variables: dict[str, Any], batch: Batch,
            keys: tuple[str, ...]) -> dict[str, jax.Array]:
    """{key: float32 [B, ...]} for keys (a subset of `arrays`):
    "embeddings" [B, d], "logits" / "flip_logits" [B, G, C] (rows first, to
    shard like the batch)."""


class ImageInputs:
  """Images -> backbone z, and the heads' logits."""

  arrays = ("embeddings", "logits", "flip_logits")
  views = True

  def __init__(self, config: ml_collections.ConfigDict):
    self.data = config.data
    self.provenance, self.metadata = {}, {}

  def open_source(self, split: str) -> pipeline.ExampleSource:
    return pipeline.open_source(self.data, split)

  def bundle(self) -> tuple[dict[str, Any], dict[str, bytes]]:
    spec = self.data.eval_preprocess
    source = self.open_source(self.data.eval_split)
    return {"preprocessing": {
                "spec": spec,
                "input_shape": list(pipeline.image_shape(self.data, source))},
            "normalisation": _normalisation(spec)}, {}

  def encoder(self, model: nn.Module) -> nn.Module:
    return model.backbone

  def encoder_variables(self, state: Any) -> dict[str, Any]:
    variables = {"params": state.params["backbone"]}
    if state.batch_stats:
      variables["batch_stats"] = state.batch_stats["backbone"]
    return variables

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

  arrays = ("embeddings",)
  views = False

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    """Reads the workdir's tokenizer.

    Raises:
      errors.RunError: the workdir has no tokenizer.model.
    """
    path = os.path.join(os.path.abspath(workdir), workdir_tokenizer.FILE)
    if not os.path.isfile(path):
      raise errors.RunError(
          f"{path} is missing: the tokenizer this workdir's model was trained "
          "with; copy it there (it is the corpus's tokenizer.model in the "
          "prepared mrl_text_corpus directory) or train with --mode=train, "
          "which writes it")
    with open(path, "rb") as f:
      self._tokenizer = f.read()
    self._path, self._dataset = path, (config.get("export") or {}).get(
        "dataset")
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

  def bundle(self) -> tuple[dict[str, Any], dict[str, bytes]]:
    return {"modality": "text", "pool": self.metadata["pool"],
            "preprocessing": {
                "tokenizer": workdir_tokenizer.FILE,
                "tokenizer_sha256": self.metadata["tokenizer_sha256"],
                "max_length": self.metadata["seq_len"],
                "format": "[CLS] ids [SEP], [PAD]-padded to max_length"}}, {
                    workdir_tokenizer.FILE: self._tokenizer}

  def encoder(self, model: nn.Module) -> nn.Module:
    return model.encoder

  def encoder_variables(self, state: Any) -> dict[str, Any]:
    return {"params": state.params["encoder"]}

  def embed(self, model: nn.Module, variables: dict[str, Any], batch: Batch,
            keys: tuple[str, ...]) -> dict[str, jax.Array]:
    del keys  # embeddings only
    out = model.encoder.apply({"params": variables["params"]["encoder"]},
                              batch["input_ids"], None, batch["input_mask"],
                              train=False)
    return {"embeddings": out.embedding.astype(np.float32)}


def _normalisation(spec: str) -> dict[str, Any] | None:
  """The pixel normalisation of a preprocess spec's `normalize` op."""
  args = preprocess.op_arguments(spec, "normalize")
  if args is None:
    return None
  mean, std = preprocess.normalization_stats(**args)
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
  raise ValueError(f"config.task={task!r}: --mode=export and "
                   "--mode=export_encoder support the classification and "
                   "mlm tasks")
