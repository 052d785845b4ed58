"""Export settings are validated before any work (the end-to-end export runs
in train_test.py, through the launcher)."""
import os
import subprocess
import sys

import pytest

from mrl_jax import embedding_files
from mrl_jax import export


def test_defaults_and_path_safe_split_names(config_module):
  settings = export._export_settings(  # pylint: disable=protected-access
      config_module("default").get_config())
  assert settings == {"splits": ("train", "test"), "dtype": "float16",
                      "examples_per_shard": 20_000,
                      "logits_splits": ("test",), "flip_tta": True,
                      "views": None}
  assert embedding_files.split_dir("W", "ds", "train[:10%]").endswith(
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


def test_reading_and_evaluating_an_export_imports_neither_tf_nor_flax():
  # Downstream evaluation (and the search benchmark on a bare GPU image) reads
  # exports with numpy and jax alone; a fresh interpreter shows what loads.
  code = ("import sys, mrl_jax.embedding_eval, mrl_jax.embedding_files; "
          "print(sorted(m for m in ('tensorflow', 'flax', 'orbax.checkpoint')"
          " if m in sys.modules))")
  out = subprocess.run([sys.executable, "-c", code], check=True,
                       capture_output=True, text=True).stdout
  assert out.strip() == "[]"


def test_reading_a_missing_or_empty_export_says_how_to_fix_it(tmp_path):
  with pytest.raises(ValueError, match="no finished export.*--mode=export"):
    embedding_files.load_split(str(tmp_path / "nothing_here"))
  (tmp_path / "metadata.json").write_text('{"step": 1}')
  with pytest.raises(ValueError, match="no shard-.*run --mode=export again"):
    embedding_files.load_split(str(tmp_path))


def test_database_and_queries_are_checked_before_any_shard_is_read(tmp_path):
  # Metadata only, no shards: the checkpoint mismatch is found without I/O of
  # the (possibly huge) database.
  for name, step in (("train", 1), ("test", 2)):
    (tmp_path / name).mkdir()
    (tmp_path / name / "metadata.json").write_text(
        f'{{"step": {step}, "nesting": [8]}}')
  with pytest.raises(ValueError, match="different checkpoints"):
    embedding_files.load_database_and_queries(str(tmp_path / "train"),
                                              str(tmp_path / "test"))
  with pytest.raises(ValueError, match="no finished export"):
    embedding_files.load_database_and_queries(str(tmp_path / "train"),
                                              str(tmp_path / "missing"))
