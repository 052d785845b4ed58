"""Self-contained encoder bundles: `--mode=export_encoder` and `load_encoder`.

A bundle is what a downstream team needs to embed images at any nesting
dim, without training code, optimizer state or the config file:

  DIR/encoder/
    encoder.json   model name, kwargs and dtype, embedding_dim, nesting list,
                   head, checkpoint step, preprocessing (eval spec string and
                   input shape), normalisation (pixel mean/std), the config
    params/        Orbax params-only checkpoint of the backbone:
                   {"params": ..., "batch_stats": ...} (no heads)

    encoder = mrl_jax.load_encoder("DIR/encoder")
    z = encoder(images, dim=64)   # [B, 64], L2-normalised prefix

`embed(images, dim=m)` keeps the first m features and re-normalises them, as
MRL retrieval does (each prefix normalised separately); `dim=None` keeps all
d. Any 1 <= m <= d works, but only the nesting dims were trained.

`save_tf_saved_model(encoder, path)` converts a loaded bundle with jax2tf for
TensorFlow serving stacks (raw embeddings; truncate and normalise there).
"""
import ast
import functools
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from mrl_jax import atomic_files
from mrl_jax.models import classifier
from mrl_jax.models import registry

FORMAT_VERSION = 1
_EPS = 1e-12  # torch.nn.functional.normalize's epsilon, as the official code


def _normalisation(spec: str) -> dict[str, Any] | None:
  """The pixel normalisation of a preprocess spec's `normalize` op."""
  # Export time only: loading a bundle must not need TensorFlow.
  from mrl_jax.data import preprocess  # pylint: disable=import-outside-toplevel
  for part in spec.split("|"):
    node = ast.parse(part.strip(), mode="eval").body
    if isinstance(node, ast.Call) and getattr(node.func, "id", "") == (
        "normalize"):
      mean, std = preprocess.normalization_stats(
          *[ast.literal_eval(a) for a in node.args],
          **{k.arg: ast.literal_eval(k.value) for k in node.keywords})
      return {"formula": "(pixel / 255 - mean) / std",
              "mean": np.atleast_1d(mean).tolist(),
              "std": np.atleast_1d(std).tolist()}
  return None


def export_encoder(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Writes the latest checkpoint's backbone as a bundle in DIR/encoder.

  Returns:
    the bundle directory (rewritten if it exists).
  """
  # pylint: disable=import-outside-toplevel
  from mrl_jax import train  # training code is only needed to export
  from mrl_jax.data import pipeline
  s, state, _ = train.restore_latest(config, workdir)
  source = pipeline.open_source(config.data, config.data.eval_split)
  variables = {"params": state.params["backbone"]}
  if state.batch_stats:
    variables["batch_stats"] = state.batch_stats["backbone"]
  out = os.path.join(os.path.abspath(workdir), "encoder")
  ckpt = ocp.StandardCheckpointer()
  ckpt.save(os.path.join(out, "params"), variables, force=True)
  ckpt.wait_until_finished()
  metadata = {
      "format_version": FORMAT_VERSION,
      "model": {"name": config.model.name, "dtype": config.model.dtype,
                "kwargs": dict(config.model.get("kwargs", {}))},
      "embedding_dim": s.model.backbone.embedding_dim,
      "nesting": list(s.nesting_dims), "head": config.mrl.head,
      "step": int(state.step), "dataset": config.data.name,
      "preprocessing": {
          "spec": config.data.eval_preprocess,
          "input_shape": list(pipeline.image_shape(config.data, source))},
      "normalisation": _normalisation(config.data.eval_preprocess),
      "config": json.loads(config.to_json()),
  }
  if jax.process_index() == 0:
    atomic_files.write_json(os.path.join(out, "encoder.json"), metadata)
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


def load_encoder(path: str) -> Encoder:
  """Loads a bundle written by `--mode=export_encoder` (path: its folder).

  Raises:
    ValueError: if path holds no bundle.
  """
  meta_path = os.path.join(path, "encoder.json")
  if not os.path.isfile(meta_path):
    raise ValueError(f"{path} has no encoder.json; pass the folder that "
                     "--mode=export_encoder wrote (DIR/encoder)")
  with open(meta_path) as f:
    metadata = json.load(f)
  model = metadata["model"]
  backbone = registry.build_backbone(
      model["name"], dtype=classifier.DTYPES[model["dtype"]],
      **model["kwargs"])
  shape = (1, *metadata["preprocessing"]["input_shape"])
  abstract = jax.eval_shape(
      lambda x: backbone.init(jax.random.key(0), x, train=False),
      jax.ShapeDtypeStruct(shape, jnp.float32))
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device),
      dict(abstract))
  variables = ocp.StandardCheckpointer().restore(
      os.path.join(os.path.abspath(path), "params"), target)
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
