"""Export settings are validated before any work (the end-to-end export runs
in train_test.py, through the launcher)."""
import os

import pytest

from mrl_jax import export


def test_defaults_and_path_safe_split_names(config_module):
  settings = export._export_settings(  # pylint: disable=protected-access
      config_module("default").get_config())
  assert settings == {"splits": ("train", "test"), "dtype": "float16",
                      "examples_per_shard": 20_000,
                      "logits_splits": ("test",), "flip_tta": True,
                      "views": None}
  assert export.split_dir("W", "ds", "train[:10%]").endswith(
      os.path.join("embeddings", "ds", "train_10%"))


@pytest.mark.parametrize("field,value,match", [
    ("dtype", "int8", "config.export.dtype"),
    ("examples_per_shard", 100, "multiple of the per-process eval batch 64"),
    ("views.count", -2, "views.count=-2 must be an int >= 0"),
    ("views.preprocess", "flip_lr|blur", "unknown preprocess op 'blur'"),
])
def test_bad_export_settings(field, value, match, config_module):
  config = config_module("default").get_config("smoke")
  config.export.views.count = 2  # views are checked when asked for
  *path, name = f"export.{field}".split(".")
  section = config
  for key in path:
    section = section[key]
  section[name] = value
  with pytest.raises(ValueError, match=match):
    export._export_settings(config)  # pylint: disable=protected-access
