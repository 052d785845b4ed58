"""Config argument parsing, durations, and mesh construction."""
import os
import ml_collections
import pytest

from mrl_jax import config_lib
from mrl_jax import sharding
from mrl_jax.mrl import nesting


def test_parse_arg_types_and_flags():
  arg = config_lib.parse_arg("smoke,head=mrl_e,ff_dim=64", smoke=False,
                             head="mrl", ff_dim=0)
  assert arg.smoke is True and arg.head == "mrl_e" and arg.ff_dim == 64
  assert config_lib.parse_arg(None, smoke=False).smoke is False


def test_parse_arg_rejects_unknown_keys():
  with pytest.raises(ValueError, match="unknown config argument 'smok'"):
    config_lib.parse_arg("smok", smoke=False)


def test_steps_prefers_steps_then_epochs():
  cfg = ml_collections.ConfigDict({"total_steps": None, "total_epochs": 2.5})
  assert config_lib.steps("total", cfg, 100) == 250
  cfg.total_steps = 7
  assert config_lib.steps("total", cfg, 100) == 7
  with pytest.raises(ValueError, match="config.total_steps or"):
    config_lib.steps("total", ml_collections.ConfigDict(
        {"total_steps": None, "total_epochs": None}), 10)


def test_make_mesh_sizes():
  mesh = sharding.make_mesh((("data", -1),))
  assert dict(mesh.shape) == {"data": 8}
  mesh = sharding.make_mesh((("data", 2), ("model", -1)))
  assert dict(mesh.shape) == {"data": 2, "model": 4}


@pytest.mark.parametrize("axes,match", [
    ((("model", -1),), "has no 'data' axis"),
    ((("data", 3),), "needs 3 devices but 8"),
    ((("data", -1), ("model", 3)), "does not divide 8"),
    ((("data", -1), ("model", -1)), "at most one size may be -1"),
])
def test_make_mesh_errors(axes, match):
  with pytest.raises(ValueError, match=match):
    sharding.make_mesh(axes)


def test_load_config_reads_file_and_argument():
  path = os.path.join(os.path.dirname(os.path.dirname(
      os.path.abspath(__file__))), "configs", "resnet50_imagenet.py")
  config = config_lib.load_config(f"{path}:smoke,head=mrl_e,blurpool=False")
  assert config.model.name == "resnet_mu" and config.mrl.head == "mrl_e"
  assert config.model.kwargs.blurpool is False
  assert config_lib.load_config(path).model.kwargs.blurpool is True
  with pytest.raises(ValueError, match="does not exist"):
    config_lib.load_config("configs/nope.py:smoke")


def test_parse_arg_names_a_value_of_the_wrong_type():
  with pytest.raises(ValueError, match="config argument dim='abc' is not of "
                     "type int; write dim=<int>"):
    config_lib.parse_arg("dim=abc", dim=128)


def test_check_field_accepts_real_fields_and_suggests_close_ones():
  config = ml_collections.ConfigDict(
      {"optimizer": {"learning_rate": 0.1, "name": "sgd"}, "batch_size": 8,
       "mesh": (("data", -1),)})
  for path in ("optimizer.learning_rate", "batch_size", "mesh[0]"):
    config_lib.check_field(config, path)
  with pytest.raises(ValueError, match=r"--config.optimizer.learning_rat "
                     "names no config field; did you mean "
                     "--config.optimizer.learning_rate"):
    config_lib.check_field(config, "optimizer.learning_rat")
  with pytest.raises(ValueError, match="--config.optimizer.lr names no "
                     "config field; config.optimizer has learning_rate, name$"):
    config_lib.check_field(config, "optimizer.lr")
  with pytest.raises(ValueError, match="did you mean --config.batch_size\\?"):
    config_lib.check_field(config, "batchsize")


@pytest.mark.parametrize("weights,match", [
    ((0, 0, 0), r"is all zero, so the loss is 0 and nothing trains"),
    ((1, -1, 1), "has negative or non-finite entries"),
    ((1, float("nan"), 1), "has negative or non-finite entries"),
    ((1, 1), "has 2 entries for 3 nesting dims"),
])
def test_relative_importance_must_train_something(weights, match):
  with pytest.raises(ValueError, match=f"{match}; set "
                     r"config.mrl.relative_importance to 3 finite weights"):
    nesting.validate_relative_importance(weights, 3)
  assert nesting.validate_relative_importance((0, 0, 2), 3) == (0.0, 0.0, 2.0)
