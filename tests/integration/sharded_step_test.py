"""The real train step under fsdp and fsdp_tp gives the dp losses and weights.

Tiny ViT (vit_mu) and ResNet (resnet_mu) from the smoke configs, 3 steps on
one fixed batch, on 8 fake CPU devices; the same for nested MLM (bert_mu
from configs/bert_base_mlm.py's smoke run) against one device. Every
strategy starts from the same initial state (initialised once, then placed
with each strategy's shardings), so only the partitioning differs.
"""
import functools
import json
import pathlib
import shlex
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from mrl_jax import aot
from mrl_jax import optim
from mrl_jax import train
from mrl_jax.data import preprocess


MESHES = {
    "dp": (("data", -1),),
    "fsdp": (("data", 2), ("fsdp", 4)),
    "fsdp_tp": (("data", 1), ("fsdp", 4), ("model", 2)),
}
IMAGE_SHAPE = (32, 32, 3)
IMAGE_EXAMPLE = {"image": jax.ShapeDtypeStruct(IMAGE_SHAPE, jnp.float32)}


def sharded_setup(config, example=None, devices=None):
  """(setup, optimizer, state shardings, init fn) for a config.

  Args:
    example: one example's shapes (default: a 32 x 32 image).
    devices: the mesh's devices (default: all 8).
  """
  s = train.setup(config, devices)
  tx = optim.build_optimizer(config.optimizer, 10, 4)
  init, _, target = train.abstract_train_state(s, config, tx,
                                               example or IMAGE_EXAMPLE)
  return s, tx, jax.tree.map(lambda t: t.sharding, target), init


def image_batch(config, batch_size: int = 16):
  """A fixed batch of random images and labels."""
  gen = np.random.default_rng(0)
  return {"image": jnp.asarray(gen.normal(size=(batch_size, *IMAGE_SHAPE)),
                               jnp.float32),
          "label": jnp.asarray(gen.integers(0, config.data.num_classes,
                                            batch_size))}


def run_steps(config, initial, batch=None, example=None, devices=None,
              num_steps: int = 3):
  """Per-step metrics (each stacked to [num_steps, ...]) and the final state
  of the real jitted step, on `batch` (default: `image_batch`)."""
  s, tx, shardings, _ = sharded_setup(config, example, devices)
  state = jax.device_put(initial, shardings)
  step = train.jit_train_step(s, tx, shardings, seed=0)
  batch = image_batch(config) if batch is None else batch
  metrics = []
  for _ in range(num_steps):
    state, out = step(state, batch)
    metrics.append(jax.tree.map(np.asarray, out))
  return jax.tree.map(lambda *x: np.stack(x), *metrics), state


def assert_params_close(params, want):
  """Equal to float tolerance, except the attention key biases.

  Softmax is shift-invariant, so a key bias's exact gradient is 0 and Adam
  scales rounding noise up to lr-sized steps: no reference can match them.
  """
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  bad = [(jax.tree_util.keystr(p), float(np.abs(a - b).max()))
         for (p, a), b in zip(flat, jax.tree.leaves(want))
         if "'key'" not in jax.tree_util.keystr(p)
         and not np.allclose(a, b, rtol=1e-3, atol=1e-5)]
  assert not bad


@functools.cache
def _dp_reference(config_module, name):
  """Initial state (host numpy), dp losses and dp final params."""
  config = config_module(name).get_config("smoke")
  _, _, shardings, init = sharded_setup(config)
  rng = jax.random.key(0, impl="rbg")
  initial = jax.tree.map(np.asarray,
                         jax.jit(init, out_shardings=shardings)(rng))
  metrics, state = run_steps(config, initial)
  return initial, metrics["loss"], jax.tree.map(np.asarray, state.params)


@pytest.mark.parametrize("strategy", ["fsdp", "fsdp_tp"])
@pytest.mark.parametrize("name", ["vit_b16_imagenet", "resnet50_imagenet"])
def test_sharded_strategies_match_data_parallel(config_module, name,
                                                strategy):
  initial, want_losses, want_params = _dp_reference(config_module, name)
  config = config_module(name).get_config("smoke")
  config.mesh = MESHES[strategy]
  config.sharding.strategy = strategy
  metrics, state = run_steps(config, initial)
  np.testing.assert_allclose(metrics["loss"], want_losses, rtol=1e-5)
  assert want_losses[-1] < want_losses[0]  # it trains
  assert_params_close(state.params, want_params)
  # The state really is split as the strategy says, and stays so.
  _, _, shardings, _ = sharded_setup(config)
  got = jax.tree.map(lambda x: x.sharding.spec, state.params)
  assert got == jax.tree.map(lambda s: s.spec, shardings.params)
  assert any(not x.sharding.is_fully_replicated
             for x in jax.tree.leaves(state.params))


def mlm_batch(config, batch_size: int = 16):
  """Random token rows of random lengths ([CLS] ... [SEP], then padding),
  masked by the config's own train preprocessing (mlm_mask), stacked."""
  gen = np.random.default_rng(0)
  seq_len, vocab = config.data.corpus.seq_len, config.data.corpus.vocab_size
  mask = preprocess.build(config.data.train_preprocess)
  rows = []
  for i in range(batch_size):
    length = int(gen.integers(seq_len // 4, seq_len + 1))
    ids = np.zeros(seq_len, np.int32)
    ids[:length] = [2, *gen.integers(5, vocab, length - 2), 3]
    rows.append(mask({"input_ids": tf.constant(ids)},
                     tf.constant([0, i], tf.int64)))
  return {k: jnp.asarray(np.stack([r[k].numpy() for r in rows]))
          for k in rows[0]}


@functools.cache
def _one_device_mlm_reference(config_module):
  """Initial state (host numpy), per-step metrics and final params of the
  nested MLM smoke step on one device."""
  config = _mlm_config(config_module, (("data", 1),), "dp")
  example = aot.example_spec(config)
  devices = jax.devices()[:1]
  _, _, shardings, init = sharded_setup(config, example, devices)
  initial = jax.tree.map(np.asarray, jax.jit(init, out_shardings=shardings)(
      jax.random.key(0, impl="rbg")))
  metrics, state = run_steps(config, initial, mlm_batch(config), example,
                             devices)
  return initial, metrics, jax.tree.map(np.asarray, state.params)


def _mlm_config(config_module, mesh, strategy):
  """configs/bert_base_mlm.py's smoke run (bert_mu, MRL-E at 8, 16, 32) in
  float32, so that only the partitioning, not bfloat16 rounding, differs."""
  config = config_module("bert_base_mlm").get_config("smoke")
  config.model.dtype = "float32"
  config.mesh = mesh
  config.sharding.strategy = strategy
  return config


@pytest.mark.parametrize("strategy", ["dp", "fsdp", "fsdp_tp"])
def test_sharded_mlm_step_matches_one_device(config_module, strategy):
  initial, want, want_params = _one_device_mlm_reference(config_module)
  config = _mlm_config(config_module, MESHES[strategy], strategy)
  example = aot.example_spec(config)
  metrics, state = run_steps(config, initial, mlm_batch(config), example)
  assert want["loss_per_dim"].shape == (3, 3)  # 3 steps x nesting 8, 16, 32
  for key in ("loss", "loss_per_dim", "accuracy_per_dim", "grad_norm"):
    np.testing.assert_allclose(metrics[key], want[key], rtol=1e-5,
                               atol=1e-6, err_msg=key)
  assert want["loss"][-1] < want["loss"][0]  # it trains
  assert_params_close(state.params, want_params)
  _, _, shardings, _ = sharded_setup(config, example)
  got = jax.tree.map(lambda x: x.sharding.spec, state.params)
  assert got == jax.tree.map(lambda s: s.spec, shardings.params)
  if strategy != "dp":  # the tied word embeddings really are split
    assert not state.params["encoder"]["word_embeddings"][
        "embedding"].sharding.is_fully_replicated


def test_grad_accumulation_matches_the_whole_batch(config_module):
  """k = 2 microbatches under fsdp: the dp whole-batch losses and weights."""
  initial, want_losses, want_params = _dp_reference(config_module,
                                                    "vit_b16_imagenet")
  config = config_module("vit_b16_imagenet").get_config("smoke")
  config.mesh = MESHES["fsdp"]
  config.sharding.strategy = "fsdp"
  config.grad_accum_steps = 2  # 16 rows on 8 shards: 1 row each per micro
  metrics, state = run_steps(config, initial)
  np.testing.assert_allclose(metrics["loss"], want_losses, rtol=1e-5)
  assert_params_close(state.params, want_params)


# The scale flags shown in README.md ("Scaling"), run here through the real
# launcher on the ViT smoke config under tfds mock data.
README_FLAGS = (
    "\"--config.mesh=(('data',1),('fsdp',-1),('model',2))\"",
    "--config.sharding.strategy=fsdp_tp",
    "--config.grad_accum_steps=2",
    "--config.model.remat=full",
    "--config.optimizer.state_dtype=bfloat16",
)
MOCK_LAUNCH = """
import sys
import tensorflow_datasets as tfds
from absl import app
from mrl_jax import main
sys.argv = ["mrl_jax.main"] + sys.argv[1:]
with tfds.testing.mock_data(num_examples=32):
  app.run(main.main)
"""


def test_readme_scale_command_trains(tmp_path):
  repo = pathlib.Path(__file__).resolve().parents[2]
  readme = (repo / "README.md").read_text()
  assert all(flag in readme for flag in README_FLAGS)
  workdir = tmp_path / "work"
  cmd = [sys.executable, "-c", MOCK_LAUNCH,
         "--config=configs/vit_b16_imagenet.py:smoke",
         f"--workdir={workdir}", f"--config.data.data_dir={tmp_path}/tfds",
         *(shlex.split(flag)[0] for flag in README_FLAGS)]
  proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  records = [json.loads(line) for line in
             (workdir / "metrics.jsonl").read_text().splitlines()]
  train_losses = [r["train/loss"] for r in records if "train/loss" in r]
  assert train_losses and np.isfinite(train_losses).all()
  assert (workdir / "eval_summary.json").exists()
