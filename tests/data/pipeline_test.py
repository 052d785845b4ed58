"""The training stream is a function of (seed, step): resume-exact, and the
same global batches for any process count that divides the data shards."""
import jax
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from mrl_jax import errors
from mrl_jax import sharding
from mrl_jax import train
from mrl_jax.data import pipeline
from mrl_jax.data import preprocess as preprocess_lib

@pytest.fixture(scope="module", name="cfg")
def fixture_cfg(config_module):
  return config_module("default").get_config("smoke").data


def _take(cfg, start, n, seed=0, batch=32):
  mesh = sharding.make_mesh((("data", -1),))
  source = pipeline.open_source(cfg, cfg.train_split)
  it = pipeline.train_batches(cfg, source, batch, seed, start,
                              sharding.batch_sharding(mesh))
  return [jax.tree.map(np.asarray, next(it)) for _ in range(n)]


@pytest.mark.slow  # reads dozens of batches twice
def test_resumed_stream_continues_exactly(cfg):
  # 1024 examples / 32 = 32 steps per epoch: cross an epoch boundary too.
  full = _take(cfg, 0, 36)
  for start in (5, 31, 33):
    resumed = _take(cfg, start, 36 - start)
    for a, b in zip(full[start:], resumed):
      np.testing.assert_array_equal(a["image"], b["image"])
      np.testing.assert_array_equal(a["label"], b["label"])


def test_epochs_and_seeds_reshuffle(cfg):
  batches = _take(cfg, 0, 33)
  assert not np.array_equal(batches[0]["label"], batches[32]["label"])
  other_seed = _take(cfg, 0, 1, seed=1)
  assert not np.array_equal(batches[0]["label"], other_seed[0]["label"])


def test_batches_are_sharded_over_data_axis(cfg):
  mesh = sharding.make_mesh((("data", -1),))
  source = pipeline.open_source(cfg, cfg.train_split)
  batch = next(pipeline.train_batches(cfg, source, 32, 0, 0,
                                      sharding.batch_sharding(mesh)))
  assert batch["image"].shape == (32, 28, 28, 1)
  assert batch["image"].sharding.spec == jax.sharding.PartitionSpec("data")
  assert len(batch["image"].addressable_shards) == 8


def test_eval_batches_pad_and_mask(cfg):
  mesh = sharding.make_mesh((("data", -1),))
  source = pipeline.open_source(cfg, "test[:100]")
  batches = list(pipeline.eval_batches(cfg, source, 64,
                                       sharding.batch_sharding(mesh)))
  masks = np.concatenate([np.asarray(b["mask"]) for b in batches])
  assert len(batches) == 2 and masks.sum() == 100 and masks[:100].all()


def test_batch_not_divisible_by_devices_is_an_error():
  mesh = sharding.make_mesh((("data", -1),))
  with pytest.raises(ValueError, match="config.batch_size=12 is not divisible"
                     " by the 8 batch shards"):
    sharding.check_batch_size(12, mesh, "batch_size")


def test_bad_split_and_missing_dataset_are_errors(cfg, tmp_path):
  with pytest.raises(ValueError, match="bad split"):
    pipeline.open_source(cfg, "validation")
  missing = cfg.copy_and_resolve_references()
  missing.name = "mnist"
  missing.data_dir = str(tmp_path)
  with pytest.raises(ValueError, match="not prepared in"):
    pipeline.open_source(missing, "train")


def _with(cfg, **changes):
  out = cfg.copy_and_resolve_references()
  with out.unlocked():
    out.update(changes)
  return out


def _global_batches(cfg, processes, start, n, batch=32):
  """n global batches as numpy, built as `processes` emulated processes that
  each read their own data shards; concatenated in process order."""
  source = pipeline.open_source(cfg, cfg.train_split)
  streams = [pipeline.process_batches(cfg, source, batch, 0, start, p,
                                      processes) for p in range(processes)]
  out = []
  for _ in range(n):
    parts = [next(s) for s in streams]
    assert {len(p["label"]) for p in parts} == {batch // processes}
    out.append({k: np.concatenate([p[k] for p in parts]) for k in parts[0]})
  return out


def test_global_batches_do_not_depend_on_the_process_count(cfg):
  # 4 shards of 256 examples, 8 rows each: 32 steps per epoch; steps 30..33
  # cross the epoch boundary. flip_lr is random: its seeds must not depend on
  # the process either.
  four = _with(cfg, num_shards=4)
  one = _global_batches(four, 1, 30, 4)
  for processes in (2, 4):
    for a, b in zip(one, _global_batches(four, processes, 30, 4)):
      np.testing.assert_array_equal(a["image"], b["image"])
      np.testing.assert_array_equal(a["label"], b["label"])
  # train_batches (1 process here) gives the same global arrays.
  mesh = sharding.make_mesh((("data", -1),))
  source = pipeline.open_source(four, four.train_split)
  it = pipeline.train_batches(four, source, 32, 0, 30,
                              sharding.batch_sharding(mesh))
  for a in one:
    np.testing.assert_array_equal(a["image"], np.asarray(next(it)["image"]))


def test_shards_are_disjoint_and_cover_the_epoch(cfg):
  raw = _with(cfg, num_shards=4, train_preprocess="keep('image', 'label')")
  source = pipeline.open_source(raw, raw.train_split)
  assert pipeline.steps_per_epoch(source, 32, 4) == 32
  epoch = _global_batches(raw, 2, 0, 32)
  seen = []
  for j, split in enumerate(tfds.even_splits(raw.train_split, 4)):
    assert source.shard(j, 4).split == split
    # Rows [8j, 8j + 8) of every batch of the epoch are exactly shard j.
    rows = [img.tobytes() for b in epoch for img in b["image"][8 * j:8 * j + 8]]
    shard = [ex["image"].tobytes()
             for ex in tfds.as_numpy(tfds.load("fashion_mnist", split=split))]
    assert len(rows) == len(shard) == 256
    assert sorted(rows) == sorted(shard)
    seen += rows
  assert len(set(seen)) == len(seen) == 1024  # disjoint, cover the split
  assert pipeline.describe_process_shards(source, 4, 1, 2) == (
      "shards 2..3 of 4 of train[:1024] (512 of 1024 examples)")


def test_steps_per_epoch_is_the_smallest_shard_s(cfg):
  source = pipeline.open_source(cfg, "train[:1030]")
  # Shards of 258, 258, 257, 257 examples, 8 rows each: 32 full batches.
  assert [source.shard(j, 4).num_examples for j in range(4)] == [
      258, 258, 257, 257]
  assert pipeline.steps_per_epoch(source, 32, 4) == 32
  assert pipeline.steps_per_epoch(source, 30, 1) == 34
  with pytest.raises(ValueError, match="fewer than one batch of 8 per shard"):
    pipeline.steps_per_epoch(pipeline.open_source(cfg, "train[:28]"), 32, 4)


def _pre_shard_stream(cfg, source, batch, seed, start, n):
  """The single-stream pipeline that preceded the data shards (commit
  b1551f4), for one process: the stream that S = 1 must reproduce bitwise."""
  per_epoch = source.num_examples // batch
  epoch_size = per_epoch * batch
  cached = source.read().take(epoch_size).cache() if cfg.cache else None
  epoch, offset = divmod(start, per_epoch)
  out = []
  while len(out) < n:
    eseed = int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])
    preprocess = preprocess_lib.build(cfg.train_preprocess)
    ds = (cached if cached is not None
          else source.read(shuffle_seed=eseed).take(epoch_size))
    ds = ds.shuffle(cfg.shuffle_buffer, seed=eseed)
    ds = ds.enumerate().skip(offset * batch)
    ds = ds.map(lambda i, ex: preprocess(ex, tf.stack([eseed % 2**62, i])),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    out += list(ds.batch(batch, drop_remainder=True).take(n - len(out))
                .as_numpy_iterator())
    epoch, offset = epoch + 1, 0
  return out


@pytest.mark.parametrize("cache, seed, start", [(True, 0, 30), (False, 3, 31)])
def test_one_shard_is_the_pre_shard_stream_bitwise(cfg, cache, seed, start):
  one = _with(cfg, num_shards=1, cache=cache)
  source = pipeline.open_source(one, one.train_split)
  want = _pre_shard_stream(one, source, 32, seed, start, 4)
  got = pipeline.process_batches(one, source, 32, seed, start, 0, 1)
  for a in want:
    b = next(got)
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.mark.parametrize("num_shards, batch, devices, processes, match", [
    (0, 32, 8, 1, r"num_shards=0 must be an integer >= 1"),
    (-2, 32, 8, 1, r"num_shards=-2 must be an integer >= 1"),
    (3, 32, 8, 1, r"batch_size=32 is not divisible by "
                  r"config.data.num_shards=3; use a batch size"),
    (None, 12, 8, 1, r"batch_size=12 is not divisible by the 8 data shards "
                     r"\(config.data.num_shards=None: one per device\)"),
    (1, 32, 8, 2, r"num_shards=1 is not divisible by the 2 processes; set "
                  r"config.data.num_shards to a multiple of 2"),
])
def test_bad_shard_layouts_are_one_line_errors(cfg, num_shards, batch,
                                                devices, processes, match):
  bad = _with(cfg, num_shards=num_shards)
  with pytest.raises(ValueError, match=match) as e:
    pipeline.check_shards(bad, batch, devices, processes)
  assert "\n" not in str(e.value)
  assert pipeline.check_shards(_with(cfg, num_shards=None), 32, 8, 1) == 8


def test_shard_errors_come_before_any_io(config_module):
  config = config_module("default").get_config("smoke")
  config.data.num_shards = 3
  with pytest.raises(ValueError, match="not divisible by config.data.num_"):
    train.setup(config)
  config.data.num_shards = 4
  with pytest.raises(ValueError, match="not divisible by the 3 processes"):
    next(pipeline.process_batches(config.data, None, 32, 0, 0, 0, 3))


def test_an_example_failing_in_tf_data_is_a_one_line_error(cfg):
  # A crop larger than the 28x28 images (of unknown size until decoded)
  # fails inside tf.data; the run stops with one line naming the split, not
  # a TensorFlow traceback.
  bad = cfg.copy_and_resolve_references()
  bad.skip_decode = True
  bad.train_preprocess = "decode(1)|central_crop(64)|value_range(-1, 1)"
  source = pipeline.open_source(bad, bad.train_split)
  batches = pipeline.process_batches(bad, source, 32, 0, 0, 0, 1)
  with pytest.raises(errors.RunError, match=(
      r"^an example of split 'train\[:1024\]' could not be read or "
      r"preprocessed \(.+\); check the data and the preprocess spec$")):
    next(batches)
