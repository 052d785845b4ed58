r"""Training input throughput per CPU core: our tf.data pipeline vs naive PIL.

  .venv/bin/python experiments/bench/input_pipeline.py --out=input_pipeline.json
  (defaults: --images=64 --rounds=5 --per_round=128 --size=224)

Data: `--images` generated ImageNet-like JPEGs, 500x375 (ImageNet's most
common size), quality 90, 4:2:0 chroma subsampling (PIL's default, like most
camera JPEGs), with photo-like content: smooth random fields at a few scales
plus pixel noise (std 22), so files land near ImageNet's ~110 KB average rather
than the 300+ KB of white noise. The JSON reports the mean file size.

Pipelines, both single-threaded, both giving float32 [size, size, 3]:
  ours   the training spec of configs/resnet50_imagenet.py at full size,
         `decode_jpeg_and_inception_crop(size)|flip_lr|normalize('imagenet')`
         (decodes only the crop window with decode_and_crop_jpeg), in a
         tf.data map with a private one-thread pool and intra-op
         parallelism 1, batched by 32 and fetched as numpy;
  naive  PIL full decode, torchvision's RandomResizedCrop sampling (area
         0.08-1, ratio 3/4-4/3) and bilinear resize with PIL, random flip,
         numpy normalisation: a torchvision-style loader worker.

Method. Each round times `--per_round` images of ours, then of naive; the
ratio is taken per round (so both saw nearly the same machine load), and the
reported figures are medians over rounds. Throughput is per CPU-second of
this process (time.process_time, all threads), i.e. images/s per busy core;
on a shared machine that is steadier than wall-clock time, which is
reported too. 16-core estimate: 16 x the per-core figure (tf.data scales
near-linearly across cores for this map; memory bandwidth is not a limit at
these rates).
"""
import argparse
import io
import json
import os
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from PIL import Image
import tensorflow as tf

from mrl_jax import atomic_files
from mrl_jax.data import preprocess

from bench_steps import cpu_model  # experiments/bench/bench_steps.py

MEAN = np.array([0.485, 0.456, 0.406], np.float32) * 255
STD = np.array([0.229, 0.224, 0.225], np.float32) * 255
TARGET_IMG_S = 3500  # A100-class ResNet-50 training rate to feed
CORES = 16


def make_jpegs(count: int, seed: int = 0, width: int = 500, height: int = 375,
               quality: int = 90, noise: float = 22.0) -> list[bytes]:
  """Photo-like JPEGs: smooth random fields at 3 scales + pixel noise."""
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(count):
    image = np.zeros((height, width, 3), np.float32)
    for cells, amp in ((4, 60.0), (16, 25.0), (64, 10.0)):
      small = rng.normal(0, amp, (cells * 3 // 4 + 1, cells + 1, 3))
      image += np.stack([np.asarray(Image.fromarray(
          small[..., c].astype(np.float32)).resize((width, height),
                                                   Image.BICUBIC))
                         for c in range(3)], -1)
    image += rng.normal(0, noise, image.shape) + 128
    buf = io.BytesIO()
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(
        buf, "JPEG", quality=quality)
    out.append(buf.getvalue())
  return out


def ours(jpegs: list[bytes], size: int) -> Callable[[int], None]:
  """run(n): n images through our training map, one thread."""
  fn = preprocess.build(f"decode_jpeg_and_inception_crop({size})|flip_lr|"
                        "normalize('imagenet')")
  options = tf.data.Options()
  options.threading.private_threadpool_size = 1
  options.threading.max_intra_op_parallelism = 1
  options.autotune.enabled = False
  ds = (tf.data.Dataset.from_tensor_slices(jpegs).repeat().enumerate()
        .map(lambda i, x: fn({"image": x}, tf.stack([tf.constant(0, tf.int64),
                                                     i]))["image"])
        .batch(32).with_options(options))
  it = ds.as_numpy_iterator()

  def run(n: int) -> None:
    for _ in range(n // 32):
      next(it)
  return run


def _rrc_box(rng: np.random.Generator, w: int, h: int) -> tuple[int, ...]:
  """torchvision RandomResizedCrop.get_params -> (left, top, right, bottom)."""
  area = w * h
  for _ in range(10):
    target = area * rng.uniform(0.08, 1.0)
    ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    cw, ch = int(round(np.sqrt(target * ratio))), int(round(np.sqrt(
        target / ratio)))
    if 0 < cw <= w and 0 < ch <= h:
      left, top = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
      return left, top, left + cw, top + ch
  side = min(w, h)  # fallback: centre crop
  left, top = (w - side) // 2, (h - side) // 2
  return left, top, left + side, top + side


def naive(jpegs: list[bytes], size: int) -> Callable[[int], None]:
  """run(n): n images through PIL full decode + crop + resize + flip."""
  rng = np.random.default_rng(0)
  state = {"i": 0}

  def one(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data)).convert("RGB")  # full decode
    box = _rrc_box(rng, *image.size)
    image = image.resize((size, size), Image.BILINEAR, box=box)
    if rng.random() < 0.5:
      image = image.transpose(Image.FLIP_LEFT_RIGHT)
    return (np.asarray(image, np.float32) - MEAN) / STD

  def run(n: int) -> None:
    for _ in range(n):
      one(jpegs[state["i"] % len(jpegs)])
      state["i"] += 1
  return run


def _timed(run: Callable[[int], None], n: int) -> tuple[float, float]:
  cpu, wall = time.process_time(), time.perf_counter()
  run(n)
  return time.process_time() - cpu, time.perf_counter() - wall


def bench(args: argparse.Namespace) -> dict[str, Any]:
  jpegs = make_jpegs(args.images)
  runs = {"ours": ours(jpegs, args.size), "naive": naive(jpegs, args.size)}
  for run in runs.values():
    run(32)  # warm-up: tracing, first allocations
  rounds = {k: {"cpu_s": [], "wall_s": []} for k in runs}
  for _ in range(args.rounds):
    for name, run in runs.items():
      cpu, wall = _timed(run, args.per_round)
      rounds[name]["cpu_s"].append(cpu)
      rounds[name]["wall_s"].append(wall)
  per_core = {k: statistics.median(args.per_round / t for t in r["cpu_s"])
              for k, r in rounds.items()}
  wall = {k: statistics.median(args.per_round / t for t in r["wall_s"])
          for k, r in rounds.items()}
  ratios = [n / o for o, n in zip(rounds["ours"]["cpu_s"],
                                  rounds["naive"]["cpu_s"])]
  return {
      "machine": f"{cpu_model()}, {os.cpu_count()} cores, "
                 f"load {os.getloadavg()[0]:.1f}",
      "images": args.images, "rounds": args.rounds,
      "per_round": args.per_round, "size": args.size,
      "mean_jpeg_kb": float(np.mean([len(j) for j in jpegs]) / 1024),
      "ours_img_s_per_core": per_core["ours"],
      "naive_img_s_per_core": per_core["naive"],
      "ours_img_s_wall": wall["ours"], "naive_img_s_wall": wall["naive"],
      "ratio_median": statistics.median(ratios),
      "ratio_min": min(ratios), "ratio_max": max(ratios),
      f"ours_img_s_{CORES}_cores_estimate": CORES * per_core["ours"],
      f"feeds_{TARGET_IMG_S}_img_s_with_{CORES}_cores":
          CORES * per_core["ours"] >= TARGET_IMG_S,
      "cores_for_target": TARGET_IMG_S / per_core["ours"],
  }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  """Flags (argparse, so `main` can be called in-process by tests)."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--images", type=int, default=64,
                      help="distinct generated JPEGs (cycled)")
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--per_round", type=int, default=128,
                      help="images per pipeline per round, a multiple of 32")
  parser.add_argument("--size", type=int, default=224)
  parser.add_argument("--out", default=None, help="write the JSON here")
  args = parser.parse_args(argv)
  if args.per_round % 32 or args.per_round <= 0:
    parser.error("--per_round must be a positive multiple of 32")
  return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  args = parse_args(argv)
  result = bench(args)
  print(json.dumps(result, indent=2))
  if args.out:
    atomic_files.write_json(args.out, result)
  return result


if __name__ == "__main__":
  main()
