r"""Train-step time of MRL and MRL-E heads relative to the FF head, on CPU.

  .venv/bin/python experiments/bench/mrl_overhead.py --out=mrl_overhead.json
  (defaults: --models=resnet50,vit_b16 --batch=4 --rounds=10 --image_size=224)

For each backbone, three classifiers that differ only in the head are built
(FF = one Dense(d, 1000), MRL = one Dense(m, 1000) per nesting dim with the
`fused` implementation, MRL-E = one shared Dense(d, 1000)) and trained with
the trainer's own `make_train_step`, jitted with `donate_argnums=0`: SGD
momentum for ResNets, AdamW (with grad clipping) for ViTs, label smoothing
0.1, float32, synthetic data, one device.

Method. All of a model's variants are compiled and run once before any
timing. Then each round times one step of every variant, alternating the
order (FF, MRL, MRL-E, then MRL-E, MRL, FF, ...) so that slow drifts of a
shared machine's load hit every variant alike. The reported ratio is
median(MRL) / median(FF); the spread is the min and max of the per-round
ratios (each round's variants ran seconds apart, under nearly the same load).

To explain a ratio, the script also reports
  * the analytic head FLOPs (train = 6 x MACs: forward, grad wrt input and
    grad wrt kernel) against the backbone's published 6 x MACs at 224 px;
  * XLA's FLOP count of each compiled step (`cost_analysis`); at small batch
    it also holds the optimizer's per-parameter work on the extra head
    parameters (2.04 M for ResNet-50's MRL head), divided by the batch;
  * the head + loss alone (value_and_grad wrt head params and embedding, on
    a random embedding), timed in isolation: its MRL - FF difference is the
    head's own cost, free of the backbone's timing noise.

Cost. Compiling the trainer's step dominates on CPU: on the project's 2-core
AMD EPYC, 80-130 s per ResNet-50 variant and 80-100 s per ViT-B/16 variant
(the step's non-finite guard and metrics make it 6x slower to compile than
value_and_grad + SGD alone: 79 s vs 13 s for ResNet-50 at load ~1.5),
so the default run took 17.7 min there, about 5 min of it timed steps. Set
JAX_COMPILATION_CACHE_DIR (a directory) to make later runs skip
compilation; use --models=resnet50, --heads=ff,mrl or fewer --rounds for a
shorter run.

Goal: MRL/FF <= 1.02.
Record results with the machine and its load (the JSON holds both).
"""
import argparse
import dataclasses
import os
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from mrl_jax import train_step as step_lib
from mrl_jax.mrl import heads
from mrl_jax.mrl import losses

import bench_steps  # experiments/bench/bench_steps.py

HEAD_TYPES = ("ff", "mrl", "mrl_e")
# Repetitions of the isolated head + loss (milliseconds each).
HEAD_REPS = 30


def head_train_flops(head: heads.NestedHead) -> float:
  """Analytic train FLOPs per image of the head's matmuls (6 x MACs)."""
  dims = head.nesting_dims
  in_features = sum(dims) if head.head_type == "mrl" else dims[-1]
  return 6.0 * in_features * head.num_classes


@dataclasses.dataclass
class Variant:
  """One compiled classifier and its live (donated) train state."""
  head: heads.NestedHead
  embedding_dim: int
  step: Callable[..., Any]
  state: step_lib.TrainState
  batch: dict[str, jax.Array]
  compile_s: float
  flops_per_step: float

  def timed_step(self) -> float:
    """Runs one step to completion; returns its wall time in seconds."""
    start = time.perf_counter()
    self.state, metrics = self.step(self.state, self.batch)
    jax.block_until_ready((self.state, metrics))
    return time.perf_counter() - start


def build_variant(model_name: str, head_type: str,
                  batch: dict[str, jax.Array]) -> Variant:
  """Builds, initialises and compiles one (backbone, head) train step."""
  c = bench_steps.compile_step(model_name, head_type, jnp.float32, batch)
  return Variant(c["head"], c["embedding_dim"], c["step"], c["state"], batch,
                 c["compile_s"], bench_steps.flops(c["step"].cost_analysis()))


def time_head_alone(head: heads.NestedHead, batch: int,
                    embedding_dim: int) -> float:
  """Median seconds of value_and_grad(head + nested loss) on a random z."""
  k_z, k_label = jax.random.split(jax.random.key(2, impl="rbg"))
  z = jax.random.normal(k_z, (batch, embedding_dim))
  labels = jax.random.randint(k_label, (batch,), 0, bench_steps.NUM_CLASSES)
  params = jax.jit(head.init)(jax.random.key(0, impl="rbg"), z)
  loss_fn = losses.get_loss_fn("softmax", bench_steps.LABEL_SMOOTHING)
  weights = (1.0,) * len(head.nesting_dims)

  def objective(params, z):
    per_example = loss_fn(head.apply(params, z), labels)
    return losses.weighted_nested_loss(per_example, weights)[0]

  grad_fn = jax.jit(jax.value_and_grad(objective, argnums=(0, 1)))
  jax.block_until_ready(grad_fn(params, z))
  times = []
  for _ in range(HEAD_REPS):
    start = time.perf_counter()
    jax.block_until_ready(grad_fn(params, z))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def run_rounds(variants: dict[str, Variant],
               rounds: int) -> dict[str, list[float]]:
  """Interleaved timing: one step per variant per round, order alternating."""
  order = list(variants)
  for variant in variants.values():
    variant.timed_step()  # First run after compile: allocation, page faults.
  times = {name: [] for name in order}
  for r in range(rounds):
    for name in (order if r % 2 == 0 else order[::-1]):
      times[name].append(variants[name].timed_step())
  return times


def ratio_stats(times: dict[str, list[float]], head_alone: dict[str, float],
                head: str) -> dict[str, float]:
  """head/FF step-time ratios: measured, their spread, and predicted.

  The prediction adds the isolated head + loss time difference to FF's step
  time: what the ratio would be if the head were the only difference.
  """
  per_round = [a / b for a, b in zip(times[head], times["ff"])]
  ff_step = statistics.median(times["ff"])
  return {"of_medians": statistics.median(times[head]) / ff_step,
          "round_median": statistics.median(per_round),
          "round_min": min(per_round), "round_max": max(per_round),
          "predicted_from_head_alone":
              1.0 + (head_alone[head] - head_alone["ff"]) / ff_step}


def summarise_variant(variant: Variant, times: list[float], batch: int,
                      backbone_flops: float | None) -> dict[str, Any]:
  """Step-time statistics and FLOP counts of one variant."""
  head_flops = head_train_flops(variant.head)
  return {
      "nesting_dims": list(variant.head.nesting_dims),
      "step_s_median": statistics.median(times),
      "step_s_min": min(times), "step_s_max": max(times), "step_s": times,
      "compile_s": variant.compile_s,
      "xla_flops_per_image": variant.flops_per_step / batch,
      "head_train_flops_per_image_analytic": head_flops,
      "head_flops_fraction_of_backbone": (
          None if backbone_flops is None else head_flops / backbone_flops),
      "head_and_loss_alone_s": time_head_alone(variant.head, batch,
                                               variant.embedding_dim),
  }


def bench_model(model_name: str, args: argparse.Namespace) -> dict[str, Any]:
  """All measurements for one backbone."""
  batch = bench_steps.synthetic_batch(args.batch, args.image_size)
  variants = {}
  for head_type in args.heads.split(","):
    variants[head_type] = build_variant(model_name, head_type, batch)
    # Progress: a ResNet-50 variant takes minutes to compile on 2 cores.
    print(f"compiled {model_name}/{head_type} in "
          f"{variants[head_type].compile_s:.1f} s", flush=True)
  times = run_rounds(variants, args.rounds)
  macs = (bench_steps.BACKBONE_MACS_224.get(model_name) if args.image_size == 224
          else None)
  backbone_flops = None if macs is None else 6.0 * macs
  summaries = {name: summarise_variant(v, times[name], args.batch,
                                       backbone_flops)
               for name, v in variants.items()}
  head_alone = {name: v["head_and_loss_alone_s"]
                for name, v in summaries.items()}
  return {"backbone_train_flops_per_image_analytic": backbone_flops,
          "variants": summaries,
          "ratios": {f"{name}/ff": ratio_stats(times, head_alone, name)
                     for name in variants if name != "ff"}}


def print_table(results: dict[str, Any]) -> None:
  """Human-readable summary of `results` (the JSON has everything)."""
  print(f"device: {results['device']}  batch {results['batch']} @ "
        f"{results['image_size']} px  rounds {results['rounds']}  "
        f"loadavg {results['loadavg_start'][0]:.2f} -> "
        f"{results['loadavg_end'][0]:.2f}")
  print(f"{'model':<10}{'head':<7}{'median s':>9}{'min s':>8}{'max s':>8}"
        f"{'x FF':>7}{'rounds min..max':>17}{'head+loss ms':>13}"
        f"{'XLA GF/img':>11}{'head GF/img':>12}")
  for model_name, res in results["models"].items():
    for name, v in res["variants"].items():
      ratio = res["ratios"].get(f"{name}/ff")
      spread = (f"{ratio['round_min']:.3f}..{ratio['round_max']:.3f}"
                if ratio else "")
      print(f"{model_name:<10}{name:<7}{v['step_s_median']:>9.3f}"
            f"{v['step_s_min']:>8.3f}{v['step_s_max']:>8.3f}"
            f"{(ratio['of_medians'] if ratio else 1.0):>7.3f}{spread:>17}"
            f"{1e3 * v['head_and_loss_alone_s']:>13.2f}"
            f"{v['xla_flops_per_image'] / 1e9:>11.2f}"
            f"{v['head_train_flops_per_image_analytic'] / 1e9:>12.4f}")
    predicted = {k: r["predicted_from_head_alone"]
                 for k, r in res["ratios"].items()}
    print(f"{'':<10}head+loss alone predicts " +
          ", ".join(f"{k} {v:.4f}" for k, v in predicted.items()))
    backbone = res["backbone_train_flops_per_image_analytic"]
    if backbone:
      flops = {name: v["head_train_flops_per_image_analytic"]
               for name, v in res["variants"].items()}
      adds = ", ".join(
          f"{name} head adds {(f - flops['ff']) / 1e9:.4f} "
          f"({100 * (f - flops['ff']) / backbone:.3f}%)"
          for name, f in flops.items() if name != "ff")
      print(f"{'':<10}analytic: backbone {backbone / 1e9:.1f} GFLOP/img "
            f"(6 x MACs); vs FF: {adds}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  """Flags (argparse, so `main` can be called in-process by tests)."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--models", default="resnet50,vit_b16",
                      help="comma-separated registry names")
  parser.add_argument("--heads", default=",".join(HEAD_TYPES),
                      help="comma-separated head types; must include ff")
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--rounds", type=int, default=10)
  parser.add_argument("--image_size", type=int, default=224)
  parser.add_argument("--out", default=None, help="JSON results path")
  args = parser.parse_args(argv)
  if min(args.rounds, args.batch, args.image_size) < 1:
    parser.error("--rounds, --batch and --image_size must be positive")
  head_types = args.heads.split(",")
  if "ff" not in head_types or not set(head_types) <= set(HEAD_TYPES):
    parser.error(f"--heads={args.heads}: use a subset of {HEAD_TYPES} that "
                 "includes ff (the baseline of every ratio)")
  return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """Runs the benchmark; prints the table, writes --out, returns results."""
  args = parse_args(argv)
  device = jax.devices()[0]
  results = bench_steps.results_header(
      device, batch=args.batch, image_size=args.image_size,
      rounds=args.rounds, num_classes=bench_steps.NUM_CLASSES)
  bench_steps.run_models(results, bench_model, args, device)
  results["loadavg_end"] = os.getloadavg()
  return bench_steps.report(results, print_table, args.out)


if __name__ == "__main__":
  main()
