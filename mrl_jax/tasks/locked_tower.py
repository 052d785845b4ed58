"""LiT for the contrastive task: one tower initialised from another
workdir's checkpoint and locked (param_lock.py), its projection to d
trained as the other tower is.

config.contrastive.locked = {"tower": None | "image" | "text",
"from_workdir": a workdir}. Sources, by the task they were trained with:
  image: classification (its `backbone`) or contrastive (its image tower);
  text: mlm (its `encoder`) or contrastive (its text tower).
The source's model must have config.model's (image) or config.text_model's
(text) name, and its arrays the shapes this config's tower has (the same
kwargs and input shape): both are checked before anything is compiled.
"""
import functools
import os
from typing import Any

import ml_collections

from mrl_jax import param_lock
from mrl_jax.models import two_tower

FIELD = "config.contrastive.locked"

# (tower, source task) -> (the tower's keys in the source's params, the
# source fingerprint's field naming its model).
_SOURCES = {
    ("image", "classification"): (("backbone",), "model"),
    ("image", "contrastive"): (("towers", "image_tower"), "model"),
    ("text", "mlm"): (("encoder",), "model"),
    ("text", "contrastive"): (("towers", "text_tower"), "text_model"),
}
_SECTIONS = {"image": "config.model", "text": "config.text_model"}


def tower(config: ml_collections.ConfigDict) -> str | None:
  """The tower config.contrastive.locked names (None: train both).

  Raises:
    ValueError: an unknown tower, or a tower without a source workdir (or
      the other way round).
  """
  lock = config.contrastive.get("locked") or {}
  name, source = lock.get("tower"), lock.get("from_workdir")
  if not name and not source:
    return None
  if not name:
    raise ValueError(f"{FIELD}.from_workdir is set but not {FIELD}.tower; "
                     f"set it to the tower to lock, one of "
                     f"{', '.join(two_tower.LOCKABLE)}")
  if name not in two_tower.LOCKABLE:
    raise ValueError(f"{FIELD}.tower={name!r} is not a tower; set it to "
                     f"one of {', '.join(two_tower.LOCKABLE)} (or unset "
                     f"both {FIELD} fields to train both towers)")
  if not source:
    raise ValueError(f"{FIELD}.tower={name!r} needs {FIELD}.from_workdir, "
                     f"the workdir whose checkpoint holds the {name} tower "
                     f"(e.g. lock={name},lock_from=/path/to/workdir)")
  return name


def from_config(config: ml_collections.ConfigDict) -> param_lock.Lock | None:
  """The locked tower as a param_lock.Lock, without any I/O."""
  name = tower(config)
  if name is None:
    return None
  section = config.model if name == "image" else config.text_model
  return param_lock.Lock(
      path=("towers", f"{name}_tower"),
      from_workdir=os.path.abspath(config.contrastive.locked.from_workdir),
      what=f"the {name} tower", field=f"{FIELD}.from_workdir",
      source_path=functools.partial(_source_path, name, section.name))


def fingerprint(config: ml_collections.ConfigDict) -> dict[str, str] | None:
  """What a checkpoint records of the lock (None: both towers train)."""
  lock = from_config(config)
  return lock and {"tower": tower(config), "from_workdir": lock.from_workdir}


def _source_path(name: str, model: str,
                 source: dict[str, Any]) -> param_lock.Path:
  """The keys of tower `name` in the params of a run of fingerprint
  `source`, whose model there must be `model`."""
  task = source.get("task", "classification")
  if (name, task) not in _SOURCES:
    kinds = " or ".join(t for tw, t in _SOURCES if tw == name)
    raise ValueError(f"{FIELD}.from_workdir holds a {task} run, which has no "
                     f"{name} tower; lock the {name} tower from a {kinds} "
                     "workdir")
  path, model_field = _SOURCES[(name, task)]
  theirs = source.get(model_field)
  if theirs != model:
    raise ValueError(
        f"{FIELD}.from_workdir's {name} model is {theirs!r} "
        f"(kwargs {source.get(f'{model_field}_kwargs')}) but "
        f"{_SECTIONS[name]}.name is {model!r}; configure the source's model "
        "or lock from a workdir trained with this one")
  return path
