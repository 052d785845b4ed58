"""Progressive resizing: FFCV's rule, config checks, resumable stream, and the
trainer switching sizes at the scheduled steps."""
import json

import ml_collections
import numpy as np
import pytest

from mrl_jax import sharding
from mrl_jax import train
from mrl_jax.data import pipeline
from mrl_jax.data import resolution

# 256 examples / batch 32 = 8 steps per epoch; 16 px in epoch 0, 24 in 1,
# 32 from 2 (a ramp over epochs 0..2 in multiples of 8).
STEPS_PER_EPOCH = 8
SCHEDULE = dict(min_res=16, max_res=32, start_ramp=0, end_ramp=2, multiple=8)


def _ffcv_reference(epoch, min_res, max_res, start_ramp, end_ramp, multiple):
  """FFCV's train_imagenet.get_resolution, written with np.interp."""
  if epoch <= start_ramp:
    return min_res
  if epoch >= end_ramp:
    return max_res
  interp = np.interp([epoch], [start_ramp, end_ramp], [min_res, max_res])
  return int(np.round(interp[0] / multiple)) * multiple


def test_official_recipe_switches_to_192_at_epoch_32():
  got = [resolution.resolution_at_epoch(e, 160, 192, 29, 34)
         for e in range(40)]
  assert got == [160] * 32 + [192] * 8


@pytest.mark.parametrize("args", [(160, 192, 29, 34, 32), (128, 256, 2, 12, 32),
                                  (16, 32, 0, 2, 8), (64, 64, 3, 3, 16),
                                  (96, 224, 5, 7, 16)])
def test_rule_equals_ffcv_reference(args):
  for epoch in range(20):
    assert (resolution.resolution_at_epoch(epoch, *args) ==
            _ffcv_reference(epoch, *args))


@pytest.fixture(name="cfg")
def fixture_cfg(config_module):
  cfg = config_module("default").get_config("smoke").data
  cfg.train_split = "train[:256]"
  cfg.train_preprocess = ("resize({res})|flip_lr|normalize('fashion_mnist')|"
                          "keep('image', 'label')")
  cfg.resolution = ml_collections.ConfigDict(SCHEDULE)
  return cfg


@pytest.mark.parametrize("change, match", [
    (dict(resolution=None), "uses {res} but config.data.resolution"),
    (dict(train_preprocess="resize(16)"), "has no {res}"),
    (dict(resolution=dict(SCHEDULE, min_res=40)), "min_res <= max_res"),
    (dict(resolution=dict(SCHEDULE, start_ramp=3)), "start_ramp <= end_ramp"),
    (dict(resolution=dict(min_res=16)), "lacks"),
    (dict(train_preprocess="resize({res}, 3)"), "too many positional"),
])
def test_bad_schedules_are_one_line_errors(cfg, change, match):
  bad = cfg.copy_and_resolve_references()
  for key, value in change.items():
    bad[key] = (ml_collections.ConfigDict(value) if isinstance(value, dict)
                else value)
  with pytest.raises(ValueError, match=match) as e:
    pipeline.validate(bad)
  assert "\n" not in str(e.value)


def _take(cfg, start, n):
  mesh = sharding.make_mesh((("data", -1),))
  source = pipeline.open_source(cfg, cfg.train_split)
  it = pipeline.train_batches(cfg, source, 32, 0, start,
                              sharding.batch_sharding(mesh))
  return [np.asarray(next(it)["image"]) for _ in range(n)]


@pytest.mark.slow  # reads dozens of batches twice
def test_size_is_a_function_of_the_step_and_resumes_exactly(cfg):
  full = _take(cfg, 0, 3 * STEPS_PER_EPOCH)
  assert [b.shape[1] for b in full] == [16] * 8 + [24] * 8 + [32] * 8
  for start in (7, 10):
    for a, b in zip(full[start:], _take(cfg, start, 24 - start)):
      np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_trainer_switches_resolution_at_scheduled_steps(cfg, config_module,
                                                        tmp_path):
  # Two sizes keep it to two compilations: 64 examples / 32 = 2 steps per
  # epoch, 16 px in epoch 0, 24 px from epoch 1.
  config = config_module("default").get_config("smoke")
  config.data = cfg
  config.data.train_split = "train[:64]"
  config.data.resolution.update(start_ramp=0, end_ramp=1, max_res=24)
  config.model.name = "resnet_mu"  # global pooling: any input size
  config.model.kwargs = ml_collections.ConfigDict()
  config.total_steps = 4
  config.log_every_steps = 1
  config.checkpoint_every_steps = config.total_steps
  train.train_and_evaluate(config, str(tmp_path))
  with open(tmp_path / "metrics.jsonl") as f:
    logged = [json.loads(line) for line in f]
  sizes = {m["step"]: m["train/image_size"] for m in logged
           if "train/image_size" in m}
  # The step logged as s trained on the batch of 0-based step s - 1.
  assert sizes == {1: 16, 2: 16, 3: 24, 4: 24}
  assert all(np.isfinite(m["train/loss"]) for m in logged if "train/loss" in m)
