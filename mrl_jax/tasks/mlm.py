"""Nested masked language modelling: the paper's BERT family (MRL-E through
the tied word embeddings, section 4.3), as a trainer task.

Batches are {"input_ids", "segment_ids", "input_mask" [B, L],
"masked_positions", "masked_ids", "masked_weights" [B, P]} from the
`mlm_mask` preprocess op (data/mlm_masking.py); the model is a registered
text encoder with `mrl.mlm.NestedMlmModel`'s head.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import tensorflow as tf

from mrl_jax import model_flops
from mrl_jax import train_step as step_lib
from mrl_jax.data import preprocess as preprocess_lib
from mrl_jax.data import text_corpus
from mrl_jax.evaluators import mlm as evaluator
from mrl_jax.models import bert
from mrl_jax.models import classifier
from mrl_jax.models import registry
from mrl_jax.mrl import mlm
from mrl_jax.mrl import nesting
from mrl_jax.tasks import workdir_tokenizer

_INPUTS = ("input_ids", "segment_ids", "input_mask", "masked_positions")


def _apply(model: nn.Module, variables: Any, batch: dict[str, jax.Array],
           train: bool, rng: jax.Array | None = None) -> mlm.MlmDecoder:
  decoder, _ = model.apply(variables, *(batch[k] for k in _INPUTS),
                           train=train,
                           rngs=None if rng is None else {"dropout": rng})
  return decoder


class MaskedLanguageModelling:
  """Token sequences -> BERT with the nested MLM head (see tasks/)."""

  name = "mlm"
  accuracy_name = "mlm_accuracy"

  as_scalars = staticmethod(evaluator.as_scalars)
  format_table = staticmethod(evaluator.format_table)

  def build_model(self, config: ml_collections.ConfigDict
                  ) -> mlm.NestedMlmModel:
    """config.model: a registered text encoder (vocab_size, max_len, pool in
    its kwargs); config.mrl.head: mrl_e (the paper's), mrl (untied per-dim
    decoders) or ff (FF-k: the tied decoder at the one dim config.mrl.ff_dim,
    default the hidden size); config.mrl.prefix_norm: LayerNorm each prefix
    on its own."""
    encoder = classifier.configured_backbone(config.model,
                                             registry.build_text_encoder)
    hidden, head = encoder.hidden, config.mrl.head
    if head == "ff":
      dims = (config.mrl.get("ff_dim") or hidden,)
    elif config.mrl.nesting_dims is None:
      dims = nesting.default_nesting(hidden)
    else:
      dims = tuple(config.mrl.nesting_dims)
    dims = mlm.check_head(head, dims, hidden)
    return mlm.NestedMlmModel(encoder, dims, head,
                              config.mrl.get("prefix_norm", False))

  def nesting_dims(self, model: nn.Module) -> tuple[int, ...]:
    return tuple(model.nesting_dims)

  def loss_fn(self, config: ml_collections.ConfigDict) -> None:
    del config  # softmax cross-entropy over the vocabulary, in mrl/mlm.py

  def validate(self, config: ml_collections.ConfigDict,
               model: nn.Module) -> None:
    """The masking ops' vocabulary and the corpus's sequence length must fit
    the model."""
    vocab = model.encoder.vocab_size
    for field in ("train_preprocess", "eval_preprocess"):
      args = preprocess_lib.op_arguments(config.data[field], "mlm_mask")
      if args is None:
        raise ValueError(f"config.data.{field} has no mlm_mask op; the mlm "
                         "task needs e.g. \"mlm_mask(8192, 20)\"")
      if args["vocab_size"] != vocab:
        raise ValueError(
            f"config.data.{field} masks with vocab_size="
            f"{args['vocab_size']} but the model's vocabulary is {vocab}; "
            "make them equal (config.model.kwargs.vocab_size)")
    bert.check_fits(model.encoder, seq_len=config.data.corpus.seq_len,
                    vocab_size=config.data.corpus.vocab_size,
                    data_section="config.data.corpus",
                    model_section="config.model")

  def fingerprint(self, config: ml_collections.ConfigDict) -> dict[str, Any]:
    return {"prefix_norm": bool(config.mrl.get("prefix_norm", False)),
            "corpus": dict(config.data.corpus)}

  def locked_params(self, config: ml_collections.ConfigDict) -> None:
    del config  # every parameter trains

  def raw_example_spec(self, config: ml_collections.ConfigDict
                       ) -> dict[str, tf.TensorSpec]:
    return {"input_ids": tf.TensorSpec([config.data.corpus.seq_len],
                                       tf.int32)}

  def init_variables(self, model: nn.Module, rng: jax.Array,
                     example: dict[str, Any]) -> dict[str, Any]:
    dummy = {k: jnp.zeros((1, *example[k].shape), jnp.int32) for k in _INPUTS}
    return model.init(rng, *(dummy[k] for k in _INPUTS), train=False)

  def objective(self, run_setup: Any) -> step_lib.Objective:
    model, weights = run_setup.model, run_setup.relative_importance

    def objective(params, batch_stats, batch, rng):
      decoder = _apply(model, {"params": params}, batch, True, rng)
      total, metrics = mlm.nested_mlm_loss(
          decoder, batch["masked_ids"], batch["masked_weights"], weights)
      return total, (metrics["loss"], metrics["accuracy"], batch_stats)
    return objective

  def evaluate(self, run_setup: Any, eval_step: Any, state: Any,
               batches: Any, source: Any) -> dict[str, Any]:
    del source  # the heads know the classes
    return evaluator.evaluate(eval_step, state, batches,
                              run_setup.nesting_dims)

  def eval_step(self, run_setup: Any, class_subset: Any = None):
    """step(state, batch) -> "loss", "correct" [G] and "predictions" []
    summed over the real predictions of the real rows, "count" [] rows."""
    del class_subset  # a classification protocol
    model = run_setup.model

    def eval_step(state, batch):
      decoder = _apply(model, {"params": state.params}, batch, False)
      losses, hits = mlm.nested_mlm_per_token(decoder, batch["masked_ids"],
                                              split_ties=True)
      weight = (batch["masked_weights"] * batch["mask"][:, None]).reshape(-1)
      return {"loss": losses @ weight, "correct": hits @ weight,
              "predictions": weight.sum(), "count": batch["mask"].sum()}
    return eval_step

  def forward_macs(self, model: nn.Module, variables: Any,
                   example: dict[str, Any]) -> int:
    """The encoder, the MLM transform and one full-width decoder: plain
    BERT's MLM forward, against which the nested step is compared."""
    dummy = [jax.ShapeDtypeStruct((1, *example[k].shape), jnp.int32)
             for k in _INPUTS]

    def forward(v, *inputs):
      decoder, _ = model.apply(v, *inputs, train=False)
      return decoder.h @ decoder.tables[-1].T
    return model_flops.forward_macs(forward, variables, *dummy)

  def bind_data(self, config: ml_collections.ConfigDict, source: Any,
                workdir: str, *, writer: bool) -> None:
    """The corpus's tokenizer must fit the model and be the one the
    workdir's checkpoints were trained with (workdir_tokenizer.py)."""
    workdir_tokenizer.bind(
        text_corpus.load_tokenizer(source.builder),
        config.model.kwargs.get("vocab_size"),
        "config.model.kwargs.vocab_size", workdir, source.builder.data_dir,
        writer=writer)


TASK = MaskedLanguageModelling()
