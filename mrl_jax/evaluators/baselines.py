"""The paper's low-dim baselines built from a full-dim FF embedding.

* SVD: project the FF-full embedding on its top-k principal directions
  (fitted on the train split), then fit a linear head.
* Random feature selection: k random coordinates of the FF-full embedding,
  then a linear head.
* Truncation: the first k coordinates of the FF-full embedding, then a
  linear head (what a plain model's prefix is worth without MRL; the
  two-tower and MLM comparisons' "first m dims of the plain model").

Both are written as a fixed map of the [N, d] embedding to a new [N, d]
embedding whose prefix [:, :k] is the baseline's k-dim feature: principal
components ordered by variance, or the coordinates in one random order. So
the per-dim machinery of MRL applies unchanged: `linear_probe.evaluate`
fits the heads (on every train example) and `knn.evaluate` gives 1-NN.
"""
from collections.abc import Sequence
from typing import Any

import numpy as np

from mrl_jax.evaluators import knn
from mrl_jax.evaluators import linear_probe

METHODS = ("svd", "random", "truncate")
# --mode=baselines' settings (config.baselines overrides them). dims: feature
# counts, None = halving from the embedding dim down to 8.
DEFAULTS = {"methods": ("svd", "random"), "dims": None, "seeds": 1,
            "l2": linear_probe.DEFAULT_L2, "steps": linear_probe.DEFAULT_STEPS}


def fit_svd(train_embeddings: Any) -> tuple[np.ndarray, np.ndarray]:
  """Principal directions of the train embeddings.

  Returns:
    (mean [d], components [d, r]): columns in order of decreasing variance,
    r = min(N, d).
  """
  z = np.asarray(train_embeddings, np.float64)
  mean = z.mean(0)
  _, _, vt = np.linalg.svd(z - mean, full_matrices=False)
  return mean, vt.T


def svd_features(embeddings: Any, mean: np.ndarray,
                 components: np.ndarray) -> np.ndarray:
  """[N, d] -> [N, r] coordinates on the principal directions (prefix k =
  the top-k projection)."""
  return ((np.asarray(embeddings, np.float64) - mean) @ components).astype(
      np.float32)


def random_order(dim: int, seed: int) -> np.ndarray:
  """A random permutation of the d coordinates (prefix k = k random ones)."""
  return np.random.default_rng(seed).permutation(dim)


def transform(method: str, train_embeddings: Any, test_embeddings: Any,
              seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Both splits mapped so that prefix k is the method's k-dim feature."""
  train = np.asarray(train_embeddings, np.float32)
  test = np.asarray(test_embeddings, np.float32)
  if method == "svd":
    mean, components = fit_svd(train)
    return (svd_features(train, mean, components),
            svd_features(test, mean, components))
  if method == "random":
    order = random_order(train.shape[1], seed)
    return train[:, order], test[:, order]
  if method == "truncate":
    return train, test
  raise ValueError(f"unknown baseline {method!r}; use one of {METHODS}")


def evaluate(train_embeddings: Any, train_labels: Any, test_embeddings: Any,
             test_labels: Any, dims: Sequence[int], num_classes: int, *,
             methods: Sequence[str] = METHODS, seeds: int = 1,
             l2: float = linear_probe.DEFAULT_L2,
             steps: int = linear_probe.DEFAULT_STEPS,
             **search_kwargs: int) -> dict[str, Any]:
  """Linear-head top-1 and 1-NN top-1 of each baseline at every dim.

  Args:
    train_embeddings: [N, d] FF-full train embeddings (raw).
    train_labels: [N]; test_embeddings [Q, d]; test_labels [Q].
    dims: feature counts k.
    num_classes: C.
    methods: subset of METHODS.
    seeds: random orders averaged for "random" (SVD is deterministic).
    l2, steps: the linear head's fit (linear_probe.fit).
    **search_kwargs: block sizes for the 1-NN search.

  Returns:
    {"nesting", "methods", "seeds", "<method>/linear_top1/d=<k>",
     "<method>/knn_top1/d=<k>"} with means over seeds.
  """
  dims = [int(m) for m in dims]
  out: dict[str, Any] = {"nesting": dims, "methods": list(methods),
                         "seeds": int(seeds)}
  for method in methods:
    runs = []
    for seed in range(seeds if method == "random" else 1):
      train, test = transform(method, train_embeddings, test_embeddings,
                              seed)
      probe = linear_probe.evaluate(train, train_labels, test, test_labels,
                                    dims, num_classes, l2=l2, steps=steps)
      nn = knn.evaluate(train, train_labels, test, test_labels, dims,
                        ks=(1,), **search_kwargs)
      runs.append({**{f"linear_top1/d={m}": probe[linear_probe.metric_key(
          0, m)] for m in dims}, **{f"knn_top1/d={m}": nn[knn.metric_key(
              1, m)] for m in dims}})
    for name in runs[0]:
      out[f"{method}/{name}"] = float(np.mean([r[name] for r in runs]))
  return out
