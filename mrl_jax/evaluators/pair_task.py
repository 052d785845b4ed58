"""A 100-class task built from a 10-class eval split: ordered class pairs.

Small prefixes of a 10-class model are near full accuracy on the 10 classes
themselves; this task asks the same prefixes to tell apart C^2 = 100 classes
(more classes than a 1-4 dim prefix has bits), with no new data.

Construction (deterministic given `seed`):
  1. Every class's eval images are shuffled and cut in two disjoint halves:
     database sources and query sources (no source image is on both sides,
     so a query never finds its own half in the database).
  2. For every ordered class pair (a, b), a, b in 0..C-1 (a == b included),
     `database_per_pair` composites are drawn from the database sources and
     `queries_per_pair` from the query sources. A composite is a left image
     of class a and a right image of class b side by side (an H x 2W image,
     28 x 56 for Fashion-MNIST), each side drawn without replacement among
     that class's sources; its label is C * a + b.
  3. The composite's representation at prefix m is [z_left[:m] / |z_left[:m]|,
     z_right[:m] / |z_right[:m]|], 2m numbers: the embedding of each half by
     the trained model, each prefix L2-normalised as in k-NN, concatenated.
     The default Fashion-MNIST model (`small_cnn`) flattens its last feature
     map into a dense projection, so it accepts 28 x 28 inputs only and
     cannot embed the 28 x 56 image in one pass; the halves are exactly the
     eval images, so their embeddings are the exported ones.
  4. Per prefix m: 1-NN accuracy (queries against the database composites,
     evaluators/knn.py) and a linear probe fitted on the database composites
     and scored on the queries (evaluators/linear_probe.py).
"""
from collections.abc import Sequence
from typing import Any

import numpy as np

from mrl_jax.evaluators import knn
from mrl_jax.evaluators import linear_probe
from mrl_jax.mrl import metrics

# --mode=pairs's settings (config.pairs overrides them).
DEFAULTS = {"database_per_pair": 50, "queries_per_pair": 20, "seed": 0,
            "l2": linear_probe.DEFAULT_L2, "steps": linear_probe.DEFAULT_STEPS}


def check_counts(database_per_pair: int, queries_per_pair: int) -> None:
  """Raises a one-line ValueError unless both counts are positive."""
  for field, count in (("database_per_pair", database_per_pair),
                       ("queries_per_pair", queries_per_pair)):
    if count < 1:
      raise ValueError(f"{field}={count}; set config.pairs.{field} to a "
                       "positive count")


def build_pairs(labels: Any, num_classes: int, database_per_pair: int,
                queries_per_pair: int, seed: int = 0
                ) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
  """The composites of the pair task, as indices into the eval split.

  Args:
    labels: [N] classes in [0, num_classes) of the eval split.
    num_classes: C (C^2 pair classes).
    database_per_pair: composites per ordered pair in the database.
    queries_per_pair: composites per ordered pair among the queries.
    seed: the draw.

  Returns:
    {"database": (left [C^2 * database_per_pair], right [same], pair labels
     [same]), "queries": (left, right, labels) with queries_per_pair per
     pair}; rows ordered by pair label, left/right index the eval split.
  Raises:
    ValueError: a class has fewer source images than one side needs.
  """
  labels = np.asarray(labels)
  rng = np.random.default_rng(seed)
  sources = {"database": {}, "queries": {}}
  for c in range(num_classes):
    members = rng.permutation(np.flatnonzero(labels == c))
    half = len(members) // 2
    sources["database"][c], sources["queries"][c] = (members[:half],
                                                     members[half:])
  check_counts(database_per_pair, queries_per_pair)
  out = {}
  for side, field, per_pair in (
      ("database", "database_per_pair", database_per_pair),
      ("queries", "queries_per_pair", queries_per_pair)):
    left, right, pair_labels = [], [], []
    for a in range(num_classes):
      for b in range(num_classes):
        for c, picks in ((a, left), (b, right)):
          pool = sources[side][c]
          if len(pool) < per_pair:
            raise ValueError(
                f"class {c} has {len(pool)} {side} source images (half of "
                f"its eval images), fewer than {field}={per_pair}; lower "
                f"config.pairs.{field}")
          picks.append(rng.choice(pool, per_pair, replace=False))
        pair_labels.append(np.full(per_pair, num_classes * a + b))
    out[side] = tuple(np.concatenate(x) for x in (left, right, pair_labels))
  return out


def composite_images(images: Any, left: np.ndarray,
                     right: np.ndarray) -> np.ndarray:
  """[N, H, W, C] eval images -> [P, H, 2W, C] composites (left | right),
  for models that embed the side-by-side image in one pass."""
  images = np.asarray(images)
  return np.concatenate([images[left], images[right]], axis=2)


def pair_features(embeddings: Any, left: np.ndarray, right: np.ndarray,
                  dim: int) -> np.ndarray:
  """[N, d] per-image embeddings -> [P, 2 * dim] composite features:
  each half's prefix z[:dim] L2-normalised, left then right."""
  halves = [linear_probe.prefix_features(np.asarray(embeddings)[idx],
                                         (dim,))[0] for idx in (left, right)]
  return np.concatenate(halves, axis=1)


def metric_key(metric: str, dim: int) -> str:
  """"pairs/knn_top1/d=8" or "pairs/linear_top1/d=8" (d = per-half
  prefix)."""
  return metrics.metric_name("pairs", metric, dim)


def evaluate(embeddings: Any, labels: Any, dims: Sequence[int],
             num_classes: int, *, database_per_pair: int = 50,
             queries_per_pair: int = 20, seed: int = 0,
             l2: float = linear_probe.DEFAULT_L2,
             steps: int = linear_probe.DEFAULT_STEPS) -> dict[str, Any]:
  """1-NN and linear-probe top-1 on the pair task, per prefix dim.

  Args:
    embeddings: [N, d] raw embeddings of the eval split.
    labels: [N] its classes in [0, num_classes).
    dims: per-half prefix dims m (the composite has 2m features).
    num_classes: C of the eval split; the task has C^2 classes.
    database_per_pair, queries_per_pair, seed: see `build_pairs`.
    l2, steps: the probe's, see `linear_probe.fit`.

  Returns:
    {"nesting", "num_classes" (C^2), "num_database", "num_queries", "seed",
     "pairs/knn_top1/d=<m>", "pairs/linear_top1/d=<m>"}.
  """
  dims = [int(m) for m in dims]
  pairs = build_pairs(labels, num_classes, database_per_pair,
                      queries_per_pair, seed)
  (db_left, db_right, db_y), (q_left, q_right, q_y) = (pairs["database"],
                                                       pairs["queries"])
  out: dict[str, Any] = {"nesting": dims, "num_classes": num_classes ** 2,
                         "num_database": len(db_y), "num_queries": len(q_y),
                         "seed": int(seed)}
  for m in dims:
    database = pair_features(embeddings, db_left, db_right, m)
    queries = pair_features(embeddings, q_left, q_right, m)
    nn = knn.evaluate(database, db_y, queries, q_y, [2 * m], ks=(1,))
    out[metric_key("knn_top1", m)] = nn[knn.metric_key(1, 2 * m)]
    probe = linear_probe.evaluate(database, db_y, queries, q_y, [2 * m],
                                  num_classes ** 2, l2=l2, steps=steps)
    out[metric_key("linear_top1", m)] = probe[linear_probe.metric_key(0,
                                                                      2 * m)]
  return out
