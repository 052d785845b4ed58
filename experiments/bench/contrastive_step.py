r"""Nested (ALIGN-MRL) vs plain two-tower contrastive train step, and the
memory of the nested loss's score blocks at a 64k batch on a TPU slice.

  .venv/bin/python experiments/bench/contrastive_step.py \
      --out=contrastive_step.json
  (defaults: --models=vit_b16:bert_base --batch=4 --rounds=6
  --dtype=float32 --score_topology=v4:4x4x4 --score_batch=65536)

Step. configs/align_vit_b16_bert.py is built once with `head=mrl` (the
nested softmax at 12, 24, ..., 768 on both towers' embeddings) and once
with `head=ff` (the plain model: the loss at 768 only), on one device with
a batch a CPU can step (`--batch` pairs of 224-px images and 64 caption
tokens, synthetic), float32, Adafactor at a small constant lr. Each step is
the trainer's own (`bench_steps.trainer_variant`: `train.setup`,
`train.jit_train_step` through the contrastive task, the sharded loss over
a one-device mesh), AOT-compiled. All variants are compiled and run once
before any timing; then each round times one step of every variant in
alternating order (mrl_overhead.run_rounds). Reported: nested / plain in
wall time and in the process's CPU seconds per step, per-round spread, and
XLA's FLOP count of both compiled steps and its ratio.

Score memory. At ALIGN's scale the towers are not the question; the loss's
[n, B] score blocks are: per chip n = B / chips rows against all B columns,
both directions, once per nesting dim. value_and_grad of the loss alone is
compiled for `--score_topology` (libtpu's compile-only devices, as
--mode=aot) on [B, d] bfloat16 embeddings split over all chips, in three
forms: `nested` (`sharded_nested_contrastive_loss` over the 7 dims: one
dim's blocks alive at a time), `unrolled` (the sum of 7 one-dim calls, each
its own custom VJP: XLA may keep every dim's blocks at once) and `plain`
(the largest dim alone); `--score_nesting` replaces the config's dims (a
smaller d separates what scales with d from what scales with the blocks).
Reported: the compiled temporaries per chip. Empty
--score_topology skips this part (it needs libtpu, `pip install '.[aot]'`);
empty --models skips the step part.

Goal: nested / plain step <= 1.03.
"""
import argparse
import os
import re
import statistics
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import NamedSharding, PartitionSpec as P

from mrl_jax import aot
from mrl_jax import config_lib
from mrl_jax import sharding
from mrl_jax.mrl import contrastive

import bench_steps  # experiments/bench/bench_steps.py
import mrl_overhead  # experiments/bench/mrl_overhead.py

CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                      "configs", "align_vit_b16_bert.py")
HEADS = ("mrl", "ff")
SCORE_FORMS = ("nested", "unrolled", "plain")
GiB = 2**30


def bench_config(models: str, head: str,
                 args: argparse.Namespace) -> ml_collections.ConfigDict:
  """configs/align_vit_b16_bert.py with the towers of `models`
  ("image:text"), one device, a CPU batch and a small constant lr (random
  pairs then never make a variant skip its update)."""
  image_model, text_model = models.split(":")
  config = config_lib.load_config(f"{CONFIG}:head={head}")
  config.model.name = image_model
  config.text_model.name = text_model
  config.model.dtype = config.text_model.dtype = args.dtype
  config.batch_size = args.batch
  config.mesh = (("data", 1),)
  config.optimizer.update(learning_rate=1e-5, schedule="constant",
                          warmup_steps=0)
  return config


def synthetic_batch(spec: dict[str, jax.ShapeDtypeStruct], batch: int,
                    vocab: int) -> dict[str, jax.Array]:
  """Random images and caption ids of `spec`'s shapes, every token real."""
  k_image, k_ids = jax.random.split(jax.random.key(1, impl="rbg"))
  length = spec["input_ids"].shape[0]
  return {
      "image": jax.random.normal(k_image, (batch, *spec["image"].shape)),
      "input_ids": jax.random.randint(k_ids, (batch, length), 5, vocab),
      "input_mask": jnp.ones((batch, length), jnp.int32),
      "label": jnp.zeros((batch,), spec["label"].dtype),
  }


def build_variant(models: str, head: str,
                  args: argparse.Namespace) -> bench_steps.TrainerVariant:
  """The trainer's jitted step of one head, initialised and compiled."""
  config = bench_config(models, head, args)
  return bench_steps.trainer_variant(
      config, lambda run_setup, spec: synthetic_batch(
          spec, config.batch_size,
          run_setup.model.towers.text_tower.vocab_size))


def bench_model(models: str, args: argparse.Namespace) -> dict[str, Any]:
  """Step times and FLOPs of both heads of one tower pair."""
  variants = {}
  for head in HEADS:
    variants[head] = build_variant(models, head, args)
    print(f"compiled {models}/{head} in {variants[head].compile_s:.1f} s",
          flush=True)
  times = mrl_overhead.run_rounds(variants, args.rounds)
  summaries = {}
  for head, v in variants.items():
    cpu_s = v.cpu_s[1:]  # the first is run_rounds' untimed warm-up step
    summaries[head] = {
        "nesting_dims": list(v.nesting_dims),
        "step_s_median": statistics.median(times[head]),
        "step_s_min": min(times[head]), "step_s_max": max(times[head]),
        "step_s": times[head], "step_cpu_s_median": statistics.median(cpu_s),
        "step_cpu_s": cpu_s, "compile_s": v.compile_s,
        "xla_flops_per_step": v.flops_per_step, "temp_bytes": v.temp_bytes}
  nested, plain = summaries["mrl"], summaries["ff"]
  per_round = [a / b for a, b in zip(times["mrl"], times["ff"])]
  return {"variants": summaries, "ratios": {"mrl/ff": {
      "of_medians": nested["step_s_median"] / plain["step_s_median"],
      "round_min": min(per_round), "round_max": max(per_round),
      "cpu_of_medians": (nested["step_cpu_s_median"]
                         / plain["step_cpu_s_median"]),
      "xla_flops": nested["xla_flops_per_step"] / plain["xla_flops_per_step"],
  }}}


def score_loss(form: str, dims: tuple[int, ...], mesh: jax.sharding.Mesh
               ) -> Callable[..., jax.Array]:
  """(img, txt, log_temperature) -> the objective, in one of SCORE_FORMS."""
  def loss(img, txt, log_t, nesting):
    return contrastive.sharded_nested_contrastive_loss(
        img, txt, nesting, log_temperature=log_t, mesh=mesh)[0]

  if form == "nested":
    return lambda img, txt, log_t: loss(img, txt, log_t, dims)
  if form == "unrolled":
    return lambda img, txt, log_t: sum(loss(img, txt, log_t, (m,))
                                       for m in dims)
  return lambda img, txt, log_t: loss(img, txt, log_t, dims[-1:])


def score_memory(dims: tuple[int, ...], args: argparse.Namespace
                 ) -> dict[str, Any]:
  """Per-chip temporaries of value_and_grad of the loss alone, compiled for
  args.score_topology on [score_batch, d] bfloat16 embeddings."""
  devices = aot.topology_devices(args.score_topology)
  mesh = sharding.make_train_mesh((("data", -1),), devices)
  batch = args.score_batch
  rows = batch // len(devices)
  embeddings = jax.ShapeDtypeStruct((batch, dims[-1]), jnp.bfloat16,
                                    sharding=sharding.batch_sharding(mesh))
  log_t = jax.ShapeDtypeStruct((), jnp.float32,
                               sharding=NamedSharding(mesh, P()))
  forms = {}
  for form in SCORE_FORMS:
    grad = jax.jit(jax.value_and_grad(score_loss(form, dims, mesh),
                                      argnums=(0, 1, 2)))
    compiled = aot.compile_uncached(grad.lower(embeddings, embeddings,
                                               log_t))
    mem = compiled.memory_analysis()
    forms[form] = {"temp_bytes": mem.temp_size_in_bytes,
                   "argument_bytes": mem.argument_size_in_bytes}
    print(f"compiled the {form} loss for {args.score_topology}: "
          f"{mem.temp_size_in_bytes / GiB:.2f} GiB temporaries per chip",
          flush=True)
  return {"topology": args.score_topology, "chips": len(devices),
          "global_batch": batch, "rows_per_chip": rows,
          "embed_dim": dims[-1], "nesting_dims": list(dims),
          # One direction's float32 [n, B] cosines or logits.
          "score_block_bytes": rows * batch * 4, "forms": forms}


def print_table(results: dict[str, Any]) -> None:
  """Human-readable summary of `results` (the JSON has everything)."""
  print(f"device: {results['device']}  batch {results['batch']} pairs, "
        f"{results['dtype']}  rounds {results['rounds']}  loadavg "
        f"{results['loadavg_start'][0]:.2f} -> "
        f"{results['loadavg_end'][0]:.2f}")
  if results["models"]:
    print(f"{'towers':<20}{'head':<6}{'median s':>9}{'x ff':>7}"
          f"{'rounds min..max':>17}{'CPU s':>8}{'x ff':>7}{'XLA GF':>9}"
          f"{'x ff':>7}")
  for models, res in results["models"].items():
    r = res["ratios"]["mrl/ff"]
    for head, v in res["variants"].items():
      nested = head == "mrl"
      spread = f"{r['round_min']:.3f}..{r['round_max']:.3f}" if nested else ""
      print(f"{models:<20}{head:<6}{v['step_s_median']:>9.3f}"
            f"{(r['of_medians'] if nested else 1.0):>7.3f}{spread:>17}"
            f"{v['step_cpu_s_median']:>8.2f}"
            f"{(r['cpu_of_medians'] if nested else 1.0):>7.3f}"
            f"{v['xla_flops_per_step'] / 1e9:>9.1f}"
            f"{(r['xla_flops'] if nested else 1.0):>7.3f}")
  scores = results.get("score_memory")
  if scores:
    print(f"loss alone on {scores['topology']} ({scores['chips']} chips), "
          f"global batch {scores['global_batch']} ({scores['rows_per_chip']} "
          f"rows per chip), one float32 score block "
          f"{scores['score_block_bytes'] / GiB:.3f} GiB:")
    for form, mem in scores["forms"].items():
      print(f"  {form:<9}{mem['temp_bytes'] / GiB:8.3f} GiB temporaries "
            "per chip")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  """Flags (argparse, so `main` can be called in-process by tests)."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--models", default="vit_b16:bert_base",
                      help="comma-separated image:text tower pairs; empty: "
                      "only the loss-alone compile")
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--rounds", type=int, default=6)
  parser.add_argument("--dtype", default="float32",
                      choices=("float32", "bfloat16"))
  parser.add_argument("--score_topology", default="v4:4x4x4",
                      help="TPU slice of the loss-alone compile; empty: skip")
  parser.add_argument("--score_batch", type=int, default=65536)
  parser.add_argument("--score_nesting", default="",
                      help="comma-separated nesting dims of the loss-alone "
                      "compile (d = the last); empty: the config's")
  parser.add_argument("--out", default=None, help="JSON results path")
  args = parser.parse_args(argv)
  if min(args.rounds, args.batch, args.score_batch) < 1:
    parser.error("--rounds, --batch and --score_batch must be positive")
  if args.score_nesting and not re.fullmatch(r"\d+(,\d+)*",
                                              args.score_nesting):
    parser.error(f"--score_nesting={args.score_nesting}: write increasing "
                 "dims, e.g. 12,24,48,96")
  if args.models and any(m.count(":") != 1 for m in args.models.split(",")):
    parser.error(f"--models={args.models}: write image:text pairs, e.g. "
                 "vit_b16:bert_base")
  return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """Runs the benchmark; prints the table, writes --out, returns results."""
  args = parse_args(argv)
  device = jax.devices()[0]
  results = bench_steps.results_header(
      device, batch=args.batch, dtype=args.dtype, rounds=args.rounds)
  if args.models:
    bench_steps.run_models(results, bench_model, args, device)
  if args.score_topology:
    dims = (tuple(int(m) for m in args.score_nesting.split(","))
            if args.score_nesting
            else tuple(config_lib.load_config(CONFIG).mrl.nesting_dims))
    results["score_memory"] = score_memory(dims, args)
  results["loadavg_end"] = os.getloadavg()
  return bench_steps.report(results, print_table, args.out)


if __name__ == "__main__":
  main()
