"""Sharding rules: golden PartitionSpecs for the shipped configs, rule errors.

The golden files tests/golden/sharding/<config>.<strategy>.json hold the full
{path: spec} maps of the parameters and the optimizer state (and the notes on
splits that fell back) on a mesh of 8 fake CPU devices, computed from
jax.eval_shape (nothing is initialised). After an intended change, rewrite
them and review the diff:

  MRL_JAX_REGENERATE_GOLDEN=1 python -m pytest tests/sharding_rules_test.py
"""
import functools
import json
import os
import pathlib

import jax
import ml_collections
import pytest
from jax.sharding import PartitionSpec as P

from mrl_jax import optim
from mrl_jax import sharding
from mrl_jax import sharding_rules
from mrl_jax import train
from mrl_jax import train_step as step_lib

GOLDEN = pathlib.Path(__file__).parent / "golden" / "sharding"
REGENERATE = os.environ.get("MRL_JAX_REGENERATE_GOLDEN") == "1"
MESHES = {
    "dp": (("data", -1),),
    "fsdp": (("data", 1), ("fsdp", -1)),
    "fsdp_tp": (("data", 1), ("fsdp", 4), ("model", 2)),
}
CONFIGS = ("vit_b16_imagenet", "vit_b16_jft", "resnet50_imagenet")


@functools.cache
def _abstract_state(config_module, name: str):
  """Shapes of the train state of configs/<name>.py (mesh-independent)."""
  config = config_module(name).get_config()
  s = train.setup(config)
  tx = optim.build_optimizer(config.optimizer, 10, 1)
  init = functools.partial(step_lib.create_train_state, s.model, tx,
                           image_shape=(224, 224, 3))
  return config, jax.eval_shape(init, jax.random.key(0, impl="rbg"))


def _tables(config_module, name: str, strategy: str) -> dict:
  config, abstract = _abstract_state(config_module, name)
  config = config.copy_and_resolve_references()
  config.mesh = MESHES[strategy]
  config.sharding.strategy = strategy
  s = train.setup(config)
  shardings = train.train_state_shardings(abstract, s)
  _, notes = sharding_rules.param_specs(abstract.params, s.sharding_rules,
                                        s.mesh)
  return {"mesh": dict(s.mesh.shape),
          "params": sharding_rules.spec_table(shardings.params),
          "opt_state": sharding_rules.spec_table(shardings.opt_state),
          "batch_stats": sharding_rules.spec_table(shardings.batch_stats),
          "notes": notes}


@pytest.mark.parametrize("strategy", MESHES)
@pytest.mark.parametrize("name", CONFIGS)
def test_golden_partition_specs(config_module, name, strategy):
  got = _tables(config_module, name, strategy)
  path = GOLDEN / f"{name}.{strategy}.json"
  if REGENERATE:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
  want = json.loads(path.read_text())
  for key in want:
    if isinstance(want[key], dict):
      changed = sorted(k for k in set(want[key]) | set(got[key])
                       if want[key].get(k) != got[key].get(k))
      assert not changed, (f"{key} specs differ from {path.name} for "
                           f"{changed[:5]} (of {len(changed)})")
  assert got == want


@pytest.mark.parametrize("name", CONFIGS)
def test_fsdp_splits_every_divisible_parameter(config_module, name):
  """Independent of the golden files: what FSDP must do on fsdp=8.

  (The heads have their own rules: the kernel's nesting dim over fsdp, the
  class dim over model; tested below.)
  """
  got = _tables(config_module, name, "fsdp")
  _, abstract = _abstract_state(config_module, name)
  flat = jax.tree_util.tree_flatten_with_path(abstract.params)[0]
  for path, leaf in flat:
    key = jax.tree_util.keystr(path, simple=True, separator="/")
    spec = got["params"][key]
    if key.startswith("head/"):
      assert spec == (["fsdp"] if key.endswith("kernel") and
                      leaf.shape[0] % 8 == 0 else []), key
    elif any(n % 8 == 0 for n in leaf.shape):
      assert spec.count("fsdp") == 1, (path, leaf.shape, spec)
      # The split dim is a largest dim that 8 divides.
      dim = spec.index("fsdp")
      assert leaf.shape[dim] == max(n for n in leaf.shape if n % 8 == 0)
    else:
      assert spec == []
  # Optimizer moments follow their parameter; step counters are replicated.
  for key, spec in got["opt_state"].items():
    moment = key.split("/mu/", 1)[-1].split("/trace/", 1)[-1]
    if moment != key:
      assert spec == got["params"][moment.split("/nu/", 1)[-1]], key
    elif key.endswith("count"):
      assert spec == []


def test_tensor_parallel_splits_vit_heads_and_mlp(config_module):
  got = _tables(config_module, "vit_b16_imagenet", "fsdp_tp")["params"]
  block = "backbone/block_3"
  assert got[f"{block}/attn/query/kernel"] == ["fsdp", "model"]
  assert got[f"{block}/attn/out/kernel"] == ["model", None, "fsdp"]
  assert got[f"{block}/mlp/fc1/kernel"] == ["fsdp", "model"]
  assert got[f"{block}/mlp/fc2/kernel"] == ["model", "fsdp"]
  # Class dim of every MRL head over `model` (1000 classes split in two).
  heads = [k for k in got if k.startswith("head/")]
  assert heads and all(got[k][-1] == "model" for k in heads)
  # Batch over (data, fsdp).
  s_mesh = sharding.make_train_mesh(MESHES["fsdp_tp"])
  assert sharding.batch_spec(s_mesh) == P(("data", "fsdp"))
  assert sharding.batch_shards(s_mesh) == 4


def _params():
  shapes = {"backbone": {"w": (6, 8), "v": (3, 5)}, "head": {"bias": (10,)}}
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s, "float32"), shapes,
                      is_leaf=lambda x: isinstance(x, tuple))


def test_user_rules_come_first_and_fall_back_with_notes():
  mesh = sharding.make_train_mesh(MESHES["fsdp_tp"])
  rules = sharding_rules.resolve_rules(
      "fsdp", [("backbone/w", (("fsdp", "model"), None)),
               (".*/bias", ("model",))])
  specs, notes = sharding_rules.param_specs(_params(), rules, mesh)
  assert specs["backbone"]["w"] == P()  # 6 is not divisible by 4 x 2
  assert specs["backbone"]["v"] == P()  # fsdp: no dim divisible by 4
  assert specs["head"]["bias"] == P("model")
  assert notes == [
      "backbone/v [3, 5]: no dim divisible by fsdp=4, replicated",
      "backbone/w [6, 8]: dim 0 not divisible by fsdpxmodel=8, not split"]


def test_size_one_axes_are_left_out():
  mesh = sharding.make_train_mesh((("data", -1),))  # fsdp = model = 1
  assert dict(mesh.shape) == {"data": 8, "fsdp": 1, "model": 1}
  specs, notes = sharding_rules.param_specs(
      _params(), sharding_rules.resolve_rules("fsdp_tp"), mesh)
  assert all(s == P() for s in jax.tree.leaves(specs)) and not notes


@pytest.mark.parametrize("strategy,rules,match", [
    ("zero3", (), "unknown config.sharding.strategy 'zero3'"),
    ("dp", [("(", "replicate")], "regex '\\(' is invalid"),
    ("dp", [(".*", "shard")], "has spec 'shard'"),
    ("dp", [(".*", ("tensor",))], "names mesh axis 'tensor'"),
    ("dp", [(".*", ("fsdp", "fsdp"))], "uses an axis twice"),
    ("dp", [(".*",)], "must be a \\(regex, spec\\) pair"),
])
def test_bad_rules_raise_one_line(strategy, rules, match):
  with pytest.raises(ValueError, match=match):
    sharding_rules.resolve_rules(strategy, rules)


def test_spec_longer_than_rank_raises():
  mesh = sharding.make_train_mesh(MESHES["dp"])
  rules = sharding_rules.resolve_rules("dp", [(".*bias", (None, "data"))])
  with pytest.raises(ValueError, match="gives 2 dims but head/bias"):
    sharding_rules.param_specs(_params(), rules, mesh)


def test_bad_mesh_axis_and_config_sharding_errors(config_module):
  with pytest.raises(ValueError, match="config.mesh axis 'tensor' is unknown"):
    sharding.make_train_mesh((("data", -1), ("tensor", 1)))
  config = config_module("default").get_config("smoke")
  config.sharding.strategy = "fsdp_tp"
  config.mesh = (("data", 1), ("fsdp", 4), ("model", 2))
  config.batch_size = 6
  with pytest.raises(ValueError, match="not divisible by the 4 batch shards"):
    train.setup(config)
  assert sharding_rules.from_config(None) == sharding_rules.resolve_rules(
      "dp")
  assert sharding_rules.from_config(ml_collections.ConfigDict(
      {"strategy": "fsdp"}))[-1][1] == "fsdp"
