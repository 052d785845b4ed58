"""Parameter and optimizer-state partitioning as data (big_vision style).

config.sharding.strategy names a rule list (`dp`, `fsdp`, `fsdp_tp`);
config.sharding.rules holds extra rules tried before it. A rule is
`(regex, spec)`: the first whose regex matches the whole '/'-joined parameter
path (e.g. `backbone/block_0/attn/query/kernel`) decides. A spec is

* `"replicate"`: every device holds the whole array;
* `"fsdp"`: split the largest dim that the `fsdp` axis divides (ties: the
  later dim) over `fsdp`; replicated, with a note saying why, when none does;
* a PartitionSpec-like tuple, one entry per leading dim: None, an axis name
  or a tuple of axis names, e.g. `("fsdp", "model", None)`. An entry whose
  axes do not divide its dim is dropped (that dim replicated) with a note.

Axes of size 1 split nothing and are left out of the result, so a spec says
what is actually split on this mesh. Optimizer state follows the parameters:
a state leaf under the same dict path as a parameter, with its shape (Adam's
mu and nu, SGD's momentum), gets that parameter's spec; counters and other
leaves are replicated.
"""
from collections.abc import Sequence
import re
from typing import Any, Union

import jax
import ml_collections
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mrl_jax import sharding

PyTree = Any
Entry = Union[None, str, tuple[str, ...]]
Spec = Union[str, tuple[Entry, ...]]
Rule = tuple[str, Spec]

_F, _M = sharding.FSDP_AXIS, sharding.MODEL_AXIS
_TACTICS = ("replicate", "fsdp")

# MRL / FF heads: kernel [m, C], bias [C]; the class dim over `model`.
_HEADS_DP: tuple[Rule, ...] = (
    (r"head/.*/kernel", (None, _M)),
    (r"head/.*/bias", (_M,)),
)
_HEADS_FSDP: tuple[Rule, ...] = (
    (r"head/.*/kernel", (_F, _M)),
    (r"head/.*/bias", (_M,)),
)
# Megatron-style tensor parallelism for ViT and BERT blocks (flax param
# shapes):
# query/key/value kernel [D, heads, Dh] and out kernel [heads, Dh, D] split
# the heads; MLP fc1 [D, M] / fc2 [M, D] split the hidden dim. Each block
# then needs one all-reduce after attention and one after the MLP. The
# D dims are FSDP-split.
_VIT_TP: tuple[Rule, ...] = (
    (r".*/attn/(query|key|value)/kernel", (_F, _M, None)),
    (r".*/attn/(query|key|value)/bias", (_M, None)),
    (r".*/attn/out/kernel", (_M, None, _F)),
    (r".*/mlp/fc1/kernel", (_F, _M)),
    (r".*/mlp/fc1/bias", (_M,)),
    (r".*/mlp/fc2/kernel", (_M, _F)),
)

# Text models: the word embeddings [V, D] (tied to the MLM decoder), the
# decoder bias [V] and untied per-dim decoders [V, m] split the vocabulary
# over `model` (the logits' class dim, as for the heads); D over `fsdp`.
_TEXT_DP: tuple[Rule, ...] = (
    (r"(.*/)?word_embeddings/embedding", (_M, None)),
    (r"(.*/)?decoder_\d+", (_M, None)),
    (r"(.*/)?decoder_bias(_\d+)?", (_M,)),
)
_TEXT_FSDP: tuple[Rule, ...] = (
    (r"(.*/)?word_embeddings/embedding", (_M, _F)),
    (r"(.*/)?decoder_\d+", (_M, _F)),
    (r"(.*/)?decoder_bias(_\d+)?", (_M,)),
)

STRATEGIES: dict[str, tuple[Rule, ...]] = {
    "dp": _TEXT_DP + _HEADS_DP + ((".*", "replicate"),),
    "fsdp": _TEXT_FSDP + _HEADS_FSDP + ((".*", "fsdp"),),
    "fsdp_tp": _VIT_TP + _TEXT_FSDP + _HEADS_FSDP + ((".*", "fsdp"),),
}


def _spec_axes(regex: str, spec: Any) -> list[str] | None:
  """Axis names a spec tuple uses; None if it is not a valid spec tuple."""
  used = []
  for entry in spec:
    axes = (entry,) if isinstance(entry, str) else entry
    if entry is None:
      continue
    if not isinstance(axes, (tuple, list)) or not all(
        isinstance(a, str) for a in axes):
      return None
    bad = [a for a in axes if a not in sharding.TRAIN_AXES]
    if bad:
      raise ValueError(
          f"config.sharding rule {regex!r} names mesh axis {bad[0]!r}; "
          f"use {', '.join(sharding.TRAIN_AXES)}")
    used.extend(axes)
  return used


def _check_spec(regex: str, spec: Any) -> None:
  """Raises a one-line ValueError unless spec is a tactic or a spec tuple."""
  if isinstance(spec, str) and spec in _TACTICS:
    return
  used = (_spec_axes(regex, spec) if isinstance(spec, (tuple, list))
          else None)
  if used is None:
    raise ValueError(
        f"config.sharding rule {regex!r} has spec {spec!r}; use 'replicate', "
        "'fsdp' or a tuple of None / axis names / tuples of axis names")
  if len(used) != len(set(used)):
    raise ValueError(f"config.sharding rule {regex!r} uses an axis twice in "
                     f"{tuple(spec)}; name each axis at most once")


def resolve_rules(strategy: str, rules: Sequence[Sequence[Any]] = ()
                  ) -> tuple[tuple[re.Pattern, Spec], ...]:
  """config.sharding -> compiled rules: `rules` first, then the strategy's.

  Raises:
    ValueError: unknown strategy, bad regex or bad spec (one line each).
  """
  if strategy not in STRATEGIES:
    raise ValueError(f"unknown config.sharding.strategy {strategy!r}; use one "
                     f"of {', '.join(STRATEGIES)}")
  compiled = []
  for rule in tuple(rules) + STRATEGIES[strategy]:
    if len(rule) != 2:
      raise ValueError(f"config.sharding rule {tuple(rule)!r} must be a "
                       "(regex, spec) pair")
    regex, spec = rule
    try:
      pattern = re.compile(regex)
    except (re.error, TypeError) as e:
      raise ValueError(f"config.sharding rule regex {regex!r} is invalid "
                       f"({e}); fix config.sharding.rules") from None
    _check_spec(regex, spec)
    compiled.append((pattern, spec if isinstance(spec, str) else tuple(spec)))
  return tuple(compiled)


def from_config(cfg: ml_collections.ConfigDict | None
                ) -> tuple[tuple[re.Pattern, Spec], ...]:
  """config.sharding (strategy, rules) -> compiled rules; absent means dp."""
  cfg = cfg or ml_collections.ConfigDict()
  return resolve_rules(cfg.get("strategy", "dp"), cfg.get("rules", ()))


def _axis_size(mesh: Mesh, entry: Entry) -> int:
  axes = (entry,) if isinstance(entry, str) else entry
  size = 1
  for a in axes:
    size *= mesh.shape[a]
  return size


def _fsdp_spec(shape: tuple[int, ...], mesh: Mesh, path: str,
               notes: list[str]) -> P:
  n = mesh.shape[_F]
  if n == 1:
    return P()
  # Largest dim first; among equal sizes the later dim (as big_vision).
  for dim in sorted(range(len(shape)), key=lambda i: (shape[i], i),
                    reverse=True):
    if shape[dim] % n == 0:
      return P(*([None] * dim + [_F]))
  notes.append(f"{path} {list(shape)}: no dim divisible by fsdp={n}, "
               "replicated")
  return P()


def _explicit_spec(spec: tuple[Entry, ...], shape: tuple[int, ...],
                   mesh: Mesh, path: str, regex: str, notes: list[str]) -> P:
  if len(spec) > len(shape):
    raise ValueError(f"config.sharding rule {regex!r} gives {len(spec)} dims "
                     f"but {path} has shape {list(shape)}; fix the rule")
  out = []
  for dim, entry in enumerate(spec):
    if entry is None:
      out.append(None)
      continue
    axes = (entry,) if isinstance(entry, str) else tuple(entry)
    axes = tuple(a for a in axes if mesh.shape[a] > 1)
    size = _axis_size(mesh, axes)
    if not axes:
      out.append(None)
    elif shape[dim] % size:
      notes.append(f"{path} {list(shape)}: dim {dim} not divisible by "
                   f"{'x'.join(axes)}={size}, not split")
      out.append(None)
    else:
      out.append(axes[0] if len(axes) == 1 else axes)
  while out and out[-1] is None:
    out.pop()
  return P(*out)


def param_path(path: jax.tree_util.KeyPath) -> str:
  """'/'-joined dict keys of a key path (tuple indices etc. are skipped)."""
  return "/".join(str(k.key) for k in path
                  if isinstance(k, jax.tree_util.DictKey))


def param_specs(params: PyTree, rules: Sequence[tuple[re.Pattern, Spec]],
                mesh: Mesh) -> tuple[PyTree, list[str]]:
  """PartitionSpec per parameter, and notes on every split that fell back.

  Args:
    params: the parameter tree (arrays or jax.ShapeDtypeStruct).
    rules: from `resolve_rules`.
    mesh: a training mesh (`sharding.make_train_mesh`).
  Returns:
    (tree of PartitionSpec shaped like params, notes).
  Raises:
    ValueError: a parameter no rule matches, or a spec longer than the rank.
  """
  notes: list[str] = []

  def one(path, leaf):
    name = param_path(path)
    shape = tuple(leaf.shape)
    for pattern, spec in rules:
      if pattern.fullmatch(name):
        if spec == "replicate":
          return P()
        if spec == "fsdp":
          return _fsdp_spec(shape, mesh, name, notes)
        return _explicit_spec(spec, shape, mesh, name, pattern.pattern, notes)
    raise ValueError(f"no config.sharding rule matches parameter {name!r}; "
                     "add a catch-all such as ('.*', 'replicate')")

  return jax.tree_util.tree_map_with_path(one, params), notes


def opt_state_specs(opt_state: PyTree, params: PyTree,
                    specs: PyTree) -> PyTree:
  """Optimizer state specs: param-shaped leaves follow their parameter.

  A state leaf whose dict-key path and shape equal a parameter's (Adam's mu
  and nu, SGD's momentum sit under the param tree inside optax's state
  tuples) gets that parameter's spec; all others (step counts) replicate.
  """
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  by_path = {param_path(path): (tuple(leaf.shape), spec)
             for (path, leaf), spec in zip(flat, jax.tree.leaves(specs))}

  def one(path, leaf):
    shape, spec = by_path.get(param_path(path), (None, P()))
    return spec if shape == tuple(leaf.shape) else P()

  return jax.tree_util.tree_map_with_path(one, opt_state)


def named(specs: PyTree, mesh: Mesh) -> PyTree:
  """PartitionSpecs -> NamedShardings on mesh."""
  return jax.tree.map(lambda s: NamedSharding(mesh, s), specs)


def spec_table(tree: PyTree) -> dict[str, list[Any]]:
  """{'/'-joined key path: spec as a JSON-able list} for golden files.

  Leaves may be NamedShardings or PartitionSpecs; tuple entries become lists.
  """
  def as_list(x):
    spec = x.spec if isinstance(x, NamedSharding) else x
    return [list(e) if isinstance(e, tuple) else e for e in spec]

  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(path, simple=True, separator="/"): as_list(x)
          for path, x in flat}
