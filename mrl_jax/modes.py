"""Every launcher mode in one table: what runs it, what it writes, what it
prints.

`python -m mrl_jax.main --mode=NAME` looks NAME up in `MODES`, calls its
runner as `runner(config, workdir)` and prints `printer(result)` on stdout;
--mode's choices and help come from here too. To find where a mode is
defined, read its entry; to add a mode, add one entry.

Runners and printers are named "module:function" and imported only when their
mode runs, so --help and flag errors stay fast (no TensorFlow, no JAX).
"""
import dataclasses
import importlib
from typing import Any, Callable


@dataclasses.dataclass(frozen=True)
class Mode:
  """One launcher mode.

  Attributes:
    runner: "module:function", called as function(config, workdir, **flags)
      -> result; raises ValueError (bad config) or errors.RunError.
    writes: what the mode writes under the workdir (its summary file), ""
      for nothing.
    printer: "module:function", result -> the text printed on stdout.
    help: what the mode does, for --mode's help.
    flags: launcher flags passed to the runner as keywords of the same name.
    distributed: whether the run's processes join first (mrl_jax/
      distributed.py); false for modes that use no device of this machine.
  """
  runner: str
  writes: str
  printer: str
  help: str
  flags: tuple[str, ...] = ()
  distributed: bool = True


_TABLE = "mrl_jax.tasks:format_summary"
_METRICS = "mrl_jax.embedding_eval:format_result"

MODES: dict[str, Mode] = {
    "train": Mode("mrl_jax.train:train_and_evaluate", "eval_summary.json",
                  _TABLE, "train (resuming from the workdir's checkpoints), "
                  "then evaluate"),
    "eval": Mode("mrl_jax.train:evaluate", "eval_summary.json", _TABLE,
                 "evaluate the latest checkpoint"),
    "export": Mode("mrl_jax.export.embedding_writer:export_embeddings", "embeddings/",
                   "mrl_jax.modes:format_exported", "write the latest "
                   "checkpoint's embeddings of config.export.splits"),
    "knn": Mode("mrl_jax.embedding_eval:knn", "knn_summary.json", _METRICS,
                "k-NN accuracy of the exported eval split (queries) against "
                "the train split (database)"),
    "retrieval": Mode("mrl_jax.embedding_eval:retrieval",
                      "retrieval_summary.json", _METRICS,
                      "mAP@k / P@k / R@k on the same exports"),
    "adaptive": Mode("mrl_jax.embedding_eval:adaptive",
                     "adaptive_summary.json", _METRICS,
                     "MRL-AC cascade on the exported eval logits"),
    "probe": Mode("mrl_jax.embedding_eval:probe", "probe_summary.json",
                  _METRICS, "few-shot linear probes on frozen prefixes"),
    "baselines": Mode("mrl_jax.embedding_eval:baselines",
                      "baselines_summary.json", _METRICS,
                      "SVD / random features of an FF-full model"),
    "pairs": Mode("mrl_jax.embedding_eval:pairs", "pairs_summary.json",
                  _METRICS, "1-NN and linear probe on the 100-class task of "
                  "ordered pairs of eval-split classes, on the exports"),
    "export_encoder": Mode("mrl_jax.export.encoder_writer:export_encoder",
                           "encoder/", "mrl_jax.modes:format_encoder",
                           "write the bundle mrl_jax.load_encoder reads"),
    "aot": Mode("mrl_jax.aot:run", "aot_report.json",
                "mrl_jax.aot:format_report",
                "compile the train step for --topology on this machine",
                flags=("topology",), distributed=False),
    "check_data": Mode("mrl_jax.data.check:check_data", "",
                       "mrl_jax.data.check:format_report",
                       "decode every image of the train and eval splits and "
                       "list the unreadable ones", distributed=False),
}


def resolve(name: str) -> Callable[..., Any]:
  """The function "module:function" names, importing its module."""
  module, _, function = name.partition(":")
  return getattr(importlib.import_module(module), function)


def help_text() -> str:
  """--mode's help: each mode, what it does and what it writes."""
  return "; ".join(
      f"{name}: {mode.help}" + (f" (DIR/{mode.writes})" if mode.writes else "")
      for name, mode in MODES.items())


def format_exported(directories: dict[str, str]) -> str:
  """export's result: one "split: directory" line per exported split."""
  return "\n".join(f"{split}: {path}" for split, path in directories.items())


def format_encoder(directory: str) -> str:
  return f"encoder bundle: {directory}"
