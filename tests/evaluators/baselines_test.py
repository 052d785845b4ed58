"""SVD and random-feature baselines against numpy references."""
import numpy as np
import pytest

from mrl_jax.evaluators import baselines


def test_svd_prefix_is_the_top_k_principal_projection():
  rng = np.random.default_rng(0)
  # Variances 9, 4, 1, 0.25 along a random rotation.
  basis, _ = np.linalg.qr(rng.normal(size=(4, 4)))
  z = (rng.normal(size=(500, 4)) * [3, 2, 1, 0.5]) @ basis.T + 5.0
  train, test = baselines.transform("svd", z, z[:7])
  # Independent reference: eigenvectors of the covariance matrix.
  evals, evecs = np.linalg.eigh(np.cov(z, rowvar=False))
  top2 = evecs[:, np.argsort(evals)[::-1][:2]]
  ref = (z - z.mean(0)) @ top2
  # Directions are defined up to sign.
  signs = np.sign((train[:, :2] * ref).sum(0))
  np.testing.assert_allclose(train[:, :2] * signs, ref, atol=1e-4)
  np.testing.assert_allclose(test, train[:7], atol=1e-6)
  variances = train.var(0)
  assert np.all(np.diff(variances) < 0)


def test_random_features_are_k_random_coordinates():
  z = np.arange(24, dtype=np.float32).reshape(3, 8)
  train, test = baselines.transform("random", z, z[:1], seed=3)
  order = np.random.default_rng(3).permutation(8)
  np.testing.assert_array_equal(train, z[:, order])
  np.testing.assert_array_equal(test, z[:1, order])
  other, _ = baselines.transform("random", z, z, seed=4)
  assert not np.array_equal(other, train)


def test_truncation_keeps_the_first_coordinates():
  rng = np.random.default_rng(2)
  y = rng.integers(0, 2, 200)
  z = rng.normal(size=(200, 8)).astype(np.float32)
  z[:, 7] += 4.0 * (2 * y - 1)  # the signal is in the last coordinate only
  train, test = baselines.transform("truncate", z, z[:5])
  np.testing.assert_array_equal(train, z)
  np.testing.assert_array_equal(test, z[:5])
  out = baselines.evaluate(z[:150], y[:150], z[150:], y[150:], dims=(4, 8),
                           num_classes=2, methods=("truncate",), steps=50)
  assert out["truncate/linear_top1/d=8"] > 0.95
  assert out["truncate/linear_top1/d=4"] < 0.8


def test_informative_directions_beat_random_coordinates_at_small_k():
  # Class signal only in the first principal direction, hidden among noisy
  # coordinates: SVD at k=1 finds it; one random coordinate mostly does not.
  rng = np.random.default_rng(1)
  y = rng.integers(0, 2, 400)
  z = rng.normal(size=(400, 16)) * 0.5
  z[:, 5] += 4.0 * (2 * y - 1)
  basis, _ = np.linalg.qr(rng.normal(size=(16, 16)))
  z = (z @ basis).astype(np.float32)
  out = baselines.evaluate(z[:300], y[:300], z[300:], y[300:], dims=(1, 16),
                           num_classes=2, seeds=2, steps=50)
  assert out["svd/linear_top1/d=1"] > 0.95
  assert out["svd/knn_top1/d=1"] > 0.95
  assert out["random/linear_top1/d=16"] > 0.95
  assert out["random/linear_top1/d=1"] < out["svd/linear_top1/d=1"] - 0.1


def test_unknown_method_is_rejected():
  with pytest.raises(ValueError, match="unknown baseline 'pca'"):
    baselines.transform("pca", np.zeros((2, 2)), np.zeros((2, 2)))
