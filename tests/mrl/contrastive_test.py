"""Nested contrastive losses against an independent float64 numpy reference.

The reference writes the forward pass out with explicit [B, B] matrices
(smoothed one-hot targets, +-1 pair labels) and its gradients are central
finite differences of that reference, so nothing is shared with the code
under test.
"""
import math

from jax import ad_checkpoint
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mrl_jax import sharding
from mrl_jax.mrl import contrastive

B, D = 6, 8
DIMS = (2, 4, 8)


def _log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _reference(img, txt, log_t, bias, c, eps, kind):
  """(total, per-dim loss, accuracy, cosine gap), float64."""
  total, per_dim, accuracy, gap = 0.0, [], [], []
  eye = np.eye(B)
  for g, m in enumerate(DIMS):
    a = img[:, :m] / np.linalg.norm(img[:, :m], axis=1, keepdims=True)
    b = txt[:, :m] / np.linalg.norm(txt[:, :m], axis=1, keepdims=True)
    cos = a @ b.T
    logits = cos / max(np.exp(log_t[g]), 0.01)
    if kind == "softmax":
      targets = (1 - eps) * eye + eps / B
      loss = (-(targets * _log_softmax(logits)).sum(1).mean()
              - (targets * _log_softmax(logits.T)).sum(1).mean())
    else:
      labels = 2 * eye - 1
      loss = np.logaddexp(0.0, -labels * (logits + bias[g])).sum() / B
    per_dim.append(loss)
    total += c[g] * loss
    accuracy.append((logits.argmax(1) == np.arange(B)).mean())
    gap.append(np.trace(cos) / B - (cos.sum() - np.trace(cos)) / (B * (B - 1)))
  return total, np.array(per_dim), np.array(accuracy), np.array(gap)


def _finite_differences(f, x, h=1e-6):
  grad = np.zeros_like(x)
  for i in np.ndindex(x.shape):
    up, down = x.copy(), x.copy()
    up[i] += h
    down[i] -= h
    grad[i] = (f(up) - f(down)) / (2 * h)
  return grad


def _case(seed=0):
  rng = np.random.default_rng(seed)
  img = rng.normal(size=(B, D))
  # Captions near their images, so accuracy and the gap are not trivial.
  txt = img + 1.5 * rng.normal(size=(B, D))
  return img, txt


@pytest.mark.parametrize("kind,per_dim_params", [
    ("softmax", False), ("softmax", True), ("sigmoid", False),
    ("sigmoid", True)])
def test_loss_metrics_and_gradients_match_numpy(kind, per_dim_params):
  img, txt = _case()
  c = (1.0, 0.5, 2.0)
  eps = 0.1 if kind == "softmax" else 0.0
  if per_dim_params:
    log_t = np.array([-1.0, -0.5, 0.3])
    bias = np.array([-2.0, -1.0, 0.5])
  else:
    log_t, bias = np.array(-0.7), np.array(-1.5)

  def reference(img=img, txt=txt, log_t=log_t, bias=bias):
    return _reference(img, txt, np.broadcast_to(log_t, (3,)),
                      np.broadcast_to(bias, (3,)), c, eps, kind)

  def objective(img, txt, log_t, bias):
    return contrastive.nested_contrastive_loss(
        img, txt, DIMS, log_temperature=log_t, relative_importance=c,
        label_smoothing=eps if kind == "softmax" else None, kind=kind,
        bias=bias if kind == "sigmoid" else None)

  args = [jnp.asarray(x, jnp.float32) for x in (img, txt, log_t, bias)]
  (total, metrics), grads = jax.jit(jax.value_and_grad(
      objective, argnums=(0, 1, 2, 3), has_aux=True))(*args)
  want_total, want_loss, want_acc, want_gap = reference()
  np.testing.assert_allclose(total, want_total, rtol=1e-5)
  np.testing.assert_allclose(metrics["loss"], want_loss, rtol=1e-5)
  np.testing.assert_allclose(metrics["accuracy"], want_acc)
  assert 0 < want_acc.min() and want_acc.max() < 1  # a test that can fail
  np.testing.assert_allclose(metrics["cosine_gap"], want_gap, rtol=1e-5)
  np.testing.assert_allclose(metrics["temperature"],
                             np.broadcast_to(np.exp(log_t), (3,)), rtol=1e-6)
  want_grads = [
      _finite_differences(lambda x: reference(img=x)[0], img),
      _finite_differences(lambda x: reference(txt=x)[0], txt),
      _finite_differences(lambda x: reference(log_t=x)[0], log_t),
      _finite_differences(lambda x: reference(bias=x)[0], bias)]
  tol = {"rtol": 1e-4, "atol": 1e-5}
  for got, want in zip(grads[:3], want_grads[:3]):
    np.testing.assert_allclose(got, want, **tol)
  if kind == "sigmoid":
    np.testing.assert_allclose(grads[3], want_grads[3], **tol)
  else:  # the softmax loss has no bias
    np.testing.assert_array_equal(grads[3], 0.0)


def test_each_prefix_is_normalised_on_its_own():
  # Dim 1 sees only feature 0: the images' signs, matched by the captions;
  # dim 2 also sees feature 1, which is huge and random, so it loses the
  # match. A full-embedding normalisation would not change dim 1's cosines.
  img = jnp.array([[1.0, 50.0], [-1.0, -30.0]])
  txt = jnp.array([[2.0, -40.0], [-3.0, 60.0]])
  _, metrics = contrastive.nested_contrastive_loss(
      img, txt, (1, 2), log_temperature=0.0)
  np.testing.assert_allclose(metrics["accuracy"], [1.0, 0.0])
  np.testing.assert_allclose(metrics["cosine_gap"][0], 2.0, rtol=1e-6)


def test_align_sums_both_directions():
  # With no smoothing and one dim the loss is CE(image->text) +
  # CE(text->image), i.e. twice CLIP's average.
  img, txt = (jnp.asarray(x, jnp.float32) for x in _case(1))
  total, _ = contrastive.nested_contrastive_loss(
      img, txt, (D,), log_temperature=0.0, label_smoothing=0.0)
  norm = lambda x: x / jnp.linalg.norm(x, axis=1, keepdims=True)
  logits = norm(img) @ norm(txt).T
  labels = jnp.arange(B)
  ce = lambda lg: -jnp.mean(jax.nn.log_softmax(lg)[labels, labels])
  np.testing.assert_allclose(total, ce(logits) + ce(logits.T), rtol=1e-5)


def test_bfloat16_towers_get_bfloat16_gradients():
  img, txt = (jnp.asarray(x, jnp.float32) for x in _case(3))

  def loss(img, txt):
    return contrastive.nested_contrastive_loss(img, txt, DIMS,
                                               log_temperature=-0.5)[0]

  want, want_grads = jax.value_and_grad(loss, argnums=(0, 1))(img, txt)
  got, grads = jax.value_and_grad(loss, argnums=(0, 1))(
      img.astype(jnp.bfloat16), txt.astype(jnp.bfloat16))
  assert got.dtype == jnp.float32  # scores and loss are float32
  np.testing.assert_allclose(got, want, rtol=1e-2)
  for grad, want_grad in zip(grads, want_grads):
    assert grad.dtype == jnp.bfloat16
    np.testing.assert_allclose(grad.astype(jnp.float32), want_grad, atol=2e-2)


def test_temperature_is_clipped_below():
  img, txt = (jnp.asarray(x, jnp.float32) for x in _case(2))

  def loss(log_t):
    return contrastive.nested_contrastive_loss(
        img, txt, DIMS, log_temperature=log_t)

  (_, metrics), grad = jax.value_and_grad(loss, has_aux=True)(
      jnp.float32(math.log(contrastive.MIN_TEMPERATURE) - 1.0))
  np.testing.assert_allclose(metrics["temperature"],
                             contrastive.MIN_TEMPERATURE, rtol=1e-6)
  assert grad == 0.0
  assert jax.grad(lambda t: loss(t)[0])(jnp.float32(0.0)) != 0.0


def test_initial_params_are_the_papers():
  align = contrastive.initial_params("softmax")
  assert set(align) == {"log_temperature"}
  np.testing.assert_allclose(jnp.exp(align["log_temperature"]), 1.0)
  siglip = contrastive.initial_params("sigmoid", num_dims=3)
  np.testing.assert_allclose(1 / jnp.exp(siglip["log_temperature"]),
                             [10.0] * 3, rtol=1e-6)
  np.testing.assert_allclose(siglip["bias"], [-10.0] * 3)


def test_backward_pass_saves_no_scores(capsys):
  """Only the inputs are kept for the backward pass, never [B, B] scores."""
  b, d, dims = 32, 16, (4, 8, 16)

  def loss(img, txt, log_t):
    return contrastive.nested_contrastive_loss(
        img, txt, dims, log_temperature=log_t)[0]

  ad_checkpoint.print_saved_residuals(
      loss, jnp.ones((b, d)), jnp.ones((b, d)) * 2, jnp.float32(0.0))
  saved = capsys.readouterr().out
  assert "f32[32,16]" in saved
  assert "[32,32]" not in saved and "[3,32,32]" not in saved


@pytest.mark.parametrize("change,match", [
    ({"txt": np.ones((B, D + 1))}, r"image embeddings \(6, 8\) and text "
     r"embeddings \(6, 9\) differ"),
    ({"nesting_dims": (4, 16)}, "nesting dim 16 exceeds the embedding dim 8"),
    ({"log_temperature": np.zeros(2)},
     r"log_temperature has shape \(2,\); give a scalar .* shape \(3,\)"),
    ({"log_temperature": np.zeros((3, 1))}, "log_temperature has shape"),
    ({"kind": "sigmoid", "bias": np.zeros(4)}, r"bias has shape \(4,\)"),
    ({"kind": "sigmoid"}, "the sigmoid loss learns a bias; pass bias="),
    ({"kind": "sigmoid", "bias": 0.0, "label_smoothing": 0.1},
     "label smoothing is only defined for the softmax loss"),
    ({"bias": 0.0}, "a bias is only learned by the sigmoid loss"),
    ({"label_smoothing": 1.0}, r"label_smoothing=1.0 is outside \[0, 1\)"),
    ({"kind": "clip"}, "unknown contrastive loss 'clip'"),
    ({"relative_importance": (1.0, 1.0)}, "relative importance"),
])
def test_bad_input_raises_one_line(change, match):
  kwargs = {"img": np.ones((B, D)), "txt": np.ones((B, D)),
            "nesting_dims": DIMS, "log_temperature": 0.0, **change}
  with pytest.raises(ValueError, match=match) as error:
    contrastive.nested_contrastive_loss(**kwargs)
  assert "\n" not in str(error.value)


def test_sharded_loss_checks_the_mesh_before_tracing():
  mesh = sharding.make_train_mesh((("data", 2), ("fsdp", 2), ("model", 2)))
  kwargs = {"nesting_dims": DIMS, "log_temperature": 0.0}
  with pytest.raises(ValueError, match="contrastive batch 6 is not divisible "
                     "by the 4 batch shards of the mesh; use a multiple of 4"):
    contrastive.sharded_nested_contrastive_loss(
        np.ones((B, D)), np.ones((B, D)), mesh=mesh, **kwargs)
  with pytest.raises(ValueError, match="needs a mesh with batch axes"):
    contrastive.sharded_nested_contrastive_loss(
        np.ones((B, D)), np.ones((B, D)), **kwargs)


@pytest.mark.parametrize("kind", ["softmax", "sigmoid"])
def test_one_dims_scores_alive_at_a_time(kind):
  """Compiled temporaries of value_and_grad stay below G [B, B] blocks.

  The loss needs 1 block per dim and direction, and unrolled dims (even
  each under its own custom VJP or `jax.checkpoint`) leave XLA free to keep
  them all (about 4 G blocks on XLA:CPU); one dim at a time needs about 6
  blocks for softmax and 4 for sigmoid, whatever G is.
  """
  b, d, dims = 512, 128, (1, 2, 4, 8, 16, 32, 64, 128)

  def loss(img, txt, log_t, bias):
    return contrastive.nested_contrastive_loss(
        img, txt, dims, log_temperature=log_t, kind=kind,
        bias=bias if kind == "sigmoid" else None)[0]

  x = jax.ShapeDtypeStruct((b, d), jnp.float32)
  s = jax.ShapeDtypeStruct((), jnp.float32)
  stats = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3))).lower(
      x, x, s, s).compile().memory_analysis()
  assert stats.temp_size_in_bytes < len(dims) * b * b * 4


def test_the_loss_traces_at_a_batch_whose_pair_count_passes_int32():
  """B = 65,536: B (B - 1) negative pairs do not fit int32 (traced only)."""
  z = jax.ShapeDtypeStruct((65536, 8), jnp.float32)
  total, metrics = jax.eval_shape(
      lambda a, b: contrastive.nested_contrastive_loss(
          a, b, (4, 8), log_temperature=0.0), z, z)
  assert total.shape == () and metrics["cosine_gap"].shape == (2,)
