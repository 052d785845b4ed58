"""Cross-modal recall, zero-shot and cosine span against brute-force numpy."""
import numpy as np
import pytest

from mrl_jax.evaluators import cross_modal


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _data(n_images=40, captions=2, d=16, seed=0):
  rng = np.random.default_rng(seed)
  images = rng.normal(size=(n_images, d)).astype(np.float32)
  owner = np.repeat(np.arange(n_images), captions)
  # Captions near their image, more so in the first coordinates.
  noise = rng.normal(size=(len(owner), d)) * np.linspace(0.3, 3.0, d)
  return images, (images[owner] + noise).astype(np.float32), owner


def test_recall_matches_brute_force_ranking():
  images, texts, owner = _data()
  out = cross_modal.recall(images, texts, owner, (4, 16), ks=(1, 5))
  for m in (4, 16):
    sim = _unit(images[:, :m].astype(np.float64)) @ _unit(
        texts[:, :m].astype(np.float64)).T
    for k in (1, 5):
      top_texts = np.argsort(-sim, axis=1, kind="stable")[:, :k]
      i2t = np.mean([np.any(owner[row] == i)
                     for i, row in enumerate(top_texts)])
      top_images = np.argsort(-sim.T, axis=1, kind="stable")[:, :k]
      t2i = np.mean([owner[j] in row for j, row in enumerate(top_images)])
      assert out[f"i2t/recall@{k}/d={m}"] == pytest.approx(i2t)
      assert out[f"t2i/recall@{k}/d={m}"] == pytest.approx(t2i)
  # Recall grows with K, and the informative prefix is far above chance.
  assert out["i2t/recall@5/d=4"] >= out["i2t/recall@1/d=4"]
  assert out["t2i/recall@1/d=16"] > 5 / 40


def test_zero_shot_matches_per_class_loop():
  rng = np.random.default_rng(1)
  centers = rng.normal(size=(5, 8))
  labels = rng.integers(0, 5, 60)
  images = centers[labels] + rng.normal(size=(60, 8)) * 0.8
  prompts = centers[:, None] + rng.normal(size=(5, 3, 8)) * 0.5
  out = cross_modal.zero_shot(images, labels, prompts, (2, 8))
  for m in (2, 8):
    classes = []
    for c in range(5):
      mean = np.mean([_unit(prompts[c, t, :m]) for t in range(3)], axis=0)
      classes.append(_unit(mean))
    pred = [np.argmax([_unit(x[:m]) @ e for e in classes]) for x in images]
    assert out[f"zero_shot/top1/d={m}"] == pytest.approx(np.mean(
        np.array(pred) == labels))
  assert out["zero_shot/top1/d=8"] > 0.5


def test_cosine_span_over_all_non_matching_pairs():
  images, texts, _ = _data(captions=1)
  out = cross_modal.cosine_span(images, texts, (8, 16))
  for m in (8, 16):
    cos = np.array([[_unit(a[:m]) @ _unit(b[:m]) for b in texts]
                    for a in images])
    pos, rnd = np.mean(np.diag(cos)), np.mean(cos[~np.eye(40, dtype=bool)])
    assert out[f"cosine/positive/d={m}"] == pytest.approx(pos, rel=1e-6)
    assert out[f"cosine/random/d={m}"] == pytest.approx(rnd, abs=1e-6)
  assert out["cosine/span/d=16"] > 0.3
  # The rows' order (e.g. how processes interleave) does not matter.
  order = np.random.default_rng(1).permutation(40)
  shuffled = cross_modal.cosine_span(images[order], texts[order], (8, 16))
  for key, value in out.items():
    if key != "nesting":
      assert shuffled[key] == pytest.approx(value, abs=1e-9), key


@pytest.mark.parametrize("call, match", [
    (lambda: cross_modal.recall(np.zeros((3, 4)), np.zeros((3, 5)),
                                np.arange(3), (2,)), "one width"),
    (lambda: cross_modal.recall(np.zeros((3, 4)), np.zeros((3, 4)),
                                np.arange(3), (8,)), "1..4"),
    (lambda: cross_modal.recall(np.zeros((3, 4)), np.zeros((2, 4)),
                                np.array([0, 3]), (2,)), "image index"),
    (lambda: cross_modal.cosine_span(np.zeros((3, 4)), np.zeros((2, 4)),
                                     (2,)), "row by row"),
    (lambda: cross_modal.cosine_span(np.ones((1, 4)), np.ones((1, 4)),
                                     (2,)), "at least 2 pairs"),
])
def test_bad_input_is_one_line(call, match):
  with pytest.raises(ValueError, match=match) as e:
    call()
  assert "\n" not in str(e.value)
