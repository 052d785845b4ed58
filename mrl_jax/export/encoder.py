"""Self-contained encoder bundles: the layout and `load_encoder` (the writer,
`--mode=export_encoder`, is export/encoder_writer.py).

A bundle is what a downstream team needs to embed images (or, from an mlm
workdir, texts; from a contrastive one, both) at any nesting dim, without
training code, optimizer state or the config file:

  DIR/encoder/
    encoder.json   model name, kwargs and dtype, embedding_dim, nesting list,
                   head, checkpoint step, preprocessing (eval spec string and
                   input shape), normalisation (pixel mean/std), the config;
                   text bundles: "modality": "text", pool, preprocessing
                   (tokenizer file and its sha256, max_length)
    params/        Orbax params-only checkpoint of the backbone:
                   {"params": ..., "batch_stats": ...} (no heads; a text
                   bundle holds the BERT encoder without the MLM head)
    tokenizer.model  text bundles: the tokenizer it was trained with (a
                   sentencepiece model or a WordPiece vocab.txt, see
                   data/tokenizer.py)

A two-tower bundle (the contrastive task) is a bundle per tower: its
encoder.json says "modality": "image_text", "towers": ["image", "text"],
and DIR/encoder/image/ and DIR/encoder/text/ are an image and a text bundle
as above whose encoder.json adds "projection": d (the tower is followed by
its Dense to the shared width d; params {"tower", "projection"}).

encoder_writer.py writes a new bundle beside the old one and swaps it in
whole. `load_encoder` checks encoder.json against the params before using them.

    encoder = mrl_jax.load_encoder("DIR/encoder")
    z = encoder(images, dim=64)   # [B, 64], L2-normalised prefix

`embed(images, dim=m)` keeps the first m features and re-normalises them, as
MRL retrieval does (each prefix normalised separately); `dim=None` keeps all
d. Any 1 <= m <= d works, but only the nesting dims were trained. A text
bundle loads as a `TextEncoder`: `encoder.embed(["a text", ...], dim=m)` ->
[n, m], tokenized with the bundle's tokenizer (no TensorFlow either). A
two-tower bundle loads as a `TwoTowerEncoder`: `embed_images(images, dim=m)`
and `embed_texts(texts, dim=m)` (its `.image` and `.text` encoders) embed
into one space, so image->text retrieval compares them directly.

`save_tf_saved_model(encoder, path)` converts a loaded bundle with jax2tf for
TensorFlow serving stacks (raw embeddings; truncate and normalise there).
"""
from collections.abc import Sequence
import functools
import hashlib
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from mrl_jax import errors
from mrl_jax.data import tokenizer as tok
from mrl_jax.models import bert
from mrl_jax.models import classifier
from mrl_jax.models import projected_tower
from mrl_jax.models import registry

FORMAT_VERSION = 1
_EPS = 1e-12  # torch.nn.functional.normalize's epsilon, as the official code


def _features(module, variables: dict[str, Any],
              inputs: tuple[Any, ...]) -> jax.Array:
  """The module's embeddings [B, d]: an image backbone's z, or a text
  encoder's pooled sentence embedding."""
  out = module.apply(variables, *inputs, train=False)
  return out.embedding if isinstance(out, bert.BertOutput) else out


def _embed(module, variables: dict[str, Any], inputs: tuple[Any, ...],
           dim: int | None, normalize: bool) -> jax.Array:
  z = _features(module, variables, inputs).astype(jnp.float32)
  if dim is not None:
    z = z[:, :dim]
  if normalize:
    z = z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), _EPS)
  return z


class Encoder:
  """A loaded image bundle. `encoder(images, dim=None, normalize=True)`
  embeds.

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

  def _check_dim(self, dim: int | None) -> None:
    if dim is not None and not 0 < dim <= self.embedding_dim:
      raise ValueError(f"dim={dim} must be in 1..{self.embedding_dim} (the "
                       f"embedding size); trained dims: {self.nesting}")

  def embed(self, images: jax.Array, dim: int | None = None,
            normalize: bool = True) -> jax.Array:
    """Embeddings [B, dim or d] (float32) of preprocessed images [B, H, W, C].

    Images must be preprocessed as metadata["preprocessing"] says (e.g.
    resized, cropped and normalised with `normalize_pixels`).

    Raises:
      ValueError: images are not [B, H, W, C] numbers (e.g. texts), or dim
        is not in 1..d.
    """
    self._check_images(images)
    self._check_dim(dim)
    return self._jitted(self.variables, (images,), dim=dim,
                        normalize=normalize)

  def _check_images(self, images: Any) -> None:
    # Shapes and dtypes only, so that the check also runs under a user's jit.
    channels = self.metadata["preprocessing"]["input_shape"][-1]
    dtype = (images.dtype if hasattr(images, "dtype")
             else np.asarray(images).dtype)
    shape = np.shape(images)
    if dtype.kind in "USO" or len(shape) != 4 or shape[-1] != channels:
      got = ("text" if dtype.kind in "USO" else
             f"{dtype} of shape {tuple(shape)}")
      raise ValueError(f"images must be an array [B, H, W, {channels}] of "
                       f"preprocessed pixels, got {got}; texts go to a text "
                       "encoder (embed_texts of a two-tower bundle)")

  __call__ = embed

  def normalize_pixels(self, pixels: jax.Array) -> jax.Array:
    """uint8 / 0..255 pixels [..., C] -> model input, per `normalisation`."""
    norm = self.metadata["normalisation"]
    if norm is None:
      raise ValueError("this bundle's preprocessing has no normalize op; "
                       "feed images as metadata['preprocessing'] describes")
    mean, std = jnp.asarray(norm["mean"]), jnp.asarray(norm["std"])
    return (jnp.asarray(pixels, jnp.float32) / 255.0 - mean) / std


class TextEncoder(Encoder):
  """A loaded text bundle. `encoder(texts, dim=None, normalize=True)`
  embeds a list of strings with the bundle's own tokenizer.

  Attributes (besides Encoder's):
    tokenizer: the tokenizer the model was trained with.
    max_length: tokens per text, [CLS] and [SEP] included (longer texts are
      cut).
  """

  # Texts per forward pass; smaller calls are padded to a power of two, so
  # that at most a few shapes compile.
  _CHUNK = 256

  def __init__(self, encoder, variables: dict[str, Any],
               metadata: dict[str, Any], tokenizer: tok.Tokenizer):
    super().__init__(encoder, variables, metadata)
    self.tokenizer = tokenizer
    self.max_length = int(metadata["preprocessing"]["max_length"])

  def embed(self, texts: Sequence[str], dim: int | None = None,
            normalize: bool = True) -> jax.Array:
    """Embeddings [len(texts), dim or d] (float32) of raw texts: each
    tokenized [CLS] ids [SEP], padded to max_length, through the encoder's
    pooled embedding (metadata["pool"]).

    Raises:
      ValueError: texts is empty or not a list of strings, or dim is not in
        1..d.
    """
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
      raise ValueError("texts must be a list of strings (wrap a single text "
                       "in a list)")
    if not texts:
      raise ValueError("texts is empty; pass at least one string")
    self._check_dim(dim)
    ids, mask = self.tokenizer.encode_padded(list(texts), self.max_length)
    out = []
    for start in range(0, len(ids), self._CHUNK):
      rows = slice(start, start + self._CHUNK)
      n = len(ids[rows])
      size = min(self._CHUNK, max(8, 1 << (n - 1).bit_length()))
      pad = ((0, size - n), (0, 0))
      z = self._jitted(self.variables, (np.pad(ids[rows], pad), None,
                                        np.pad(mask[rows], pad)),
                       dim=dim, normalize=normalize)
      out.append(z[:n])
    return jnp.concatenate(out)

  __call__ = embed

  def normalize_pixels(self, pixels: jax.Array) -> jax.Array:
    raise ValueError("a text bundle has no pixel normalisation; call "
                     "embed(texts)")


class TwoTowerEncoder:
  """A loaded two-tower bundle: an image and a text encoder whose
  embeddings share one space (image->text retrieval compares them).

  Attributes:
    metadata: the bundle's top-level encoder.json.
    image: the image tower (an Encoder).
    text: the text tower (a TextEncoder).
    embedding_dim: d, of both towers.
    nesting: the trained nesting dims.
  """

  def __init__(self, image: Encoder, text: TextEncoder,
               metadata: dict[str, Any]):
    self.image, self.text, self.metadata = image, text, metadata
    self.embedding_dim, self.nesting = image.embedding_dim, image.nesting

  def embed_images(self, images: jax.Array, dim: int | None = None,
                   normalize: bool = True) -> jax.Array:
    """[B, dim or d] float32 of preprocessed images [B, H, W, C], as
    `Encoder.embed` (self.image.metadata["preprocessing"] says how to
    prepare them; `self.image.normalize_pixels` scales pixels)."""
    return self.image.embed(images, dim=dim, normalize=normalize)

  def embed_texts(self, texts: Sequence[str], dim: int | None = None,
                  normalize: bool = True) -> jax.Array:
    """[len(texts), dim or d] float32 of raw texts, as `TextEncoder.embed`
    (tokenized with the bundle's tokenizer)."""
    return self.text.embed(texts, dim=dim, normalize=normalize)


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


def _is_text(metadata: dict[str, Any]) -> bool:
  return metadata.get("modality", "image") == "text"


_MODALITIES = ("image", "text", "image_text")


def _read_json(path: str) -> dict[str, Any]:
  """A bundle's encoder.json, checked to be an object of a known modality.

  Raises:
    ValueError: one line naming the file.
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
  if metadata.get("modality", "image") not in _MODALITIES:
    raise ValueError(f"{where}: 'modality' is {metadata['modality']!r}, not "
                     f"one of {', '.join(map(repr, _MODALITIES))}; {_AGAIN}")
  return metadata


def _check_metadata(metadata: dict[str, Any], where: str) -> None:
  """Checks a one-encoder bundle's encoder.json (`where`) for every field
  loading uses (not the params).

  Raises:
    ValueError: one line naming the file and the field.
  """
  inputs = ((("preprocessing.max_length", int),
             ("preprocessing.tokenizer", str)) if _is_text(metadata) else
            (("preprocessing.input_shape", list),))
  fields = {name: _field(metadata, name, kind, where) for name, kind in (
      ("model.name", str), ("model.dtype", str), ("model.kwargs", dict),
      ("embedding_dim", int), ("nesting", list), *inputs)}
  if fields["model.dtype"] not in classifier.DTYPES:
    raise ValueError(f"{where}: 'model.dtype' is {fields['model.dtype']!r}, "
                     f"not one of {sorted(classifier.DTYPES)}; {_AGAIN}")
  if _is_text(metadata) and fields["preprocessing.max_length"] < 3:
    raise ValueError(f"{where}: 'preprocessing.max_length' is "
                     f"{fields['preprocessing.max_length']}, too short for "
                     f"[CLS] text [SEP]; {_AGAIN}")
  positive = ["nesting"] + (
      [] if _is_text(metadata) else ["preprocessing.input_shape"])
  for name in positive:
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
  projection = metadata.get("projection")
  if projection is not None and not (
      isinstance(projection, int) and not isinstance(projection, bool)
      and projection > 0):
    raise ValueError(f"{where}: 'projection' is {projection!r}, not null or "
                     f"a positive int (the width the tower is projected "
                     f"to); {_AGAIN}")


def _check_params(where: str, params_dir: str, abstract: dict[str, Any],
                  model: str) -> None:
  """Checks the stored params against the model encoder.json describes:
  the same arrays, of the same shapes.

  Raises:
    ValueError: naming the field of encoder.json that disagrees.
  """
  try:
    stored, why = ocp.StandardCheckpointer().metadata(
        params_dir).item_metadata, "no checkpoint metadata"
  except (FileNotFoundError, ValueError) as e:
    stored, why = None, " ".join(str(e).split())[:200]
  if stored is None:  # e.g. the folder is missing
    raise ValueError(f"{params_dir} holds no params checkpoint ({why}); "
                     f"{_AGAIN}")
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


def _model_and_inputs(metadata: dict[str, Any]
                      ) -> tuple[Any, Any, tuple[Any, ...]]:
  """The module encoder.json describes, the registry model it starts with
  (the module itself, or the tower a two-tower bundle projects) and its
  dummy inputs (one example).

  Raises:
    TypeError, ValueError: the registry cannot build it.
  """
  model = metadata["model"]
  dtype = classifier.DTYPES[model["dtype"]]
  if _is_text(metadata):
    tower = registry.build_text_encoder(model["name"], dtype=dtype,
                                        **model["kwargs"])
    ids = jax.ShapeDtypeStruct(
        (1, metadata["preprocessing"]["max_length"]), jnp.int32)
    example = (ids, None, ids)
  else:
    tower = registry.build_backbone(model["name"], dtype=dtype,
                                    **model["kwargs"])
    shape = (1, *metadata["preprocessing"]["input_shape"])
    example = (jax.ShapeDtypeStruct(shape, jnp.float32),)
  if metadata.get("projection") is None:
    return tower, tower, example
  module = projected_tower.ProjectedTower(tower, metadata["projection"],
                                          dtype)
  return module, tower, example


def _load_tokenizer(path: str, metadata: dict[str, Any],
                    vocab_size: int) -> tok.Tokenizer:
  """The bundle's tokenizer, checked to be the one the params were trained
  with (encoder.json's sha256) and to fit their vocabulary.

  Raises:
    ValueError: one line naming the file.
  """
  where = os.path.join(path, metadata["preprocessing"]["tokenizer"])
  if not os.path.isfile(where):
    raise ValueError(f"{where} is missing: the bundle's tokenizer; {_AGAIN}")
  with open(where, "rb") as f:
    proto = f.read()
  want = metadata["preprocessing"].get("tokenizer_sha256")
  if want is not None and hashlib.sha256(proto).hexdigest() != want:
    raise ValueError(f"{where} is not the tokenizer the params were trained "
                     f"with (its sha256 differs from encoder.json's); "
                     f"{_AGAIN}")
  try:
    tokenizer = tok.from_bytes(proto, where)
  except errors.RunError as e:
    raise ValueError(f"{e}; {_AGAIN}") from None
  if tokenizer.vocab_size > vocab_size:
    raise ValueError(f"{where} has {tokenizer.vocab_size} pieces, more than "
                     f"the params' vocabulary ({vocab_size} word embeddings)"
                     f"; {_AGAIN}")
  return tokenizer


def load_encoder(path: str) -> Encoder | TwoTowerEncoder:
  """Loads a bundle written by `--mode=export_encoder` (path: its folder).

  encoder.json is checked field by field, and against the params: the model
  it names must have exactly the params' arrays, and give embedding_dim
  features; a text bundle's tokenizer must be the recorded one and fit the
  vocabulary. A two-tower bundle's towers are bundles of their own (its
  folders image/ and text/), each loaded so.

  Returns:
    an Encoder (images), a TextEncoder (texts) or a TwoTowerEncoder (both),
    as encoder.json's "modality" says.
  Raises:
    ValueError: one line naming the file and field, if path holds no bundle
      or a malformed one, or encoder.json does not match the params.
  """
  metadata = _read_json(path)
  if metadata.get("modality") == "image_text":
    return _load_two_tower(path, metadata)
  where = os.path.join(path, "encoder.json")
  _check_metadata(metadata, where)
  model = metadata["model"]
  try:
    module, tower, example = _model_and_inputs(metadata)
  except (TypeError, ValueError) as e:
    raise ValueError(f"{where}: 'model' {model['name']!r} with kwargs "
                     f"{model['kwargs']} cannot be built ("
                     f"{' '.join(str(e).split())}); {_AGAIN}") from None
  if _is_text(metadata) and example[0].shape[1] > tower.max_len:
    raise ValueError(f"{where}: 'preprocessing.max_length' is "
                     f"{example[0].shape[1]}, beyond the model's position "
                     f"table (max_len={tower.max_len}); {_AGAIN}")
  abstract = jax.eval_shape(
      lambda *x: module.init(jax.random.key(0), *x, train=False), *example)
  params_dir = os.path.join(os.path.abspath(path), "params")
  _check_params(where, params_dir, dict(abstract), model["name"])
  dim = jax.eval_shape(functools.partial(_features, module), abstract,
                       example).shape[-1]
  if metadata["embedding_dim"] != dim:
    raise ValueError(f"{where}: 'embedding_dim' is "
                     f"{metadata['embedding_dim']}, but its params give "
                     f"{dim}-dim embeddings; {_AGAIN}")
  if _is_text(metadata):  # checked before the params are read
    tokenizer = _load_tokenizer(path, metadata, tower.vocab_size)
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device),
      dict(abstract))
  variables = ocp.StandardCheckpointer().restore(params_dir, target)
  if _is_text(metadata):
    return TextEncoder(module, variables, metadata, tokenizer)
  return Encoder(module, variables, metadata)


def _load_two_tower(path: str, metadata: dict[str, Any]) -> TwoTowerEncoder:
  """A two-tower bundle: its image/ and text/ bundles, checked to be one
  image and one text encoder of the same width.

  Raises:
    ValueError: one line naming the file and what is wrong.
  """
  where = os.path.join(path, "encoder.json")
  towers = metadata.get("towers")
  if towers != ["image", "text"]:
    raise ValueError(f"{where}: 'towers' is {towers!r}, not ['image', "
                     f"'text']; {_AGAIN}")
  image, text = (load_encoder(os.path.join(path, side)) for side in towers)
  for side, encoder, kind in (("image", image, Encoder),
                              ("text", text, TextEncoder)):
    if type(encoder) is not kind:  # pylint: disable=unidiomatic-typecheck
      raise ValueError(f"{os.path.join(path, side)} holds a "
                       f"{type(encoder).__name__}, not the {side} tower; "
                       f"{_AGAIN}")
  if image.embedding_dim != text.embedding_dim:
    raise ValueError(f"{where}: the image tower's embeddings are "
                     f"{image.embedding_dim}-dim, the text tower's "
                     f"{text.embedding_dim}-dim; {_AGAIN}")
  return TwoTowerEncoder(image, text, metadata)


def save_tf_saved_model(encoder: Encoder, path: str) -> str:
  """Writes a TF SavedModel whose `serving_default` maps images to raw z.

  Signature: `images` float32 [batch, H, W, C] (any batch; H, W, C as the
  bundle's input shape) -> {"embedding": float32 [batch, d]}, not normalised:
  a consumer takes z[:, :m] and L2-normalises it. Weights are tf.Variables.

  Returns:
    path.
  """
  if isinstance(encoder, TextEncoder):
    raise ValueError("save_tf_saved_model converts image bundles; a text "
                     "bundle's tokenizer runs on the host")
  # pylint: disable=import-outside-toplevel
  import tensorflow as tf
  from jax.experimental import jax2tf
  shape = encoder.metadata["preprocessing"]["input_shape"]
  weights = tf.nest.map_structure(lambda a: tf.Variable(np.asarray(a)),
                                  encoder.variables)
  convert = jax2tf.convert(
      lambda w, images: _embed(encoder.backbone, w, (images,), dim=None,
                               normalize=False),
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
