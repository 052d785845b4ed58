"""BERT text encoders (Tiny/Mini/Small/Medium/Base/Large).

Reference: Devlin et al., "BERT: Pre-training of Deep Bidirectional
Transformers for Language Understanding" (NAACL 2019) for Base and Large;
Turc et al., "Well-Read Students Learn Better" (2019) for Google's
miniatures (Tiny 2/128, Mini 4/256, Small 4/512, Medium 8/512). Each has an
MLP width of 4 x hidden and hidden / 64 heads.

Architecture as published: token + position + segment embeddings summed,
embedding LayerNorm, post-LN blocks (x = LN(x + MHSA(x)); x = LN(x + MLP(x)),
LayerNorm eps 1e-12, exact GELU), padding masked out of attention, optional
pooler (Dense + tanh on [CLS]). Initialisation: truncated normal std 0.02.

Parameter names reuse the ViT's where the layers match (attn/{query,key,value,
out}, mlp/{fc1,fc2}, block_{i}) so the tensor-parallel sharding rules apply
to both. Text encoders are registered in TEXT_VARIANTS, not VARIANTS, so
they are never offered as image backbones (`registry.build_text_encoder`).
"""
import functools
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from mrl_jax import sharding
from mrl_jax.models import vit

Dtype = Any

_LN_EPS = 1e-12
_INIT = nn.initializers.truncated_normal(0.02)
# BERT's vocabulary (uncased WordPiece) and position table.
BERT_VOCAB_SIZE = 30522
POOLS = ("cls", "mean", "pooler")


class BertOutput(NamedTuple):
  """What the encoder gives its heads.

  Attributes:
    sequence: final hidden states [B, L, hidden] (the MLM head reads these).
    embedding: the sentence embedding [B, hidden] chosen by `Bert.pool`.
    word_embeddings: the input token table [vocab, hidden] (float32), for a
      decoder tied to it.
  """
  sequence: jax.Array
  embedding: jax.Array
  word_embeddings: jax.Array


def mean_pool(sequence: jax.Array, input_mask: jax.Array) -> jax.Array:
  """Mean over non-padding tokens: [B, L, D], [B, L] -> [B, D].

  A row without any real token gives zeros rather than NaN. The sum is
  taken in float32 (bfloat16 would round long sums).
  """
  mask = input_mask.astype(jnp.float32)[..., None]
  total = jnp.sum(sequence.astype(jnp.float32) * mask, axis=1)
  mean = total / jnp.maximum(jnp.sum(mask, axis=1), 1.0)
  return mean.astype(sequence.dtype)


class Mlp(nn.Module):
  """Dense(mlp_dim) -> GELU -> Dense(hidden): [B, L, D] -> [B, L, D]."""
  mlp_dim: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    dense = functools.partial(nn.Dense, dtype=self.dtype,
                              param_dtype=jnp.float32, kernel_init=_INIT)
    # BERT's gelu is the exact (erf) form.
    y = nn.gelu(dense(self.mlp_dim, name="fc1")(x), approximate=False)
    return dense(x.shape[-1], name="fc2")(y)


class EncoderBlock(nn.Module):
  """Post-LN block: x = LN(x + MHSA(x)); x = LN(x + MLP(x)). [B, L, D]."""
  num_heads: int
  mlp_dim: int
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.1
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array, train: bool) -> jax.Array:
    """mask: [B, 1, 1, L] key mask (True = may be attended to)."""
    norm = functools.partial(nn.LayerNorm, epsilon=_LN_EPS, dtype=self.dtype,
                             param_dtype=jnp.float32)
    drop = nn.Dropout(self.dropout_rate, deterministic=not train)
    # Softmax in float32 keeps bfloat16 training stable.
    y = nn.MultiHeadDotProductAttention(
        num_heads=self.num_heads, dtype=self.dtype, param_dtype=jnp.float32,
        kernel_init=_INIT, dropout_rate=self.attention_dropout_rate,
        deterministic=not train, force_fp32_for_softmax=True,
        name="attn")(x, x, mask=mask)
    x = norm(name="attn_norm")(x + drop(y))
    y = Mlp(self.mlp_dim, self.dtype, name="mlp")(x)
    return norm(name="mlp_norm")(x + drop(y))


class Bert(nn.Module):
  """BERT encoder: token ids [B, L] -> BertOutput.

  Attributes:
    vocab_size: rows of the word embedding table (the tokenizer's size).
    hidden: model width D; also the sentence embedding dim.
    depth: number of encoder blocks.
    num_heads: attention heads per block.
    mlp_dim: hidden width of each block's MLP (4 * hidden as published).
    max_len: rows of the position table (512 as published); longer
      sequences are an error.
    type_vocab_size: rows of the segment table (2: sentence A / B).
    pool: sentence embedding: "cls" = final [CLS] state, "mean" = mean over
      non-padding tokens, "pooler" = tanh(Dense([CLS])) (creates the pooler).
    dropout_rate: dropout on embeddings and block outputs in train mode.
    attention_dropout_rate: dropout on attention weights in train mode.
    dtype: compute dtype; parameters stay float32.
    remat: a vit.REMAT_POLICIES name: recompute block activations in the
      backward pass instead of storing them ("none": store them all).
  """
  vocab_size: int = BERT_VOCAB_SIZE
  hidden: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_dim: int = 3072
  max_len: int = 512
  type_vocab_size: int = 2
  pool: Literal["cls", "mean", "pooler"] = "cls"
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.1
  dtype: Dtype = jnp.float32
  remat: str = "none"

  @property
  def embedding_dim(self) -> int:
    return self.hidden

  def _check(self, input_ids: jax.Array) -> None:
    if self.pool not in POOLS:
      raise ValueError(f"pool must be one of {POOLS}, got {self.pool!r}")
    if self.remat not in vit.REMAT_POLICIES:
      raise ValueError(f"unknown remat {self.remat!r}; set config.model.remat "
                       f"to one of {', '.join(vit.REMAT_POLICIES)}")
    if input_ids.ndim != 2:
      raise ValueError(f"input_ids must be [batch, length], got shape "
                       f"{input_ids.shape}")
    if input_ids.shape[1] > self.max_len:
      raise ValueError(
          f"sequence length {input_ids.shape[1]} exceeds the position table "
          f"({self.max_len}); shorten the sequences or raise max_len")

  @nn.compact
  def __call__(self, input_ids: jax.Array, segment_ids: jax.Array | None = None,
               input_mask: jax.Array | None = None, *,
               train: bool) -> BertOutput:
    """Encodes a batch of token sequences.

    Args:
      input_ids: int token ids [B, L].
      segment_ids: int segment ids [B, L] (default all 0).
      input_mask: [B, L], 1 for real tokens and 0 for padding (default all
        real). Padding is never attended to and is left out of mean pooling.
      train: enables dropout (needs the 'dropout' rng).
    Returns:
      BertOutput with sequence [B, L, D], embedding [B, D] and the word
      embedding table [vocab_size, D].
    """
    self._check(input_ids)
    if segment_ids is None:
      segment_ids = jnp.zeros_like(input_ids)
    if input_mask is None:
      input_mask = jnp.ones_like(input_ids)
    embed = functools.partial(nn.Embed, features=self.hidden,
                              embedding_init=_INIT, dtype=self.dtype,
                              param_dtype=jnp.float32)
    word = embed(self.vocab_size, name="word_embeddings")
    positions = jnp.arange(input_ids.shape[1])[None, :]
    x = (word(input_ids)
         + embed(self.max_len, name="position_embeddings")(positions)
         + embed(self.type_vocab_size, name="segment_embeddings")(segment_ids))
    x = nn.LayerNorm(epsilon=_LN_EPS, dtype=self.dtype,
                     param_dtype=jnp.float32, name="embeddings_norm")(x)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = sharding.constrain_batch(x)
    # Keys only: padding is never attended to; padding rows still get a
    # (discarded) output instead of a softmax over nothing.
    mask = (input_mask > 0)[:, None, None, :]
    block = EncoderBlock
    if self.remat != "none":
      # static_argnums counts self: `train` (a Python bool) is argument 3.
      block = nn.remat(EncoderBlock, policy=vit.REMAT_POLICIES[self.remat],
                       static_argnums=(3,))
    for i in range(self.depth):
      x = block(self.num_heads, self.mlp_dim, self.dropout_rate,
                self.attention_dropout_rate, self.dtype,
                name=f"block_{i}")(x, mask, train)
      x = sharding.constrain_batch(x)
    if self.pool == "mean":
      pooled = mean_pool(x, input_mask)
    elif self.pool == "cls":
      pooled = x[:, 0]
    else:
      pooled = jnp.tanh(nn.Dense(self.hidden, dtype=self.dtype,
                                 param_dtype=jnp.float32, kernel_init=_INIT,
                                 name="pooler")(x[:, 0]))
    return BertOutput(x, pooled, word.embedding)


def check_fits(encoder: Bert, *, seq_len: int, vocab_size: int,
               data_section: str, model_section: str) -> None:
  """Raises a one-line ValueError if the data's sequences or vocabulary do
  not fit the encoder's position table or word embeddings.

  Args:
    encoder: the text encoder.
    seq_len: tokens per sequence the data gives.
    vocab_size: pieces of the data's tokenizer.
    data_section: the config section of seq_len / vocab_size, for the error
      (e.g. "config.data.corpus").
    model_section: the encoder's config section (e.g. "config.model").
  """
  if seq_len > encoder.max_len:
    raise ValueError(
        f"{data_section}.seq_len={seq_len} exceeds the text encoder's "
        f"position table (max_len={encoder.max_len}); set "
        f"--{model_section}.kwargs.max_len={seq_len} or a shorter seq_len")
  if vocab_size > encoder.vocab_size:
    raise ValueError(
        f"{data_section}.vocab_size={vocab_size} exceeds the text encoder's "
        f"vocabulary ({encoder.vocab_size}); make "
        f"{model_section}.kwargs.vocab_size at least as large")


def _variant(hidden: int, depth: int) -> Callable[..., Bert]:
  """Constructor of a published BERT size (MLP 4 x hidden, hidden/64 heads)."""
  return functools.partial(Bert, hidden=hidden, depth=depth,
                           num_heads=hidden // 64, mlp_dim=4 * hidden)


# (hidden, depth) per size; heads = hidden / 64 as published.
_SIZES = {"tiny": (128, 2), "mini": (256, 4), "small": (512, 4),
          "medium": (512, 8), "base": (768, 12), "large": (1024, 24)}

TEXT_VARIANTS = {f"bert_{size}": _variant(*_SIZES[size]) for size in _SIZES}
# Tiny CPU test variant (two blocks of width 32).
TEXT_VARIANTS["bert_mu"] = functools.partial(
    Bert, hidden=32, depth=2, num_heads=2, mlp_dim=64, max_len=128)
