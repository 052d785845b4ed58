"""Planning a prefix-m scan: which index blocks and columns it reads.

A `Plan` is static and hashable, so it keys the compiled search functions
(one compilation per plan, k and chunk size).
"""
import dataclasses
from typing import Any

from jax import lax
import numpy as np

from mrl_jax.search.index import PrefixIndex

# Prefixes up to this many dims are low-dim scans on CPU: short cache-sized
# chunks and the fused YNNPACK group max (`search.default_chunk_rows`,
# `scan._scan_options`); wider ones are wide scans.
NARROW_DIMS = 64


@dataclasses.dataclass(frozen=True)
class Plan:
  """Static description of a prefix-m scan (hashable: keys compiled fns).

  block_ids: the index blocks read: the low column blocks that tile [0, m)
    when m fits in them, else the whole array alone.
  spans: (start, end) columns read from each of those blocks, the last
    clipped to m.
  rest: columns past the last boundary <= m (0: m is a boundary); their
    squares are added to that boundary's stored norm.
  norm_block: index of the last boundary <= m whose stored norm is reused
    (-1: none).
  whole: the plan reads the whole-array block (a wide prefix).
  """
  block_ids: tuple[int, ...]
  spans: tuple[tuple[int, int], ...]
  rest: int
  norm_block: int
  normalize: bool
  dtype: str
  whole: bool

  @property
  def widths(self) -> tuple[int, ...]:
    return tuple(e - s for s, e in self.spans)

  @property
  def precision(self) -> lax.Precision:
    # float32 data is scored at full precision (GPU default would be TF32,
    # which reorders near neighbours); bfloat16 already is the precision.
    return (lax.Precision.HIGHEST if self.dtype == "float32"
            else lax.Precision.DEFAULT)


def make_plan(index: PrefixIndex, dim: int, queries: Any) -> Plan:
  """Checks dim against the index and the queries [Q, d_q]; plans the scan."""
  if not 1 <= dim <= index.dim:
    raise ValueError(f"prefix dim {dim} outside [1, {index.dim}]")
  if len(np.shape(queries)) != 2 or np.shape(queries)[1] < dim:
    raise ValueError(f"queries must be [Q, >= {dim}], got "
                     f"{np.shape(queries)}")
  low = index.spans[:-1]
  whole = not low or dim > low[-1][1]
  block_ids = ((len(low),) if whole else
               tuple(j for j, (s, _) in enumerate(low) if s < dim))
  spans = tuple((index.spans[j][0], min(index.spans[j][1], dim))
                for j in block_ids)
  below = [b for b in index.boundaries if b <= dim]
  return Plan(block_ids, spans, dim - (below[-1] if below else 0),
              len(below) - 1, index.normalized, index.dtype.name, whole)


def check_k(k: int, available: int, what: str) -> None:
  if not 1 <= k <= available:
    raise ValueError(f"{what}={k} must be in [1, {available}]")
