"""Nesting lists M: which prefixes z[:m] of the embedding are trained.

The paper halves from the embedding size d down to a low-information floor
(8 for ResNet-50: {8, 16, ..., 2048}); ViT-B/16 uses {12, 24, ..., 768}.
"""
from collections.abc import Sequence
import math


def default_nesting(embedding_dim: int, smallest: int = 8) -> tuple[int, ...]:
  """Halves from `embedding_dim` down to `smallest` (inclusive), ascending.

  2048 -> (8, 16, ..., 2048); 768 with smallest=12 -> (12, 24, ..., 768).
  A dimension that does not halve evenly ends the list.
  """
  if embedding_dim < 1:
    raise ValueError(f"embedding dim must be positive, got {embedding_dim}")
  dims = [embedding_dim]
  while dims[-1] % 2 == 0 and dims[-1] // 2 >= smallest:
    dims.append(dims[-1] // 2)
  return tuple(reversed(dims))


def validate_nesting(dims: Sequence[int], embedding_dim: int) -> tuple[int, ...]:
  """Checks a user-given nesting list; returns it as a tuple of ints.

  Raises:
    ValueError: one line naming what is wrong and how to fix it.
  """
  fix = ("set config.mrl.nesting_dims to strictly increasing positive ints "
         f"no larger than the embedding dim {embedding_dim}, e.g. "
         f"{default_nesting(embedding_dim)}")
  dims = tuple(dims)
  if not dims:
    raise ValueError(f"nesting list is empty; {fix}")
  if not all(isinstance(m, int) and not isinstance(m, bool) for m in dims):
    raise ValueError(f"nesting list {dims} has non-integer entries; {fix}")
  if min(dims) <= 0:
    raise ValueError(f"nesting list {dims} has non-positive dims; {fix}")
  if any(a >= b for a, b in zip(dims, dims[1:])):
    raise ValueError(f"nesting list {dims} is not strictly increasing; {fix}")
  if dims[-1] > embedding_dim:
    raise ValueError(
        f"nesting dim {dims[-1]} exceeds the embedding dim {embedding_dim}; "
        f"{fix}")
  return dims


def validate_relative_importance(
    weights: Sequence[float] | None, num_dims: int) -> tuple[float, ...]:
  """Returns c_m per nesting dim (default all ones, as in the paper).

  Raises:
    ValueError: not one finite, non-negative weight per dim, or all zero
      (nothing would be trained).
  """
  if weights is None:
    return (1.0,) * num_dims
  weights = tuple(float(w) for w in weights)
  fix = (f"set config.mrl.relative_importance to {num_dims} finite weights "
         f">= 0, at least one positive, e.g. {(1.0,) * num_dims}, or leave it "
         "None for all ones")
  if len(weights) != num_dims:
    raise ValueError(f"relative importance {weights} has {len(weights)} "
                     f"entries for {num_dims} nesting dims; {fix}")
  if not all(math.isfinite(w) and w >= 0 for w in weights):
    raise ValueError(f"relative importance {weights} has negative or "
                     f"non-finite entries; {fix}")
  if not any(weights):
    raise ValueError(f"relative importance {weights} is all zero, so the "
                     f"loss is 0 and nothing trains; {fix}")
  return weights
