"""BERT's masked-LM corruption as a tf.data map with stateless seeds.

Per sequence: n = min(P, max(1, round(rate x #candidates))) of the
candidate tokens (all but the special ids [PAD] [UNK] [CLS] [SEP] [MASK]) are
chosen uniformly; each chosen token becomes [MASK] with probability 0.8, a
uniformly random ordinary token with 0.1, and stays itself with 0.1 (Devlin
et al. 2019, section 3.1 and appendix A.1). The choice is a function of the
token ids and a [2] seed only, so with the pipeline's per-example seed
(seed, index in the epoch) a resumed run sees the same batches. In a
preprocess spec this is the op `mlm_mask(vocab_size, max_predictions, rate)`;
evaluation masks the validation split with the fixed seeds (0, index).

Output per example (P = max_predictions):
  input_ids [L] int32 (corrupted), segment_ids [L] int32 (zeros),
  input_mask [L] int32 (1 = real token), masked_positions [P] int32
  (ascending, then 0-padded), masked_ids [P] int32 (the original tokens),
  masked_weights [P] float32 (1 = real prediction, 0 = padding slot).
"""
from collections.abc import Callable

import tensorflow as tf

from mrl_jax.data import preprocess as preprocess_lib
from mrl_jax.data import tokenizer as tok

MASK_PROB, RANDOM_PROB = 0.8, 0.1  # the rest stay unchanged


def mask_tokens(input_ids: tf.Tensor, seed: tf.Tensor, *, vocab_size: int,
                max_predictions: int, rate: float = 0.15
                ) -> dict[str, tf.Tensor]:
  """Corrupts one packed sequence for masked-LM training.

  Args:
    input_ids: int token ids [L], 0-padded.
    seed: int [2] stateless seed (e.g. (run seed, example index)).
    vocab_size: the tokenizer's size (random replacements are drawn from the
      ordinary ids [NUM_SPECIAL, vocab_size)).
    max_predictions: P, the fixed number of prediction slots.
    rate: fraction of the candidate tokens to predict.
  Returns:
    The dict described in the module docstring.
  """
  ids = tf.cast(input_ids, tf.int32)
  length = tf.shape(ids)[0]
  choose_seed, kind_seed, token_seed = tf.unstack(
      tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 3))
  candidate = ids >= tok.NUM_SPECIAL
  num_candidates = tf.reduce_sum(tf.cast(candidate, tf.int32))
  count = tf.minimum(
      max_predictions,
      tf.maximum(1, tf.cast(tf.round(rate * tf.cast(num_candidates,
                                                    tf.float32)), tf.int32)))
  count = tf.minimum(count, num_candidates)
  # A uniform random subset: the `count` candidates with the smallest scores.
  scores = tf.random.stateless_uniform([length], choose_seed)
  scores = tf.where(candidate, scores, 2.0)
  order = tf.argsort(scores, stable=True)[:max_predictions]
  real = tf.range(tf.shape(order)[0]) < count
  positions = tf.sort(tf.where(real, order, length))  # chosen first, sorted
  real = positions < length
  positions = tf.where(real, positions, 0)
  original = tf.gather(ids, positions)
  kind = tf.random.stateless_uniform(tf.shape(positions), kind_seed)
  random_ids = tf.random.stateless_uniform(
      tf.shape(positions), token_seed, minval=tok.NUM_SPECIAL,
      maxval=vocab_size, dtype=tf.int32)
  replacement = tf.where(kind < MASK_PROB, tok.MASK_ID,
                         tf.where(kind < MASK_PROB + RANDOM_PROB, random_ids,
                                  original))
  slots = tf.boolean_mask(positions, real)
  corrupted = tf.tensor_scatter_nd_update(
      ids, slots[:, None], tf.boolean_mask(replacement, real))
  pad = max_predictions - tf.shape(positions)[0]  # sequences shorter than P
  fit = lambda x: tf.pad(x, [[0, pad]])
  return {
      "input_ids": corrupted,
      "segment_ids": tf.zeros_like(ids),
      "input_mask": tf.cast(ids != tok.PAD_ID, tf.int32),
      "masked_positions": fit(positions),
      "masked_ids": fit(tf.where(real, original, 0)),
      "masked_weights": fit(tf.cast(real, tf.float32)),
  }


def make_preprocess(vocab_size: int, max_predictions: int, rate: float = 0.15
                    ) -> Callable[[dict[str, tf.Tensor], tf.Tensor],
                                  dict[str, tf.Tensor]]:
  """fn(example, seed [2]) -> masked example, the data pipeline's preprocess
  signature; reads example["input_ids"]."""
  if not 0 < rate < 1:
    raise ValueError(f"MLM mask rate {rate} must be in (0, 1); BERT uses 0.15")
  if max_predictions < 1:
    raise ValueError(f"max_predictions={max_predictions} must be positive; "
                     "BERT uses 20 for 128-token sequences")

  def preprocess(example, seed):
    return mask_tokens(example["input_ids"], seed, vocab_size=vocab_size,
                       max_predictions=max_predictions, rate=rate)
  return preprocess


@preprocess_lib.register
def mlm_mask(vocab_size: int, max_predictions: int,
             rate: float = 0.15) -> preprocess_lib.Op:
  """The preprocess op `mlm_mask(vocab_size, max_predictions[, rate])` of
  config.data.train_preprocess / eval_preprocess (`make_preprocess`)."""
  return make_preprocess(vocab_size, max_predictions, rate)


def mask_dataset(ds: tf.data.Dataset, seed: int, vocab_size: int,
                 max_predictions: int, rate: float = 0.15) -> tf.data.Dataset:
  """Masks every example of `ds` with the seed (seed, its index in ds)."""
  preprocess = make_preprocess(vocab_size, max_predictions, rate)
  return ds.enumerate().map(
      lambda i, ex: preprocess(ex, tf.stack([tf.constant(seed, tf.int64), i])),
      num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
