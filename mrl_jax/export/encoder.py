"""Self-contained encoder bundles: `--mode=export_encoder` and `load_encoder`.

A bundle is what a downstream team needs to embed images at any nesting
dim, without training code, optimizer state or the config file:

  DIR/encoder/
    encoder.json   model name, kwargs and dtype, embedding_dim, nesting list,
                   head, checkpoint step, preprocessing (eval spec string and
                   input shape), normalisation (pixel mean/std), the config
    params/        Orbax params-only checkpoint of the backbone:
                   {"params": ..., "batch_stats": ...} (no heads)

A new bundle is written to DIR/encoder.new and swapped in by renames once it
is complete, so a killed export leaves the previous bundle in place (between
the two renames it is DIR/encoder.old, which the next export puts back).
`load_encoder` checks encoder.json against the params before using them.

    encoder = mrl_jax.load_encoder("DIR/encoder")
    z = encoder(images, dim=64)   # [B, 64], L2-normalised prefix

`embed(images, dim=m)` keeps the first m features and re-normalises them, as
MRL retrieval does (each prefix normalised separately); `dim=None` keeps all
d. Any 1 <= m <= d works, but only the nesting dims were trained.

`save_tf_saved_model(encoder, path)` converts a loaded bundle with jax2tf for
TensorFlow serving stacks (raw embeddings; truncate and normalise there).
"""
import functools
import json
import os
import shutil
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from mrl_jax import atomic_files
from mrl_jax import errors
from mrl_jax.models import classifier
from mrl_jax.models import registry

FORMAT_VERSION = 1
_EPS = 1e-12  # torch.nn.functional.normalize's epsilon, as the official code


def _normalisation(spec: str) -> dict[str, Any] | None:
  """The pixel normalisation of a preprocess spec's `normalize` op."""
  # Export time only: loading a bundle must not need TensorFlow.
  from mrl_jax.data import preprocess  # pylint: disable=import-outside-toplevel
  args = preprocess.op_arguments(spec, "normalize")
  if args is None:
    return None
  mean, std = preprocess.normalization_stats(**args)
  return {"formula": "(pixel / 255 - mean) / std",
          "mean": np.atleast_1d(mean).tolist(),
          "std": np.atleast_1d(std).tolist()}


def _tidy(out: str) -> None:
  """Undoes what a killed export left: puts a previous bundle caught between
  the swap's renames back, and removes an unfinished new one."""
  if not os.path.exists(out) and os.path.exists(f"{out}.old"):
    logging.info("restoring the previous bundle %s.old", out)
    os.rename(f"{out}.old", out)
  for leftover in (f"{out}.new", f"{out}.old"):
    if os.path.exists(leftover):
      shutil.rmtree(leftover)


def _swap_in(new: str, out: str) -> None:
  """Replaces the bundle `out` by the complete bundle `new`."""
  try:
    if os.path.exists(out):
      os.rename(out, f"{out}.old")
    os.rename(new, out)
    shutil.rmtree(f"{out}.old", ignore_errors=True)
  except OSError as e:
    raise errors.RunError(f"could not move the new bundle {new} to {out} "
                          f"({e.strerror}); the previous one, if any, is "
                          f"{out} or {out}.old") from e


def export_encoder(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Writes the latest checkpoint's backbone as a bundle in DIR/encoder.

  Returns:
    the bundle directory (replaced, once the new bundle is complete, if it
    exists).
  """
  # pylint: disable=import-outside-toplevel
  from jax.experimental import multihost_utils
  from mrl_jax import train  # training code is only needed to export
  from mrl_jax.data import pipeline
  run_setup, state, _ = train.restore_latest(config, workdir)
  source = pipeline.open_source(config.data, config.data.eval_split)
  variables = {"params": state.params["backbone"]}
  if state.batch_stats:
    variables["batch_stats"] = state.batch_stats["backbone"]
  out = os.path.join(os.path.abspath(workdir), "encoder")
  new = f"{out}.new"
  if jax.process_index() == 0:
    _tidy(out)
  multihost_utils.sync_global_devices("export_encoder: tidied")
  ckpt = ocp.StandardCheckpointer()
  ckpt.save(os.path.join(new, "params"), variables)
  ckpt.wait_until_finished()
  metadata = {
      "format_version": FORMAT_VERSION,
      "model": {"name": config.model.name, "dtype": config.model.dtype,
                "kwargs": dict(config.model.get("kwargs", {}))},
      "embedding_dim": run_setup.model.backbone.embedding_dim,
      "nesting": list(run_setup.nesting_dims), "head": config.mrl.head,
      "step": int(state.step), "dataset": config.data.name,
      "preprocessing": {
          "spec": config.data.eval_preprocess,
          "input_shape": list(pipeline.image_shape(config.data, source))},
      "normalisation": _normalisation(config.data.eval_preprocess),
      "config": json.loads(config.to_json()),
  }
  if jax.process_index() == 0:
    atomic_files.write_json(os.path.join(new, "encoder.json"), metadata)
    _swap_in(new, out)
  multihost_utils.sync_global_devices("export_encoder: swapped")
  return out


def _embed(backbone, variables: dict[str, Any], images: jax.Array,
           dim: int | None, normalize: bool) -> jax.Array:
  z = backbone.apply(variables, images, train=False).astype(jnp.float32)
  if dim is not None:
    z = z[:, :dim]
  if normalize:
    z = z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), _EPS)
  return z


class Encoder:
  """A loaded bundle. `encoder(images, dim=None, normalize=True)` embeds.

  Attributes:
    metadata: the bundle's encoder.json.
    variables: the backbone's {"params", "batch_stats"}.
    embedding_dim: d.
    nesting: the trained nesting dims.
  """

  def __init__(self, backbone, variables: dict[str, Any],
               metadata: dict[str, Any]):
    self.backbone, self.variables, self.metadata = backbone, variables, metadata
    self.embedding_dim = int(metadata["embedding_dim"])
    self.nesting = tuple(metadata["nesting"])
    self._jitted = jax.jit(functools.partial(_embed, backbone),
                           static_argnames=("dim", "normalize"))

  def embed(self, images: jax.Array, dim: int | None = None,
            normalize: bool = True) -> jax.Array:
    """Embeddings [B, dim or d] (float32) of preprocessed images [B, H, W, C].

    Images must be preprocessed as metadata["preprocessing"] says (e.g.
    resized, cropped and normalised with `normalize_pixels`).

    Raises:
      ValueError: if dim is not in 1..d.
    """
    if dim is not None and not 0 < dim <= self.embedding_dim:
      raise ValueError(f"dim={dim} must be in 1..{self.embedding_dim} (the "
                       f"embedding size); trained dims: {self.nesting}")
    return self._jitted(self.variables, images, dim=dim, normalize=normalize)

  __call__ = embed

  def normalize_pixels(self, pixels: jax.Array) -> jax.Array:
    """uint8 / 0..255 pixels [..., C] -> model input, per `normalisation`."""
    norm = self.metadata["normalisation"]
    if norm is None:
      raise ValueError("this bundle's preprocessing has no normalize op; "
                       "feed images as metadata['preprocessing'] describes")
    mean, std = jnp.asarray(norm["mean"]), jnp.asarray(norm["std"])
    return (jnp.asarray(pixels, jnp.float32) / 255.0 - mean) / std


_AGAIN = "export the bundle again with --mode=export_encoder"


def _field(metadata: dict[str, Any], name: str, kind: type,
           where: str) -> Any:
  """metadata's dotted field `name`, checked to be a `kind`.

  Raises:
    ValueError: naming the field, if it is missing or of another type.
  """
  value = metadata
  for key in name.split("."):
    if not isinstance(value, dict) or key not in value:
      raise ValueError(f"{where} has no {name!r}; {_AGAIN}")
    value = value[key]
  if not isinstance(value, kind) or isinstance(value, bool):
    raise ValueError(f"{where}: {name!r} is {value!r}, expected "
                     f"{kind.__name__}; {_AGAIN}")
  return value


def _read_metadata(path: str) -> dict[str, Any]:
  """encoder.json, checked for every field loading uses (not the params).

  Raises:
    ValueError: one line naming the file and the field.
  """
  where = os.path.join(path, "encoder.json")
  if not os.path.isfile(where):
    raise ValueError(f"{path} has no encoder.json; pass the folder that "
                     "--mode=export_encoder wrote (DIR/encoder)")
  try:
    with open(where) as f:
      metadata = json.load(f)
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError(f"{where} is not JSON ({e}); {_AGAIN}") from None
  if not isinstance(metadata, dict):
    raise ValueError(f"{where} holds {type(metadata).__name__}, not an "
                     f"object; {_AGAIN}")
  fields = {name: _field(metadata, name, kind, where) for name, kind in (
      ("model.name", str), ("model.dtype", str), ("model.kwargs", dict),
      ("embedding_dim", int), ("nesting", list),
      ("preprocessing.input_shape", list))}
  if fields["model.dtype"] not in classifier.DTYPES:
    raise ValueError(f"{where}: 'model.dtype' is {fields['model.dtype']!r}, "
                     f"not one of {sorted(classifier.DTYPES)}; {_AGAIN}")
  for name in ("nesting", "preprocessing.input_shape"):
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0
               for v in fields[name]):
      raise ValueError(f"{where}: {name!r} is {fields[name]!r}, not a list "
                       f"of positive ints; {_AGAIN}")
  nesting, dim = fields["nesting"], fields["embedding_dim"]
  if sorted(set(nesting)) != nesting or (nesting and nesting[-1] > dim):
    raise ValueError(f"{where}: 'nesting' {nesting} is not increasing within "
                     f"1..embedding_dim={dim}; {_AGAIN}")
  norm = metadata.get("normalisation")
  if norm is not None and not (isinstance(norm, dict) and all(
      isinstance(norm.get(k), list) for k in ("mean", "std"))):
    raise ValueError(f"{where}: 'normalisation' is {norm!r}, not null or "
                     f"{{'mean': [...], 'std': [...]}}; {_AGAIN}")
  return metadata


def _check_params(where: str, params_dir: str, abstract: dict[str, Any],
                  model: str) -> None:
  """Checks the stored params against the model encoder.json describes:
  the same arrays, of the same shapes.

  Raises:
    ValueError: naming the field of encoder.json that disagrees.
  """
  try:
    stored = ocp.StandardCheckpointer().metadata(params_dir).item_metadata
  except (FileNotFoundError, ValueError) as e:
    raise ValueError(f"{params_dir} holds no params checkpoint "
                     f"({' '.join(str(e).split())[:200]}); {_AGAIN}") from None
  shapes = [{jax.tree_util.keystr(k): tuple(a.shape) for k, a in
             jax.tree_util.tree_flatten_with_path(dict(tree))[0]}
            for tree in (stored.tree, abstract)]
  for key in sorted(set(shapes[0]) | set(shapes[1])):
    got, want = (side.get(key, "missing") for side in shapes)
    if got != want:
      raise ValueError(
          f"{where}: 'model' ({model}) does not match the params in "
          f"{params_dir} ({key}: {got} in the params, {want} in the model); "
          f"{_AGAIN}")


def load_encoder(path: str) -> Encoder:
  """Loads a bundle written by `--mode=export_encoder` (path: its folder).

  encoder.json is checked field by field, and against the params: the model
  it names must have exactly the params' arrays, and give embedding_dim
  features.

  Raises:
    ValueError: one line naming the file and field, if path holds no bundle
      or a malformed one, or encoder.json does not match the params.
  """
  metadata = _read_metadata(path)
  where = os.path.join(path, "encoder.json")
  model = metadata["model"]
  try:
    backbone = registry.build_backbone(
        model["name"], dtype=classifier.DTYPES[model["dtype"]],
        **model["kwargs"])
  except (TypeError, ValueError) as e:
    raise ValueError(f"{where}: 'model' {model['name']!r} with kwargs "
                     f"{model['kwargs']} cannot be built ("
                     f"{' '.join(str(e).split())}); {_AGAIN}") from None
  shape = (1, *metadata["preprocessing"]["input_shape"])
  images = jax.ShapeDtypeStruct(shape, jnp.float32)
  abstract = jax.eval_shape(
      lambda x: backbone.init(jax.random.key(0), x, train=False), images)
  params_dir = os.path.join(os.path.abspath(path), "params")
  _check_params(where, params_dir, dict(abstract), model["name"])
  dim = jax.eval_shape(functools.partial(backbone.apply, train=False),
                       abstract, images).shape[-1]
  if metadata["embedding_dim"] != dim:
    raise ValueError(f"{where}: 'embedding_dim' is "
                     f"{metadata['embedding_dim']}, but its params give "
                     f"{dim}-dim embeddings; {_AGAIN}")
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device),
      dict(abstract))
  variables = ocp.StandardCheckpointer().restore(params_dir, target)
  return Encoder(backbone, variables, metadata)


def save_tf_saved_model(encoder: Encoder, path: str) -> str:
  """Writes a TF SavedModel whose `serving_default` maps images to raw z.

  Signature: `images` float32 [batch, H, W, C] (any batch; H, W, C as the
  bundle's input shape) -> {"embedding": float32 [batch, d]}, not normalised:
  a consumer takes z[:, :m] and L2-normalises it. Weights are tf.Variables.

  Returns:
    path.
  """
  # pylint: disable=import-outside-toplevel
  import tensorflow as tf
  from jax.experimental import jax2tf
  shape = encoder.metadata["preprocessing"]["input_shape"]
  weights = tf.nest.map_structure(lambda a: tf.Variable(np.asarray(a)),
                                  encoder.variables)
  convert = jax2tf.convert(
      functools.partial(_embed, encoder.backbone, dim=None, normalize=False),
      polymorphic_shapes=[None, f"(b, {', '.join(map(str, shape))})"])
  module = tf.Module()
  module.weights = tf.nest.flatten(weights)

  @tf.function(autograph=False, input_signature=[
      tf.TensorSpec([None, *shape], tf.float32, name="images")])
  def serve(images):
    return {"embedding": convert(weights, images)}

  module.serve = serve
  tf.saved_model.save(module, path, signatures={"serving_default": serve})
  return path
