"""The MRL classifier: a registered backbone plus a nested head."""
import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from mrl_jax.models import registry
from mrl_jax.models import vit
from mrl_jax.mrl import heads

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class MRLClassifier(nn.Module):
  """images [B, H, W, C] -> (logits [G, B, C], {"embedding": z [B, d]})."""
  backbone: nn.Module
  head: heads.NestedHead

  def __call__(self, images: jax.Array,
               train: bool) -> tuple[jax.Array, dict[str, jax.Array]]:
    z = self.backbone(images, train=train)
    return self.head(z), {"embedding": z}


def build_model(config: ml_collections.ConfigDict) -> MRLClassifier:
  """Builds the classifier from config.model, config.mrl and config.data.

  Raises:
    ValueError: for an unknown model, dtype, remat, head or a bad nesting list
      (one line each, before anything is compiled).
  """
  backbone = configured_backbone(config.model, registry.build_backbone)
  nesting = config.mrl.nesting_dims
  head = heads.build_head(
      config.mrl.head, backbone.embedding_dim, config.data.num_classes,
      nesting_dims=None if nesting is None else tuple(nesting),
      ff_dim=config.mrl.get("ff_dim"),
      implementation=config.mrl.get("implementation", "fused"))
  return MRLClassifier(backbone=backbone, head=head)


def configured_backbone(model_cfg: ml_collections.ConfigDict,
                        build: Callable[..., nn.Module],
                        section: str = "config.model") -> nn.Module:
  """build(name, dtype=..., **kwargs) of a model section (`section` names
  it in errors), with its remat applied; `build` is a registry builder
  (image backbones or text encoders).

  Raises:
    ValueError: unknown model, dtype or remat, or remat on a model without
      it (one line each).
  """
  if model_cfg.dtype not in DTYPES:
    raise ValueError(f"unknown dtype {model_cfg.dtype!r}; set "
                     f"{section}.dtype to one of {sorted(DTYPES)}")
  kwargs: dict[str, Any] = dict(model_cfg.get("kwargs", {}))
  backbone = build(model_cfg.name, dtype=DTYPES[model_cfg.dtype], **kwargs)
  remat = model_cfg.get("remat", "none")
  if remat not in vit.REMAT_POLICIES:
    raise ValueError(f"unknown remat {remat!r}; set {section}.remat to one "
                     f"of {', '.join(vit.REMAT_POLICIES)}")
  if remat != "none":
    if "remat" not in {f.name for f in dataclasses.fields(backbone)}:
      raise ValueError(f"{section}.remat={remat!r} is supported by ViT "
                       f"and BERT models only; set it to 'none' for "
                       f"{model_cfg.name}")
    backbone = backbone.clone(remat=remat)
  return backbone
