"""Nested losses against a numpy loop over prefixes, golden values, grads."""
import jax
import jax.numpy as jnp
from jax import test_util as jtu
import numpy as np
import pytest

from mrl_jax.mrl import heads
from mrl_jax.mrl import losses
from mrl_jax.mrl import metrics


def _np_log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _np_nested_ce(z, kernels, biases, labels, eps, weights):
  """The official per-dim loop: CE(W_m z[:m]) batch-mean, weighted sum."""
  total, per_dim = 0.0, []
  for w, kernel, bias in zip(weights, kernels, biases):
    m = kernel.shape[0]
    logp = _np_log_softmax(z[:, :m] @ kernel + bias)
    c = logp.shape[-1]
    target = np.eye(c)[labels] * (1 - eps) + eps / c
    loss = -(target * logp).sum(-1).mean()
    per_dim.append(loss)
    total += w * loss
  return total, np.array(per_dim)


def test_softmax_matches_per_prefix_loop():
  rng = np.random.default_rng(0)
  z = rng.normal(size=(6, 16))
  labels = rng.integers(0, 5, size=6)
  dims, weights = (2, 4, 8, 16), (1.0, 2.0, 0.5, 1.0)
  kernels = [rng.normal(size=(m, 5)) for m in dims]
  biases = [rng.normal(size=5) for _ in dims]
  logits = heads.mrl_logits_fused(jnp.asarray(z, jnp.float32),
                                  [jnp.asarray(k, jnp.float32) for k in kernels],
                                  [jnp.asarray(b, jnp.float32) for b in biases])
  per_ex = losses.nested_softmax_cross_entropy(logits, jnp.asarray(labels), 0.1)
  assert per_ex.shape == (4, 6)
  total, per_dim = losses.weighted_nested_loss(per_ex, weights)
  want_total, want_per_dim = _np_nested_ce(z, kernels, biases, labels, 0.1,
                                           weights)
  np.testing.assert_allclose(per_dim, want_per_dim, rtol=1e-5)
  np.testing.assert_allclose(total, want_total, rtol=1e-5)


def test_golden_values():
  # Uniform logits over C classes: CE = log(C) for every dim and any smoothing.
  logits = jnp.zeros((3, 2, 4))
  per_ex = losses.nested_softmax_cross_entropy(logits, jnp.array([0, 3]), 0.1)
  np.testing.assert_allclose(per_ex, np.full((3, 2), np.log(4)), rtol=1e-6)
  total, _ = losses.weighted_nested_loss(per_ex, (1.0, 1.0, 1.0))
  np.testing.assert_allclose(total, 3 * np.log(4), rtol=1e-6)  # summed
  # Sigmoid: logit 0 gives log(2) per class, summed over classes.
  per_ex = losses.nested_sigmoid_cross_entropy(logits, jnp.eye(4)[:2])
  np.testing.assert_allclose(per_ex, np.full((3, 2), 4 * np.log(2)), rtol=1e-6)


def test_sigmoid_matches_numpy():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(3, 4, 6))
  labels = (rng.random((4, 6)) < 0.3).astype(np.float32)
  got = losses.nested_sigmoid_cross_entropy(jnp.asarray(logits),
                                            jnp.asarray(labels))
  p = 1 / (1 + np.exp(-logits))
  want = -(labels * np.log(p) + (1 - labels) * np.log(1 - p)).sum(-1)
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_mask_excludes_padding():
  per_ex = jnp.array([[1.0, 3.0, 100.0], [2.0, 4.0, 100.0]])
  total, per_dim = losses.weighted_nested_loss(per_ex, (1.0, 0.5),
                                               jnp.array([1, 1, 0]))
  np.testing.assert_allclose(per_dim, [2.0, 3.0])
  np.testing.assert_allclose(total, 2.0 + 1.5)


def test_gradients_match_numerical():
  rng = np.random.default_rng(2)
  def objective(z, kernel):
    logits = heads.mrl_e_logits_fused(z, kernel, jnp.zeros(4), (2, 4, 8))
    per_ex = losses.nested_softmax_cross_entropy(logits, jnp.array([0, 2, 3]),
                                                 0.1)
    return losses.weighted_nested_loss(per_ex, (1.0, 1.0, 2.0))[0]
  with jax.enable_x64(True):
    z = jnp.asarray(rng.normal(size=(3, 8)), jnp.float64)
    kernel = jnp.asarray(rng.normal(size=(8, 4)), jnp.float64)
    jtu.check_grads(objective, (z, kernel), order=2, modes=["rev"])


def test_bad_loss_config():
  with pytest.raises(ValueError, match="config.loss.name"):
    losses.get_loss_fn("hinge")
  with pytest.raises(ValueError, match="label_smoothing"):
    losses.get_loss_fn("sigmoid", 0.1)


def test_topk_correct_single_and_multi_label():
  logits = jnp.array([[[0.1, 0.9, 0.0], [0.8, 0.1, 0.5]]])  # [1, 2, 3]
  np.testing.assert_array_equal(
      metrics.topk_correct(logits, jnp.array([1, 2]), 1), [[1, 0]])
  np.testing.assert_array_equal(
      metrics.topk_correct(logits, jnp.array([1, 2]), 2), [[1, 1]])
  multi = jnp.array([[0, 1, 1], [0, 1, 0]])
  np.testing.assert_array_equal(metrics.topk_correct(logits, multi, 1),
                                [[1, 0]])
  assert metrics.metric_name("val", "top1", 64) == "val/top1/d=64"
