"""Writes scalar metrics to `workdir/metrics.jsonl` and TensorBoard events.

Only process 0 writes. One JSON object per logged step:
{"step": 100, "train/loss": 3.2, "train/top1/d=8": 0.71, ...}.
"""
import json
import os

import jax
from flax.metrics import tensorboard


class MetricWriter:
  """Appends scalars to metrics.jsonl and to TensorBoard under workdir."""

  def __init__(self, workdir: str):
    self._active = jax.process_index() == 0
    if self._active:
      os.makedirs(workdir, exist_ok=True)
      self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
      self._tb = tensorboard.SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, scalars: dict[str, float]) -> None:
    if not self._active:
      return
    scalars = {k: float(v) for k, v in scalars.items()}
    self._jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
    self._jsonl.flush()
    for name, value in scalars.items():
      self._tb.scalar(name, value, step)
    self._tb.flush()

  def close(self) -> None:
    if self._active:
      self._jsonl.close()
      self._tb.close()
