"""Nested masked language modelling: one MLM loss per nesting dim.

BERT's MLM head gathers the hidden states at the masked positions, applies a
transform (Dense, GELU, LayerNorm) giving h [N, d], and decodes with the word
embeddings E [V, d] tied to the input plus a bias b [V]. The nested version
scores every prefix of h (the paper's section 4.3: with the tie, MRL
reduces to MRL-E):

* "mrl_e": logits_m = h[:, :m] @ E[:, :m].T + b, one shared bias (paper).
* "mrl":   untied decoders, W_m [V, m] and b_m [V] per dim
           (params `decoder_{i}`, `decoder_bias_{i}`).
* "ff":    FF-k, the same tied decoder with the single dim k.

Per-prefix LayerNorm (`prefix_norm=True`): the transform's LayerNorm is
applied to each prefix with the prefix's own mean and variance, using the
first m entries of the one shared scale and offset. The full dim is then
exactly BERT's head, and no parameter is added.

Memory: G dims x N tokens x V classes of logits are never alive at once.
The per-dim losses are a custom VJP whose residuals are its inputs and the
[G, N] log-normalisers: no [N, V] array is kept from the forward to the
backward pass, and XLA is free to compute each dim's forward and backward
together (it shares the logits between them, so nothing is recomputed).
BERT-Base sizes (N = 20,480 predictions, V = 30,522, 7 dims), XLA:TPU
temporaries of value_and_grad with a decoder per dim (`_per_token`): 4.8
GiB, about two dims' float32 logits, against 2.3 GiB for plain MLM and 35
GiB for logits stacked [G, N, V]. (Per-dim `jax.checkpoint` is worse
there, 16.5 GiB: its barriers make all forward passes run first.) The
shared-table path below keeps one dim's logits, their gradient and the
running sum of gradients alive; its XLA:TPU figure is not measured.

Compute: one table and bias for every dim without per-prefix norm (MRL-E,
FF) take `_tied_per_token`, which walks the dims from the widest down:
dim m_{g-1}'s logits are dim m_g's less the product of the columns between
them, and the gradient of each column block is the running sum of the
logit gradients of the dims that read it times the block. The decoder's
matmuls then cost 4/3 of plain MLM's instead of twice (m_1 + ... + m_G =
1,524 columns against 768 for 12..768). A hit (accuracy) is a target
logit equal to the row's max (`_softmax_loss`); evaluation splits exact
ties among the tied classes (`split_ties`), so a collapsed model with
constant logits scores 1/V, not 1.
"""
import functools
from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from mrl_jax.mrl import losses
from mrl_jax.mrl import nesting as nesting_lib

Dtype = Any
HeadType = Literal["mrl_e", "mrl", "ff"]
HEAD_TYPES = ("mrl_e", "mrl", "ff")

_LN_EPS = 1e-12  # BERT's
_INIT = nn.initializers.truncated_normal(0.02)


class MlmDecoder(NamedTuple):
  """Everything the nested MLM loss needs, as arrays (a pytree).

  Attributes:
    h: transformed states at the gathered positions [N, d]; before the
      LayerNorm when `norm_scale` is set (per-prefix norm), after it if not.
    norm_scale: LayerNorm scale [d] for per-prefix norm, else None.
    norm_offset: LayerNorm offset [d] for per-prefix norm, else None.
    tables: G decoder tables; tied: the word embeddings [V, d] G times
      (dim g reads the first m_g columns); untied: [V, m_g] each.
    biases: G biases [V] (the same array G times for a tied decoder).
    nesting_dims: the G ascending dims m_g.
  """
  h: jax.Array
  norm_scale: jax.Array | None
  norm_offset: jax.Array | None
  tables: tuple[jax.Array, ...]
  biases: tuple[jax.Array, ...]
  nesting_dims: tuple[int, ...]


def gather_positions(sequence: jax.Array, positions: jax.Array) -> jax.Array:
  """Hidden states at the masked positions: [B, L, D], [B, P] -> [B * P, D]."""
  picked = jnp.take_along_axis(sequence, positions[..., None].astype(jnp.int32),
                               axis=1)
  return picked.reshape(-1, sequence.shape[-1])


def layer_norm(x: jax.Array, scale: jax.Array, offset: jax.Array,
               eps: float = _LN_EPS) -> jax.Array:
  """LayerNorm of x [N, m] over its last dim with scale, offset [m]."""
  x = x.astype(jnp.float32)
  mean = x.mean(-1, keepdims=True)
  var = jnp.square(x - mean).mean(-1, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + eps) * scale + offset


class NestedMlmHead(nn.Module):
  """Transform + nested decoder params: -> MlmDecoder for `nested_mlm_loss`.

  Attributes:
    nesting_dims: ascending dims m (the FF-k baseline: one dim k).
    head_type: "mrl_e" (tied, shared bias), "mrl" (untied per dim) or "ff"
      (tied, one dim).
    prefix_norm: LayerNorm each prefix with its own statistics.
    dtype: compute dtype of the transform; parameters stay float32.
  """
  nesting_dims: tuple[int, ...]
  head_type: HeadType = "mrl_e"
  prefix_norm: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, sequence: jax.Array, masked_positions: jax.Array,
               word_embeddings: jax.Array) -> MlmDecoder:
    """Gathers, transforms and collects the decoders.

    Args:
      sequence: encoder output [B, L, d].
      masked_positions: int [B, P] positions to predict (padding slots may
        point anywhere; their weight is 0 in the loss).
      word_embeddings: the encoder's token table [V, d].
    Returns:
      MlmDecoder with h [B * P, d].
    """
    vocab, d = word_embeddings.shape
    dims = check_head(self.head_type, self.nesting_dims, d)
    h = gather_positions(sequence, masked_positions)
    h = nn.Dense(d, dtype=self.dtype, param_dtype=jnp.float32,
                 kernel_init=_INIT, name="transform")(h)
    h = nn.gelu(h, approximate=False)
    norm = nn.LayerNorm(epsilon=_LN_EPS, dtype=self.dtype,
                        param_dtype=jnp.float32, name="transform_norm")
    if self.prefix_norm:
      norm(h[:1])  # creates scale and offset; applied per prefix in the loss
      scale = norm.variables["params"]["scale"]
      offset = norm.variables["params"]["bias"]
    else:
      h, scale, offset = norm(h), None, None
    if self.head_type == "mrl":
      tables = tuple(self.param(f"decoder_{i}", _INIT, (vocab, m))
                     for i, m in enumerate(dims))
      biases = tuple(self.param(f"decoder_bias_{i}", nn.initializers.zeros,
                                (vocab,)) for i in range(len(dims)))
    else:
      bias = self.param("decoder_bias", nn.initializers.zeros, (vocab,))
      tables, biases = (word_embeddings,) * len(dims), (bias,) * len(dims)
    return MlmDecoder(h, scale, offset, tables, biases, dims)


def check_head(head_type: str, nesting_dims: Sequence[int],
               hidden: int) -> tuple[int, ...]:
  """Validates head_type and nesting dims against the hidden size.

  Raises:
    ValueError: one line naming the problem and the config field to fix.
  """
  if head_type not in HEAD_TYPES:
    raise ValueError(f"unknown MLM head {head_type!r}; set config.mrl.head to "
                     f"one of {', '.join(HEAD_TYPES)}")
  dims = nesting_lib.validate_nesting(nesting_dims, hidden)
  if head_type == "ff" and len(dims) != 1:
    raise ValueError(f"the ff head trains one dim k, got nesting dims {dims}; "
                     "set config.mrl.nesting_dims to (k,)")
  return dims


def _prefix(h: jax.Array, scale: jax.Array | None, offset: jax.Array | None,
            m: int) -> jax.Array:
  """The dim-m decoder's input [N, m]: h's first m features, per-prefix
  LayerNormed when `scale` is set."""
  x = h[:, :m]
  if scale is not None:
    x = layer_norm(x, scale[:m], offset[:m]).astype(h.dtype)
  return x


def _block_logits(x: jax.Array, table: jax.Array) -> jax.Array:
  """float32 x [N, k] @ table [V, k].T (without the bias)."""
  return jnp.einsum("nk,vk->nv", x, table.astype(x.dtype),
                    preferred_element_type=jnp.float32)


def _logits(x: jax.Array, table: jax.Array, bias: jax.Array) -> jax.Array:
  """float32 logits [N, V] of x [N, m] against table [V, >= m], bias [V]."""
  return _block_logits(x, table[:, :x.shape[-1]]) + bias


def _softmax_loss(logits: jax.Array, targets: jax.Array,
                  split_ties: bool = False
                  ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Cross-entropy [N], hits [N] and log-normalisers [N] of logits [N, V].

  A hit is a target logit equal to the row's max, the max the log-normaliser
  needs anyway: no separate argmax pass over [N, V] (on CPU an argmax costs
  20 times a max). It equals `argmax(logits) == target` except on exact
  ties for the max: the train step's metric counts every tied class as a
  hit; `split_ties` (evaluation) gives each 1/k of a hit for k tied
  classes, the expected accuracy of a random tie-break, for one more pass
  over [N, V].
  """
  top = logits.max(-1)
  lse = top + jnp.log(jnp.exp(logits - top[:, None]).sum(-1))
  target_logit = jnp.take_along_axis(logits, targets[:, None], -1)[:, 0]
  hits = (target_logit >= top).astype(jnp.float32)
  if split_ties:
    tied = (logits == top[:, None]).astype(jnp.float32)
    hits = hits / (tied @ jnp.ones((tied.shape[-1],), jnp.float32))
  return lse - target_logit, hits, lse


def _softmax_loss_grad(logits: jax.Array, lse: jax.Array, targets: jax.Array,
                       loss_ct: jax.Array) -> jax.Array:
  """d(sum_n ct_n * loss_n) / d logits [N, V]: ct * (softmax - onehot)."""
  grad = jnp.exp(logits - lse[:, None]) * loss_ct[:, None]
  return grad.at[jnp.arange(grad.shape[0]), targets].add(-loss_ct)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7))
def _per_token(h, scale, offset, tables, biases, targets, dims, split_ties):
  """Losses and hits [G, N]; one dim's [N, V] logits alive at a time."""
  out = _per_token_fwd(h, scale, offset, tables, biases, targets, dims,
                       split_ties)
  return out[0]


def _per_token_fwd(h, scale, offset, tables, biases, targets, dims,
                   split_ties):
  # Residuals: the inputs and the log-normalisers [G, N]. The backward pass
  # recomputes each dim's logits (XLA may share them with the forward).
  losses_, hits, lses = [], [], []
  for table, bias, m in zip(tables, biases, dims):
    loss, hit, lse = _softmax_loss(
        _logits(_prefix(h, scale, offset, m), table, bias), targets,
        split_ties)
    losses_.append(loss)
    hits.append(hit)
    lses.append(lse)
  return ((jnp.stack(losses_), jnp.stack(hits)),
          (h, scale, offset, tables, biases, targets, jnp.stack(lses)))


def _per_token_bwd(dims, split_ties, residuals, cotangents):
  del split_ties  # hits are not differentiable
  h, scale, offset, tables, biases, targets, lses = residuals
  loss_ct = cotangents[0]  # hits are not differentiable
  done = []
  for g, m in enumerate(dims):
    x, prefix_vjp = jax.vjp(lambda *a, m=m: _prefix(*a, m), h, scale, offset)
    logits, linear_vjp = jax.vjp(lambda x, t, g=g: _logits(x, t, biases[g]),
                                 x, tables[g])
    grad = _softmax_loss_grad(logits, lses[g], targets, loss_ct[g])
    grad_x, grad_table = linear_vjp(grad)
    done.append((*prefix_vjp(grad_x), grad_table, _column_sum(grad)))

  def total(i):
    grads = [d[i] for d in done]
    return None if grads[0] is None else sum(grads[1:], grads[0])
  return (total(0), total(1), total(2), tuple(d[3] for d in done),
          tuple(d[4] for d in done), None)


_per_token.defvjp(_per_token_fwd, _per_token_bwd)


def _tied_logits_downward(h: jax.Array, table: jax.Array, bias: jax.Array,
                          dims: tuple[int, ...]):
  """Yields (g, logits [N, V] of dim g) from the widest dim down.

  With one table, dim m_{g-1}'s logits are dim m_g's less the product of
  columns m_{g-1}..m_g: all G dims cost one full-width matmul, not
  m_1 + ... + m_G columns. (Rounding: the narrow dims' logits carry the
  wide ones' float32 error, a few ulps of the full logits.)
  """
  logits = _logits(h[:, :dims[-1]], table, bias)
  for g in reversed(range(len(dims))):
    yield g, logits
    if g:
      block = slice(dims[g - 1], dims[g])
      logits = logits - _block_logits(h[:, block], table[:, block])


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _tied_per_token(h, table, bias, targets, dims, split_ties):
  """`_per_token` for one table and bias shared by every dim, no prefix
  norm (MRL-E, FF): losses and hits [G, N]."""
  return _tied_per_token_fwd(h, table, bias, targets, dims, split_ties)[0]


def _tied_per_token_fwd(h, table, bias, targets, dims, split_ties):
  out = [None] * len(dims)
  for g, logits in _tied_logits_downward(h, table, bias, dims):
    out[g] = _softmax_loss(logits, targets, split_ties)
  losses_, hits, lses = (jnp.stack(o) for o in zip(*out))
  return (losses_, hits), (h, table, bias, targets, lses)


def _tied_per_token_bwd(dims, split_ties, residuals, cotangents):
  """Columns m_{g-1}..m_g of h and the table are read by dims g..G, so
  their gradient is the sum of those dims' logit gradients times the block:
  one running sum, one full-width pair of matmuls for all G dims."""
  del split_ties  # hits are not differentiable
  h, table, bias, targets, lses = residuals
  loss_ct = cotangents[0]  # hits are not differentiable
  grad_sum, grad_h, grad_table = None, [], []
  for g, logits in _tied_logits_downward(h, table, bias, dims):
    grad = _softmax_loss_grad(logits, lses[g], targets, loss_ct[g])
    grad_sum = grad if grad_sum is None else grad_sum + grad
    block = slice(dims[g - 1] if g else 0, dims[g])
    _, block_vjp = jax.vjp(_block_logits, h[:, block], table[:, block])
    grad_x, grad_t = block_vjp(grad_sum)
    grad_h.insert(0, grad_x)
    grad_table.insert(0, grad_t)
  tail = h.shape[-1] - dims[-1]  # columns no dim reads
  grad_h.append(jnp.zeros((h.shape[0], tail), grad_h[0].dtype))
  grad_table.append(jnp.zeros((table.shape[0], tail), grad_table[0].dtype))
  return (jnp.concatenate(grad_h, -1), jnp.concatenate(grad_table, -1),
          _column_sum(grad_sum), None)


_tied_per_token.defvjp(_tied_per_token_fwd, _tied_per_token_bwd)


def _column_sum(a: jax.Array) -> jax.Array:
  """a [N, V] summed over N, as a matvec: XLA:CPU reduces the rows of an
  [N, V] array ~25 times slower than it multiplies it by a vector of ones."""
  return (jnp.ones((1, a.shape[0]), a.dtype) @ a)[0]


def nested_mlm_per_token(decoder: MlmDecoder, targets: jax.Array,
                         split_ties: bool = False
                         ) -> tuple[jax.Array, jax.Array]:
  """Per-token cross-entropy and hits for every nesting dim.

  Args:
    decoder: from `NestedMlmHead`, h [N, d].
    targets: original token ids at the gathered positions [N].
    split_ties: a target tied with k-1 other classes for the max is 1/k of
      a hit (evaluation); False counts it as a hit (the train step's cheap
      metric, see `_softmax_loss`).
  Returns:
    (losses [G, N], hits [G, N] in [0, 1]).
  """
  targets = targets.reshape(-1).astype(jnp.int32)
  dims = tuple(decoder.nesting_dims)
  if decoder.norm_scale is None and _one_decoder(decoder):
    return _tied_per_token(decoder.h, decoder.tables[0], decoder.biases[0],
                           targets, dims, split_ties)
  return _per_token(decoder.h, decoder.norm_scale, decoder.norm_offset,
                    tuple(decoder.tables), tuple(decoder.biases), targets,
                    dims, split_ties)


def _one_decoder(decoder: MlmDecoder) -> bool:
  """Whether every dim reads the same table and bias (NestedMlmHead's tied
  heads pass the one word-embedding array G times)."""
  return (all(t is decoder.tables[0] for t in decoder.tables)
          and all(b is decoder.biases[0] for b in decoder.biases))


def nested_mlm_loss(decoder: MlmDecoder, masked_ids: jax.Array,
                    masked_weights: jax.Array,
                    relative_importance: Sequence[float] | None = None
                    ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The nested MLM objective and its per-dim metrics.

  Args:
    decoder: from `NestedMlmHead`, h [B * P, d].
    masked_ids: original ids at the masked positions [B, P].
    masked_weights: [B, P], 1 for a real prediction, 0 for a padding slot.
    relative_importance: c_m per dim (default all ones, as in the paper).
  Returns:
    (total, metrics): total = sum_m c_m * mean masked loss of dim m;
    metrics["loss"] [G] per-dim losses and metrics["accuracy"] [G] per-dim
    MLM accuracy, both over the real predictions, and metrics["weight"] (a
    scalar) the number of real predictions, to average over batches.
  """
  weights = nesting_lib.validate_relative_importance(
      relative_importance, len(decoder.nesting_dims))
  per_token, hits = nested_mlm_per_token(decoder, masked_ids)
  mask = masked_weights.reshape(-1).astype(jnp.float32)
  total, per_dim = losses.weighted_nested_loss(per_token, weights, mask)
  accuracy = (hits * mask).sum(-1) / jnp.maximum(mask.sum(), 1.0)
  return total, {"loss": per_dim, "accuracy": accuracy, "weight": mask.sum()}


class NestedMlmModel(nn.Module):
  """A text encoder with the nested MLM head (params `encoder`, `mlm`).

  Attributes:
    encoder: a text encoder (`registry.build_text_encoder`) returning
      `BertOutput`.
    nesting_dims, head_type, prefix_norm: as in NestedMlmHead.
  """
  encoder: nn.Module
  nesting_dims: tuple[int, ...]
  head_type: HeadType = "mrl_e"
  prefix_norm: bool = False

  @nn.compact
  def __call__(self, input_ids: jax.Array, segment_ids: jax.Array,
               input_mask: jax.Array, masked_positions: jax.Array, *,
               train: bool) -> tuple[MlmDecoder, Any]:
    """Encodes [B, L] ids and decodes [B, P] positions.

    Returns:
      (MlmDecoder for `nested_mlm_loss`, the encoder's BertOutput).
    """
    out = self.encoder(input_ids, segment_ids, input_mask, train=train)
    head = NestedMlmHead(tuple(self.nesting_dims), self.head_type,
                         self.prefix_norm, self.encoder.dtype, name="mlm")
    return head(out.sequence, masked_positions, out.word_embeddings), out
