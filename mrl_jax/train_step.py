"""Pure, jittable train steps for any task's objective, and the nested
classifier's objective and eval step.

The steps take their dependencies explicitly (model, optimizer, loss, c_m) so
they can be tested alone and compiled with any sharding. Other tasks bring
their own objective (mrl_jax/tasks/).
"""
from collections.abc import Callable, Sequence
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from mrl_jax import sharding
from mrl_jax.evaluators import class_subsets
from mrl_jax.mrl import losses
from mrl_jax.mrl import metrics

Batch = dict[str, jax.Array]
PyTree = Any


class TrainState(flax.struct.PyTreeNode):
  """Everything a step reads and writes; this is what is checkpointed.

  `nonfinite_step` is -1 until a step sees a non-finite loss or gradient;
  from then on updates are skipped, so the state stays the last good one
  while the host notices (it checks at log and checkpoint time, avoiding a
  device sync every step).
  """
  step: jax.Array
  params: PyTree
  batch_stats: PyTree
  opt_state: optax.OptState
  nonfinite_step: jax.Array


def create_train_state(model: nn.Module, tx: optax.GradientTransformation,
                       rng: jax.Array, image_shape: Sequence[int]) -> TrainState:
  """Initialises params from `rng` for images of shape [1, *image_shape]."""
  variables = model.init(rng, jnp.zeros((1, *image_shape), jnp.float32),
                         train=False)
  return state_from_variables(variables, tx)


def state_from_variables(variables: PyTree,
                         tx: optax.GradientTransformation) -> TrainState:
  """The step-0 state of freshly initialised {"params", "batch_stats"?}."""
  params = variables["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables.get("batch_stats", {}),
                    opt_state=tx.init(params),
                    nonfinite_step=jnp.full((), -1, jnp.int32))


def _all_finite(tree: PyTree) -> jax.Array:
  leaves = [jnp.isfinite(x).all() for x in jax.tree.leaves(tree)]
  return jnp.stack(leaves).all() if leaves else jnp.array(True)


def split_microbatches(x: jax.Array, k: int) -> jax.Array:
  """[B, ...] -> [k, B / k, ...]; microbatch i holds rows i, i + k, ...

  Interleaving keeps each device's rows on that device: a device holding a
  contiguous block of B / n rows holds B / (n k) rows of every microbatch,
  so the split moves no data (needs B divisible by n k).
  """
  x = x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1)
  return sharding.constrain_batch(x, batch_dim=1)


# objective(params, batch_stats, batch, rng) -> (total loss, (per-dim losses
# [G], per-dim train-batch accuracy [G], updated batch_stats)).
Objective = Callable[[PyTree, PyTree, Batch, jax.Array],
                     tuple[jax.Array, tuple[jax.Array, jax.Array, PyTree]]]


def classification_objective(model: nn.Module, loss_fn: losses.NestedLossFn,
                             relative_importance: Sequence[float]
                             ) -> Objective:
  """The nested classifier's objective on {"image", "label"} batches.

  The accuracy is top-1 (prec@1 for multi-label labels).
  """
  def objective(params, batch_stats, batch, rng):
    (logits, _), updates = model.apply(
        {"params": params, "batch_stats": batch_stats},
        batch["image"], train=True, mutable=["batch_stats"],
        rngs={"dropout": rng})
    per_example = loss_fn(logits, batch["label"])
    total, per_dim = losses.weighted_nested_loss(per_example,
                                                 relative_importance)
    top1 = metrics.topk_correct(logits, batch["label"], 1).mean(-1)
    return total, (per_dim, top1, updates.get("batch_stats", {}))
  return objective


def make_train_step(
    model: nn.Module, tx: optax.GradientTransformation,
    loss_fn: losses.NestedLossFn, relative_importance: Sequence[float],
    seed: int, grad_accum_steps: int = 1,
) -> Callable[[TrainState, Batch], tuple[TrainState, Batch]]:
  """The nested classifier's train step (`make_step` of
  `classification_objective`).

  batch: {"image": [B, H, W, C], "label": [B] or [B, C]}.
  """
  return make_step(
      classification_objective(model, loss_fn, relative_importance), tx, seed,
      grad_accum_steps)


def make_step(
    objective: Objective, tx: optax.GradientTransformation, seed: int,
    grad_accum_steps: int = 1,
) -> Callable[[TrainState, Batch], tuple[TrainState, Batch]]:
  """Returns step(state, batch) -> (state, metrics) for any task's objective.

  metrics: "loss" [] (the weighted sum), "loss_per_dim" [G],
  "accuracy_per_dim" [G] (the objective's train-batch accuracy),
  "grad_norm" [].

  With grad_accum_steps = k > 1 the batch is split into k microbatches of
  B / k that run one after another (lax.scan) and their gradients are
  averaged: the same update as the whole batch when every microbatch's loss
  is a mean over equally many terms (for MLM, the mean of the microbatches'
  per-prediction means), with ~1/k of the activation memory. BatchNorm
  normalises each microbatch with its own statistics and updates its
  running averages once per microbatch.
  """
  def loss_and_grads(params, batch_stats, batch, rng):
    grad_fn = jax.value_and_grad(
        lambda p: objective(p, batch_stats, batch, rng), has_aux=True)
    (loss, aux), grads = grad_fn(params)
    return (loss, *aux), grads

  def accumulated(params, batch_stats, batch, rng):
    k = grad_accum_steps
    if k == 1:
      return loss_and_grads(params, batch_stats, batch, rng)

    def microstep(carry, xs):
      grad_sum, stats = carry
      microbatch, i = xs
      (loss, per_dim, accuracy, stats), grads = loss_and_grads(
          params, stats, microbatch, jax.random.fold_in(rng, i))
      return ((jax.tree.map(jnp.add, grad_sum, grads), stats),
              (loss, per_dim, accuracy))

    micro = jax.tree.map(lambda x: split_microbatches(x, k), batch)
    zeros = jax.tree.map(jnp.zeros_like, params)
    (grad_sum, stats), (loss, per_dim, accuracy) = jax.lax.scan(
        microstep, (zeros, batch_stats), (micro, jnp.arange(k)))
    # Equal-sized microbatches: the mean of their means is the batch mean.
    return ((loss.mean(), per_dim.mean(0), accuracy.mean(0), stats),
            jax.tree.map(lambda g: g / k, grad_sum))

  def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, Batch]:
    # Dropout randomness is a function of (seed, step): resumable.
    rng = jax.random.fold_in(jax.random.key(seed), state.step)
    (loss, per_dim, accuracy, batch_stats), grads = accumulated(
        state.params, state.batch_stats, batch, rng)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    finite = jnp.isfinite(loss) & _all_finite(grads)
    ok = finite & (state.nonfinite_step < 0)
    keep_if_bad = lambda new, old: jax.tree.map(
        lambda a, b: jnp.where(ok, a, b), new, old)
    new_state = state.replace(
        step=state.step + 1,
        params=keep_if_bad(optax.apply_updates(state.params, updates),
                           state.params),
        batch_stats=keep_if_bad(batch_stats, state.batch_stats),
        opt_state=keep_if_bad(opt_state, state.opt_state),
        nonfinite_step=jnp.where(finite | (state.nonfinite_step >= 0),
                                 state.nonfinite_step, state.step))
    step_metrics = {
        "loss": loss,
        "loss_per_dim": per_dim,
        "accuracy_per_dim": accuracy,
        "grad_norm": optax.tree.norm(grads),
    }
    return new_state, step_metrics

  return train_step


def make_eval_step(model: nn.Module, loss_fn: losses.NestedLossFn,
                   class_subset: Sequence[int] | None = None
                   ) -> Callable[[TrainState, Batch], Batch]:
  """Returns step(state, batch) -> per-dim sums over the batch.

  batch: {"image", "label", "mask" [B]} (mask 0 marks padding).
  returns: "top1", "top5", "loss" as [G] sums over real examples, "count" [].
  class_subset: score among these classes only (ImageNet-R/-A protocol, see
    evaluators/class_subsets.py); None: all classes.
  """
  def eval_step(state: TrainState, batch: Batch) -> Batch:
    logits, _ = model.apply(
        {"params": state.params, "batch_stats": state.batch_stats},
        batch["image"], train=False)
    mask = batch["mask"].astype(jnp.float32)
    label = batch["label"]
    if class_subset is not None:
      logits, label = class_subsets.restrict(logits, label, class_subset)
    return {
        "top1": metrics.topk_correct(logits, label, 1) @ mask,
        "top5": metrics.topk_correct(logits, label, 5) @ mask,
        "loss": loss_fn(logits, label) @ mask,
        "count": mask.sum(),
    }

  return eval_step
