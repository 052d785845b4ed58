"""The contrastive task on a user image-caption folder
(configs/image_text_folder.py): config checks, the sharded train step equal
to one device's, and the per-dim evaluation."""
import jax
import numpy as np
import pytest

from mrl_jax import optim
from mrl_jax import train
from mrl_jax.data import pipeline
from conftest import setup_error, write_image_text_folder


@pytest.fixture(name="folder_config", scope="module")
def fixture_folder_config(tmp_path_factory, config_module):
  """config(arg) of configs/image_text_folder.py over a generated folder."""
  root = tmp_path_factory.mktemp("pairs")
  write_image_text_folder(root, count=60)
  data_dir = tmp_path_factory.mktemp("tfds")
  module = config_module("image_text_folder")
  return lambda arg="": module.get_config(
      f"root={root},data_dir={data_dir},smoke,vocab=64,seq_len=12"
      + (f",{arg}" if arg else ""))


def test_folder_config_needs_a_root(config_module):
  with pytest.raises(ValueError, match="needs root=<dir>"):
    config_module("image_text_folder").get_config("smoke")


def test_config_checks(folder_config):
  assert train.setup(folder_config()).nesting_dims == (8, 16, 32)
  assert train.setup(folder_config("head=ff")).nesting_dims == (32,)
  config = folder_config()
  config.mrl.head = "mrl_e"
  assert "heads mrl, ff" in setup_error(config)
  config = folder_config()
  config.mrl.nesting_dims = (8, 64)
  assert "64" in setup_error(config)
  config = folder_config()
  config.text_model.kwargs.max_len = 8
  assert "--config.text_model.kwargs.max_len=12" in setup_error(config)
  config = folder_config()
  config.contrastive.loss = "triplet"
  assert "softmax, sigmoid" in setup_error(config)


def _one_step(config, devices, batch):
  s = train.setup(config, devices)
  tx = optim.build_optimizer(config.optimizer, 10, 10)
  example = {k: jax.ShapeDtypeStruct(v.shape[1:], v.dtype)
             for k, v in batch.items()}
  init, rng, target = train.abstract_train_state(s, config, tx, example)
  shardings = jax.tree.map(lambda t: t.sharding, target)
  state = jax.jit(init, out_shardings=shardings)(rng)
  state, metrics = train.jit_train_step(s, tx, shardings, 0)(state, batch)
  return jax.device_get((state.params, metrics))


@pytest.mark.slow  # compile-heavy: two meshes x two towers
@pytest.mark.parametrize("loss", ["softmax", "sigmoid"])
def test_sharded_step_equals_one_device(folder_config, loss):
  config = folder_config(f"loss={loss}")
  rng = np.random.default_rng(0)
  batch = {"image": rng.uniform(-1, 1, (32, 32, 32, 3)).astype(np.float32),
           "input_ids": rng.integers(5, 64, (32, 12)).astype(np.int32),
           "input_mask": np.ones((32, 12), np.int32),
           "label": np.full(32, -1, np.int64)}
  eight = _one_step(config, jax.devices(), batch)
  one = _one_step(config, jax.devices()[:1], batch)
  np.testing.assert_allclose(eight[1]["loss_per_dim"],
                             one[1]["loss_per_dim"], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(eight[0]), jax.tree.leaves(one[0])):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6)


def test_evaluation_reports_recall_and_span_per_dim(folder_config):
  config = folder_config()
  s = train.setup(config)
  source = pipeline.open_source(config.data, config.data.eval_split)
  tx = optim.build_optimizer(config.optimizer, 1, 1)
  init, rng, target = train.abstract_train_state(
      s, config, tx, pipeline.example_spec(config.data, source))
  shardings = jax.tree.map(lambda t: t.sharding, target)
  state = jax.jit(init, out_shardings=shardings)(rng)
  summary = train._run_eval(config, s, train._jit_eval_step(s, shardings),  # pylint: disable=protected-access
                            state)
  assert summary["task"] == "contrastive"
  assert summary["num_examples"] == source.total_examples
  for name in ("i2t/recall@1", "t2i/recall@10", "cosine/span"):
    assert set(summary[name]) == {"8", "16", "32"}, name
  assert "zero_shot/top1" not in summary  # a folder has no classes
  # Recall@10 of a split with at most 10 pairs is 1 at every dim.
  if source.total_examples <= 10:
    assert set(summary["i2t/recall@10"].values()) == {1.0}
  assert "i2t/recall@1" in s.task.format_table(summary)


def test_an_image_only_extra_set_is_scored_zero_shot(folder_config):
  # Fashion-MNIST next to image-text data: its gray images made RGB, its ten
  # class names put through the prompts, no captions (so no recall). It is
  # read from TFDS's default data dir (`data_dir: None` drops the folder's),
  # where the other Fashion-MNIST tests prepare it once.
  config = folder_config()
  size = pipeline.example_spec(
      config.data, pipeline.open_source(config.data,
                                        config.data.train_split))["image"]
  config.data.extra_eval_sets = {"fashion_mnist": {
      "name": "fashion_mnist", "split": "test[:40]", "image_text": None,
      "data_dir": None,
      "eval_preprocess": f"gray_to_rgb|resize({size.shape[0]})|"
                         "value_range(-1, 1)|keep('image', 'label')"}}
  data_cfg = pipeline.extra_eval_sets(config.data)["fashion_mnist"]
  assert "image_text" not in data_cfg and "image_text" in config.data
  assert "data_dir" not in data_cfg and config.data.data_dir
  s = train.setup(config)
  tx = optim.build_optimizer(config.optimizer, 1, 1)
  init, rng, target = train.abstract_train_state(
      s, config, tx, pipeline.example_spec(
          config.data, pipeline.open_source(config.data,
                                            config.data.eval_split)))
  shardings = jax.tree.map(lambda t: t.sharding, target)
  state = jax.jit(init, out_shardings=shardings)(rng)
  summary = train._run_eval(config, s, train._jit_eval_step(s, shardings),  # pylint: disable=protected-access
                            state, data_cfg)
  assert summary["num_examples"] == 40
  assert set(summary["zero_shot/top1"]) == {"8", "16", "32"}
  assert all(0 <= v <= 1 for v in summary["zero_shot/top1"].values())
  assert "i2t/recall@1" not in summary and "cosine/span" not in summary
