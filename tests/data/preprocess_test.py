"""Tests for mrl_jax.data.preprocess: each op eagerly and in tf.data.map."""
import io

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from mrl_jax.data import preprocess

SEED = (3, 7)
_RNG = np.random.default_rng(0)
IMAGE = _RNG.integers(0, 256, (24, 32, 3), dtype=np.uint8)
GRAY = _RNG.integers(0, 256, (28, 28, 1), dtype=np.uint8)
PNG = tf.io.encode_png(IMAGE).numpy()


def _smooth_image(h: int, w: int) -> np.ndarray:
  """uint8 [h, w, 3]: row index, column index, constant; JPEG keeps it."""
  rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
  return np.stack([rows * 3, cols * 3, np.full_like(rows, 128)],
                  -1).astype(np.uint8)


JPEG = tf.io.encode_jpeg(_smooth_image(48, 64), quality=95).numpy()


def _run(spec, example, seed=SEED):
  """Runs `spec` eagerly and via tf.data.map; checks both agree."""
  fn = preprocess.build(spec)
  example = {k: tf.constant(v) for k, v in example.items()}
  eager = {k: v.numpy() for k, v in fn(example, tf.constant(seed)).items()}
  ds = tf.data.Dataset.from_tensors(example).map(
      lambda ex: fn(ex, tf.constant(seed, tf.int64)))
  graph = {k: v.numpy() for k, v in next(iter(ds)).items()}
  assert eager.keys() == graph.keys()
  for k in eager:
    assert eager[k].dtype == graph[k].dtype, k
    np.testing.assert_allclose(eager[k], graph[k], atol=1e-5, err_msg=k)
  return eager, ds.element_spec


@pytest.mark.parametrize("spec, example, shape, dtype", [
    ("decode", {"image": PNG}, (24, 32, 3), np.uint8),
    ("decode(channels=1)", {"image": PNG}, (24, 32, 1), np.uint8),
    ("decode_jpeg_and_inception_crop(16)", {"image": JPEG}, (16, 16, 3),
     np.float32),
    ("decode_jpeg_and_inception_crop((8, 12))", {"image": PNG}, (8, 12, 3),
     np.float32),
    ("inception_crop(16)", {"image": IMAGE}, (16, 16, 3), np.float32),
    ("resize(16)", {"image": IMAGE}, (16, 16, 3), np.float32),
    ("resize([8, 12])", {"image": GRAY}, (8, 12, 1), np.float32),
    ("resize_small(12)", {"image": IMAGE}, (12, 16, 3), np.float32),
    ("central_crop(16)", {"image": IMAGE}, (16, 16, 3), np.float32),
    ("flip_lr", {"image": IMAGE}, (24, 32, 3), np.uint8),
    ("pad_and_random_crop(4)", {"image": GRAY}, (28, 28, 1), np.float32),
    ("value_range(-1, 1)", {"image": IMAGE}, (24, 32, 3), np.float32),
    ("normalize('imagenet')", {"image": IMAGE}, (24, 32, 3), np.float32),
    ("normalize('fashion_mnist')", {"image": GRAY}, (28, 28, 1), np.float32),
])
def test_image_op_shapes_and_eager_equals_tf_data(spec, example, shape,
                                                   dtype):
  out, _ = _run(spec, {**example, "label": np.int64(3)})
  assert out["image"].shape == shape
  assert out["image"].dtype == dtype
  assert out["label"] == 3  # Other keys pass through.


def test_fixed_size_ops_give_float32_static_shapes_in_tf_data():
  for spec, shape in [
      ("decode|resize_small(20)|central_crop(16)", (16, 16, 3)),
      ("decode_jpeg_and_inception_crop(16)|flip_lr", (16, 16, 3)),
      ("decode(channels=1)|inception_crop((8, 6))", (8, 6, 1)),
      ("decode|resize(10)|pad_and_random_crop(2)|normalize(0.5, 0.5)",
       (10, 10, 3))]:
    _, element_spec = _run(spec, {"image": JPEG})
    assert element_spec["image"] == tf.TensorSpec(shape, tf.float32), spec


def test_deterministic_ops_numerics():
  img = IMAGE.astype(np.float64)
  out, _ = _run("decode", {"image": PNG})
  np.testing.assert_array_equal(out["image"], IMAGE)
  out, _ = _run("central_crop(16)", {"image": IMAGE})
  np.testing.assert_array_equal(out["image"], IMAGE[4:20, 8:24])
  out, _ = _run("resize((24, 32))", {"image": IMAGE})
  np.testing.assert_allclose(out["image"], IMAGE, atol=1e-4)
  out, _ = _run("value_range(-1, 1)", {"image": IMAGE})
  np.testing.assert_allclose(out["image"], img / 255 * 2 - 1, atol=1e-6)
  out, _ = _run("value_range(0, 1)", {"image": IMAGE.astype(np.float32)})
  np.testing.assert_allclose(out["image"], img / 255, atol=1e-6)
  mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
  out, _ = _run("normalize('imagenet')", {"image": IMAGE})
  np.testing.assert_allclose(out["image"], (img / 255 - mean) / std, atol=1e-5)
  out, _ = _run("normalize(mean=[0.485, 0.456, 0.406], std=(0.229, 0.224, "
                "0.225))", {"image": IMAGE.astype(np.float32)})
  np.testing.assert_allclose(out["image"], (img / 255 - mean) / std, atol=1e-5)
  out, _ = _run("normalize('fashion_mnist')", {"image": GRAY})
  np.testing.assert_allclose(out["image"], (GRAY / 255 - 0.2860) / 0.3530,
                             atol=1e-5)
  out, _ = _run("normalize(0.5, 0.25)", {"image": GRAY})
  np.testing.assert_allclose(out["image"], (GRAY / 255 - 0.5) / 0.25,
                             atol=1e-5)


def test_resize_small_keeps_aspect():
  out, _ = _run("resize_small(12)", {"image": IMAGE.transpose(1, 0, 2)})
  assert out["image"].shape == (16, 12, 3)


def test_resize_small_and_central_crop_round_as_torchvision():
  # Long side int(4 * 10 / 7) = int(5.71) = 5, not round() = 6.
  out, _ = _run("resize_small(4)", {"image": IMAGE[:7, :10]})
  assert out["image"].shape == (4, 5, 3)
  # Offsets round((23 - 16) / 2) = round(3.5) = 4 and round(2.5) = 2: halves
  # to even, as Python's round in torchvision's CenterCrop.
  out, _ = _run("central_crop(16)", {"image": IMAGE[:23, :21]})
  np.testing.assert_array_equal(out["image"], IMAGE[4:20, 2:18])


def _photo_jpeg(h: int, w: int, seed: int) -> bytes:
  """A photo-like JPEG (quality 90): smooth gradients, fine texture and
  sharp-edged shapes, the content where resize filters differ most."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:h, 0:w]
  freq = rng.uniform(-3, 3, (2, 3)) / max(h, w)
  img = 128 + 60 * np.sin(2 * np.pi * (x[..., None] * freq[0]
                                       + y[..., None] * freq[1]))
  blobs = np.kron(rng.normal(0, 1, (h // 4 + 1, w // 4 + 1, 3)),
                  np.ones((4, 4, 1)))[:h, :w]
  img += 20 * blobs + 8 * rng.normal(0, 1, (h, w, 3))
  for _ in range(6):
    y0, x0 = rng.integers(0, h), rng.integers(0, w)
    img[y0:y0 + rng.integers(10, h // 2),
        x0:x0 + rng.integers(10, w // 2)] = rng.uniform(0, 255, 3)
  pixels = tf.constant(np.clip(img, 0, 255).astype(np.uint8))
  return tf.io.encode_jpeg(pixels, quality=90).numpy()


def _torchvision_eval(data: bytes) -> np.ndarray:
  """Resize(256) + CenterCrop(224) as torchvision does on a PIL image:
  uint8 [224, 224, 3]."""
  image = Image.open(io.BytesIO(data)).convert("RGB")
  w, h = image.size
  short, long = min(w, h), max(w, h)
  new_long = int(256 * long / short)
  size = (256, new_long) if w <= h else (new_long, 256)  # PIL: (w, h)
  image = image.resize(size, Image.BILINEAR)
  top = int(round((size[1] - 224) / 2.0))
  left = int(round((size[0] - 224) / 2.0))
  return np.asarray(image.crop((left, top, left + 224, top + 224)))


@pytest.mark.parametrize("h, w", [(375, 500), (500, 333), (281, 500),
                                  (512, 512), (200, 150)])
def test_imagenet_eval_matches_torchvision_on_photo_jpegs(h, w):
  data = _photo_jpeg(h, w, seed=h * w)
  ours, _ = _run("decode|resize_small(256)|central_crop(224)",
                 {"image": data})
  diff = np.abs(ours["image"] - _torchvision_eval(data))
  # Decode is bit-exact; PIL's two resize passes round to uint8 in between:
  # 11-15% of values end one level off (0.017 after ImageNet normalisation),
  # none more.
  assert diff.max() <= 1
  assert diff.mean() < 0.2


def test_label_ops():
  out, _ = _run("onehot(5)", {"label": np.int64(2)})
  np.testing.assert_array_equal(out["label"], [0, 0, 1, 0, 0])
  assert out["label"].dtype == np.float32
  out, _ = _run("onehot(4, on=0.9, off=0.1, key='y')", {"y": np.int32(0)})
  np.testing.assert_allclose(out["y"], [0.9, 0.1, 0.1, 0.1])
  out, _ = _run("keep('image', 'label')",
                {"image": GRAY, "label": np.int64(1), "id": b"x"})
  assert set(out) == {"image", "label"}


def test_multi_hot_from_variable_length_labels():
  labels = tf.ragged.constant([[1, 3], [0], [], [4, 4, 9]], dtype=tf.int64)
  fn = preprocess.build("multi_hot(5)")
  want = np.array([[0, 1, 0, 1, 0], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0],
                   [0, 0, 0, 0, 1]], np.float32)  # 9 is out of range.
  # Per example, as tf.data yields a variable-length sequence feature.
  ds = tf.data.Dataset.from_tensor_slices({"label": labels})
  assert ds.element_spec["label"].shape.as_list() == [None]
  ds = ds.map(lambda ex: fn(ex, SEED))
  assert ds.element_spec["label"] == tf.TensorSpec([5], tf.float32)
  np.testing.assert_array_equal(np.stack([x["label"] for x in ds]), want)
  for i in range(4):  # Eagerly, one example at a time.
    out = fn({"label": labels[i]}, SEED)["label"]
    np.testing.assert_array_equal(out, want[i])
  # Batched ragged labels.
  np.testing.assert_array_equal(fn({"label": labels}, SEED)["label"], want)


@pytest.mark.parametrize("spec, example", [
    ("decode_jpeg_and_inception_crop(16)|flip_lr", {"image": JPEG}),
    ("decode_jpeg_and_inception_crop(16)", {"image": PNG}),
    ("inception_crop(16)", {"image": IMAGE}),
    ("flip_lr", {"image": IMAGE}),
    ("pad_and_random_crop(4)", {"image": GRAY}),
])
def test_random_ops_are_functions_of_example_and_seed(spec, example):
  fn = preprocess.build(spec)
  outs = [fn(example, (0, s))["image"].numpy() for s in range(8)]
  again = [fn(example, tf.constant((0, s), tf.int64))["image"].numpy()
           for s in range(8)]
  for a, b in zip(outs, again):
    np.testing.assert_array_equal(a, b)
  distinct = {o.tobytes() for o in outs}
  assert len(distinct) >= 2, "different seeds should give different outputs"


def test_flip_lr_flips_or_not():
  fn = preprocess.build("flip_lr")
  outs = [fn({"image": IMAGE}, (1, s))["image"].numpy() for s in range(8)]
  flipped = [np.array_equal(o, IMAGE[:, ::-1]) for o in outs]
  assert all(f or np.array_equal(o, IMAGE) for f, o in zip(flipped, outs))
  assert 0 < sum(flipped) < 8


def test_per_element_seeds_in_tf_data_match_eager():
  """The resumable-stream pattern: seed = (base, element index)."""
  fn = preprocess.build("inception_crop(8)|flip_lr|value_range(0, 1)")
  images = np.stack([IMAGE, IMAGE[::-1], IMAGE[:, ::-1]])
  ds = tf.data.Dataset.from_tensor_slices({"image": images}).enumerate().map(
      lambda i, ex: fn(ex, tf.stack([tf.constant(5, tf.int64), i])))
  for i, out in enumerate(ds):
    want = fn({"image": images[i]}, (5, i))["image"]
    np.testing.assert_allclose(out["image"], want, atol=1e-6)


def _find_window(crop: np.ndarray, image: np.ndarray, atol: float):
  """Top-left (y, x) where `crop` sits in `image`, or None."""
  h, w = crop.shape[:2]
  for y in range(image.shape[0] - h + 1):
    for x in range(image.shape[1] - w + 1):
      window = image[y:y + h, x:x + w].astype(np.float32)
      if np.abs(window - crop).max() <= atol:
        return y, x
  return None


@pytest.mark.parametrize("spec, data, atol", [
    ("decode_jpeg_and_inception_crop(24, 0.1875, 0.1875, 1, 1)", "jpeg", 6),
    ("decode_jpeg_and_inception_crop(24, 0.1875, 0.1875, 1, 1)", "png", 0),
    ("decode|inception_crop(24, area_min=0.1875, area_max=0.1875, "
     "ratio_min=1.0, ratio_max=1.0)", "png", 0),
])
def test_inception_crop_takes_a_window_of_the_requested_area(spec, data, atol):
  """A 24x24 window (area 576 / 3072 = 0.1875, square) resized to 24x24."""
  image = _smooth_image(48, 64)
  encoded = JPEG if data == "jpeg" else tf.io.encode_png(image).numpy()
  decoded = tf.io.decode_image(encoded).numpy()
  fn = preprocess.build(spec)
  corners = set()
  for s in range(4):
    crop = fn({"image": encoded}, (2, s))["image"].numpy()
    corner = _find_window(crop, decoded, atol=atol + 1e-3)
    assert corner is not None, f"seed {s}: output is not a 24x24 window"
    corners.add(corner)
  assert len(corners) > 1


def test_decode_jpeg_and_inception_crop_full_area_equals_full_decode():
  full = preprocess.build(
      "decode_jpeg_and_inception_crop(20, area_min=1.0, area_max=1.0, "
      "ratio_min=0.1, ratio_max=10.0)")({"image": JPEG}, SEED)["image"]
  want = preprocess.build("decode|resize(20)")({"image": JPEG}, SEED)["image"]
  np.testing.assert_allclose(full, want, atol=1e-3)


def test_decode_jpeg_and_inception_crop_on_mock_imagenet():
  with tfds.testing.mock_data(num_examples=6):
    ds = tfds.load("imagenet2012", split="train",
                   decoders={"image": tfds.decode.SkipDecoding()})
  first = next(iter(ds))
  # The mock yields JPEG bytes, like the real dataset.
  assert first["image"].dtype == tf.string
  assert bool(tf.io.is_jpeg(first["image"]))
  fn = preprocess.build("decode_jpeg_and_inception_crop(24)|flip_lr|"
                        "normalize('imagenet')|onehot(1000)|"
                        "keep('image', 'label')")
  ds = ds.enumerate().map(lambda i, ex: fn(ex, tf.stack([tf.constant(
      0, tf.int64), i])), num_parallel_calls=2, deterministic=True)
  assert ds.element_spec == {
      "image": tf.TensorSpec((24, 24, 3), tf.float32),
      "label": tf.TensorSpec((1000,), tf.float32)}
  outs = list(ds.as_numpy_iterator())
  assert len(outs) == 6
  for out in outs:
    assert np.isfinite(out["image"]).all()
    assert out["label"].sum() == 1
  np.testing.assert_array_equal(  # Same seeds, same stream.
      np.stack([o["image"] for o in outs]),
      np.stack([o["image"] for o in ds.as_numpy_iterator()]))


@pytest.mark.parametrize("spec, expected", [
    ("resize(16)|flip|normalize('imagenet')",
     ["unknown preprocess op 'flip'", "known ops:", "flip_lr", "resize"]),
    ("resize", ["op 'resize'", "missing a required argument: 'size'",
                "usage: resize(size: int | tuple[int, int])"]),
    ("resize(16, 3)", ["op 'resize'", "too many positional arguments"]),
    ("resize('big')", ["op 'resize'", "size='big' is not of type"]),
    ("resize((1, 2, 3))", ["op 'resize'", "is not of type"]),
    ("resize(0)", ["op 'resize'", "size must be positive"]),
    ("central_crop(size=True)", ["op 'central_crop'", "is not of type"]),
    ("value_range(0, '1')", ["op 'value_range'", "vmax='1' is not of type"]),
    ("value_range(0, 3/4)", ["op 'value_range'", "3 / 4 is not a Python"]),
    ("flip_lr(0.5)", ["op 'flip_lr'", "too many positional arguments",
                      "usage: flip_lr()"]),
    ("onehot(10, depth=3)", ["op 'onehot'", "unexpected keyword argument"]),
    ("normalize('cifar')", ["op 'normalize'", "'fashion_mnist', 'imagenet'"]),
    ("normalize(0.5)", ["op 'normalize'", "std is required"]),
    ("keep('image', 3)", ["op 'keep'", "keys=3 is not of type str"]),
    ("decode(channels=open('x'))", ["op 'decode'", "not a Python literal"]),
    ("resize(16)|", ["cannot parse preprocess spec", "known ops:"]),
    ("resize(16", ["cannot parse", "never closed"]),
    ("", ["cannot parse preprocess spec ''"]),
    ("resize(16), flip_lr", ["bad preprocess op", "name or name(args)"]),
    ("tf.image.resize(3)", ["bad preprocess op 'tf.image.resize(3)'"]),
    ("resize(16) + flip_lr", ["bad preprocess op"]),
])
def test_bad_specs_raise_one_line_value_error(spec, expected):
  with pytest.raises(ValueError) as info:
    preprocess.build(spec)
  message = str(info.value)
  assert "\n" not in message
  for text in expected:
    assert text in message


def test_keep_missing_key_names_it():
  with pytest.raises(KeyError, match="'nope'"):
    preprocess.build("keep('nope')")({"image": IMAGE}, SEED)


def test_registry():
  assert {"decode", "decode_jpeg_and_inception_crop", "inception_crop",
          "resize", "resize_small", "central_crop", "flip_lr",
          "pad_and_random_crop", "value_range", "normalize", "onehot",
          "multi_hot", "keep"} <= set(preprocess.available_ops())
  with pytest.raises(ValueError, match="registered twice"):
    preprocess.register(preprocess.resize)
  fn = preprocess.build("resize(8) | flip_lr")  # Spaces are fine.
  assert fn.spec == "resize(8) | flip_lr" and len(fn.ops) == 2
