"""Linear probe: optax L-BFGS softmax regression vs a numpy reference."""
import numpy as np
import pytest

from mrl_jax.evaluators import linear_probe


def numpy_softmax_regression(x, y, num_classes, l2, iters=20000, lr=2.0):
  """Plain full-batch gradient descent on the same strictly convex
  objective (an independent solver: no JAX, no L-BFGS)."""
  n, d = x.shape
  w, b = np.zeros((d, num_classes)), np.zeros(num_classes)
  onehot = np.eye(num_classes)[y]
  for _ in range(iters):
    logits = x @ w + b
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    g = (p - onehot) / n
    w -= lr * (x.T @ g + 2 * l2 * w)
    b -= lr * g.sum(0)
  return w, b


def blobs(rng, n_per_class, num_classes, d, spread):
  centres = rng.normal(size=(num_classes, d)) * 3
  x = np.concatenate([c + spread * rng.normal(size=(n_per_class, d))
                      for c in centres])
  y = np.repeat(np.arange(num_classes), n_per_class)
  return x.astype(np.float32), y


def test_matches_numpy_gradient_descent_minimiser():
  rng = np.random.default_rng(0)
  x, y = blobs(rng, 20, 3, 4, spread=2.0)  # overlapping: finite optimum
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  params = linear_probe.fit(x, y, 3, l2=1e-2, steps=100)
  w_ref, b_ref = numpy_softmax_regression(x.astype(np.float64), y, 3, 1e-2)
  assert params["w"].shape == (4, 3) and params["b"].shape == (3,)
  np.testing.assert_allclose(params["w"], w_ref, atol=2e-3)
  # The bias is unregularised, so only its differences are identified.
  np.testing.assert_allclose(params["b"] - params["b"].mean(),
                             b_ref - b_ref.mean(), atol=2e-3)


def test_separable_toy_data_is_classified_perfectly():
  rng = np.random.default_rng(1)
  x, y = blobs(rng, 40, 4, 8, spread=0.3)
  test_x, test_y = x[1::2], y[1::2]
  result = linear_probe.evaluate(x[::2], y[::2], test_x, test_y, dims=(8,),
                                 num_classes=4, shots=(0,))
  assert result["probe/top1@all/d=8"] == 1.0


def test_masked_prefixes_equal_separate_fits():
  rng = np.random.default_rng(2)
  z = rng.normal(size=(60, 8)).astype(np.float32)
  y = (z[:, 0] + 0.5 * z[:, 3] > 0).astype(int) + (z[:, 5] > 1).astype(int)
  dims = (2, 4, 8)
  together = linear_probe.fit(linear_probe.prefix_features(z, dims), y, 3,
                              l2=1e-3, steps=60)
  for g, m in ((1, 4),):  # one separate fit: each costs a compile
    alone = linear_probe.fit(linear_probe.prefix_features(z[:, :m], (m,))[0],
                             y, 3, l2=1e-3, steps=60)
    np.testing.assert_allclose(together["w"][g, :m], alone["w"], atol=1e-4)
    np.testing.assert_array_equal(together["w"][g, m:], 0.0)
    np.testing.assert_allclose(together["b"][g], alone["b"], atol=1e-4)


def test_prefix_features_normalise_each_prefix():
  z = np.array([[3.0, 4.0, 12.0]])
  f = linear_probe.prefix_features(z, (2, 3))
  np.testing.assert_allclose(f[0, 0], [0.6, 0.8, 0.0])
  np.testing.assert_allclose(f[1, 0], np.array([3, 4, 12]) / 13)


def test_sample_per_class_draws_n_of_each_class():
  labels = np.repeat(np.arange(3), [5, 6, 7])
  idx = linear_probe.sample_per_class(labels, 4, seed=0)
  assert np.bincount(labels[idx]).tolist() == [4, 4, 4]
  assert not np.array_equal(idx, linear_probe.sample_per_class(labels, 4, 1))
  with pytest.raises(ValueError, match="fewer than 6 shots"):
    linear_probe.sample_per_class(labels, 6, seed=0)


def test_bad_labels_are_rejected():
  with pytest.raises(ValueError, match="set num_classes"):
    linear_probe.fit(np.zeros((3, 2)), np.array([0, 1, 5]), 3)
