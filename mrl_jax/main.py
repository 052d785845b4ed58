r"""Launcher: the only module that defines flags.

  python -m mrl_jax.main --config=configs/default.py[:arg] --workdir=DIR \
      [--mode=train] [--config.field=value ...]

--mode is one of the modes in mrl_jax/modes.py (train, eval, export, knn,
retrieval, adaptive, probe, baselines, export_encoder, aot, check_data);
that table names the function that runs each and what it writes under DIR.
Several processes (one per host or GPU): add --coordinator_address=HOST:PORT
--num_processes=N --process_id=I, or nothing on TPU pods and under SLURM
(mrl_jax/distributed.py). --mode=aot compiles the train step for
--topology=v5e:16x16 (say) on this machine (needs `pip install '.[aot]'`).

A bad flag, a bad config value or a failed run ends in one line
`mrl_jax: error: <what>; <fix>` on stderr and exit code 1; --verbosity=1
also logs the traceback.
"""
import logging as pylogging
import os

from absl import app
from absl import flags
from absl import logging

from mrl_jax import config_lib
from mrl_jax import errors
from mrl_jax import modes

# Before TensorFlow is first imported (by main, or by a config file while the
# flags are parsed; nothing above imports it): the launcher uses only
# tf.data, so TF's C++ INFO lines (its CPU-instruction notice) and, on CPUs
# where TF turns oneDNN on by default (AVX-512 VNNI / BF16), oneDNN's custom
# ops and their "different numerical results" notice, which serve TF's own
# matmuls and convolutions, are off. A user's own values win.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

FLAGS = flags.FLAGS
config_lib.define_config_flag("config", "Config file, optionally with ':arg'.")
flags.DEFINE_string("workdir", None, "Checkpoints, metrics and summaries.")
flags.DEFINE_enum("mode", "train", list(modes.MODES), modes.help_text())
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
  """Drops INFO chatter from orbax and tfds, and orbax's warning that our
  own array handler (checkpointing.py) replaces its default; other warnings
  and errors still pass."""

  def filter(self, record) -> bool:
    noisy = "/orbax/" in record.pathname or "/tensorflow_datasets/" in (
        record.pathname)
    ours = (record.pathname.endswith("type_handler_registry.py")
            and "overriding" in str(record.msg))
    return not ours and (record.levelno > pylogging.INFO or not noisy)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    errors.exit_with(ValueError(f"unexpected arguments {argv[1:]}; flags are "
                                "written --name=value"))
  mode = modes.MODES[FLAGS.mode]
  # Imported here so that --help and flag errors stay fast.
  from mrl_jax import platforms  # pylint: disable=import-outside-toplevel
  platforms.use_cpu_if_no_accelerator()  # before any JAX backend starts
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from mrl_jax import distributed  # pylint: disable=import-outside-toplevel
  logging.get_absl_handler().addFilter(_QuietLibraries())
  tf.config.set_visible_devices([], "GPU")  # tf.data only; JAX owns the GPUs.
  runner = modes.resolve(mode.runner)
  try:
    if mode.distributed:
      distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                             FLAGS.process_id)
    result = runner(FLAGS.config, FLAGS.workdir,
                    **{name: FLAGS[name].value for name in mode.flags})
  except (ValueError, FloatingPointError, errors.RunError, OSError) as e:
    errors.exit_with(e)
  print(modes.resolve(mode.printer)(result), flush=True)


def run() -> None:
  """Parses the flags (bad ones are one error line) and runs main."""
  app.run(main, flags_parser=errors.parse_flags)


if __name__ == "__main__":
  run()
