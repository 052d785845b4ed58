"""Finds backbones and text encoders by name across `mrl_jax.models`."""
import functools
import importlib
import pkgutil
from typing import Any, Callable

import flax.linen as nn

# Modules in mrl_jax.models that are not backbones.
_NOT_BACKBONES = frozenset({"registry", "classifier", "two_tower"})


@functools.cache
def _collect(attr: str) -> dict[str, Callable[..., nn.Module]]:
  """Merges the `attr` dicts (VARIANTS or TEXT_VARIANTS) of every module."""
  import mrl_jax.models as models_pkg  # pylint: disable=import-outside-toplevel
  found = {}
  for info in pkgutil.iter_modules(models_pkg.__path__):
    if info.name in _NOT_BACKBONES or info.name.startswith("_"):
      continue
    module = importlib.import_module(f"mrl_jax.models.{info.name}")
    for name, ctor in getattr(module, attr, {}).items():
      if name in found:
        raise RuntimeError(f"model name {name!r} is defined twice")
      found[name] = ctor
  return found


def _variants() -> dict[str, Callable[..., nn.Module]]:
  return _collect("VARIANTS")


def available_models() -> list[str]:
  """Sorted names accepted by `build_backbone`."""
  return sorted(_variants())


def _build(variants: dict[str, Callable[..., nn.Module]], what: str,
           name: str, overrides: dict[str, Any]) -> nn.Module:
  if name not in variants:
    raise ValueError(
        f"unknown {what} {name!r}; set config.model.name to one of: "
        f"{', '.join(sorted(variants))}")
  return variants[name](**overrides)


def build_backbone(name: str, **overrides: Any) -> nn.Module:
  """Returns the backbone registered as `name`, with keyword overrides."""
  return _build(_variants(), "model", name, overrides)


def _text_variants() -> dict[str, Callable[..., nn.Module]]:
  # Kept apart from the image backbones: a text encoder takes token ids.
  return _collect("TEXT_VARIANTS")


def available_text_encoders() -> list[str]:
  """Sorted names accepted by `build_text_encoder`."""
  return sorted(_text_variants())


def build_text_encoder(name: str, **overrides: Any) -> nn.Module:
  """Returns the text encoder registered as `name`, with keyword overrides.

  Text encoders map token ids [B, L] to sequence and sentence embeddings
  (see `mrl_jax.models.bert.Bert`); they are not image backbones.
  """
  return _build(_text_variants(), "text model", name, overrides)
