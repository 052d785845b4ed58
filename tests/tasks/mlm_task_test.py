"""The mlm task: config checks before any I/O, the eval step's counting,
the workdir's tokenizer, and host-sharded text batches.

Runs on a user text folder (configs/text_folder.py) prepared in a temporary
data_dir, so no Debian package is needed.
"""
import os

import jax
import numpy as np
import pytest

from mrl_jax import errors
from mrl_jax import optim
from mrl_jax import tasks
from mrl_jax import train
from mrl_jax.data import pipeline
from mrl_jax.data import text_corpus
from mrl_jax.data import tokenizer as tok
from mrl_jax.evaluators import mlm as mlm_eval
from mrl_jax.tasks import workdir_tokenizer
from conftest import setup_error

_WORDS = ("river stone light water small large animal plant moves quickly "
          "green red bird flies over under the a of and which is has with "
          "tool made by people used for cutting wood metal house food").split()


@pytest.fixture(name="folder_config", scope="module")
def fixture_folder_config(tmp_path_factory, config_module):
  """config(arg) of configs/text_folder.py over a generated folder."""
  root = tmp_path_factory.mktemp("texts")
  rng = np.random.default_rng(0)
  for f in range(3):
    paragraphs = [" ".join(rng.choice(_WORDS, rng.integers(8, 40)))
                  for _ in range(200)]
    (root / f"doc{f}.txt").write_text("\n\n".join(paragraphs))
  data_dir = tmp_path_factory.mktemp("tfds")
  module = config_module("text_folder")
  return lambda arg="": module.get_config(
      f"root={root},data_dir={data_dir},smoke" + (f",{arg}" if arg else ""))


def test_text_folder_config_needs_a_root(config_module):
  with pytest.raises(ValueError, match="needs root=<dir>"):
    config_module("text_folder").get_config("smoke")


def test_sequence_longer_than_the_position_table_is_refused(folder_config):
  config = folder_config()
  config.model.kwargs.max_len = 32
  assert "--config.model.kwargs.max_len=64" in setup_error(config)


def test_nesting_above_the_hidden_size_is_refused(folder_config):
  config = folder_config()
  config.mrl.nesting_dims = (8, 64)  # bert_mu is 32 wide
  assert "64" in setup_error(config)


def test_masking_vocabulary_must_be_the_models(folder_config):
  config = folder_config()
  config.model.kwargs.vocab_size = 1024
  message = setup_error(config)
  assert "vocab_size=512" in message and "1024" in message


def test_a_config_without_the_mask_op_is_refused(folder_config):
  config = folder_config()
  config.data.train_preprocess = "keep('input_ids')"
  assert "no mlm_mask op" in setup_error(config)


def test_unknown_task_is_refused(folder_config):
  config = folder_config()
  config.task = "translation"
  assert "config.task" in setup_error(config)


def test_ff_head_trains_one_dim(folder_config):
  assert train.setup(folder_config("head=ff,ff_dim=16")).nesting_dims == (16,)
  assert train.setup(folder_config("head=ff")).nesting_dims == (32,)


def _state_and_batch(config):
  s = train.setup(config)
  # The train split: 16 real rows (the validation split has fewer).
  source = pipeline.open_source(config.data, config.data.train_split)
  tx = optim.build_optimizer(config.optimizer, 1, 1)
  init, rng, target = train.abstract_train_state(
      s, config, tx, pipeline.example_spec(config.data, source))
  state = jax.jit(init, out_shardings=jax.tree.map(lambda t: t.sharding,
                                                   target))(rng)
  batches = pipeline.eval_batches(config.data, source, 16,
                                  jax.sharding.NamedSharding(
                                      s.mesh, jax.sharding.PartitionSpec()))
  return s, state, jax.tree.map(np.asarray, next(batches))


def test_eval_step_counts_only_real_predictions_of_real_rows(folder_config):
  s, state, batch = _state_and_batch(folder_config())
  step = jax.jit(s.task.eval_step(s))
  whole = step(state, batch)
  assert batch["mask"].sum() == 16
  assert float(whole["predictions"]) == batch["masked_weights"].sum()
  # Half the rows marked as padding count as if they were not there.
  half = dict(batch, mask=np.where(np.arange(16) < 8, batch["mask"], 0.0))
  first = {k: v[:8] for k, v in batch.items()}
  first = {k: np.concatenate([v, v]) for k, v in first.items()}
  first["mask"] = np.repeat([1.0, 0.0], 8).astype(np.float32)
  for key in ("loss", "correct", "predictions", "count"):
    np.testing.assert_allclose(step(state, half)[key], step(state, first)[key],
                               rtol=1e-5)
  summary = mlm_eval.summarize(jax.tree.map(np.asarray, whole), 0,
                               s.nesting_dims)
  assert summary["task"] == "mlm" and summary["nesting"] == [8, 16, 32]
  assert all(0 <= a <= 1 for a in summary["mlm_accuracy"].values())
  # Untrained: the loss is about log(vocab) at every dim.
  for loss in summary["mlm_loss"].values():
    assert abs(loss - np.log(512)) < 1.0
  assert "MLM acc" in tasks.format_summary(summary)


def test_workdir_keeps_the_tokenizer_and_refuses_another(folder_config,
                                                         tmp_path):
  config = folder_config()
  source = pipeline.open_source(config.data, config.data.train_split)
  task = tasks.get(config)
  task.bind_data(config, source, str(tmp_path), writer=False)
  assert not os.path.exists(tmp_path / workdir_tokenizer.FILE)
  task.bind_data(config, source, str(tmp_path), writer=True)
  kept = (tmp_path / workdir_tokenizer.FILE).read_bytes()
  assert kept == text_corpus.load_tokenizer(source.builder).model_proto
  other = tok.train([" ".join(_WORDS)] * 50, 60)
  (tmp_path / workdir_tokenizer.FILE).write_bytes(other.model_proto)
  with pytest.raises(errors.RunError, match="differs from the dataset"):
    task.bind_data(config, source, str(tmp_path), writer=True)


def test_a_tokenizer_larger_than_the_model_is_refused(folder_config,
                                                      tmp_path):
  config = folder_config()
  source = pipeline.open_source(config.data, config.data.train_split)
  pieces = text_corpus.load_tokenizer(source.builder).vocab_size
  config.model.kwargs.vocab_size = pieces - 1
  with pytest.raises(ValueError, match=f"set it to {pieces}"):
    tasks.get(config).bind_data(config, source, str(tmp_path), writer=True)


def test_text_batches_do_not_depend_on_the_process_count(folder_config):
  config = folder_config()
  config.data.num_shards = 4
  source = pipeline.open_source(config.data, config.data.train_split)

  def global_batches(processes, start=5, n=3):
    streams = [pipeline.process_batches(config.data, source, 16, 0, start, p,
                                        processes) for p in range(processes)]
    return [{k: np.concatenate([b[k] for b in parts]) for k in parts[0]}
            for parts in (tuple(next(s) for s in streams) for _ in range(n))]

  one = global_batches(1)
  for a, b in zip(one, global_batches(2)):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  assert one[0]["input_ids"].shape == (16, 64)
  assert one[0]["masked_ids"].shape == (16, 10)
