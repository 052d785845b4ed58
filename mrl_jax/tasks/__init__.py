"""What a run learns: each task names its model, objective, evaluation and
inputs; the trainer (train.py) runs any of them the same way.

`config.task` picks one (default "classification"):

* classification: images -> a backbone with a nested classifier head
  (models/classifier.py); softmax / sigmoid cross-entropy per nesting dim;
  top-1 / top-5 per dim (evaluators/classification.py).
* mlm: packed token sequences -> a BERT encoder with the nested masked-LM
  head (mrl/mlm.py, MRL-E through the tied word embeddings); MLM accuracy
  and loss per dim (evaluators/mlm.py).
* contrastive: image-text pairs -> two towers with the nested contrastive
  loss (mrl/contrastive.py, each prefix normalised on its own); cross-modal
  recall, zero-shot and cosine span per dim (evaluators/cross_modal.py).
"""
from typing import Any, Protocol

import flax.linen as nn
import jax
import ml_collections
import tensorflow as tf

from mrl_jax import param_lock
from mrl_jax import train_step as step_lib
from mrl_jax.tasks import classification
from mrl_jax.tasks import contrastive
from mrl_jax.tasks import mlm

Batch = dict[str, jax.Array]
ExampleSpec = dict[str, jax.ShapeDtypeStruct]  # one example, no batch dim


class Task(Protocol):
  """The task-specific parts of a run (implementations: TASKS)."""

  name: str
  accuracy_name: str  # the per-dim accuracy the train step reports

  def build_model(self, config: ml_collections.ConfigDict) -> nn.Module:
    """The model; a one-line ValueError for a bad model / head / nesting."""

  def nesting_dims(self, model: nn.Module) -> tuple[int, ...]:
    """The model's ascending nesting dims."""

  def loss_fn(self, config: ml_collections.ConfigDict) -> Any:
    """The per-example loss the objective uses, or None if built in."""

  def validate(self, config: ml_collections.ConfigDict,
               model: nn.Module) -> None:
    """Task-specific config checks, without I/O (one-line ValueError)."""

  def fingerprint(self, config: ml_collections.ConfigDict) -> dict[str, Any]:
    """What a checkpoint must share with the config, beyond the common
    fields (model, head, nesting, dataset, optimizer)."""

  def locked_params(self, config: ml_collections.ConfigDict
                    ) -> param_lock.Lock | None:
    """The parameters a fresh run copies from another workdir and never
    trains (param_lock.py), or None; a one-line ValueError, no I/O."""

  def raw_example_spec(self, config: ml_collections.ConfigDict
                       ) -> dict[str, tf.TensorSpec]:
    """One raw dataset example, as the train preprocessing receives it."""

  def init_variables(self, model: nn.Module, rng: jax.Array,
                     example: ExampleSpec) -> dict[str, Any]:
    """model.init on one dummy example of `example`'s shapes."""

  def objective(self, run_setup: Any) -> step_lib.Objective:
    """The train objective (see train_step.Objective)."""

  def eval_step(self, run_setup: Any, class_subset: Any = None):
    """step(state, batch) -> per-dim sums over the batch's real rows."""

  def evaluate(self, run_setup: Any, eval_step: Any, state: Any,
               batches: Any, source: Any) -> dict[str, Any]:
    """Runs the eval step over the batches of `source` (its class names
    name the classes) -> the eval summary (eval_summary.json), with "task"
    and "step"."""

  def as_scalars(self, summary: dict[str, Any],
                 split: str) -> dict[str, float]:
    """The summary as flat metric names, e.g. "val/top1/d=8"."""

  def format_table(self, summary: dict[str, Any], name: str = "") -> str:
    """The summary as a per-dim table for humans."""

  def forward_macs(self, model: nn.Module, variables: Any,
                   example: ExampleSpec) -> int:
    """Forward multiply-adds for one example (AOT report)."""

  def bind_data(self, config: ml_collections.ConfigDict, source: Any,
                workdir: str, *, writer: bool) -> None:
    """Checks the opened dataset against the config and the workdir before
    anything is compiled; `writer`: a trainer's process 0 may record what
    the workdir was trained on."""


TASKS: dict[str, Task] = {"classification": classification.TASK,
                          "mlm": mlm.TASK, "contrastive": contrastive.TASK}


def get(config: ml_collections.ConfigDict) -> Task:
  """The task config.task names (default "classification")."""
  name = config.get("task", "classification")
  if name not in TASKS:
    raise ValueError(f"unknown task {name!r}; set config.task to one of "
                     f"{', '.join(TASKS)}")
  return TASKS[name]


def format_summary(summary: dict[str, Any]) -> str:
  """The eval summary as a per-dim table (the train and eval modes print
  this)."""
  return TASKS[summary.get("task", "classification")].format_table(summary)
