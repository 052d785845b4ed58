r"""Launcher: the only module that defines flags.

  python -m mrl_jax.main --config=configs/default.py[:arg] --workdir=DIR \
      [--mode=train|eval] [--config.field=value ...]
  python -m mrl_jax.main --mode=aot --topology=v5e:16x16 --config=... \
      --workdir=DIR

mode=train trains (resuming from DIR's checkpoints if any) and evaluates;
mode=eval evaluates DIR's latest checkpoint. Both print the per-dim table and
write DIR/eval_summary.json. mode=export writes the latest checkpoint's
embeddings under DIR/embeddings/ (see mrl_jax/export.py); mode=knn,
retrieval, adaptive, probe and baselines evaluate those per nesting dim
(mrl_jax/embedding_eval.py).
mode=export_encoder writes DIR/encoder, a bundle for mrl_jax.load_encoder.
mode=check_data decodes every image of the train and eval splits of an image
folder and lists the unreadable ones (mrl_jax/data/check.py).
Several processes (one per host or GPU): add --coordinator_address=HOST:PORT
--num_processes=N --process_id=I, or nothing on TPU pods and under SLURM
(mrl_jax/distributed.py).
mode=aot compiles the train step for a TPU topology on this machine and
writes DIR/aot_report.{json,txt} (mrl_jax/aot.py; needs `pip install
'.[aot]'`).
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
                   "probe", "baselines", "export_encoder", "aot",
                   "check_data"],
                  "train (then evaluate), eval (latest checkpoint), export "
                  "(embeddings of config.export.splits), or knn / retrieval "
                  "on the exported train (database) and eval (query) splits, "
                  "adaptive (MRL-AC cascade on the exported eval logits), "
                  "probe (few-shot linear probes on frozen prefixes), "
                  "baselines (SVD / random features of an FF-full model), "
                  "export_encoder (DIR/encoder for mrl_jax.load_encoder), aot "
                  "(compile the train step for --topology), or check_data "
                  "(decode every image of the train and eval splits).")
flags.DEFINE_string("topology", None, "--mode=aot: TPU slice to compile for, "
                    "GENERATION:SHAPE, e.g. v5e:16x16, v4:2x2x2.")
flags.DEFINE_string("coordinator_address", None, "Multi-process runs: "
                    "HOST:PORT of process 0 (not needed on TPU pods or under "
                    "SLURM, where JAX finds it).")
flags.DEFINE_integer("num_processes", None, "Multi-process runs: how many.")
flags.DEFINE_integer("process_id", None, "Multi-process runs: this process's "
                     "index, 0..num_processes-1.")
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
  from mrl_jax import platforms  # pylint: disable=import-outside-toplevel
  platforms.use_cpu_if_no_accelerator()  # before any JAX backend starts
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from mrl_jax import train  # pylint: disable=import-outside-toplevel
  from mrl_jax.evaluators import classification  # pylint: disable=import-outside-toplevel
  logging.get_absl_handler().addFilter(_QuietLibraries())
  tf.config.set_visible_devices([], "GPU")  # tf.data only; JAX owns the GPUs.
  from mrl_jax import embedding_eval  # pylint: disable=import-outside-toplevel
  from mrl_jax import encoder  # pylint: disable=import-outside-toplevel
  from mrl_jax import export  # pylint: disable=import-outside-toplevel
  from mrl_jax import aot  # pylint: disable=import-outside-toplevel
  from mrl_jax.data import check  # pylint: disable=import-outside-toplevel
  run = {"train": train.train_and_evaluate, "eval": train.evaluate,
         "export": export.export_embeddings,
         **{mode: functools.partial(embedding_eval.run, mode)
            for mode in embedding_eval.MODES},
         "export_encoder": encoder.export_encoder,
         "aot": functools.partial(aot.run, topology=FLAGS.topology),
         "check_data": check.check_data,
         }[FLAGS.mode]
  from mrl_jax import distributed  # pylint: disable=import-outside-toplevel
  from mrl_jax import errors  # pylint: disable=import-outside-toplevel
  try:
    if FLAGS.mode != "aot":  # aot compiles for devices it does not run on
      distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                             FLAGS.process_id)
    result = run(FLAGS.config, FLAGS.workdir)
  except (ValueError, FloatingPointError, errors.RunError) as e:
    logging.info("stopping on error", exc_info=True)
    sys.exit(f"mrl_jax: error: {e}")
  if FLAGS.mode == "export":
    print("\n".join(f"{split}: {path}" for split, path in result.items()))
  elif FLAGS.mode == "export_encoder":
    print(f"encoder bundle: {result}")
  elif FLAGS.mode == "aot":
    print(aot.format_report(result), flush=True)
  elif FLAGS.mode == "check_data":
    print(check.format_report(result), flush=True)
  elif FLAGS.mode in embedding_eval.MODES:
    print(embedding_eval.format_result(result), flush=True)
  else:
    print(classification.format_table(result), flush=True)


if __name__ == "__main__":
  app.run(main)
