"""Image-text pairs for contrastive training: one way in for both sources.

`open_image_text(config.data)` returns the prepared TFDS builder (preparing
it on first use, offline) of
* "openclipart": the Debian openclipart-svg drawings (openclipart.py),
* "image_text_folder": a user's folder of images with captions.jsonl or
  captions.csv (image_text_folder.py), checked before anything is written,
  or
* any other name: that TFDS dataset (e.g. "coco_captions"), prepared in
  config.data.data_dir, read through the field map image_key, caption_key,
  label_key, id_key (tfds_image_text.py);
and `load_tokenizer(builder)` the tokenizer stored with it.
`pipeline.open_source` serves them as a `pipeline.Source`, so data shards,
host sharding and resumption work as for any TFDS dataset.

Raw examples are captioned_images.py's features; the preprocess spec
"caption_tokens|keep('image', 'input_ids', 'input_mask', 'label')" gives
  image [H, W, 3] uint8, input_ids [L] int32, input_mask [L] int32,
  label int64 (an openclipart category, or -1 for a folder).
Options live in config.data.image_text (`section`).
"""
import fcntl
import hashlib
import pathlib
import re
from typing import Any

import ml_collections

from mrl_jax.data import captioned_images
from mrl_jax.data import image_text_folder
from mrl_jax.data import openclipart
from mrl_jax.data import text_sources
from mrl_jax.data import tfds_image_text
from mrl_jax.data import tfds_prepare
from mrl_jax.data import tokenizer as tok

NAMES = (openclipart.NAME, image_text_folder.NAME)
load_tokenizer = captioned_images.load_tokenizer

# config.data.image_text fields -> which source uses them.
_BOTH = ("seq_len", "vocab_size", "validation_fraction", "test_fraction")
_CONFIG_FIELDS = {openclipart.NAME: _BOTH + ("image_size", "max_per_title"),
                  image_text_folder.NAME: _BOTH,
                  tfds_image_text.NAME: ("seq_len", "vocab_size",
                                         *tfds_image_text.KEY_FIELDS)}
_BUILDER_FIELDS = {openclipart.NAME: ("svg_dir", "processes"),
                   image_text_folder.NAME: ("folder",)}
_DEFAULT = openclipart.Openclipart.BUILDER_CONFIGS[0]
_TFDS_DEFAULT = tfds_image_text.TfdsImageTextConfig(name="default")


def is_image_text(cfg: ml_collections.ConfigDict) -> bool:
  """Whether config.data (`cfg`) names image-text data: a source of NAMES,
  or any TFDS dataset given with a config.data.image_text section."""
  return cfg.name in NAMES or cfg.get("image_text") is not None


def section(**fields: Any) -> ml_collections.ConfigDict:
  """config.data.image_text: the source's options, defaults filled in.

  Fields: seq_len (L, caption tokens), vocab_size (of the tokenizer trained
  on the train captions), validation_fraction, test_fraction,
  tokenizer_path (a sentencepiece .model or a BERT vocab.txt to use instead
  of training one);
  openclipart: image_size, max_per_title, svg_dir (default: the Debian
  package's), processes (rsvg-convert processes); a folder: folder (its
  root); a TFDS dataset: image_key, caption_key (default COCO captions'
  "captions/text"), label_key, id_key (tfds_image_text.py).
  """
  defaults = {k: getattr(_DEFAULT, k)
              for k in _CONFIG_FIELDS[openclipart.NAME]}
  defaults.update({k: getattr(_TFDS_DEFAULT, k)
                   for k in tfds_image_text.KEY_FIELDS})
  defaults.update(tokenizer_path=None, svg_dir=None, processes=2,
                  folder=None)
  unknown = sorted(set(fields) - set(defaults))
  if unknown:
    raise ValueError(f"unknown image_text field(s) {unknown}; known: "
                     f"{sorted(defaults)}")
  return ml_collections.ConfigDict({**defaults, **fields})


def _digest(*parts: Any) -> str:
  return hashlib.sha256(repr(parts).encode()).hexdigest()[:12]


def make_builder(cfg: ml_collections.ConfigDict
                 ) -> captioned_images.CaptionedImages:
  """The builder config.data (`cfg`) names, not prepared; its config name
  is a hash of everything that shapes the data (for a folder, its content
  too), so other options or a changed folder prepare another dataset.

  Raises:
    ValueError: bad options, no folder or caption file, a field map that
      does not fit the TFDS dataset's features (one line).
    RunError: tokenizer_path is not a tokenizer; the TFDS dataset is not
      prepared in config.data.data_dir.
  """
  options = dict(section(**dict(cfg.get("image_text") or {})))
  tokenizer_path = options["tokenizer_path"]
  tokenizer = tok.load(tokenizer_path).model_proto if tokenizer_path else b""
  common = {"data_dir": cfg.get("data_dir"),
            "tokenizer_path": str(tokenizer_path) if tokenizer_path else None}
  if cfg.name not in NAMES:
    return _tfds_builder(cfg.name, options, tokenizer, common)
  fields = {k: options[k] for k in _CONFIG_FIELDS[cfg.name]}
  kwargs = {k: options[k] for k in _BUILDER_FIELDS[cfg.name]}
  if cfg.name == openclipart.NAME:
    config = _DEFAULT.name
    if (fields != {k: getattr(_DEFAULT, k) for k in fields}
        or kwargs["svg_dir"] or tokenizer):
      config = openclipart.OpenclipartConfig(
          name="custom_" + _digest(sorted(fields.items()), kwargs["svg_dir"],
                                   tokenizer), **fields)
    return openclipart.Openclipart(config=config, **common, **kwargs)
  folder = kwargs["folder"]
  if not folder:
    raise ValueError("config.data.name='image_text_folder' needs "
                     "config.data.image_text.folder=<root> (images with "
                     "captions.jsonl or captions.csv)")
  skip = bool(cfg.get("skip_bad_files", False))
  name = "folder_" + _digest(sorted(fields.items()), skip, tokenizer,
                             image_text_folder.fingerprint(folder))
  config = image_text_folder.ImageTextFolderConfig(
      name=name, skip_bad_files=skip, **fields)
  return image_text_folder.ImageTextFolder(config=config, folder=folder,
                                           **common)


def _tfds_builder(name: str, options: dict[str, Any], tokenizer: bytes,
                  common: dict[str, Any]) -> tfds_image_text.TfdsImageText:
  """The derived builder of TFDS dataset `name`, in its data_dir; its
  config name is a hash of the fields, the tokenizer's bytes and the
  source's full name (its version included)."""
  fields = {k: options[k] for k in _CONFIG_FIELDS[tfds_image_text.NAME]}
  source = text_sources.prepared_tfds_builder(name, common["data_dir"])
  label = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
  digest = _digest(sorted(fields.items()), tokenizer, source.info.full_name)
  config = tfds_image_text.TfdsImageTextConfig(
      name=f"{label}_{digest}", tfds_name=name, **fields)
  return tfds_image_text.TfdsImageText(config=config, source=source,
                                       **common)


def open_image_text(cfg: ml_collections.ConfigDict
                    ) -> captioned_images.CaptionedImages:
  """The prepared builder of config.data (`cfg`), prepared here on first
  use; several processes on one host prepare it once. Once prepared, it
  opens without its sources (Debian packages, folder checks).

  Raises:
    ValueError: bad options, a bad folder or a field map that does not fit
      the TFDS dataset (one line, before anything is written).
    RunError: a missing Debian package or rsvg-convert, an image that
      does not decode, or a TFDS dataset that is not prepared.
  """
  tfds_prepare.silence_config_notices()
  builder = make_builder(cfg)
  if builder.is_prepared():
    return builder
  if isinstance(builder, image_text_folder.ImageTextFolder):
    # Checked (images decoded) here, before anything is written, and only
    # once: the builder takes the checked rows.
    builder.use_rows(image_text_folder.read_rows_checked(
        builder.folder, builder.builder_config.skip_bad_files))
  elif isinstance(builder, tfds_image_text.TfdsImageText):
    builder.prepare_tokenizer()
  else:
    openclipart.check_sources(builder.svg_dir)
  root = pathlib.Path(builder.data_dir_root)
  root.mkdir(parents=True, exist_ok=True)
  with open(root / f".{builder.name}.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not builder.is_prepared():
      tfds_prepare.prepare(builder, f"the image-text dataset {builder.name}/"
                           f"{builder.builder_config.name}")
  return builder
