"""LiT for the contrastive task (config.contrastive.locked): config checks,
the locked leaves' labels and optimizer, reading a classifier's backbone
from a real Orbax checkpoint into the image tower, and the source checks."""
import os
import shutil

import jax
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from mrl_jax import checkpointing
from mrl_jax import config_lib
from mrl_jax import errors
from mrl_jax import optim
from mrl_jax import param_lock
from mrl_jax import sharding_rules
from mrl_jax import tasks
from mrl_jax import train
from mrl_jax import train_step as step_lib
from conftest import CONFIG_DIR, setup_error

ALIGN = f"{CONFIG_DIR}/align_openclipart.py:smoke"
# align_openclipart:smoke's inputs: 32x32 RGB drawings, 32-token captions.
EXAMPLE = {"image": jax.ShapeDtypeStruct((32, 32, 3), np.float32),
           "input_ids": jax.ShapeDtypeStruct((32,), np.int32),
           "input_mask": jax.ShapeDtypeStruct((32,), np.int32)}


def _align(arg=""):
  return config_lib.load_config(ALIGN + (f",{arg}" if arg else ""))


def _save(workdir, run_setup, state, config):
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"),
                                    run_setup.fingerprint)
  ckpt.save(1, state, config.to_json())
  ckpt.close()


def _classifier_workdir(workdir, image_shape):
  """A classification workdir (configs/default.py:smoke: small_cnn (8, 16)
  -> 32, as align_openclipart:smoke's image tower) whose checkpoint holds
  a backbone for images of `image_shape`, with non-default BatchNorm
  statistics; returns that state."""
  config = config_lib.load_config(f"{CONFIG_DIR}/default.py:smoke")
  run_setup = train.setup(config)
  state = step_lib.create_train_state(
      run_setup.model, optim.build_optimizer(config.optimizer, 1, 1),
      jax.random.key(7), image_shape)
  state = state.replace(batch_stats=jax.tree.map(lambda x: x + 0.5,
                                                 state.batch_stats))
  _save(workdir, run_setup, state, config)
  return state


def _fresh_two_tower(config):
  """(setup, freshly initialised state, its abstract target)."""
  run_setup = train.setup(config)
  tx = train.optimizer(run_setup, 10, 10)
  init, rng, target = train.abstract_train_state(run_setup, config, tx,
                                                 EXAMPLE)
  shardings = jax.tree.map(lambda t: t.sharding, target)
  return run_setup, jax.jit(init, out_shardings=shardings)(rng), target


def _abstract_variables(run_setup):
  return jax.eval_shape(
      lambda rng: run_setup.task.init_variables(run_setup.model, rng,
                                                EXAMPLE), jax.random.key(0))


def test_config_mistakes_are_one_line_errors():
  assert train.setup(_align()).lock is None
  assert "one of image, text" in setup_error(_align("lock=tower,lock_from=/w"))
  assert "needs config.contrastive.locked.from_workdir" in setup_error(
      _align("lock=image"))
  assert "not config.contrastive.locked.tower" in setup_error(
      _align("lock_from=/w"))


def test_the_lock_is_part_of_the_fingerprint():
  plain = train.setup(_align()).fingerprint
  locked = train.setup(_align("lock=image,lock_from=w")).fingerprint
  assert plain["locked"] is None
  assert locked["locked"] == {"tower": "image",
                              "from_workdir": os.path.abspath("w")}
  assert {k: v for k, v in locked.items() if k != "locked"} == {
      k: v for k, v in plain.items() if k != "locked"}


def test_changing_the_lock_is_a_different_run_not_damage(tmp_path):
  config = _align("lock=image,lock_from=a")
  run_setup = train.setup(config)
  _save(str(tmp_path), run_setup, {"x": np.zeros(2)}, config)
  other = train.setup(_align("lock=text,lock_from=a")).fingerprint
  ckpt = checkpointing.Checkpointer(str(tmp_path / "checkpoints"), other,
                                    read_only=True)
  with pytest.raises(checkpointing.IncompatibleCheckpointError,
                     match="locked: checkpoint"):
    ckpt.check_compatible()


def test_labels_mark_the_locked_tower_only():
  run_setup = train.setup(_align("lock=image,lock_from=w"))
  params = _abstract_variables(run_setup)["params"]
  mask = param_lock.locked_mask(params, run_setup.lock)
  assert all(jax.tree.leaves(mask["towers"]["image_tower"]))
  for name in ("text_tower", "image_projection", "text_projection"):
    assert not any(jax.tree.leaves(mask["towers"][name])), name
  assert not mask["log_temperature"]


def test_held_leaves_get_no_update_and_no_state():
  params = {"towers": {"image_tower": {"w": np.ones((3, 4), np.float32)},
                       "text_tower": {"w": np.ones((3, 4), np.float32)}}}
  lock = param_lock.Lock(("towers", "image_tower"), "/w", "the image tower",
                         "field", lambda _: ())
  tx = param_lock.hold(optax.adamw(0.1, weight_decay=0.5), lock)
  state = tx.init(params)
  grads = jax.tree.map(np.ones_like, params)
  updates, _ = tx.update(grads, state, params)
  assert not np.any(updates["towers"]["image_tower"]["w"])
  assert np.all(updates["towers"]["text_tower"]["w"] != 0)
  # Adam's moments exist for the trainable leaf only, at its param path,
  # so the trainer shards them as that parameter.
  assert len(jax.tree.leaves(state)) == 3  # count, mu and nu of text_tower
  specs = {"towers": {"image_tower": {"w": P("fsdp")},
                      "text_tower": {"w": P(None, "fsdp")}}}
  state_specs = jax.tree.leaves(
      sharding_rules.opt_state_specs(state, params, specs))
  assert state_specs.count(P(None, "fsdp")) == 2


def test_a_classifiers_backbone_becomes_the_image_tower(tmp_path):
  source = _classifier_workdir(str(tmp_path / "cls"), (32, 32, 3))
  config = _align(f"lock=image,lock_from={tmp_path / 'cls'}")
  run_setup, fresh, target = _fresh_two_tower(config)
  state = param_lock.load(run_setup.lock, fresh, target)
  for tree in ("params", "batch_stats"):
    got = getattr(state, tree)["towers"]["image_tower"]
    want = getattr(source, tree)["backbone"]
    assert jax.tree.structure(got) == jax.tree.structure(want)
    on = jax.tree.leaves(getattr(target, tree)["towers"]["image_tower"])
    for a, b, t in zip(jax.tree.leaves(got), jax.tree.leaves(want), on):
      np.testing.assert_array_equal(a, b)
      assert a.sharding == t.sharding  # the trainer's, not the source's
  # Everything else is the fresh initialisation.
  for name in ("text_tower", "image_projection", "text_projection"):
    _assert_same(state.params["towers"][name], fresh.params["towers"][name])


def _assert_same(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


def test_an_mlm_encoder_becomes_the_text_tower(tmp_path):
  # configs/text_mlm.py:smoke's BERT-mu at the captions' vocabulary and
  # length: align_openclipart:smoke's text tower.
  config = config_lib.load_config(f"{CONFIG_DIR}/text_mlm.py:smoke")
  config.model.kwargs.update({"vocab_size": 2048, "max_len": 32})
  task = tasks.get(config)
  model = task.build_model(config)
  tokens = jax.ShapeDtypeStruct((32,), np.int32)
  source = step_lib.state_from_variables(
      task.init_variables(model, jax.random.key(7), {
          k: tokens for k in ("input_ids", "segment_ids", "input_mask",
                              "masked_positions")}),
      optim.build_optimizer(config.optimizer, 1, 1))
  fingerprint = {"task": "mlm", "model": config.model.name,
                 "model_kwargs": dict(config.model.kwargs)}
  ckpt = checkpointing.Checkpointer(str(tmp_path / "mlm" / "checkpoints"),
                                    fingerprint)
  ckpt.save(1, source, config.to_json())
  ckpt.close()
  run_setup, fresh, target = _fresh_two_tower(
      _align(f"lock=text,lock_from={tmp_path / 'mlm'}"))
  state = param_lock.load(run_setup.lock, fresh, target)
  _assert_same(state.params["towers"]["text_tower"], source.params["encoder"])
  _assert_same(state.params["towers"]["image_tower"],
               fresh.params["towers"]["image_tower"])
  _assert_same(state.batch_stats, fresh.batch_stats)


def test_source_of_other_shapes_is_refused_before_reading_it(tmp_path):
  # default.py's own inputs: 28x28 grayscale, the same kwargs as the tower.
  _classifier_workdir(str(tmp_path / "cls"), (28, 28, 1))
  config = _align(f"lock=image,lock_from={tmp_path / 'cls'}")
  run_setup = train.setup(config)
  variables = _abstract_variables(run_setup)
  with pytest.raises(ValueError) as e:
    param_lock.check_source(run_setup.lock, variables)
  message = str(e.value)
  assert "\n" not in message and "does not match this config's" in message
  assert "conv0_0/kernel: checkpoint float32[3, 3, 1, 8] vs config " \
         "float32[3, 3, 3, 8]" in message


@pytest.mark.parametrize("arg,error,match", [
    ("lock=image,lock_from={missing}", errors.RunError, "does not exist"),
    ("lock=image,lock_from={empty}", errors.RunError, "has no checkpoint"),
    ("lock=text,lock_from={cls}", ValueError,
     ("holds a classification run, which has no text tower; lock the text "
      "tower from a mlm or contrastive workdir")),
])
def test_bad_sources_are_one_line_errors(tmp_path, arg, error, match):
  _classifier_workdir(str(tmp_path / "cls"), (32, 32, 3))
  (tmp_path / "empty").mkdir()
  config = _align(arg.format(missing=tmp_path / "missing",
                             empty=tmp_path / "empty", cls=tmp_path / "cls"))
  run_setup = train.setup(config)
  variables = _abstract_variables(run_setup)
  with pytest.raises(error, match=match) as e:
    param_lock.check_source(run_setup.lock, variables)
  assert "\n" not in str(e.value)


def test_a_source_with_unreadable_metadata_is_a_one_line_error(tmp_path):
  _classifier_workdir(str(tmp_path / "cls"), (32, 32, 3))
  shutil.rmtree(tmp_path / "cls" / "checkpoints" / "1" / "meta")
  run_setup = train.setup(_align(f"lock=image,lock_from={tmp_path / 'cls'}"))
  with pytest.raises(errors.RunError, match="cannot read the checkpoint at "
                     "step 1 .*; restore its files") as e:
    param_lock.check_source(run_setup.lock, _abstract_variables(run_setup))
  assert "\n" not in str(e.value)


def test_another_backbone_name_is_refused(tmp_path):
  _classifier_workdir(str(tmp_path / "cls"), (32, 32, 3))
  config = _align(f"lock=image,lock_from={tmp_path / 'cls'}")
  config.model.name = "cnn_mu"
  config.model.kwargs = {}
  run_setup = train.setup(config)
  variables = _abstract_variables(run_setup)
  with pytest.raises(ValueError, match="image model is 'small_cnn' .* but "
                     "config.model.name is 'cnn_mu'"):
    param_lock.check_source(run_setup.lock, variables)


def _step_flops(config, run_setup):
  """FLOPs of the lowered train step on a batch of 32 (XLA's count)."""
  tx = train.optimizer(run_setup, 10, 10)
  example = {**EXAMPLE, "label": jax.ShapeDtypeStruct((), np.int64)}
  _, _, target = train.abstract_train_state(run_setup, config, tx, example)
  step = train.jit_train_step(
      run_setup, tx, jax.tree.map(lambda t: t.sharding, target), 0)
  batch = {k: jax.ShapeDtypeStruct((32, *v.shape), v.dtype)
           for k, v in example.items()}
  return step.lower(target, batch).cost_analysis()["flops"]


def test_the_backward_pass_skips_the_locked_tower():
  one_device = jax.devices()[:1]
  plain_config = _align()
  plain = _step_flops(plain_config, train.setup(plain_config, one_device))
  config = _align("lock=image,lock_from=w")
  run_setup = train.setup(config, one_device)
  variables = _abstract_variables(run_setup)
  forward = jax.jit(lambda v, x: run_setup.model.apply(
      v, x, train=False, method=run_setup.model.encode_image)).lower(
          variables, jax.ShapeDtypeStruct((32, 32, 32, 3), np.float32)
      ).cost_analysis()["flops"]
  # The tower's backward costs more than its forward; all of it is gone.
  assert _step_flops(config, run_setup) < plain - forward
