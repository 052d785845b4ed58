"""Nested MLM: values and gradients against an independent numpy reference.

The reference writes out the forward pass (prefix slice, optional per-prefix
LayerNorm, logits, masked softmax cross-entropy summed over dims) and its
backward pass by hand.
"""
import jax
from jax import ad_checkpoint
from jax.sharding import PartitionSpec as P
import jax.numpy as jnp
import numpy as np
import pytest

from mrl_jax import sharding
from mrl_jax import sharding_rules
from mrl_jax.models import registry
from mrl_jax.mrl import mlm

V, D, N = 37, 16, 12
DIMS = (4, 8, 16)
EPS = 1e-12


def _ln_forward(g, scale, offset):
  mu = g.mean(-1, keepdims=True)
  sigma = np.sqrt(((g - mu) ** 2).mean(-1, keepdims=True) + EPS)
  xhat = (g - mu) / sigma
  return xhat * scale + offset, xhat, sigma


def _ln_backward(dy, xhat, sigma, scale):
  dxhat = dy * scale
  dg = (dxhat - dxhat.mean(-1, keepdims=True)
        - xhat * (dxhat * xhat).mean(-1, keepdims=True)) / sigma
  return dg, (dy * xhat).sum(0), dy.sum(0)


def _numpy_reference(h, scale, offset, tables, biases, targets, weights, c):
  """Loss, per-dim loss, per-dim accuracy and grads (float64)."""
  h = h.astype(np.float64)
  grads = {"h": np.zeros_like(h), "scale": np.zeros(D), "offset": np.zeros(D),
           "tables": [np.zeros(t.shape) for t in tables],
           "biases": [np.zeros(b.shape) for b in biases]}
  total, per_dim, accuracy = 0.0, [], []
  onehot = np.eye(V)[targets]
  denom = max(weights.sum(), 1.0)
  for g, m in enumerate(DIMS):
    x = h[:, :m]
    if scale is not None:
      x, xhat, sigma = _ln_forward(x, scale[:m], offset[:m])
    logits = x @ tables[g][:, :m].T + biases[g]
    logits = logits - logits.max(-1, keepdims=True)
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    loss = -np.log((p * onehot).sum(-1))
    per_dim.append((loss * weights).sum() / denom)
    accuracy.append(((logits.argmax(-1) == targets) * weights).sum() / denom)
    total += c[g] * per_dim[-1]
    dlogits = (p - onehot) * (c[g] * weights / denom)[:, None]
    grads["tables"][g][:, :m] += dlogits.T @ x
    grads["biases"][g] += dlogits.sum(0)
    dx = dlogits @ tables[g][:, :m]
    if scale is not None:
      dx, dscale, doffset = _ln_backward(dx, xhat, sigma, scale[:m])
      grads["scale"][:m] += dscale
      grads["offset"][:m] += doffset
    grads["h"][:, :m] += dx
  return total, np.array(per_dim), np.array(accuracy), grads


def _case(tied: bool, prefix_norm: bool, seed: int = 0):
  rng = np.random.default_rng(seed)
  h = rng.normal(size=(N, D)).astype(np.float32)
  if tied:
    table = rng.normal(size=(V, D)).astype(np.float32)
    bias = rng.normal(size=V).astype(np.float32)
    tables, biases = [table] * len(DIMS), [bias] * len(DIMS)
  else:
    tables = [rng.normal(size=(V, m)).astype(np.float32) for m in DIMS]
    biases = [rng.normal(size=V).astype(np.float32) for _ in DIMS]
  scale = offset = None
  if prefix_norm:
    scale = rng.uniform(0.5, 1.5, D).astype(np.float32)
    offset = rng.normal(size=D).astype(np.float32) * 0.1
  targets = rng.integers(0, V, N)
  weights = (rng.uniform(size=N) < 0.7).astype(np.float32)
  return h, scale, offset, tables, biases, targets, weights


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("prefix_norm", [False, True])
def test_loss_and_gradients_match_numpy(tied, prefix_norm):
  h, scale, offset, tables, biases, targets, weights = _case(tied, prefix_norm)
  c = (1.0, 0.5, 2.0)
  want_total, want_loss, want_acc, want_grads = _numpy_reference(
      h, scale, offset, tables, biases, targets, weights, c)

  def objective(h, scale, offset, tables, biases):
    if tied:  # one array shared by every dim, as NestedMlmHead builds it
      tables, biases = (tables[0],) * len(DIMS), (biases[0],) * len(DIMS)
    decoder = mlm.MlmDecoder(h, scale, offset, tuple(tables), tuple(biases),
                             DIMS)
    return mlm.nested_mlm_loss(decoder, targets.reshape(3, 4),
                               weights.reshape(3, 4), c)

  args = (h, scale, offset, tables[:1] if tied else tables,
          biases[:1] if tied else biases)
  (total, metrics), grads = jax.jit(jax.value_and_grad(
      objective, argnums=(0, 1, 2, 3, 4), has_aux=True))(*args)
  np.testing.assert_allclose(total, want_total, rtol=1e-5)
  np.testing.assert_allclose(metrics["loss"], want_loss, rtol=1e-5)
  np.testing.assert_allclose(metrics["accuracy"], want_acc)
  tol = {"rtol": 1e-4, "atol": 1e-5}
  np.testing.assert_allclose(grads[0], want_grads["h"], **tol)
  if prefix_norm:
    np.testing.assert_allclose(grads[1], want_grads["scale"], **tol)
    np.testing.assert_allclose(grads[2], want_grads["offset"], **tol)
  if tied:  # the shared table and bias collect every dim's gradient
    np.testing.assert_allclose(grads[3][0], sum(want_grads["tables"]), **tol)
    np.testing.assert_allclose(grads[4][0], sum(want_grads["biases"]), **tol)
  else:
    for g in range(len(DIMS)):
      np.testing.assert_allclose(grads[3][g], want_grads["tables"][g], **tol)
      np.testing.assert_allclose(grads[4][g], want_grads["biases"][g], **tol)


def test_accuracy_per_dim_counts_only_real_predictions():
  # Dim 1 reads feature 0 only; the target is the class whose row matches.
  table = jnp.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]])
  h = jnp.array([[1.0, 0.0], [-1.0, 0.0], [-0.5, 1.0], [-1.0, 0.0]])
  decoder = mlm.MlmDecoder(h, None, None, (table, table),
                           (jnp.zeros(3), jnp.zeros(3)), (1, 2))
  _, metrics = mlm.nested_mlm_loss(decoder, jnp.array([[0, 1, 2, 0]]),
                                   jnp.array([[1, 1, 1, 0]]))
  # Dim 1, blind to feature 1, takes the third prediction for class 1; dim 2
  # gets it right. Slot 4 is padding (a miss in both dims, not counted).
  np.testing.assert_allclose(metrics["accuracy"], [2 / 3, 1.0])
  assert metrics["weight"] == 3


def test_shared_decoder_matches_per_dim_decoders():
  """The one-table path (each narrower dim's logits are the wider one's less
  a column block's product) agrees with decoding every dim from scratch, at
  logits as large as a trained BERT's."""
  rng = np.random.default_rng(1)
  n, v, d, dims = 64, 300, 96, (6, 12, 24, 48, 96)
  h = jnp.asarray(rng.normal(size=(n, d)) * 2.0, jnp.float32)
  table = jnp.asarray(rng.normal(size=(v, d)), jnp.float32)
  bias = jnp.asarray(rng.normal(size=v), jnp.float32)
  targets = jnp.asarray(rng.integers(0, v, n), jnp.int32)

  def per_token(h, table, bias, shared):
    # Distinct (equal) arrays per dim take the general per-dim path.
    tables = (table,) * len(dims) if shared else tuple(
        table + 0.0 for _ in dims)
    biases = (bias,) * len(dims) if shared else tuple(
        bias + 0.0 for _ in dims)
    return mlm.nested_mlm_per_token(
        mlm.MlmDecoder(h, None, None, tables, biases, dims), targets)

  def objective(h, table, bias, shared):
    losses, _ = per_token(h, table, bias, shared)
    return (losses * jnp.arange(1.0, len(dims) + 1)[:, None]).sum()

  for shared in (True, False):
    losses, hits = jax.jit(per_token, static_argnums=3)(h, table, bias, shared)
    grads = jax.jit(jax.grad(objective, argnums=(0, 1, 2)),
                    static_argnums=3)(h, table, bias, shared)
    if shared:
      want = losses, hits, grads
  assert float(want[0].mean()) > 10  # large logits: the hard case
  np.testing.assert_allclose(want[0], losses, rtol=1e-5)
  np.testing.assert_array_equal(want[1], hits)
  for a, b in zip(want[2], grads):
    # Sums of large logits' terms in another order: float32 rounding of
    # the largest entries (~20) reaches ~2e-5 in the smallest.
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def _hits(logits, targets, split_ties=False):
  """Hits of `nested_mlm_per_token` for given logits [N, V]: one dim of
  width V whose decoder is the identity, so h is the logits."""
  n, v = logits.shape
  decoder = mlm.MlmDecoder(jnp.asarray(logits), None, None, (jnp.eye(v),),
                           (jnp.zeros(v),), (v,))
  _, hits = mlm.nested_mlm_per_token(decoder, jnp.asarray(targets),
                                     split_ties)
  return np.asarray(hits[0])


def test_hits_equal_argmax_without_ties():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(200, 50)).astype(np.float32)
  top2 = np.sort(logits, -1)[:, -2:]
  assert (top2[:, 1] > top2[:, 0]).all()  # no ties for the max
  targets = np.where(rng.uniform(size=200) < 0.5, logits.argmax(-1),
                     rng.integers(0, 50, 200))
  want = (logits.argmax(-1) == targets).astype(np.float32)
  assert 0 < want.mean() < 1
  np.testing.assert_array_equal(_hits(logits, targets), want)
  np.testing.assert_array_equal(_hits(logits, targets, True), want)


def test_a_tie_for_the_max_is_a_hit_for_every_tied_class():
  # argmax would credit only class 1, the lowest tied index.
  logits = np.array([[0.0, 2.0, 1.0, 2.0]] * 3, np.float32)
  np.testing.assert_array_equal(_hits(logits, [1, 3, 2]), [1.0, 1.0, 0.0])


def test_evaluation_splits_a_tie_among_the_tied_classes():
  logits = np.array([[0.0, 2.0, 1.0, 2.0]] * 3, np.float32)
  np.testing.assert_array_equal(_hits(logits, [1, 3, 2], True),
                                [0.5, 0.5, 0.0])
  # A collapsed model (constant logits) scores 1/V, not 1.
  np.testing.assert_allclose(_hits(np.zeros((4, 8), np.float32), [0, 1, 2, 7],
                                   True), [1 / 8] * 4)


def _model(head_type="mrl_e", dims=(8, 16, 32), prefix_norm=False):
  encoder = registry.build_text_encoder("bert_mu", vocab_size=40)
  return mlm.NestedMlmModel(encoder, dims, head_type, prefix_norm)


def _batch():
  rng = np.random.default_rng(0)
  ids = jnp.asarray(rng.integers(5, 40, (2, 12)), jnp.int32)
  return ids, jnp.zeros_like(ids), jnp.ones_like(ids), jnp.array(
      [[1, 3, 5], [2, 0, 0]])


@pytest.mark.parametrize("head_type,dims,params", [
    ("mrl_e", (8, 16, 32), {"transform", "transform_norm", "decoder_bias"}),
    ("ff", (16,), {"transform", "transform_norm", "decoder_bias"}),
    ("mrl", (8, 32), {"transform", "transform_norm", "decoder_0", "decoder_1",
                      "decoder_bias_0", "decoder_bias_1"}),
])
def test_head_params_and_tied_decoder(head_type, dims, params):
  model = _model(head_type, dims)
  ids, seg, mask, pos = _batch()
  variables = model.init(jax.random.key(0), ids, seg, mask, pos, train=False)
  assert set(variables["params"]["mlm"]) == params
  decoder, out = model.apply(variables, ids, seg, mask, pos, train=False)
  assert decoder.h.shape == (6, 32) and decoder.nesting_dims == dims
  # The gathered rows are the transform of the sequence at the positions.
  assert jnp.allclose(mlm.gather_positions(out.sequence, pos)[3],
                      out.sequence[1, 2])
  if head_type != "mrl":
    assert all(t is out.word_embeddings for t in decoder.tables)
  else:
    assert [t.shape for t in decoder.tables] == [(40, 8), (40, 32)]


def test_prefix_norm_full_dim_equals_the_plain_head():
  ids, seg, mask, pos = _batch()
  plain, per_prefix = _model(dims=(32,)), _model(dims=(32,), prefix_norm=True)
  variables = plain.init(jax.random.key(0), ids, seg, mask, pos, train=False)
  targets, weights = ids[:, :3], jnp.ones((2, 3))
  a = mlm.nested_mlm_loss(
      plain.apply(variables, ids, seg, mask, pos, train=False)[0],
      targets, weights)[0]
  b = mlm.nested_mlm_loss(
      per_prefix.apply(variables, ids, seg, mask, pos, train=False)[0],
      targets, weights)[0]
  np.testing.assert_allclose(a, b, rtol=1e-5)


@pytest.mark.parametrize("head_type,dims,match", [
    ("mrl_e", (8, 64), "nesting dim 64 exceeds the embedding dim 32"),
    ("ff", (8, 16), "the ff head trains one dim k"),
    ("tied", (8,), "unknown MLM head 'tied'"),
])
def test_bad_heads_raise_one_line(head_type, dims, match):
  ids, seg, mask, pos = _batch()
  with pytest.raises(ValueError, match=match):
    _model(head_type, dims).init(jax.random.key(0), ids, seg, mask, pos,
                                 train=False)


def test_backward_pass_saves_no_logits(capsys):
  """Only the inputs are kept for the backward pass, never [N, V] logits.

  (Peak memory itself is a property of the TPU/GPU compile; XLA:CPU does not
  reuse buffers, so its memory_analysis cannot show it.)
  """
  n, v, d, dims = 64, 128, 16, (4, 8, 16)

  def loss(h, table, bias):
    decoder = mlm.MlmDecoder(h, None, None, (table,) * len(dims),
                             (bias,) * len(dims), dims)
    return mlm.nested_mlm_loss(decoder, jnp.zeros((n,), jnp.int32),
                               jnp.ones((n,)))[0]

  ad_checkpoint.print_saved_residuals(
      loss, jnp.ones((n, d)), jnp.ones((v, d)), jnp.ones((v,)))
  saved = capsys.readouterr().out
  assert "f32[64,16]" in saved and "f32[128,16]" in saved
  assert "f32[64,128]" not in saved and "[3,64,128]" not in saved


@pytest.mark.slow  # compile-heavy
@pytest.mark.parametrize("prefix_norm", [False, True])  # one table; per dim
def test_sharded_step_equals_one_device(prefix_norm):
  """Loss and gradients of encoder + nested MLM with fsdp_tp rules on 8 fake
  devices (data 2 x fsdp 2 x model 2) equal the single-device ones."""
  model = _model(dims=(8, 16, 32), prefix_norm=prefix_norm)
  rng = np.random.default_rng(3)
  ids = jnp.asarray(rng.integers(5, 40, (8, 12)), jnp.int32)
  seg, mask = jnp.zeros_like(ids), jnp.ones_like(ids)
  pos = jnp.asarray(rng.integers(0, 12, (8, 3)), jnp.int32)
  targets, weights = ids[:, :3], jnp.ones((8, 3))
  params = model.init(jax.random.key(0), ids, seg, mask, pos,
                      train=False)["params"]

  def loss(params, ids, seg, mask, pos, targets, weights):
    decoder, _ = model.apply({"params": params}, ids, seg, mask, pos,
                             train=False)
    return mlm.nested_mlm_loss(decoder, targets, weights)[0]

  want = jax.jit(jax.value_and_grad(loss))(params, ids, seg, mask, pos,
                                           targets, weights)
  mesh = sharding.make_train_mesh((("data", 2), ("fsdp", 2), ("model", 2)))
  specs, _ = sharding_rules.param_specs(
      params, sharding_rules.resolve_rules("fsdp_tp"), mesh)
  assert specs["encoder"]["word_embeddings"]["embedding"] == P("model", "fsdp")
  shardings = sharding_rules.named(specs, mesh)
  batch = sharding.batch_sharding(mesh)
  step = jax.jit(sharding.traced_under_mesh(jax.value_and_grad(loss), mesh),
                 in_shardings=(shardings,) + (batch,) * 6,
                 out_shardings=(sharding.replicated(mesh), shardings))
  got = step(jax.device_put(params, shardings),
             *(jax.device_put(x, batch)
               for x in (ids, seg, mask, pos, targets, weights)))
  np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(got[1]), jax.tree.leaves(want[1])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
