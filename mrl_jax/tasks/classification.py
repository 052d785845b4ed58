"""Nested image classification: the paper's supervised vision family."""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import tensorflow as tf

from mrl_jax import model_flops
from mrl_jax import train_step as step_lib
from mrl_jax.evaluators import classification as evaluator
from mrl_jax.models import classifier
from mrl_jax.mrl import losses


class Classification:
  """images [B, H, W, C] and labels -> a nested classifier (see tasks/)."""

  name = "classification"
  accuracy_name = "top1"

  as_scalars = staticmethod(evaluator.as_scalars)
  format_table = staticmethod(evaluator.format_table)

  def build_model(self, config: ml_collections.ConfigDict) -> nn.Module:
    return classifier.build_model(config)

  def nesting_dims(self, model: nn.Module) -> tuple[int, ...]:
    return model.head.nesting_dims

  def loss_fn(self, config: ml_collections.ConfigDict
              ) -> losses.NestedLossFn:
    return losses.get_loss_fn(config.loss.name,
                              config.loss.get("label_smoothing", 0.0))

  def validate(self, config: ml_collections.ConfigDict,
               model: nn.Module) -> None:
    del config, model  # build_model and the data pipeline check it all

  def fingerprint(self, config: ml_collections.ConfigDict) -> dict[str, Any]:
    # Class names decide which label each logit means (an image folder's
    # classes, sorted).
    out = {"num_classes": config.data.num_classes}
    if config.data.get("class_names"):
      out["class_names"] = list(config.data.class_names)
    return out

  def locked_params(self, config: ml_collections.ConfigDict) -> None:
    del config  # every parameter trains

  def raw_example_spec(self, config: ml_collections.ConfigDict
                       ) -> dict[str, tf.TensorSpec]:
    """An encoded image when data.skip_decode, else uint8 [H, W, C]; class
    ids [n] for the sigmoid loss, an id [] otherwise."""
    data = config.data
    image = (tf.TensorSpec([], tf.string) if data.get("skip_decode", False)
             else tf.TensorSpec([None, None, data.get("channels", 3)],
                                tf.uint8))
    label = tf.TensorSpec([None] if config.loss.name == "sigmoid" else [],
                          tf.int64)
    return {"image": image, "label": label}

  def init_variables(self, model: nn.Module, rng: jax.Array,
                     example: dict[str, Any]) -> dict[str, Any]:
    return model.init(rng, jnp.zeros((1, *example["image"].shape),
                                     jnp.float32), train=False)

  def objective(self, run_setup: Any) -> step_lib.Objective:
    return step_lib.classification_objective(
        run_setup.model, run_setup.loss_fn, run_setup.relative_importance)

  def evaluate(self, run_setup: Any, eval_step: Any, state: Any,
               batches: Any, source: Any) -> dict[str, Any]:
    del source  # the heads know the classes
    return evaluator.evaluate(eval_step, state, batches,
                              run_setup.nesting_dims)

  def eval_step(self, run_setup: Any, class_subset: Any = None):
    return step_lib.make_eval_step(run_setup.model, run_setup.loss_fn,
                                   class_subset)

  def forward_macs(self, model: nn.Module, variables: Any,
                   example: dict[str, Any]) -> int:
    return model_flops.model_macs(model, variables, example["image"].shape)

  def bind_data(self, config: ml_collections.ConfigDict, source: Any,
                workdir: str, *, writer: bool) -> None:
    del config, source, workdir, writer  # labels are checked by the pipeline


TASK = Classification()
