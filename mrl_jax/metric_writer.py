"""Writes scalar metrics to `workdir/metrics.jsonl` and TensorBoard events.

Only process 0 writes. One JSON object per logged step:
{"step": 100, "train/loss": 3.2, "train/top1/d=8": 0.71, ...}.

A resumed run logs each step once: rows after the step it resumes from
(work lost with the process that wrote them) are dropped when it opens the
file, and a row with the same step and metric names as an existing one
(the final evaluation of a finished run, run again) replaces it.
"""
import json
import os

import jax
from flax.metrics import tensorboard

from mrl_jax import atomic_files


class MetricWriter:
  """Appends scalars to metrics.jsonl and to TensorBoard under workdir.

  Args:
    workdir: the run's directory.
    resume_step: the step training resumes from; rows of later steps in an
      existing metrics.jsonl are dropped.
  """

  def __init__(self, workdir: str, resume_step: int = 0):
    self._active = jax.process_index() == 0
    if self._active:
      os.makedirs(workdir, exist_ok=True)
      self._path = os.path.join(workdir, "metrics.jsonl")
      rows = _read_rows(self._path)
      self._rows = [r for r in rows if r["step"] <= resume_step]
      if len(self._rows) < len(rows):
        atomic_files.write_text(self._path, _as_lines(self._rows))
      self._jsonl = open(self._path, "a")
      self._tb = tensorboard.SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, scalars: dict[str, float]) -> None:
    if not self._active:
      return
    row = {"step": step, **{k: float(v) for k, v in scalars.items()}}
    same = [i for i, r in enumerate(self._rows)
            if r["step"] == step and r.keys() == row.keys()]
    if same:
      self._rows[same[0]] = row
      self._jsonl.close()
      atomic_files.write_text(self._path, _as_lines(self._rows))
      self._jsonl = open(self._path, "a")
    else:
      self._rows.append(row)
      self._jsonl.write(json.dumps(row) + "\n")
      self._jsonl.flush()
    for name, value in row.items():
      if name != "step":
        self._tb.scalar(name, value, step)
    self._tb.flush()

  def close(self) -> None:
    if self._active:
      self._jsonl.close()
      self._tb.close()


def _read_rows(path: str) -> list[dict[str, float]]:
  """The rows of an existing metrics.jsonl; a torn last line is dropped."""
  if not os.path.exists(path):
    return []
  rows = []
  with open(path) as f:
    for line in f:
      try:
        rows.append(json.loads(line))
      except ValueError:  # the writer was killed mid-line
        continue
  return rows


def _as_lines(rows: list[dict[str, float]]) -> str:
  return "".join(json.dumps(r) + "\n" for r in rows)
