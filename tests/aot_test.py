"""--mode=aot: topology parsing, example specs and errors. The compiles
themselves are tests/integration/aot_compile_test.py."""
import importlib.util
import sys

import pytest

from mrl_jax import aot

HAVE_LIBTPU = importlib.util.find_spec("libtpu") is not None
needs_libtpu = pytest.mark.skipif(
    not HAVE_LIBTPU, reason="libtpu not installed: pip install '.[aot]'")


def test_bad_topology_names_fail_in_one_line():
  with pytest.raises(ValueError, match="not GENERATION:AxBxC"):
    aot.parse_topology("v5e-256")
  with pytest.raises(ValueError, match="unknown TPU generation 'v9'.*v5e"):
    aot.parse_topology("v9:2x2")


@needs_libtpu
def test_shape_libtpu_rejects_is_a_value_error():
  with pytest.raises(ValueError, match="cannot build topology 'v5e:3x7'"):
    aot.topology_devices("v5e:3x7")


def test_missing_libtpu_names_the_extra(monkeypatch):
  # None in sys.modules is how Python marks a module as not importable.
  monkeypatch.setitem(sys.modules, "libtpu", None)
  with pytest.raises(ValueError, match=r"pip install '\.\[aot\]'"):
    aot.topology_devices("v5e:2x2")


def test_example_spec_follows_the_preprocessing(config_module):
  jft = config_module("vit_b16_jft").get_config("num_classes=50")
  spec = aot.example_spec(jft)
  assert spec["image"].shape == (224, 224, 3)
  assert spec["label"].shape == (50,)  # multi-hot targets
  rn50 = config_module("resnet50_imagenet").get_config("smoke")
  spec = aot.example_spec(rn50)
  # Progressive resizing 32 -> 64 in smoke: the largest size (memory peak).
  assert spec["image"].shape == (64, 64, 3)
  assert spec["label"].shape == () and spec["label"].dtype.kind == "i"


def test_example_spec_of_the_align_config_needs_no_data(config_module):
  """configs/align_vit_b16_bert.py names a dataset that need not exist:
  the shapes come from its preprocess strings alone."""
  spec = aot.example_spec(config_module("align_vit_b16_bert").get_config())
  assert spec["image"].shape == (224, 224, 3)
  assert spec["image"].dtype.kind == "f"
  assert spec["input_ids"].shape == spec["input_mask"].shape == (64,)
  assert spec["label"].shape == ()
