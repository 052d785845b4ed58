"""MRL-AC: against a plain-Python copy of the official notebook's loops,
hand-made cascades, expected-dim golden values and determinism."""
import collections

import numpy as np
import pytest

from mrl_jax.evaluators import adaptive_classification as ac

DIMS = (8, 16, 32, 64)
GRID = np.linspace(0.1, 1, 100)


def _random_probs(seed: int, g: int = 4, n: int = 300, c: int = 5):
  """[G, N, C] probs whose larger dims are more often right and confident."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, c, n)
  logits = rng.normal(size=(g, n, c))
  for i in range(g):  # dim i gets a label bonus of random size
    logits[i, np.arange(n), labels] += rng.uniform(0, 1 + i, n)
  logits *= rng.uniform(0.5, 3.0, (g, n, 1))  # spread confidences
  return ac.softmax_per_dim(logits), labels


# --- The notebook (Model_Cascades.ipynb), transcribed into plain Python. ---


def _notebook_thresholds(probs, labels):
  conf = [[float(max(p)) for p in dim] for dim in probs]
  pred = [[int(np.argmax(p)) for p in dim] for dim in probs]
  n, thresholds = len(labels), []
  for d1 in range(len(probs) - 1):
    d2 = d1 + 1
    acc = []
    for t in GRID:
      preds = [pred[d1][i] if conf[d1][i] > t else pred[d2][i]
               for i in range(n)]
      acc.append(100 * sum(p == y for p, y in zip(preds, labels)) / n)
    max_acc = max(acc)
    thresholds.append(min(t for t, a in zip(GRID, acc) if a == max_acc))
  return thresholds


def _notebook_cascade(probs, labels, thresholds, max_cascading, dims):
  """One seed and one cap: (accuracy, expected dim, models used)."""
  correct, model = 0, []
  for i in range(len(labels)):
    j_ = max_cascading
    for j in range(max_cascading):
      if max(probs[j][i]) > thresholds[j]:
        j_ = j
        break
    model.append(j_)
    correct += int(np.argmax(probs[j_][i])) == labels[i]
  counter = collections.Counter(model)
  expected = sum(dims[j] * counter[j] / len(labels) for j in counter)
  return correct / len(labels), expected, model


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_thresholds_match_notebook(seed):
  probs, labels = _random_probs(seed)
  np.testing.assert_array_equal(ac.fit_thresholds(probs, labels),
                                _notebook_thresholds(probs, labels))


@pytest.mark.parametrize("seed", [0, 1])
def test_cascade_matches_notebook_for_every_cap(seed):
  probs, labels = _random_probs(seed)
  thresholds = _notebook_thresholds(probs, labels)
  for cap in range(len(DIMS)):
    want_acc, want_dim, want_stop = _notebook_cascade(probs, labels,
                                                      thresholds, cap, DIMS)
    pred, stop = ac.cascade(probs, thresholds, cap_index=cap)
    np.testing.assert_array_equal(stop, want_stop)
    assert np.mean(pred == labels) == pytest.approx(want_acc, abs=1e-12)
    assert ac.expected_dim(stop, DIMS) == pytest.approx(want_dim, abs=1e-9)


def test_evaluate_matches_notebook_over_seeds():
  probs, labels = _random_probs(3, n=200)
  seeds, caps = [4, 9], [16, 64]
  got = ac.evaluate(probs, labels, DIMS, holdout=50, seeds=seeds, caps=caps)
  accs, dims = collections.defaultdict(list), collections.defaultdict(list)
  thresholds = []
  for seed in seeds:
    # Same draw as the implementation (the notebook used the global RNG).
    idx = np.random.default_rng(seed).choice(200, 50, replace=False)
    rest = np.nonzero(1 - np.isin(np.arange(200), idx))[0]
    thr = _notebook_thresholds(probs[:, idx], labels[idx])
    thresholds.append(thr)
    for cap in caps:
      acc, dim, _ = _notebook_cascade(probs[:, rest], labels[rest], thr,
                                      DIMS.index(cap), DIMS)
      accs[cap].append(acc)
      dims[cap].append(dim)
  for cap in caps:
    assert got["accuracy"][str(cap)] == pytest.approx(np.mean(accs[cap]))
    assert got["accuracy_std"][str(cap)] == pytest.approx(np.std(accs[cap]))
    assert got["expected_dim"][str(cap)] == pytest.approx(np.mean(dims[cap]))
  np.testing.assert_allclose(list(got["thresholds"].values()),
                             np.mean(thresholds, 0))
  assert list(got["thresholds"]) == ["8", "16", "32"]
  assert (got["num_fit"], got["num_eval"]) == (50, 150)


# --- Hand-made cases. ---


def _two_dim_probs(conf_small, pred_small, pred_big, c=10):
  """[2, N, C] probs with the given small-dim confidence and predictions.

  With 10 classes the other classes get (1 - conf) / 9, so every given
  confidence >= 0.2 is the row's maximum and its class the arg-max.
  """
  n = len(conf_small)
  probs = np.zeros((2, n, c))
  for i in range(n):
    rest = (1 - conf_small[i]) / (c - 1)
    probs[0, i] = rest
    probs[0, i, pred_small[i]] = conf_small[i]
    probs[1, i, pred_big[i]] = 1.0
  return probs


def test_fit_picks_smallest_threshold_with_best_pair_accuracy():
  # Small dim right iff confident (0.9, 0.8 right; 0.31, 0.2 wrong): every
  # t in [0.31, 0.8) gives 4/4; the smallest grid point >= 0.31 is grid[24].
  probs = _two_dim_probs([0.9, 0.8, 0.31, 0.2], [0, 1, 2, 0], [1, 0, 0, 1])
  labels = np.array([0, 1, 0, 1])
  assert ac.fit_thresholds(probs, labels)[0] == GRID[24]
  # Equal pair accuracy everywhere (both dims always right): smallest = 0.1.
  probs = _two_dim_probs([0.9, 0.5], [0, 1], [0, 1])
  assert ac.fit_thresholds(probs, np.array([0, 1]))[0] == GRID[0]


def test_confident_small_dim_stops_early():
  probs = _two_dim_probs([0.95, 0.4], [2, 2], [1, 1])
  pred, stop = ac.cascade(probs, [0.5])
  np.testing.assert_array_equal(stop, [0, 1])
  np.testing.assert_array_equal(pred, [2, 1])


def test_threshold_one_never_stops_early():
  probs = np.zeros((3, 2, 2))
  probs[..., 0] = 1.0  # one-hot: max softmax exactly 1.0 everywhere
  _, stop = ac.cascade(probs, [1.0, 1.0])
  np.testing.assert_array_equal(stop, [2, 2])


def test_cap_respected():
  probs, _ = _random_probs(0)
  never = np.ones(3)  # never confident enough: always run to the cap
  for cap in range(4):
    _, stop = ac.cascade(probs, never, cap_index=cap)
    np.testing.assert_array_equal(stop, cap)
  always = np.zeros(3)  # always confident: the cap does not matter
  for cap in range(4):
    _, stop = ac.cascade(probs, always, cap_index=cap)
    np.testing.assert_array_equal(stop, 0)
  with pytest.raises(ValueError):
    ac.cascade(probs, never, cap_index=4)


# --- Expected-dim arithmetic. ---


def test_expected_dim_golden():
  stop = np.array([0, 0, 1, 2])  # dims 8, 8, 16, 32
  assert ac.expected_dim(stop, (8, 16, 32)) == 16.0
  # Cumulative head cost: 8, 8, 8+16, 8+16+32.
  assert ac.expected_dim(stop, (8, 16, 32), cumulative=True) == 24.0
  assert ac.expected_dim([2, 2], (8, 16, 32), cumulative=True) == 56.0


def _three_types(per_type: int = 20):
  """[3, 3 * per_type, 3] probs of three example types, all labelled 0.

  A: right and confident (0.9) at every dim.
  B: wrong at dim 8 with confidence 0.55; right and confident from dim 16.
  C: wrong at dims 8 and 16 (confidence 0.55); right at dim 32.
  A threshold t in [0.55, 0.9) sends B past dim 8 and C past dim 16 while A
  stops at once, so each pair's smallest best threshold is the first grid
  point >= 0.55, GRID[50] = 0.5545...
  """
  def row(conf, cls):
    r = np.full(3, (1 - conf) / 2)
    r[cls] = conf
    return r
  types = {"A": [row(0.9, 0), row(0.9, 0), row(0.9, 0)],
           "B": [row(0.55, 1), row(0.9, 0), row(0.9, 0)],
           "C": [row(0.55, 1), row(0.55, 2), row(0.9, 0)]}
  probs = np.stack([np.stack(types[t]) for t in "ABC"
                    for _ in range(per_type)], axis=1)
  return probs, np.zeros(3 * per_type, int)


def test_expected_dim_golden_through_the_cascade():
  probs, labels = _three_types()
  np.testing.assert_array_equal(ac.fit_thresholds(probs, labels),
                                [GRID[50], GRID[50]])
  pred, stop = ac.cascade(probs, [GRID[50], GRID[50]])
  np.testing.assert_array_equal(stop, np.repeat([0, 1, 2], 20))
  np.testing.assert_array_equal(pred, labels)
  assert ac.expected_dim(stop, (8, 16, 32)) == pytest.approx(56 / 3)
  assert ac.expected_dim(stop, (8, 16, 32),
                         cumulative=True) == pytest.approx(88 / 3)


def test_evaluate_golden_on_three_types():
  probs, labels = _three_types()
  s = ac.evaluate(probs, labels, (8, 16, 32), holdout=0.5, seeds=4)
  assert s["thresholds"] == {"8": GRID[50], "16": GRID[50]}
  assert s["thresholds_std"] == {"8": 0.0, "16": 0.0}
  assert s["accuracy"]["32"] == 1.0
  assert (s["expected_dim"]["8"], s["expected_cost"]["8"]) == (8.0, 8.0)
  # Cap 16: C (the examples that stop at 32 without a cap) is wrong.
  assert s["stop_fraction"]["16"]["32"] == 0.0
  assert s["accuracy"]["16"] == pytest.approx(
      1 - s["stop_fraction"]["32"]["32"])
  for cap in ("8", "16", "32"):
    frac = s["stop_fraction"][cap]
    assert s["expected_dim"][cap] == pytest.approx(
        8 * frac["8"] + 16 * frac["16"] + 32 * frac["32"])
    assert s["expected_cost"][cap] == pytest.approx(
        8 * frac["8"] + 24 * frac["16"] + 56 * frac["32"])


def test_holdout_fraction_equals_count_and_validates():
  probs, labels = _random_probs(1)
  a = ac.evaluate(probs, labels, DIMS, holdout=0.2, seeds=2)
  b = ac.evaluate(probs, labels, DIMS, holdout=60, seeds=2)
  assert a == b and a["num_fit"] == 60
  for bad in (0.0, 1.0, 0, 300):
    with pytest.raises(ValueError):
      ac.evaluate(probs, labels, DIMS, holdout=bad, seeds=1)


def test_deterministic_given_seeds():
  probs, labels = _random_probs(2)
  a = ac.evaluate(probs, labels, DIMS, seeds=3)
  np.random.seed(123)  # global state must not matter
  b = ac.evaluate(probs, labels, DIMS, seeds=[0, 1, 2])
  assert a == b
  c = ac.evaluate(probs, labels, DIMS, seeds=[5, 6, 7])
  assert c["thresholds"] != a["thresholds"]


# --- Summaries. ---


def test_smallest_matching():
  summary = {"nesting": [8, 16, 32],
             "dim_accuracy": {"8": 0.6, "16": 0.7, "32": 0.75},
             "accuracy": {"8": 0.6, "16": 0.74, "32": 0.76},
             "expected_dim": {"8": 8.0, "16": 12.0, "32": 15.0},
             "expected_cost": {"8": 8.0, "16": 14.0, "32": 20.0}}
  assert ac.smallest_matching(summary) == 15.0
  assert ac.smallest_matching(summary, tolerance=0.01) == 12.0
  assert ac.smallest_matching(summary, tolerance=0.01,
                              cost="expected_cost") == 14.0
  assert ac.smallest_matching(summary, target=0.5) == 8.0
  assert ac.smallest_matching(summary, target=0.9) is None


def test_as_scalars_names():
  probs, labels = _random_probs(0)
  s = ac.evaluate(probs, labels, DIMS, seeds=1, caps=[16])
  assert set(ac.as_scalars(s, "val")) == {
      "val/ac_accuracy/d=16", "val/ac_expected_dim/d=16",
      "val/ac_expected_cost/d=16"}


def test_softmax_per_dim_and_flip_sum():
  rng = np.random.default_rng(0)
  logits, flip = rng.normal(size=(2, 3, 2, 5))
  def np_softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)
  np.testing.assert_allclose(ac.softmax_per_dim(logits), np_softmax(logits),
                             rtol=1e-5, atol=1e-6)
  # Official flip TTA: softmax of the *sum* of the two views' logits.
  np.testing.assert_allclose(ac.softmax_per_dim(logits, flip),
                             np_softmax(logits + flip), rtol=1e-5, atol=1e-6)
