"""Export settings are validated before any work (the end-to-end export runs
in train_test.py, through the launcher)."""
import importlib.util
import os

import pytest

from mrl_jax import export

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(arg="smoke"):
  spec = importlib.util.spec_from_file_location(
      "default_config", os.path.join(REPO, "configs", "default.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def test_defaults_and_path_safe_split_names():
  settings = export._export_settings(_config(""))  # pylint: disable=protected-access
  assert settings == {"splits": ("train", "test"), "dtype": "float16",
                      "examples_per_shard": 20_000}
  assert export.split_dir("W", "ds", "train[:10%]").endswith(
      os.path.join("embeddings", "ds", "train_10%"))


@pytest.mark.parametrize("field,value,match", [
    ("dtype", "int8", "config.export.dtype"),
    ("examples_per_shard", 100, "multiple of the per-process eval batch 64"),
])
def test_bad_export_settings(field, value, match):
  config = _config()
  config.export[field] = value
  with pytest.raises(ValueError, match=match):
    export._export_settings(config)  # pylint: disable=protected-access
