r"""Training throughput, MFU and MRL/FF ratio on one accelerator (H100/H200).

  bash experiments/bench/gpu_throughput.sh            # defaults below
  python experiments/bench/gpu_throughput.py --models=resnet50 --batch=256 \
      --steps=50 --warmup=10 --out=gpu_throughput.json

What runs: the trainer's own `make_train_step` for ResNet-50 (SGD momentum)
and ViT-B/16 (AdamW, grad clip 1.0), each with the MRL head (fused, default
nesting) and the FF head (full dim; --heads=mrl,mrl_e,ff adds MRL-E),
1000 classes, bf16 compute (`dtype=jnp.bfloat16`; params, optimizer state,
logits and loss float32), jitted with `donate_argnums=0` on one device. The batch is random and made
on the device once, so nothing crosses from the host while timing: this is
the compute ceiling of the step, not of the input pipeline.

Timing: each variant runs --warmup steps; then --rounds rounds each time
--steps steps of every variant (order alternating between rounds, so a clock
or thermal drift hits both heads alike), one device sync per window. Step
time is the median window's time / --steps; head/FF throughput ratios are
reported from the medians and per round.

MFU = img/s x train FLOPs per image / peak. FLOPs per image come from XLA
(`compiled.cost_analysis()["flops"]` / batch; the lowered, pre-optimisation
count when the compiled one is unavailable), and, for comparison with
published numbers, the analytic 6 x MACs (ResNet-50 24.7 GFLOP, ViT-B/16
105.5 GFLOP at 224 px, from timm's MAC counts). Peak: 989 TFLOP/s, the
dense bf16 peak of an H100 SXM or H200 (--peak_tflops for other chips).

Targets on one H100, bf16, 224 px:
  ResNet-50 >= 3,500 img/s (floor 2,500), ViT-B/16 >= 1,500 img/s
  (floor 1,000), MRL/FF throughput ratio >= 0.98.
Record every result with the device named (the JSON's "device" and
"device_kind" fields; the .sh wrapper also prints nvidia-smi): H100 and H200
numbers differ (H200 has 1.43x the memory bandwidth).

Expected to take under 5 minutes on one H100 at the defaults, mostly
compilation (no GPU figure is recorded yet: experiments/bench/README.md).
Runs on CPU too, for tests: `--models=resnet_mu,vit_mu --image_size=32
--batch=8 --steps=2 --warmup=1` (the numbers then mean nothing).
"""
import argparse
import dataclasses
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from mrl_jax import train_step as step_lib
from mrl_jax.mrl import heads

import bench_steps  # experiments/bench/bench_steps.py

# Per-model default batch: fits one H100 with room to spare.
DEFAULT_BATCH = {"resnet50": 256, "vit_b16": 128}
FALLBACK_BATCH = 64
DTYPES = {"bfloat16": jnp.bfloat16, "float32": jnp.float32}


@dataclasses.dataclass
class Variant:
  """One compiled (backbone, head) train step and its live train state."""
  step: Callable[..., Any]
  state: step_lib.TrainState
  head: heads.NestedHead
  compile_s: float
  flops_compiled: float  # XLA's count after optimisation (0: unavailable).
  flops_lowered: float  # XLA's count of the unoptimised program.


def compile_variant(model_name: str, head_type: str, dtype: Any,
                    batch: dict[str, jax.Array]) -> Variant:
  """Initialises and AOT-compiles one (backbone, head) train step."""
  c = bench_steps.compile_step(model_name, head_type, dtype, batch)
  return Variant(c["step"], c["state"], c["head"], c["compile_s"],
                 bench_steps.flops(c["step"].cost_analysis()),
                 bench_steps.flops(c["lowered"].cost_analysis()))


def run_window(variant: Variant, batch: dict[str, jax.Array],
               steps: int) -> float:
  """Runs `steps` steps with one sync at the end; returns seconds."""
  state, metrics = variant.state, None
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = variant.step(state, batch)
  jax.block_until_ready((state, metrics))
  variant.state = state  # The old one was donated.
  return time.perf_counter() - start


def time_variants(variants: dict[str, Variant],
                  batch: dict[str, jax.Array],
                  args: argparse.Namespace) -> dict[str, list[float]]:
  """Warm-up, then alternating timed windows; per-step seconds per window."""
  for variant in variants.values():
    run_window(variant, batch, args.warmup)
  order = list(variants)
  per_step = {name: [] for name in order}
  for r in range(args.rounds):
    for name in (order if r % 2 == 0 else order[::-1]):
      per_step[name].append(
          run_window(variants[name], batch, args.steps) / args.steps)
  return per_step


def summarise(variant: Variant, step_times: list[float], batch: int,
              analytic_flops: float | None, peak: float) -> dict[str, Any]:
  """Throughput and MFU of one variant."""
  step_s = statistics.median(step_times)
  img_s = batch / step_s
  per_image = (variant.flops_compiled or variant.flops_lowered) / batch
  return {
      "nesting_dims": list(variant.head.nesting_dims),
      "step_s": step_s, "step_s_windows": step_times, "img_per_s": img_s,
      "compile_s": variant.compile_s,
      "xla_flops_per_image": per_image,
      "xla_flops_per_image_compiled": variant.flops_compiled / batch,
      "xla_flops_per_image_lowered": variant.flops_lowered / batch,
      "mfu_xla": img_s * per_image / peak,
      "analytic_flops_per_image": analytic_flops,
      "mfu_analytic": (None if analytic_flops is None
                       else img_s * analytic_flops / peak),
  }


def throughput_ratio(step_times: dict[str, list[float]],
                     head: str) -> dict[str, Any]:
  """head/FF img/s: of the median windows, and per round (same batch)."""
  return {"of_medians": (statistics.median(step_times["ff"]) /
                         statistics.median(step_times[head])),
          "rounds": [f / h for h, f in zip(step_times[head],
                                           step_times["ff"])]}


def bench_model(model_name: str, args: argparse.Namespace) -> dict[str, Any]:
  """Compiles, times and summarises every head for one backbone."""
  batch_size = args.batch or DEFAULT_BATCH.get(model_name, FALLBACK_BATCH)
  batch = bench_steps.synthetic_batch(batch_size, args.image_size)
  head_types = args.heads.split(",")
  variants = {h: compile_variant(model_name, h, DTYPES[args.dtype], batch)
              for h in head_types}
  step_times = time_variants(variants, batch, args)
  macs = (bench_steps.BACKBONE_MACS_224.get(model_name) if args.image_size == 224
          else None)
  analytic = None if macs is None else 6.0 * macs
  result: dict[str, Any] = {"batch": batch_size, "heads": {
      h: summarise(variants[h], step_times[h], batch_size, analytic,
                   args.peak_tflops * 1e12) for h in head_types}}
  if "ff" in variants:
    result["throughput_over_ff"] = {
        h: throughput_ratio(step_times, h) for h in head_types if h != "ff"}
  return result


def print_table(results: dict[str, Any]) -> None:
  """Human-readable summary of `results` (the JSON has everything)."""
  print(f"device: {results['device']} ({results['device_kind']}), "
        f"{results['dtype']} @ {results['image_size']} px, peak "
        f"{results['peak_tflops']:.0f} TFLOP/s")
  print(f"{'model':<10}{'head':<6}{'batch':>6}{'step ms':>9}{'img/s':>9}"
        f"{'GF/img XLA':>11}{'MFU XLA':>8}{'GF/img 6MAC':>12}{'MFU 6MAC':>9}"
        f"{'compile s':>10}")
  for model_name, res in results["models"].items():
    for head, v in res["heads"].items():
      analytic = v["analytic_flops_per_image"]
      # No published MAC count (e.g. the tiny test models): print "-".
      analytic_cols = ("-", "-") if analytic is None else (
          f"{analytic / 1e9:.1f}", f"{v['mfu_analytic']:.1%}")
      print(f"{model_name:<10}{head:<6}{res['batch']:>6}"
            f"{1e3 * v['step_s']:>9.2f}{v['img_per_s']:>9.1f}"
            f"{v['xla_flops_per_image'] / 1e9:>11.2f}{v['mfu_xla']:>8.1%}"
            f"{analytic_cols[0]:>12}{analytic_cols[1]:>9}"
            f"{v['compile_s']:>10.1f}")
      lowered = v["xla_flops_per_image_lowered"]
      if lowered and abs(v["xla_flops_per_image"] / lowered - 1) > 0.1:
        # E.g. a backend that leaves library calls (cuDNN) out of its count.
        print(f"{'':<10}note: compiled FLOP count is "
              f"{v['xla_flops_per_image'] / lowered:.2f}x the lowered one")
    for head, ratio in res.get("throughput_over_ff", {}).items():
      rounds = ratio["rounds"]
      print(f"{model_name:<10}{head}/ff throughput {ratio['of_medians']:.4f} "
            f"(rounds {min(rounds):.4f}..{max(rounds):.4f}; target >= 0.98)")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  """Flags (argparse, so `main` can be called in-process by tests)."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--models", default="resnet50,vit_b16",
                      help="comma-separated registry names")
  parser.add_argument("--heads", default="mrl,ff",
                      help="comma-separated head types (mrl, mrl_e, ff)")
  parser.add_argument("--batch", type=int, default=0,
                      help="global batch; 0: per-model default "
                      f"{DEFAULT_BATCH}, else {FALLBACK_BATCH}")
  parser.add_argument("--steps", type=int, default=50,
                      help="timed steps per window")
  parser.add_argument("--rounds", type=int, default=3,
                      help="timed windows per variant")
  parser.add_argument("--warmup", type=int, default=10)
  parser.add_argument("--image_size", type=int, default=224)
  parser.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES))
  parser.add_argument("--peak_tflops", type=float, default=989.0,
                      help="dense peak of the chip for --dtype")
  parser.add_argument("--out", default=None, help="JSON results path")
  args = parser.parse_args(argv)
  if min(args.steps, args.rounds) < 1 or min(args.warmup, args.batch) < 0:
    parser.error("--steps and --rounds must be >= 1, --warmup and --batch "
                 ">= 0")
  if not set(args.heads.split(",")) <= set(heads.HEAD_TYPES):
    parser.error(f"--heads={args.heads}: use head types from "
                 f"{heads.HEAD_TYPES}")
  return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """Runs the benchmark; prints the table, writes --out, returns results."""
  args = parse_args(argv)
  device = jax.devices()[0]
  if device.platform != "gpu":
    print(f"note: running on {device.platform}, not a GPU: the numbers are "
          "not comparable with the GPU targets")
  results: dict[str, Any] = {
      "device": str(device), "device_kind": device.device_kind,
      "platform": device.platform, "jax": jax.__version__,
      "dtype": args.dtype, "image_size": args.image_size,
      "steps": args.steps, "rounds": args.rounds, "warmup": args.warmup,
      "peak_tflops": args.peak_tflops, "models": {}}
  bench_steps.run_models(results, bench_model, args, device)
  stats = device.memory_stats() or {}
  results["peak_bytes_in_use"] = stats.get("peak_bytes_in_use")
  return bench_steps.report(results, print_table, args.out)


if __name__ == "__main__":
  main()
