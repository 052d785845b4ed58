"""LiT end to end: a classifier trained on an image folder lends its
backbone to align_openclipart:smoke's image tower (`lock=image`), which
stays bit for bit the classifier's while the text tower trains, also after
a resume that cannot read the classifier's workdir any more."""
import os
import shutil

import jax
import ml_collections
import numpy as np
import pytest

from mrl_jax import checkpointing
from mrl_jax import config_lib
from mrl_jax import train
from mrl_jax.data import openclipart
from conftest import CONFIG_DIR, launch_ok

pytestmark = pytest.mark.skipif(
    not openclipart.SVG_DIR.is_dir() or shutil.which("rsvg-convert") is None,
    reason="needs openclipart-svg and librsvg2-bin (scripts/setup.sh)")

ALIGN = f"{CONFIG_DIR}/align_openclipart.py:smoke"
TOWER = ("towers", "image_tower")


@pytest.fixture(name="classifier", scope="module")
def fixture_classifier(image_tree, tmp_path_factory):
  """A classification workdir whose backbone is align_openclipart:smoke's
  image tower: small_cnn (8, 16) -> 32 on 32x32 RGB images."""
  config = config_lib.load_config(
      f"{CONFIG_DIR}/image_folder.py:root={image_tree},smoke,size=32")
  config.model.name = "small_cnn"
  config.model.kwargs = ml_collections.ConfigDict(
      {"widths": (8, 16), "embed_dim": 32})
  workdir = str(tmp_path_factory.mktemp("classifier"))
  train.train_and_evaluate(config, workdir)
  return workdir


@pytest.fixture(name="lit", scope="module")
def fixture_lit(classifier, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("lit"))
  launch_ok(f"{ALIGN},lock=image,lock_from={classifier}", workdir)
  return workdir


def _arrays(workdir, step, paths):
  """The checkpoint's params and batch_stats at `paths` (a BERT tower has
  no batch_stats), on one device: {"params": {path: sub-tree}, ...}."""
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"), {},
                                    read_only=True)
  saved = ckpt.saved_state_tree(step)
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  part = {}
  for collection in ("params", "batch_stats"):
    for path in paths:
      if _subtree(saved[collection], path):
        node = part.setdefault(collection, {})
        for key in path[:-1]:
          node = node.setdefault(key, {})
        node[path[-1]] = jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
            _subtree(saved[collection], path))
  restored = jax.device_get(ckpt.restore_part(step, part))
  ckpt.close()
  return {collection: {path: _subtree(tree, path) for path in paths}
          for collection, tree in restored.items()}


def _subtree(tree, path):
  for key in path:
    tree = tree.get(key, {})
  return tree


def _assert_equal_trees(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


def test_the_locked_tower_is_the_classifiers_backbone_bit_for_bit(
    classifier, lit):
  source = _arrays(classifier, 4, [("backbone",)])
  first, last = (_arrays(lit, step, [TOWER, ("towers", "text_tower")])
                 for step in (3, 6))
  for collection in ("params", "batch_stats"):
    _assert_equal_trees(last[collection][TOWER],
                        source[collection][("backbone",)])
  text = ("towers", "text_tower")
  assert any(np.any(a != b) for a, b in zip(
      jax.tree.leaves(first["params"][text]),
      jax.tree.leaves(last["params"][text])))


def test_a_resume_keeps_the_lock_without_reading_the_source(
    classifier, lit, copy_of):
  workdir = copy_of(lit)
  config = config_lib.load_config(
      f"{ALIGN},lock=image,lock_from={classifier}")
  config.total_steps = 9
  hidden = classifier + ".hidden"
  os.rename(classifier, hidden)  # a fresh run would fail: no source
  try:
    train.train_and_evaluate(config, workdir)
  finally:
    os.rename(hidden, classifier)
  source = _arrays(classifier, 4, [("backbone",)])
  resumed = _arrays(workdir, 9, [TOWER])
  for collection in ("params", "batch_stats"):
    _assert_equal_trees(resumed[collection][TOWER],
                        source[collection][("backbone",)])


def test_a_mismatched_source_stops_before_anything_is_written(
    classifier, tmp_path):
  config = config_lib.load_config(
      f"{ALIGN},lock=image,lock_from={classifier}")
  config.model.kwargs.embed_dim = 64
  workdir = tmp_path / "workdir"
  with pytest.raises(ValueError, match="the image tower in .* does not "
                     "match this config's") as e:
    train.train_and_evaluate(config, str(workdir))
  assert "\n" not in str(e.value)
  assert not workdir.exists()
