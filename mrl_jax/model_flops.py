"""Analytic multiply-accumulate (MAC) counts of a model's forward pass.

Counted from the traced program (jaxpr), not from XLA's cost model, so it is
an independent reference for the FLOPs a compiler reports: every
`dot_general` and `conv_general_dilated` contributes the multiply-adds its
shapes imply; elementwise work (norms, activations, softmax) is not counted,
as in the usual "ResNet-50 = 4.1 GMACs" convention (timm, fvcore). Training
costs ~3x the forward pass (forward + two backward matmuls), so
training FLOPs per example ~= 6 x forward MACs.
"""
from collections.abc import Callable
import math
from typing import Any

import jax
from jax.extend import core


def _dot_general_macs(eqn) -> int:
  lhs, rhs = (v.aval.shape for v in eqn.invars)
  (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = eqn.params[
      "dimension_numbers"]
  contract = math.prod(lhs[d] for d in lhs_contract)
  batch = math.prod(lhs[d] for d in lhs_batch)
  lhs_free = math.prod(n for d, n in enumerate(lhs)
                       if d not in (*lhs_contract, *lhs_batch))
  rhs_free = math.prod(n for d, n in enumerate(rhs)
                       if d not in (*rhs_contract, *rhs_batch))
  return batch * lhs_free * rhs_free * contract


def _conv_macs(eqn) -> int:
  # Each output element is a dot product over the kernel's spatial window and
  # its input-feature dimension (already divided by feature_group_count).
  rhs = eqn.invars[1].aval.shape
  dims = eqn.params["dimension_numbers"]
  out_features = rhs[dims.rhs_spec[0]]
  per_output = math.prod(rhs) // out_features
  return math.prod(eqn.outvars[0].aval.shape) * per_output


def _jaxpr_macs(jaxpr: core.Jaxpr) -> int:
  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      total += _dot_general_macs(eqn)
    elif name == "conv_general_dilated":
      total += _conv_macs(eqn)
    repeat = eqn.params.get("length", 1) if name == "scan" else 1
    for sub in core.jaxprs_in_params(eqn.params):
      total += repeat * _jaxpr_macs(sub)
  return total


def forward_macs(fn: Callable[..., Any], *args: Any) -> int:
  """Multiply-adds of fn(*args) (arrays or jax.ShapeDtypeStructs)."""
  return _jaxpr_macs(jax.make_jaxpr(fn)(*args).jaxpr)


def model_macs(model, variables: Any, image_shape: tuple[int, ...]) -> int:
  """Forward MACs of `model` for one image of shape [H, W, C].

  Args:
    model: a flax module called as model.apply(variables, images,
      train=False).
    variables: its variables, concrete or as ShapeDtypeStructs.
    image_shape: [H, W, C] of one input image.
  """
  images = jax.ShapeDtypeStruct((1, *image_shape), jax.numpy.float32)
  return forward_macs(
      lambda v, x: model.apply(v, x, train=False), variables, images)
