"""A non-finite loss stops the run, names the step and keeps the last good
checkpoint (the poisoned update is never applied or saved)."""
import os

import jax.numpy as jnp
import pytest

from mrl_jax import train
from mrl_jax.data import pipeline


def test_nan_input_stops_run_and_keeps_last_good_checkpoint(
    tmp_path, monkeypatch, config_module):
  original = pipeline.train_batches

  def poisoned(*args, **kwargs):
    for step, batch in enumerate(original(*args, **kwargs), start=1):
      if step == 6:
        batch = {**batch, "image": batch["image"] * jnp.nan}
      yield batch

  monkeypatch.setattr(pipeline, "train_batches", poisoned)
  with pytest.raises(FloatingPointError,
                     match=r"non-finite loss or gradient at step 6; .*"
                     r"last good checkpoint: step 4"):
    train.train_and_evaluate(config_module("default").get_config("smoke"),
                             str(tmp_path))
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["4"]
  assert not (tmp_path / "eval_summary.json").exists()


def test_nan_before_the_first_checkpoint_says_none_was_saved(
    tmp_path, monkeypatch, config_module):
  original = pipeline.train_batches

  def poisoned(*args, **kwargs):
    for batch in original(*args, **kwargs):
      yield {**batch, "image": batch["image"] * jnp.nan}

  monkeypatch.setattr(pipeline, "train_batches", poisoned)
  with pytest.raises(FloatingPointError,
                     match=r"at step 1; .*\(no checkpoint was saved\)"):
    train.train_and_evaluate(config_module("default").get_config("smoke"),
                             str(tmp_path))
  assert not os.listdir(tmp_path / "checkpoints")
