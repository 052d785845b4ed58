r"""Launcher: the only module that defines flags.

  python -m mrl_jax.main --config=configs/default.py[:arg] --workdir=DIR \
      [--mode=train|eval] [--config.field=value ...]

mode=train trains (resuming from DIR's checkpoints if any) and evaluates;
mode=eval evaluates DIR's latest checkpoint. Both print the per-dim table and
write DIR/eval_summary.json. mode=export writes the latest checkpoint's
embeddings under DIR/embeddings/ (see mrl_jax/export.py); mode=knn,
retrieval, adaptive, probe and baselines evaluate those per nesting dim
(mrl_jax/embedding_eval.py).
"""
import functools
import logging as pylogging
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Config file, optionally with ':arg'.", lock_config=True)
flags.DEFINE_string("workdir", None, "Checkpoints, metrics and summaries.")
flags.DEFINE_enum("mode", "train",
                  ["train", "eval", "export", "knn", "retrieval", "adaptive",
                   "probe", "baselines"],
                  "train (then evaluate), eval (latest checkpoint), export "
                  "(embeddings of config.export.splits), or knn / retrieval "
                  "on the exported train (database) and eval (query) splits, "
                  "adaptive (MRL-AC cascade on the exported eval logits), "
                  "probe (few-shot linear probes on frozen prefixes), "
                  "baselines (SVD / random features of an FF-full model).")
flags.mark_flags_as_required(["config", "workdir"])


class _QuietLibraries(pylogging.Filter):
  """Drops INFO chatter from orbax and tfds; warnings and errors still pass."""

  def filter(self, record) -> bool:
    noisy = "/orbax/" in record.pathname or "/tensorflow_datasets/" in (
        record.pathname)
    return record.levelno > pylogging.INFO or not noisy


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  # Imported here so that --help and flag errors stay fast.
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from mrl_jax import train  # pylint: disable=import-outside-toplevel
  from mrl_jax.evaluators import classification  # pylint: disable=import-outside-toplevel
  logging.get_absl_handler().addFilter(_QuietLibraries())
  tf.config.set_visible_devices([], "GPU")  # tf.data only; JAX owns the GPUs.
  from mrl_jax import embedding_eval  # pylint: disable=import-outside-toplevel
  from mrl_jax import export  # pylint: disable=import-outside-toplevel
  run = {"train": train.train_and_evaluate, "eval": train.evaluate,
         "export": export.export_embeddings,
         **{mode: functools.partial(embedding_eval.run, mode)
            for mode in embedding_eval.MODES},
         }[FLAGS.mode]
  try:
    result = run(FLAGS.config, FLAGS.workdir)
  except (ValueError, FloatingPointError) as e:
    logging.info("stopping on error", exc_info=True)
    sys.exit(f"mrl_jax: error: {e}")
  if FLAGS.mode == "export":
    print("\n".join(f"{split}: {path}" for split, path in result.items()))
  elif FLAGS.mode in embedding_eval.MODES:
    print(embedding_eval.format_result(result), flush=True)
  else:
    print(classification.format_table(result), flush=True)


if __name__ == "__main__":
  app.run(main)
