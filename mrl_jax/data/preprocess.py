"""Preprocessing ops composed from a spec string, validated when built.

A spec is ops joined by `|`, each `name` or `name(args)` with Python-literal
arguments, as in big_vision's `pp` strings, e.g.
`"decode_jpeg_and_inception_crop(224)|flip_lr|normalize('imagenet')"`.
`build(spec)` parses it with `ast` (nothing is evaluated) and binds each op's
arguments against its signature and type hints, so a typo fails at start-up,
not inside `tf.data`. The result `fn(example, seed) -> example` splits `seed`
(int [2]) into one seed per op for the `stateless_*` random ops: the output is
a deterministic function of (example, seed), which makes a training stream
resumable. It works eagerly and in `tf.data.Dataset.map`. Image ops read and
write `example["image"]`, [H, W, C]; ops producing a fixed size return float32
with a static shape, pixel values still in 0..255.
"""
import ast
from collections.abc import Callable, Sequence
import dataclasses
import inspect
import types
import typing
from typing import Any

import tensorflow as tf

from mrl_jax.data import fashion_mnist

Features = dict[str, tf.Tensor]
Op = Callable[[Features, tf.Tensor], Features]  # (example, seed) -> example.
Size = int | tuple[int, int]

_OPS: dict[str, Callable[..., Op]] = {}
_PRESETS = {  # name -> (mean, std) of pixel / 255.
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "fashion_mnist": (fashion_mnist.MEAN, fashion_mnist.STD),
}


def register(factory: Callable[..., Op]) -> Callable[..., Op]:
  """Registers `factory(*spec_args) -> op` under the factory's name."""
  if factory.__name__ in _OPS:
    raise ValueError(f"preprocess op {factory.__name__!r} registered twice")
  _OPS[factory.__name__] = factory
  return factory


def available_ops() -> list[str]:
  """Sorted names of the registered ops."""
  return sorted(_OPS)


@dataclasses.dataclass(frozen=True)
class PreprocessFn:
  """`fn(example, seed) -> example`, with `seed` an int [2] tensor."""
  spec: str
  ops: tuple[Op, ...]

  def __call__(self, example: Features, seed: tf.Tensor) -> Features:
    seed = tf.cast(tf.convert_to_tensor(seed), tf.int64)
    seeds = tf.random.experimental.stateless_split(seed, num=len(self.ops))
    example = dict(example)
    for i, op in enumerate(self.ops):
      example = op(example, seeds[i])
    return example


def build(spec: str) -> PreprocessFn:
  """Parses and checks `spec`; a bad spec raises a one-line ValueError."""
  known = f"known ops: {', '.join(available_ops())}"
  try:
    node = ast.parse(spec.strip(), mode="eval").body
  except SyntaxError as e:
    raise ValueError(f"cannot parse preprocess spec {spec!r} ({e.msg}); write "
                     f"ops as name or name(args) joined by '|'; {known}") from e
  nodes = []
  while isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
    nodes.insert(0, node.right)
    node = node.left
  return PreprocessFn(
      spec, tuple(_make_op(n, spec, known) for n in [node] + nodes))


def op_arguments(spec: str, name: str) -> dict[str, Any] | None:
  """The arguments (defaults filled in) of the first op `name` in a valid
  spec, e.g. ("mlm_mask(8192, 20)", "mlm_mask") -> {"vocab_size": 8192,
  "max_predictions": 20, "rate": 0.15}; None if the spec has no such op."""
  build(spec)  # a one-line ValueError for a bad spec
  for part in spec.split("|"):
    node = ast.parse(part.strip(), mode="eval").body
    func = node.func if isinstance(node, ast.Call) else node
    if func.id != name:
      continue
    args = kwargs = ()
    if isinstance(node, ast.Call):
      args = [ast.literal_eval(a) for a in node.args]
      kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
    bound = inspect.signature(_OPS[name]).bind(*args, **dict(kwargs))
    bound.apply_defaults()
    return dict(bound.arguments)
  return None


def _make_op(node: ast.expr, spec: str, known: str) -> Op:
  """Turns one `name` or `name(args)` node into an op, checking the args."""
  func = node.func if isinstance(node, ast.Call) else node
  if not isinstance(func, ast.Name):
    raise ValueError(f"bad preprocess op {ast.unparse(node)!r} in spec "
                     f"{spec!r}: expected name or name(args); {known}")
  if func.id not in _OPS:
    raise ValueError(f"unknown preprocess op {func.id!r} in spec {spec!r}; "
                     f"{known}")
  factory = _OPS[func.id]
  sig = inspect.signature(factory)
  try:
    args, kwargs = [], {}
    if isinstance(node, ast.Call):
      args = [_literal(a) for a in node.args]
      kwargs = {k.arg: _literal(k.value) for k in node.keywords}
    bound = sig.bind(*args, **kwargs)
    _check_types(factory, bound)
    return factory(*bound.args, **bound.kwargs)
  except (TypeError, ValueError) as e:
    usage = func.id + str(sig.replace(return_annotation=sig.empty))
    raise ValueError(f"preprocess op {func.id!r} in spec {spec!r}: "
                     f"{' '.join(str(e).split())}; usage: {usage}; {known}"
                     ) from e


def _literal(node: ast.expr) -> Any:
  try:
    return ast.literal_eval(node)
  except (ValueError, TypeError, SyntaxError) as e:
    raise TypeError(f"argument {ast.unparse(node)} is not a Python literal"
                    ) from e


def _check_types(factory: Callable[..., Op],
                 bound: inspect.BoundArguments) -> None:
  """Raises TypeError if a bound argument does not match its type hint."""
  hints = typing.get_type_hints(factory)
  params = inspect.signature(factory).parameters
  for name, value in bound.arguments.items():
    is_var = params[name].kind is inspect.Parameter.VAR_POSITIONAL
    for v in value if is_var else (value,):
      if name in hints and not _matches(v, hints[name]):
        raise TypeError(f"argument {name}={v!r} is not of type "
                        f"{inspect.formatannotation(hints[name])}")


def _matches(value: Any, hint: Any) -> bool:
  """isinstance() for the literal types used in op signatures."""
  origin, args = typing.get_origin(hint), typing.get_args(hint)
  if origin in (typing.Union, types.UnionType):
    return any(_matches(value, h) for h in args)
  if origin in (tuple, Sequence):  # A list literal is fine for both.
    if not isinstance(value, (tuple, list)):
      return False
    if origin is tuple:
      return len(value) == len(args) and all(map(_matches, value, args))
    return all(_matches(v, args[0]) for v in value)
  if hint in (int, float) and isinstance(value, bool):
    return False
  return isinstance(value, (int, float) if hint is float else hint)


def _hw(size: Size) -> tuple[int, int]:
  h, w = (size, size) if isinstance(size, int) else size
  if h <= 0 or w <= 0:
    raise ValueError(f"size must be positive, got {size}")
  return h, w


def _map(fn: Callable[..., tf.Tensor], key: str = "image",
         random: bool = False) -> Op:
  """Op setting `example[key]` to fn(value, seed) if random else fn(value)."""
  def op(example: Features, seed: tf.Tensor) -> Features:
    value = example[key]
    return {**example, key: fn(value, seed) if random else fn(value)}
  return op


def _resize(image: tf.Tensor, h: int, w: int, c: int | None) -> tf.Tensor:
  """[H, W, c] any dtype -> float32 [h, w, c], values keep their range."""
  out = tf.image.resize(image, (h, w), method="bilinear")
  return tf.ensure_shape(tf.cast(out, tf.float32), [h, w, c])


def _sample_crop(shape: tf.Tensor, seed: tf.Tensor, area: tuple[float, float],
                 ratio: tuple[float, float]) -> tuple[tf.Tensor, tf.Tensor]:
  """Inception-style random window in an image of `shape` -> (begin, size).

  If 10 tries miss the ranges, the window is the whole image (torchvision
  takes a centre crop instead; rare with the default ranges).
  """
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      shape, tf.zeros([0, 0, 4], tf.float32), seed=seed,
      min_object_covered=0.0, aspect_ratio_range=ratio, area_range=area,
      max_attempts=10, use_image_if_no_bounding_boxes=True)
  return begin, size


def _crop_and_resize(image: tf.Tensor, seed: tf.Tensor, h: int, w: int,
                     area: tuple[float, float], ratio: tuple[float, float]
                     ) -> tf.Tensor:
  """[H, W, C] -> random window resized to float32 [h, w, C]."""
  begin, crop = _sample_crop(tf.shape(image), seed, area, ratio)
  return _resize(tf.slice(image, begin, crop), h, w, image.shape[-1])


# libjpeg's accurate integer DCT, PIL's (and so torchvision's) default; TF's
# default, the fast DCT, differs from PIL's pixels by up to ~5 levels. Train
# and eval decode alike.
_JPEG_DCT = "INTEGER_ACCURATE"


@register
def decode(channels: int = 3) -> Op:
  """Encoded image string [] -> uint8 [H, W, channels] (JPEG, PNG, ...).

  JPEGs decode to PIL's pixels exactly (`_JPEG_DCT`).
  """
  def fn(data):
    image = tf.cond(
        tf.io.is_jpeg(data),
        lambda: tf.io.decode_jpeg(data, channels=channels,
                                  dct_method=_JPEG_DCT),
        lambda: tf.io.decode_image(data, channels=channels,
                                   expand_animations=False))
    return tf.ensure_shape(image, [None, None, channels])
  return _map(fn)


@register
def decode_jpeg_and_inception_crop(size: Size, area_min: float = 0.08,
                                   area_max: float = 1.0,
                                   ratio_min: float = 3 / 4,
                                   ratio_max: float = 4 / 3) -> Op:
  """Encoded JPEG [] -> random crop, resized: float32 [h, w, 3].

  Decodes only the crop window (`decode_and_crop_jpeg`), much cheaper than a
  full decode for ImageNet photos. The window covers a fraction in
  [area_min, area_max] of the image, with aspect ratio w/h in
  [ratio_min, ratio_max]. Other formats (e.g. PNG) are decoded in full and
  cropped the same way.
  """
  h, w = _hw(size)
  area, ratio = (area_min, area_max), (ratio_min, ratio_max)

  def fn(data, seed):
    def jpeg():
      begin, crop = _sample_crop(tf.image.extract_jpeg_shape(data), seed,
                                 area, ratio)
      window = tf.stack([begin[0], begin[1], crop[0], crop[1]])
      return _resize(tf.image.decode_and_crop_jpeg(
          data, window, channels=3, dct_method=_JPEG_DCT), h, w, 3)
    def other():
      image = tf.io.decode_image(data, channels=3, expand_animations=False)
      return _crop_and_resize(tf.ensure_shape(image, [None, None, 3]), seed,
                              h, w, area, ratio)
    return tf.cond(tf.io.is_jpeg(data), jpeg, other)
  return _map(fn, random=True)


@register
def inception_crop(size: Size, area_min: float = 0.08, area_max: float = 1.0,
                   ratio_min: float = 3 / 4, ratio_max: float = 4 / 3) -> Op:
  """[H, W, C] -> random crop as decode_jpeg_and_inception_crop, resized.

  Returns float32 [h, w, C], values keep their range.
  """
  h, w = _hw(size)
  return _map(lambda image, seed: _crop_and_resize(
      image, seed, h, w, (area_min, area_max), (ratio_min, ratio_max)),
              random=True)


@register
def resize(size: Size) -> Op:
  """[H, W, C] -> bilinear resize, float32 [h, w, C], values keep range."""
  h, w = _hw(size)
  return _map(lambda image: _resize(image, h, w, image.shape[-1]))


@register
def resize_small(size: int, antialias: bool = True) -> Op:
  """[H, W, C] -> float32 [h, w, C] with min(h, w) = size, aspect kept.

  As torchvision's `Resize(size)` on a PIL image (the official MRL and
  ImageNet eval): the long side becomes int(size * long / short) (rounded
  down), and the bilinear filter widens when shrinking (antialias), as PIL's
  does. uint8 input gives values rounded to integers, as PIL returns them.
  antialias=False: plain bilinear interpolation (`tf.image.resize`'s
  default), which aliases fine texture when shrinking by 2x or more.
  """
  _hw(size)

  def fn(image):
    hw = tf.shape(image)[:2]
    short = tf.reduce_min(hw)
    # Integer arithmetic: int(size * long / short) without float rounding.
    new = tf.where(hw == short, size, hw * size // short)
    out = tf.image.resize(image, new, method="bilinear", antialias=antialias)
    if image.dtype == tf.uint8:
      out = tf.round(tf.clip_by_value(out, 0, 255))
    return tf.cast(out, tf.float32)
  return _map(fn)


@register
def central_crop(size: Size) -> Op:
  """[H, W, C] with H >= h, W >= w -> centre crop, float32 [h, w, C]."""
  h, w = _hw(size)

  def fn(image):
    # torchvision's CenterCrop offsets: round((H - h) / 2), halves to even.
    margin = tf.cast(tf.shape(image)[:2] - [h, w], tf.float32)
    begin = tf.concat([tf.cast(tf.round(margin / 2), tf.int32), [0]], 0)
    crop = tf.cast(tf.slice(image, begin, [h, w, -1]), tf.float32)
    return tf.ensure_shape(crop, [h, w, image.shape[-1]])
  return _map(fn)


@register
def flip_lr() -> Op:
  """[H, W, C] -> the same, mirrored left-right with probability 1/2."""
  return _map(tf.image.stateless_random_flip_left_right, random=True)


@register
def pad_and_random_crop(pad: int) -> Op:
  """Zero-pads `pad` pixels on each side, then crops back at random.

  [H, W, C] -> float32 [H, W, C] (the usual CIFAR / MNIST augmentation).
  """
  if pad < 0:
    raise ValueError(f"pad must be >= 0, got {pad}")

  def fn(image, seed):
    padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
    crop = tf.image.stateless_random_crop(padded, tf.shape(image), seed)
    return tf.ensure_shape(tf.cast(crop, tf.float32), image.shape)
  return _map(fn, random=True)


@register
def gray_to_rgb() -> Op:
  """[H, W, 1] -> [H, W, 3], the gray level in every channel (an RGB model
  scoring a grayscale set, e.g. a two-tower model on Fashion-MNIST)."""
  return _map(lambda image: tf.image.grayscale_to_rgb(image)
              if image.shape[-1] == 1 else image)


@register
def value_range(vmin: float, vmax: float) -> Op:
  """[H, W, C] in 0..255 (uint8 or float) -> float32 in [vmin, vmax]."""
  scale = (vmax - vmin) / 255.0
  return _map(lambda image: vmin + tf.cast(image, tf.float32) * scale)


def normalization_stats(mean: float | Sequence[float] | str,
                        std: float | Sequence[float] | None = None
                        ) -> tuple[Any, Any]:
  """(mean, std) of pixel / 255 for `normalize`'s arguments (presets resolved).

  Raises:
    ValueError: unknown preset, or std missing / given with a preset.
  """
  if isinstance(mean, str):
    if mean not in _PRESETS or std is not None:
      raise ValueError(f"preset must be one of {sorted(_PRESETS)} without std,"
                       f" got {mean!r}, {std!r}")
    return _PRESETS[mean]
  if std is None:
    raise ValueError("std is required unless mean names a preset")
  return mean, std


@register
def normalize(mean: float | Sequence[float] | str,
              std: float | Sequence[float] | None = None) -> Op:
  """[H, W, C] in 0..255 (uint8 or float) -> float32 (x / 255 - mean) / std.

  `mean` and `std` are pixel/255 statistics, scalars or one per channel; or
  `mean` names a preset ("imagenet", "fashion_mnist") and `std` is omitted.
  Float input must still be in 0..255 (as `resize` leaves it), so do not
  combine with `value_range`.
  """
  mean, std = normalization_stats(mean, std)
  mean_t, std_t = tf.constant(mean, tf.float32), tf.constant(std, tf.float32)
  if any(t.shape.num_elements() == 0 for t in (mean_t, std_t)):
    raise ValueError(f"mean and std must not be empty, got {mean}, {std}")
  return _map(lambda x: (tf.cast(x, tf.float32) / 255.0 - mean_t) / std_t)


@register
def onehot(num_classes: int, on: float = 1.0, off: float = 0.0,
           key: str = "label") -> Op:
  """Integer `example[key]` [...] -> float32 one-hot [..., num_classes]."""
  return _map(lambda labels: tf.one_hot(
      labels, num_classes, on_value=on, off_value=off, dtype=tf.float32), key)


@register
def multi_hot(num_classes: int, key: str = "label") -> Op:
  """Variable-length int `example[key]` [n] -> float32 [num_classes].

  1.0 at each listed class, else 0.0 (also for n = 0); classes outside
  [0, num_classes) are ignored. A batched ragged [B, None] gives
  [B, num_classes].
  """
  def fn(labels):
    hot = tf.one_hot(labels, num_classes, dtype=tf.float32)
    return tf.minimum(tf.reduce_sum(hot, axis=-2), 1.0)
  return _map(fn, key)


@register
def keep(*keys: str) -> Op:
  """Keeps only `keys` of the example (all must be present)."""
  def op(example: Features, seed: tf.Tensor) -> Features:
    del seed
    missing = [k for k in keys if k not in example]
    if missing:
      raise KeyError(f"keep: no {missing} in example keys {sorted(example)}")
    return {k: example[k] for k in keys}
  return op
