"""ImageNet-R/-A evaluation on their 200 classes, against numpy."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tensorflow_datasets as tfds

from mrl_jax import config_lib
from mrl_jax import train
from mrl_jax import train_step as step_lib
from mrl_jax.evaluators import class_subsets


@pytest.mark.parametrize("name, first_wnid, other_wnid", [
    ("imagenet_r", "n01443537", "n07920052"),  # goldfish, espresso
    ("imagenet_a", "n01498041", "n04591713"),  # stingray, wine bottle
])
def test_official_lists_match_tfds_label_order(name, first_wnid, other_wnid,
                                               tmp_path):
  subset = class_subsets.get(name)
  assert len(subset) == 200 == len(set(subset))
  assert list(subset) == sorted(subset) and 0 <= subset[0] and subset[-1] < 1000
  wnids = tfds.builder("imagenet2012", data_dir=str(tmp_path)).info.features[
      "label"].names
  assert wnids[subset[0]] == first_wnid
  assert other_wnid in {wnids[i] for i in subset}
  assert "n12267677" == wnids[subset[-1]]  # acorn: last in both lists


def test_unknown_subset_is_an_error():
  assert class_subsets.get(None) is None
  with pytest.raises(ValueError, match="unknown class_subset 'imagenet_o'"):
    class_subsets.get("imagenet_o")


def _numpy_restrict(logits, labels, subset):
  subset = list(subset)
  mapped = np.array([subset.index(y) if y in subset else -1 for y in labels])
  return logits[..., subset], mapped


def test_restrict_equals_numpy():
  rng = np.random.default_rng(0)
  subset = class_subsets.IMAGENET_A
  logits = rng.normal(size=(3, 16, 1000)).astype(np.float32)
  labels = np.concatenate([rng.choice(subset, 12), [0, 1, 2, 999]])
  got_logits, got_labels = class_subsets.restrict(jnp.asarray(logits),
                                                  jnp.asarray(labels), subset)
  want_logits, want_labels = _numpy_restrict(logits, labels, subset)
  np.testing.assert_array_equal(got_logits, want_logits)
  np.testing.assert_array_equal(got_labels, want_labels)
  assert (want_labels[-4:] == -1).all()  # classes outside the subset
  hot = np.eye(1000, dtype=np.float32)[labels]
  _, got_hot = class_subsets.restrict(jnp.asarray(logits), jnp.asarray(hot),
                                      subset)
  np.testing.assert_array_equal(got_hot, hot[:, list(subset)])


@pytest.mark.slow  # compile-heavy
def test_eval_step_scores_among_the_subset(config_module):
  config = config_module("resnet50_imagenet").get_config("smoke")
  config.loss.label_smoothing = 0.0
  s = train.setup(config)
  subset = class_subsets.IMAGENET_R
  tx = optax.sgd(0.1)
  state = step_lib.create_train_state(s.model, tx, jax.random.key(0),
                                      (32, 32, 3))
  rng = np.random.default_rng(1)
  images = rng.normal(size=(8, 32, 32, 3)).astype(np.float32)
  labels = rng.choice(subset, 8)
  batch = {"image": images, "label": labels, "mask": np.ones(8, np.float32)}
  sums = jax.jit(step_lib.make_eval_step(s.model, s.loss_fn, subset))(
      state, batch)
  logits, _ = s.model.apply({"params": state.params,
                             "batch_stats": state.batch_stats}, images,
                            train=False)
  sub_logits, sub_labels = _numpy_restrict(np.asarray(logits, np.float64),
                                           labels, subset)
  top5 = np.argsort(-sub_logits, axis=-1)[..., :5]
  np.testing.assert_array_equal(
      sums["top1"], (top5[..., 0] == sub_labels).sum(-1))
  np.testing.assert_array_equal(
      sums["top5"], (top5 == sub_labels[:, None]).any(-1).sum(-1))
  shifted = sub_logits - sub_logits.max(-1, keepdims=True)
  log_softmax = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
  want_loss = -np.take_along_axis(log_softmax, sub_labels[None, :, None],
                                  -1)[..., 0].sum(-1)
  np.testing.assert_allclose(sums["loss"], want_loss, rtol=1e-4)


def test_robustness_sets_config():
  sets = config_lib.robustness_eval_sets()
  assert {k: (v.name, v.class_subset) for k, v in sets.items()} == {
      "imagenet_v2": ("imagenet_v2/matched-frequency", None),
      "imagenet_r": ("imagenet_r", "imagenet_r"),
      "imagenet_a": ("imagenet_a", "imagenet_a"),
      "imagenet_sketch": ("imagenet_sketch", None)}
