r"""Train-step time of nested MLM (MRL-E) relative to plain MLM, on CPU.

  .venv/bin/python experiments/bench/mlm_step.py --out=mlm_step.json
  (defaults: --models=bert_base --heads=mrl_e,ff --batch=8 --rounds=8
  --dtype=float32)

For each model, configs/bert_base_mlm.py is built once per head (mrl_e: the
paper's nested decoder over the tied word embeddings at nesting 12, 24, ...,
d; ff: plain BERT MLM, one tied decoder at the full width d; mrl: untied
decoders per dim), the same BERT with the model swapped in (`--models`),
on one device, with a batch a CPU can step (`--batch` sequences of
`--seq_len` tokens, 20 predictions each, synthetic ids). Each step is the
trainer's own: `train.setup`, `train.abstract_train_state` and
`train.jit_train_step` through the mlm task (AdamW, gradient clipping,
dropout, the non-finite guard, per-dim metrics), AOT-compiled.

Method. All variants are compiled and run once before any timing; then each
round times one step of every variant, alternating the order, so that the
load drifts of a shared machine hit every variant alike (as
mrl_overhead.py). Reported: median(nested) / median(plain) and the min and
max of the per-round ratios, in wall time and in the process's CPU seconds
per step (`time.process_time`: the work of the step's threads, which other
jobs on a shared machine disturb less than the wall clock); XLA's FLOP count of both compiled steps
(`cost_analysis`) and its ratio; and, to say where a difference comes from,
the decoder + loss alone (value_and_grad of `mrl.mlm.nested_mlm_loss` with
respect to the transformed states, the word embeddings and the bias, at the
step's N = batch x 20 predictions), timed and FLOP-counted: its nested -
plain time added to the plain step predicts the nested step; and the same
at single dims (smallest, middle, full), which shows the part of a dim's
cost that does not scale with its width.

Cost. BERT-Base compiles in about a minute per variant on 2 cores; a
float32 step of 8 x 128 tokens takes seconds. Use --models=bert_small or
fewer --rounds for a shorter run.

Goal: nested / plain step time <= 1.05 for BERT-Base.
"""
import argparse
import os
import statistics
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from mrl_jax import config_lib
from mrl_jax.mrl import mlm

import bench_steps  # experiments/bench/bench_steps.py
import mrl_overhead  # experiments/bench/mrl_overhead.py

CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                      "configs", "bert_base_mlm.py")
HEAD_TYPES = ("mrl_e", "mrl", "ff")
# Repetitions of the decoder + loss timed alone.
DECODER_REPS = 10


def bench_config(model_name: str, head: str,
                 args: argparse.Namespace) -> ml_collections.ConfigDict:
  """configs/bert_base_mlm.py with `model_name`, one device and a CPU batch.

  The nesting is the halving list of the model's width (12..768 for
  BERT-Base, the paper's); the learning rate is constant and small so that
  random data never makes a variant skip its update.
  """
  config = config_lib.load_config(f"{CONFIG}:head={head}")
  config.model.name = model_name
  config.model.dtype = args.dtype
  config.model.kwargs.max_len = args.seq_len
  config.data.corpus.seq_len = args.seq_len
  config.mrl.nesting_dims = None
  config.batch_size = args.batch
  config.mesh = (("data", 1),)
  config.sharding.strategy = "dp"
  config.optimizer.update(schedule="constant", warmup_steps=0)
  return config


def synthetic_batch(spec: dict[str, jax.ShapeDtypeStruct], batch: int,
                    vocab: int) -> dict[str, jax.Array]:
  """Random ids and distinct masked positions (never [CLS]) of `spec`'s
  shapes, every prediction real."""
  k_ids, k_pos, k_masked = jax.random.split(jax.random.key(1, impl="rbg"), 3)
  length = spec["input_ids"].shape[0]
  predictions = spec["masked_positions"].shape[0]
  shape = (batch, length)
  order = jnp.argsort(jax.random.uniform(k_pos, (batch, length - 1)), axis=1)
  return {
      "input_ids": jax.random.randint(k_ids, shape, 5, vocab),
      "segment_ids": jnp.zeros(shape, jnp.int32),
      "input_mask": jnp.ones(shape, jnp.int32),
      "masked_positions": (order[:, :predictions] + 1).astype(jnp.int32),
      "masked_ids": jax.random.randint(k_masked, (batch, predictions), 5,
                                       vocab),
      "masked_weights": jnp.ones((batch, predictions), jnp.float32),
  }


def build_variant(model_name: str, head: str,
                  args: argparse.Namespace) -> bench_steps.TrainerVariant:
  """The trainer's jitted step of one head, initialised and compiled."""
  config = bench_config(model_name, head, args)
  return bench_steps.trainer_variant(
      config, lambda run_setup, spec: synthetic_batch(
          spec, config.batch_size, run_setup.model.encoder.vocab_size))


def decoder_alone(variant: bench_steps.TrainerVariant, head: str,
                  dims: tuple[int, ...] | None = None) -> dict[str, float]:
  """Median seconds (wall and process CPU) and XLA FLOPs of
  value_and_grad(decoder + nested MLM loss) on random states, at the
  variant's prediction count and `dims` (default: its nesting)."""
  params = variant.state.params
  table = params["encoder"]["word_embeddings"]["embedding"]
  vocab, width = table.shape
  count = variant.batch["masked_ids"].size
  k_h, k_ids = jax.random.split(jax.random.key(2, impl="rbg"))
  h = jax.random.normal(k_h, (count, width), table.dtype)
  ids = jax.random.randint(k_ids, (count,), 0, vocab)
  weights = jnp.ones((count,), jnp.float32)
  dims = dims or variant.nesting_dims
  mlm_params = params["mlm"]

  def loss(h, table, mlm_params):
    if head == "mrl":
      tables = tuple(mlm_params[f"decoder_{i}"] for i in range(len(dims)))
      biases = tuple(mlm_params[f"decoder_bias_{i}"]
                     for i in range(len(dims)))
    else:
      tables = (table,) * len(dims)
      biases = (mlm_params["decoder_bias"],) * len(dims)
    decoder = mlm.MlmDecoder(h, None, None, tables, biases, dims)
    return mlm.nested_mlm_loss(decoder, ids, weights)[0]

  grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
  compiled = grad.lower(h, table, mlm_params).compile()
  jax.block_until_ready(compiled(h, table, mlm_params))
  times, cpu_times = [], []
  for _ in range(DECODER_REPS):
    start, start_cpu = time.perf_counter(), time.process_time()
    jax.block_until_ready(compiled(h, table, mlm_params))
    cpu_times.append(time.process_time() - start_cpu)
    times.append(time.perf_counter() - start)
  return {"s": statistics.median(times), "cpu_s": statistics.median(cpu_times),
          "xla_flops": bench_steps.flops(compiled.cost_analysis())}


def bench_model(model_name: str, args: argparse.Namespace) -> dict[str, Any]:
  """All measurements for one model."""
  variants = {}
  for head in args.heads.split(","):
    variants[head] = build_variant(model_name, head, args)
    print(f"compiled {model_name}/{head} in {variants[head].compile_s:.1f} s",
          flush=True)
  times = mrl_overhead.run_rounds(variants, args.rounds)
  summaries = {}
  for head, v in variants.items():
    alone = decoder_alone(v, head)
    cpu_s = v.cpu_s[1:]  # the first is run_rounds' untimed warm-up step
    summaries[head] = {
        "nesting_dims": list(v.nesting_dims),
        "step_s_median": statistics.median(times[head]),
        "step_s_min": min(times[head]), "step_s_max": max(times[head]),
        "step_s": times[head], "step_cpu_s_median": statistics.median(cpu_s),
        "step_cpu_s": cpu_s, "compile_s": v.compile_s,
        "xla_flops_per_step": v.flops_per_step,
        "temp_bytes": v.temp_bytes,
        "decoder_alone_s": alone["s"],
        "decoder_alone_cpu_s": alone["cpu_s"],
        "decoder_alone_xla_flops": alone["xla_flops"]}
  return {"variants": summaries,
          "ratios": {f"{head}/ff": ratios(times, summaries, head)
                     for head in variants if head != "ff"},
          "decoder_per_dim": decoder_per_dim(variants)}


def decoder_per_dim(variants: dict[str, bench_steps.TrainerVariant]) -> dict[str, Any]:
  """The tied decoder + loss alone at single dims (the smallest, middle and
  full nesting dim): how much of a dim's cost does not scale with m."""
  if "mrl_e" not in variants:
    return {}
  variant = variants["mrl_e"]
  dims = variant.nesting_dims
  return {str(m): decoder_alone(variant, "mrl_e", (m,))
          for m in sorted({dims[0], dims[len(dims) // 2], dims[-1]})}


def ratios(times: dict[str, list[float]], summaries: dict[str, Any],
           head: str) -> dict[str, float]:
  """head / ff: step time (wall and process CPU; measured and predicted)
  and XLA FLOPs."""
  nested, plain = summaries[head], summaries["ff"]
  per_round = [a / b for a, b in zip(times[head], times["ff"])]
  return {
      "of_medians": nested["step_s_median"] / plain["step_s_median"],
      "round_median": statistics.median(per_round),
      "round_min": min(per_round), "round_max": max(per_round),
      "cpu_of_medians": (nested["step_cpu_s_median"]
                         / plain["step_cpu_s_median"]),
      "predicted_from_decoder_alone": 1.0 + (
          nested["decoder_alone_s"] - plain["decoder_alone_s"])
          / plain["step_s_median"],
      "cpu_predicted_from_decoder_alone": 1.0 + (
          nested["decoder_alone_cpu_s"] - plain["decoder_alone_cpu_s"])
          / plain["step_cpu_s_median"],
      "xla_flops": nested["xla_flops_per_step"] / plain["xla_flops_per_step"],
      "decoder_alone_xla_flops": (nested["decoder_alone_xla_flops"]
                                  / plain["decoder_alone_xla_flops"]),
      "decoder_extra_flops_share_of_plain_step": (
          nested["decoder_alone_xla_flops"] - plain["decoder_alone_xla_flops"])
          / plain["xla_flops_per_step"],
  }


def print_table(results: dict[str, Any]) -> None:
  """Human-readable summary of `results` (the JSON has everything)."""
  print(f"device: {results['device']}  batch {results['batch']} x "
        f"{results['seq_len']} tokens, {results['dtype']}  rounds "
        f"{results['rounds']}  loadavg {results['loadavg_start'][0]:.2f} -> "
        f"{results['loadavg_end'][0]:.2f}")
  print(f"{'model':<11}{'head':<7}{'median s':>9}{'min s':>8}{'max s':>8}"
        f"{'x ff':>7}{'rounds min..max':>17}{'x ff pred':>10}"
        f"{'CPU s':>8}{'x ff':>7}{'pred':>7}"
        f"{'XLA GF':>9}{'x ff':>7}{'dec ms':>8}{'dec GF':>8}")
  for model_name, res in results["models"].items():
    for head, v in res["variants"].items():
      r = res["ratios"].get(f"{head}/ff")
      spread = f"{r['round_min']:.3f}..{r['round_max']:.3f}" if r else ""
      print(f"{model_name:<11}{head:<7}{v['step_s_median']:>9.3f}"
            f"{v['step_s_min']:>8.3f}{v['step_s_max']:>8.3f}"
            f"{(r['of_medians'] if r else 1.0):>7.3f}{spread:>17}"
            f"{(r['predicted_from_decoder_alone'] if r else 1.0):>10.3f}"
            f"{v['step_cpu_s_median']:>8.2f}"
            f"{(r['cpu_of_medians'] if r else 1.0):>7.3f}"
            f"{(r['cpu_predicted_from_decoder_alone'] if r else 1.0):>7.3f}"
            f"{v['xla_flops_per_step'] / 1e9:>9.1f}"
            f"{(r['xla_flops'] if r else 1.0):>7.3f}"
            f"{1e3 * v['decoder_alone_s']:>8.1f}"
            f"{v['decoder_alone_xla_flops'] / 1e9:>8.2f}")
    for m, alone in res["decoder_per_dim"].items():
      print(f"{'':<11}decoder + loss alone at the one dim {m}: "
            f"{alone['cpu_s']:.3f} CPU s, {alone['xla_flops'] / 1e9:.2f} "
            "GFLOP")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  """Flags (argparse, so `main` can be called in-process by tests)."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--models", default="bert_base",
                      help="comma-separated registered text encoders")
  parser.add_argument("--heads", default="mrl_e,ff",
                      help="comma-separated MLM heads; must include ff")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--seq_len", type=int, default=128)
  parser.add_argument("--rounds", type=int, default=8)
  parser.add_argument("--dtype", default="float32",
                      choices=("float32", "bfloat16"))
  parser.add_argument("--out", default=None, help="JSON results path")
  args = parser.parse_args(argv)
  if min(args.rounds, args.batch) < 1 or args.seq_len < 22:
    parser.error("--rounds and --batch must be positive and --seq_len at "
                 "least 22 (20 predictions besides [CLS] and [SEP])")
  heads = args.heads.split(",")
  if "ff" not in heads or not set(heads) <= set(HEAD_TYPES):
    parser.error(f"--heads={args.heads}: use a subset of {HEAD_TYPES} that "
                 "includes ff (the baseline of every ratio)")
  return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """Runs the benchmark; prints the table, writes --out, returns results."""
  args = parse_args(argv)
  device = jax.devices()[0]
  results = bench_steps.results_header(
      device, batch=args.batch, seq_len=args.seq_len, dtype=args.dtype,
      rounds=args.rounds)
  bench_steps.run_models(results, bench_model, args, device)
  results["loadavg_end"] = os.getloadavg()
  return bench_steps.report(results, print_table, args.out)


if __name__ == "__main__":
  main()
