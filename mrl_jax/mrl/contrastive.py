"""Nested contrastive losses: two towers (image, text) trained with MRL.

ALIGN (Jia et al. 2021) with MRL on both embeddings: for every nesting dim m
the m-prefixes of the image embeddings [B, d] and the text embeddings [B, d]
are L2-normalised on their own (MRL: normalisation is handled independently
for each nesting dim), and their cosines [B, B] divided by a learnable
temperature are the logits.

* "softmax" (ALIGN): label-smoothed cross-entropy image->text plus
  text->image. ALIGN sums the two directions (CLIP averages them); the sum is
  used here, so the loss is twice CLIP's for the same logits.
* "sigmoid" (SigLIP, Zhai et al. 2023): every pair is a binary problem,
  -log sigmoid(label_ij * (cos_ij / temperature + bias)) with label +1 on the
  diagonal and -1 elsewhere, summed over the B x B pairs and divided by B.

Temperature is parametrised as its log: temperature = exp(log_temperature),
shared by both directions, one scalar or one per nesting dim ([G]). ALIGN
starts at temperature 1 (log 0); SigLIP's logit scale 10 is temperature 0.1
(log -log 10) with bias -10 (`initial_params`). The temperature is clipped
from below at MIN_TEMPERATURE (CLIP's cap of 100 on the logit scale); below
it the log-temperature gets no gradient.

Per-row losses [G, B] are reduced like every nested loss
(`losses.weighted_nested_loss`): a batch mean per dim, and the sum over dims
weighted by c_m.

Memory: the G dims' [B, B] score blocks are never alive together. The
per-dim losses are a custom VJP whose residuals are its inputs only (the
backward pass recomputes each dim's scores: one more score matmul per dim
and direction), and both passes loop over the dims (`lax.map`, `lax.scan`,
switching on the dim's index), so one dim's blocks are alive at a time
whatever the backend's scheduler does. Unrolled dims leave the order to
XLA, and XLA:CPU then keeps them all. XLA:CPU temporaries of value_and_grad
at B = 4096, d = 768, 7 dims (softmax / sigmoid): 0.36 / 0.25 GiB looped
(about 6 / 4 float32 blocks); unrolled under one custom VJP 3.1 / 1.8 GiB,
with per-dim `jax.checkpoint` 2.7 / 0.98 GiB, plain autodiff 2.7 / 0.98 GiB.

Sharded (`sharded_nested_contrastive_loss`): each device all-gathers the
[B, d] embeddings over the batch axes, never the scores (both towers for
softmax; sigmoid's one direction needs only the texts). It scores its own
image rows against all texts (image->text) and its own text
rows against all images (text->image), so both directions of its rows are
local; the per-row pieces are then reduced as in the single-device loss.
The backward pass sends the gathered embeddings' gradients back with a
reduce-scatter.
"""
import functools
import math
from collections.abc import Sequence
from typing import Literal

import jax
import jax.numpy as jnp
from jax.sharding import AbstractMesh, Mesh, PartitionSpec as P

from mrl_jax import sharding
from mrl_jax.mrl import losses
from mrl_jax.mrl import nesting as nesting_lib

Kind = Literal["softmax", "sigmoid"]
KINDS = ("softmax", "sigmoid")

ALIGN_LABEL_SMOOTHING = 0.1
ALIGN_LOG_TEMPERATURE = 0.0  # temperature 1.0
SIGLIP_LOG_TEMPERATURE = -math.log(10.0)  # SigLIP's logit scale t = 10
SIGLIP_BIAS = -10.0
MIN_TEMPERATURE = 0.01
_NORM_EPS = 1e-12  # on the squared norm of a prefix


def initial_params(kind: Kind, num_dims: int | None = None
                   ) -> dict[str, jax.Array]:
  """The papers' initial log-temperature (and SigLIP's bias).

  Args:
    kind: "softmax" (ALIGN: temperature 1) or "sigmoid" (SigLIP: temperature
      0.1, bias -10).
    num_dims: G for one temperature (and bias) per nesting dim, None for one
      shared scalar.
  Returns:
    {"log_temperature": [] or [G]}, plus {"bias": [] or [G]} for sigmoid.
  """
  _check_kind(kind)
  shape = () if num_dims is None else (num_dims,)
  if kind == "softmax":
    return {"log_temperature": jnp.full(shape, ALIGN_LOG_TEMPERATURE)}
  return {"log_temperature": jnp.full(shape, SIGLIP_LOG_TEMPERATURE),
          "bias": jnp.full(shape, SIGLIP_BIAS)}


def _check_kind(kind: str) -> None:
  if kind not in KINDS:
    raise ValueError(f"unknown contrastive loss {kind!r}; use one of "
                     f"{', '.join(KINDS)}")


def _per_dim_param(value: jax.Array | float, num_dims: int,
                   name: str) -> jax.Array:
  """A scalar or [G] parameter as float32 [G]."""
  value = jnp.asarray(value, jnp.float32)
  if value.shape not in ((), (num_dims,)):
    raise ValueError(f"{name} has shape {value.shape}; give a scalar (shared "
                     f"by all dims) or one per nesting dim, shape ({num_dims},)")
  return jnp.broadcast_to(value, (num_dims,))


def _check_inputs(img, txt, nesting_dims, log_temperature, relative_importance,
                  label_smoothing, kind, bias):
  """Validates the arguments before any score is computed.

  Returns:
    (dims, weights c_m, logit scale 1 / temperature [G], bias [G], eps).
  Raises:
    ValueError: one line naming the problem and the fix.
  """
  _check_kind(kind)
  if img.ndim != 2 or img.shape != txt.shape:
    raise ValueError(f"image embeddings {tuple(img.shape)} and text "
                     f"embeddings {tuple(txt.shape)} differ; both towers must "
                     "output [B, d] with the same B and d (set both "
                     "projection dims equal)")
  dims = nesting_lib.validate_nesting(nesting_dims, img.shape[1])
  weights = nesting_lib.validate_relative_importance(relative_importance,
                                                     len(dims))
  log_t = _per_dim_param(log_temperature, len(dims), "log_temperature")
  # Clipped from below: a collapsing temperature would blow up the logits.
  scale = jnp.exp(-jnp.maximum(log_t, math.log(MIN_TEMPERATURE)))
  if kind == "softmax":
    if bias is not None:
      raise ValueError("a bias is only learned by the sigmoid loss; pass "
                       "bias=None with kind='softmax'")
    eps = (ALIGN_LABEL_SMOOTHING if label_smoothing is None
           else float(label_smoothing))
    if not 0.0 <= eps < 1.0:
      raise ValueError(f"label_smoothing={eps} is outside [0, 1); use e.g. "
                       f"ALIGN's {ALIGN_LABEL_SMOOTHING}")
    return dims, weights, scale, jnp.zeros_like(scale), eps
  if label_smoothing:
    raise ValueError("label smoothing is only defined for the softmax loss; "
                     "pass label_smoothing=None or 0 with kind='sigmoid'")
  if bias is None:
    raise ValueError("the sigmoid loss learns a bias; pass bias= (SigLIP "
                     f"initialises it at {SIGLIP_BIAS}, see initial_params)")
  return dims, weights, scale, _per_dim_param(bias, len(dims), "bias"), 0.0


def _normalised_prefix(x: jax.Array, m: int) -> jax.Array:
  """x[:, :m] / ||x[:, :m]|| in float32: [n, d] -> [n, m]."""
  x = x[:, :m].astype(jnp.float32)
  sq = jnp.sum(x * x, axis=-1, keepdims=True)
  return x * jax.lax.rsqrt(jnp.maximum(sq, _NORM_EPS))


def _cosines(rows: jax.Array, cols: jax.Array, m: int) -> jax.Array:
  """Cosines [n, N] between the m-prefixes of rows [n, d] and cols [N, d]."""
  return jnp.einsum("nm,km->nk", _normalised_prefix(rows, m),
                    _normalised_prefix(cols, m),
                    preferred_element_type=jnp.float32)


def _at(scores: jax.Array, targets: jax.Array) -> jax.Array:
  """scores[i, targets[i]]: [n, N], [n] -> [n]."""
  return jnp.take_along_axis(scores, targets[:, None], axis=-1)[:, 0]


def _smoothed_cross_entropy(logits: jax.Array, targets: jax.Array,
                            eps: float) -> jax.Array:
  """Cross-entropy [n] against (1 - eps) * onehot + eps / N, from [n, N]."""
  lse = jax.nn.logsumexp(logits, axis=-1)
  return lse - (1.0 - eps) * _at(logits, targets) - eps * logits.mean(-1)


def _one_dim(img_rows, txt_rows, img_cols, txt_cols, scale, bias, targets,
             m: int, kind: str, eps: float):
  """One dim's per-row (loss, hit, positive cosine, negative cosine sum).

  Rows [n, d] are this device's examples, cols [N, d] the whole batch, and
  targets [n] the rows' positions in the batch. Each output is [n].
  """
  cosines = _cosines(img_rows, txt_cols, m)  # image -> text
  positive = _at(cosines, targets)
  logits = cosines * scale
  if kind == "softmax":
    text_to_image = _cosines(txt_rows, img_cols, m) * scale
    loss = (_smoothed_cross_entropy(logits, targets, eps)
            + _smoothed_cross_entropy(text_to_image, targets, eps))
  else:
    logits = logits + bias
    # sum_j -log sigmoid(label_ij * logit_ij) with label +1 only at targets.
    loss = jax.nn.softplus(logits).sum(-1) - _at(logits, targets)
  hit = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
  return loss, hit, positive, cosines.sum(-1) - positive


@functools.partial(jax.custom_vjp, nondiff_argnums=(7, 8, 9))
def _per_row(img_rows, txt_rows, img_cols, txt_cols, scale, bias, targets,
             dims, kind, eps):
  """(losses, hits, positive cosines, negative cosine sums), each [G, n].

  A loop over the dims, switching on the dim's index, so one dim's score
  blocks are alive at a time whatever the backend's scheduler does; only
  the losses are differentiable.
  """
  def dim(m):
    return lambda s, b: _one_dim(img_rows, txt_rows, img_cols, txt_cols, s, b,
                                 targets, m, kind, eps)

  branches = [dim(m) for m in dims]
  return jax.lax.map(lambda x: jax.lax.switch(x[0], branches, *x[1:]),
                     (jnp.arange(len(dims)), scale, bias))


def _per_row_fwd(img_rows, txt_rows, img_cols, txt_cols, scale, bias, targets,
                 dims, kind, eps):
  # Residuals are the inputs: the backward pass recomputes each dim's scores.
  out = _per_row(img_rows, txt_rows, img_cols, txt_cols, scale, bias, targets,
                 dims, kind, eps)
  return out, (img_rows, txt_rows, img_cols, txt_cols, scale, bias, targets)


def _per_row_bwd(dims, kind, eps, residuals, cotangents):
  img_rows, txt_rows, img_cols, txt_cols, scale, bias, targets = residuals
  embeddings = (img_rows, txt_rows, img_cols, txt_cols)

  def dim_grads(m):
    def loss(*args):
      return _one_dim(*args, targets, m, kind, eps)[0]
    return lambda s, b, ct: jax.vjp(loss, *embeddings, s, b)[1](ct)

  branches = [dim_grads(m) for m in dims]

  def step(summed, x):
    *grads, d_scale, d_bias = jax.lax.switch(x[0], branches, *x[1:])
    return tuple(a + g for a, g in zip(summed, grads)), (d_scale, d_bias)

  # cotangents[1:] are of hits and cosines: metrics, not differentiated.
  summed, (d_scale, d_bias) = jax.lax.scan(
      step, tuple(jnp.zeros_like(x, jnp.float32) for x in embeddings),
      (jnp.arange(len(dims)), scale, bias, cotangents[0]))
  summed = tuple(g.astype(x.dtype) for g, x in zip(summed, embeddings))
  return (*summed, d_scale, d_bias, None)


_per_row.defvjp(_per_row_fwd, _per_row_bwd)


def _reduce(per_row: tuple[jax.Array, ...], weights: Sequence[float],
            scale: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The objective and metrics from the per-row pieces [G, B]."""
  loss, hit, positive, negative = per_row
  total, per_dim = losses.weighted_nested_loss(loss, weights)
  batch = loss.shape[-1]
  # A float: B (B - 1) passes int32 from B = 46,341 (ALIGN-scale batches).
  negative_mean = negative.sum(-1) / float(max(batch * (batch - 1), 1))
  return total, {"loss": per_dim, "accuracy": hit.mean(-1),
                 "cosine_gap": positive.mean(-1) - negative_mean,
                 "temperature": 1.0 / scale}


def nested_contrastive_loss(
    img: jax.Array, txt: jax.Array, nesting_dims: Sequence[int], *,
    log_temperature: jax.Array | float,
    relative_importance: Sequence[float] | None = None,
    label_smoothing: float | None = None, kind: Kind = "softmax",
    bias: jax.Array | float | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The nested two-tower contrastive objective and its per-dim metrics.

  Args:
    img: image embeddings [B, d] (unnormalised; each prefix is normalised).
    txt: text embeddings [B, d]; row i is image i's caption.
    nesting_dims: ascending dims m <= d.
    log_temperature: learnable log-temperature, [] shared by all dims or [G]
      one per dim; temperature = max(exp(.), MIN_TEMPERATURE).
    relative_importance: c_m per dim (default all ones, as in the paper).
    label_smoothing: softmax only; None is ALIGN's 0.1.
    kind: "softmax" (ALIGN, both directions summed) or "sigmoid" (SigLIP).
    bias: sigmoid only, learnable [] or [G].
  Returns:
    (total, metrics): total = sum_m c_m * loss_m; metrics "loss" [G] (batch
    mean per dim), "accuracy" [G] (in-batch image->text top-1),
    "cosine_gap" [G] (mean positive minus mean negative cosine) and
    "temperature" [G].
  Raises:
    ValueError: bad shapes, dims or options (one line, before tracing).
  """
  dims, weights, scale, bias, eps = _check_inputs(
      img, txt, nesting_dims, log_temperature, relative_importance,
      label_smoothing, kind, bias)
  targets = jnp.arange(img.shape[0], dtype=jnp.int32)
  per_row = _per_row(img, txt, img, txt, scale, bias, targets, dims, kind, eps)
  return _reduce(per_row, weights, scale)


def _local_rows(img, txt, scale, bias, *, axes, dims, kind, eps):
  """One device's per-row pieces [G, n], its rows scored against all rows."""
  # The sigmoid loss reads no image columns; XLA drops that gather.
  img_all = jax.lax.all_gather(img, axes, axis=0, tiled=True)
  txt_all = jax.lax.all_gather(txt, axes, axis=0, tiled=True)
  rows = img.shape[0]
  first = jax.lax.axis_index(axes).astype(jnp.int32) * rows
  targets = first + jnp.arange(rows, dtype=jnp.int32)
  # Varying copies of the replicated parameters: their per-device gradients
  # are then summed over the devices by the transpose (a psum).
  scale, bias = (jax.lax.pcast(x, axes, to="varying") for x in (scale, bias))
  return _per_row(img, txt, img_all, txt_all, scale, bias, targets, dims,
                  kind, eps)


def sharded_nested_contrastive_loss(
    img: jax.Array, txt: jax.Array, nesting_dims: Sequence[int], *,
    log_temperature: jax.Array | float,
    relative_importance: Sequence[float] | None = None,
    label_smoothing: float | None = None, kind: Kind = "softmax",
    bias: jax.Array | float | None = None,
    mesh: Mesh | AbstractMesh | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """`nested_contrastive_loss` with the batch split over the mesh's batch axes.

  For use inside a jitted step: img and txt [B, d] are split by rows over
  `sharding.batch_axes(mesh)` (as `sharding.batch_sharding` lays out a
  batch); every device gathers the embeddings [B, d] and scores its own rows
  against the whole batch (both directions for softmax). Same arguments and
  results as `nested_contrastive_loss`, plus:

  Args:
    mesh: the training mesh; None takes the context mesh, set by
      `sharding.traced_under_mesh`.
  Raises:
    ValueError: as `nested_contrastive_loss`, no mesh with batch axes, or B
      not divisible by the batch shards.
  """
  dims, weights, scale, bias, eps = _check_inputs(
      img, txt, nesting_dims, log_temperature, relative_importance,
      label_smoothing, kind, bias)
  mesh = jax.sharding.get_abstract_mesh() if mesh is None else mesh
  axes = () if mesh.empty else sharding.batch_axes(mesh)
  if not axes:
    raise ValueError("the sharded contrastive loss needs a mesh with batch "
                     f"axes {sharding.BATCH_AXES}; pass mesh= or trace the "
                     "step with sharding.traced_under_mesh")
  shards = math.prod(mesh.shape[a] for a in axes)
  if img.shape[0] % shards:
    raise ValueError(f"contrastive batch {img.shape[0]} is not divisible by "
                     f"the {shards} batch shards of the mesh; use a multiple "
                     f"of {shards}")
  local = functools.partial(_local_rows, axes=axes, dims=dims, kind=kind,
                            eps=eps)
  # Manual over every mesh axis: the loss has no tensor-parallel work, so
  # model-axis replicas compute the same rows (embeddings whose features
  # are split over model are gathered over model first, [n, d] each).
  per_row = jax.shard_map(local, mesh=mesh,
                          in_specs=(P(axes), P(axes), P(), P()),
                          out_specs=P(None, axes))(img, txt, scale, bias)
  return _reduce(per_row, weights, scale)
