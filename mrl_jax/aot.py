r"""Ahead-of-time compilation of the real train step for a TPU topology.

  python -m mrl_jax.main --mode=aot --config=configs/vit_b16_jft.py \
      --workdir=DIR --topology=v5e:16x16 --config.batch_size=4096

On a CPU-only machine, libtpu (`pip install '.[aot]'`) describes a TPU slice
as compile-only devices; the config's mesh is laid over them and the trainer's
own sharded, jitted train step (`train.jit_train_step`, with the state
shardings `train.abstract_train_state` gives) is lowered with
`jax.ShapeDtypeStruct`s, no arrays, and compiled by the TPU compiler. The
report (DIR/aot_report.json and DIR/aot_report.txt) gives per-chip memory
(arguments, outputs, temporaries, generated code; fits in HBM or not, by how
much), compiled FLOPs per step, their ratio to the analytic model FLOPs
(6 x forward multiply-adds x global batch, model_flops.py) and the step time
implied at the chip's peak bf16 rate. Nothing is read from the dataset: the
input shapes come from tracing the config's train preprocessing.
"""
import dataclasses
import importlib.util
import os
import re
from typing import Any

from absl import logging
import jax
from jax.experimental.compilation_cache import compilation_cache
import ml_collections
import numpy as np
import tensorflow as tf

from mrl_jax import atomic_files
from mrl_jax import config_lib
from mrl_jax import sharding
from mrl_jax import tasks
from mrl_jax import train
from mrl_jax.data import preprocess
from mrl_jax.data import resolution

GiB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
  """One TPU generation, as the compiler and the data sheets see it."""
  peak_bf16_flops: float  # per chip, dense
  hbm_bytes: int  # per chip
  # libtpu chip config: "megacore" fuses a chip's two TensorCores into one
  # device (as the TPU runtime does on v4 / v5p), "default" is one core.
  chip_config: str


# Source: Google Cloud TPU system architecture pages (cloud.google.com/tpu/
# docs/v4, /v5e, /v5p, /v6e); the pages say "GB" for HBM, the parts are
# 16/32/95 GiB.
CHIPS = {
    "v4": Chip(275e12, 32 * GiB, "megacore"),
    "v5e": Chip(197e12, 16 * GiB, "default"),
    "v5p": Chip(459e12, 95 * GiB, "megacore"),
    "v6e": Chip(918e12, 32 * GiB, "default"),
}
_TOPOLOGY = re.compile(r"^(v[0-9a-z]+):([0-9]+(?:x[0-9]+){1,2})$")


def parse_topology(topology: str) -> tuple[str, Chip]:
  """'v5e:16x16' -> ('v5e', CHIPS['v5e']); a bad name is a ValueError."""
  match = _TOPOLOGY.match(topology or "")
  if not match:
    raise ValueError(f"--topology={topology!r} is not GENERATION:AxBxC; "
                     "write e.g. --topology=v5e:16x16 or v4:2x2x2")
  generation = match.group(1)
  if generation not in CHIPS:
    raise ValueError(f"unknown TPU generation {generation!r} in --topology="
                     f"{topology}; known: {', '.join(sorted(CHIPS))}")
  return generation, CHIPS[generation]


def topology_devices(topology: str) -> list[jax.Device]:
  """Compile-only TPU devices of `topology` (one per chip), via libtpu."""
  _, chip = parse_topology(topology)
  if importlib.util.find_spec("libtpu") is None:
    raise ValueError("--mode=aot needs libtpu to compile for TPU; install it "
                     "with pip install '.[aot]'")
  # libtpu looks for a TPU host's environment; say "no TPU here" so that it
  # neither queries a metadata server nor warns about a missing worker list,
  # and let several compiles run at once (its lockfile guards real chips,
  # which compile-only devices never touch).
  for key, value in (("ALLOW_MULTIPLE_LIBTPU_LOAD", "1"),
                     ("TPU_SKIP_MDS_QUERY", "1"),
                     ("TPU_WORKER_HOSTNAMES", "localhost"),
                     ("TPU_ACCELERATOR_TYPE", "v5litepod-4")):
    os.environ.setdefault(key, value)
  from jax.experimental import topologies  # pylint: disable=import-outside-toplevel
  try:
    desc = topologies.get_topology_desc(
        topology_name=topology, platform="tpu",
        chip_config_name=chip.chip_config)
  except jax.errors.JaxRuntimeError as e:
    reason = str(e).split(";")[0].strip()
    raise ValueError(f"libtpu cannot build topology {topology!r} ({reason}); "
                     "use a slice shape of that generation, e.g. v5e:2x2, "
                     "v5e:16x16, v4:2x2x2, v4:8x8x4") from None
  return list(desc.devices)


def example_spec(config: ml_collections.ConfigDict
                 ) -> dict[str, jax.ShapeDtypeStruct]:
  """One preprocessed training example's shapes, from the config alone.

  Traces config.data.train_preprocess on the task's symbolic raw example
  (`Task.raw_example_spec`: e.g. an encoded image or uint8 [H, W, C] and a
  label; token ids [L]), so no dataset is needed. Under a resolution
  schedule it is the largest scheduled size (the memory peak).
  """
  data = config.data
  spec_str = data.train_preprocess
  if data.get("resolution"):  # progressive resizing: the largest size
    spec_str = spec_str.replace(resolution.PLACEHOLDER, str(
        max(resolution.scheduled_sizes(data.resolution))))
  fn = preprocess.build(spec_str)
  traced = tf.function(lambda ex: fn(ex, tf.constant([0, 0], tf.int64)))
  out = traced.get_concrete_function(
      tasks.get(config).raw_example_spec(config)).structured_outputs
  spec = {}
  for key, value in out.items():
    shape = tuple(value.shape)
    if None in shape:
      raise ValueError(f"config.data.train_preprocess gives {key} of shape "
                       f"{shape}; --mode=aot needs a fixed size (end with a "
                       "crop or resize op)")
    dtype = jax.dtypes.canonicalize_dtype(value.dtype.as_numpy_dtype)
    spec[key] = jax.ShapeDtypeStruct(shape, dtype)
  return spec


def _batch(spec: dict[str, jax.ShapeDtypeStruct], global_batch: int,
           mesh: jax.sharding.Mesh) -> dict[str, jax.ShapeDtypeStruct]:
  batch_sharding = sharding.batch_sharding(mesh)
  return {k: jax.ShapeDtypeStruct((global_batch, *v.shape), v.dtype,
                                  sharding=batch_sharding)
          for k, v in spec.items()}


def compile_train_step(config: ml_collections.ConfigDict,
                       devices: list[jax.Device]) -> tuple[Any, dict]:
  """Lowers and compiles the trainer's train step over `devices`.

  Returns:
    (compiled, facts): the compiled step and what the report needs about the
    run (mesh, batch, forward MACs per example, parameter count).
  """
  run_setup = train.setup(config, devices)
  # The schedule's constants do not change the program; durations in epochs
  # would need the dataset size, so count one step per epoch.
  total = config_lib.steps("total", config, 1)
  tx = train.optimizer(run_setup, total, 1)
  spec = example_spec(config)
  _, _, target = train.abstract_train_state(run_setup, config, tx, spec)
  shardings = jax.tree.map(lambda t: t.sharding, target)
  step = train.jit_train_step(run_setup, tx, shardings, config.seed)
  batch = _batch(spec, config.batch_size, run_setup.mesh)
  logging.info("lowering the train step for %d devices, mesh %s",
               len(devices), dict(run_setup.mesh.shape))
  lowered = step.lower(target, batch)
  logging.info("compiling (XLA TPU)")
  compiled = compile_uncached(lowered)
  variables = {"params": target.params, "batch_stats": target.batch_stats}
  facts = {
      "mesh": dict(run_setup.mesh.shape),
      "global_batch": config.batch_size,
      "example_shapes": {k: list(v.shape) for k, v in spec.items()},
      "forward_macs_per_example": run_setup.task.forward_macs(
          run_setup.model, variables, spec),
      "params": sum(int(np.prod(x.shape))
                    for x in jax.tree.leaves(target.params)),
  }
  return compiled, facts


def compile_uncached(lowered: Any) -> Any:
  """lowered.compile() outside JAX's persistent compilation cache: how every
  program for `topology_devices` must be compiled.

  A compile-only TPU executable cannot be loaded back (there is no TPU
  client), so with a cache enabled (JAX_COMPILATION_CACHE_DIR, common on
  TPU VMs) every later plan would warn that it failed to read its entry.
  reset_cache() makes JAX re-read the setting (it decides once per process).
  """
  enabled = jax.config.jax_enable_compilation_cache
  jax.config.update("jax_enable_compilation_cache", False)
  compilation_cache.reset_cache()
  try:
    return lowered.compile()
  finally:
    jax.config.update("jax_enable_compilation_cache", enabled)
    compilation_cache.reset_cache()


def build_report(compiled: Any, facts: dict[str, Any], topology: str,
                 num_devices: int) -> dict[str, Any]:
  """Per-chip memory, FLOPs and implied step time of a compiled step."""
  _, chip = parse_topology(topology)
  mem = compiled.memory_analysis()
  memory = {
      "arguments": mem.argument_size_in_bytes,
      "outputs": mem.output_size_in_bytes,
      # Donated state: outputs that reuse argument buffers.
      "aliased": mem.alias_size_in_bytes,
      "temporaries": mem.temp_size_in_bytes,
      "generated_code": mem.generated_code_size_in_bytes,
  }
  memory["total"] = (memory["arguments"] + memory["outputs"]
                     - memory["aliased"] + memory["temporaries"]
                     + memory["generated_code"])
  memory["hbm"] = chip.hbm_bytes
  memory["headroom"] = chip.hbm_bytes - memory["total"]
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops_per_chip = float(cost["flops"])
  model_flops_step = (6 * facts["forward_macs_per_example"]
                      * facts["global_batch"])
  return {
      "topology": topology,
      "chips": num_devices,
      **facts,
      "memory_per_chip_bytes": memory,
      "fits": memory["headroom"] >= 0,
      "compiled_flops_per_chip": flops_per_chip,
      "compiled_flops_per_step": flops_per_chip * num_devices,
      "model_flops_per_step": model_flops_step,
      "compiled_over_model_flops": flops_per_chip * num_devices
                                   / model_flops_step,
      "peak_bf16_flops_per_chip": chip.peak_bf16_flops,
      "step_seconds_at_peak": flops_per_chip / chip.peak_bf16_flops,
      "examples_per_second_at_peak": facts["global_batch"] * (
          chip.peak_bf16_flops / flops_per_chip),
  }


def format_report(report: dict[str, Any]) -> str:
  """The report as a short text table."""
  mem = report["memory_per_chip_bytes"]
  gib = lambda b: f"{b / GiB:9.3f} GiB"
  verdict = (f"fits, {gib(mem['headroom']).strip()} free" if report["fits"]
             else f"DOES NOT FIT by {gib(-mem['headroom']).strip()}")
  lines = [
      f"topology {report['topology']} ({report['chips']} chips), mesh "
      f"{report['mesh']}, global batch {report['global_batch']}, "
      f"{_shapes(report['example_shapes'])}, {report['params'] / 1e6:.1f}M "
      "params",
      "memory per chip:",
      *(f"  {name:<15}{gib(mem[name])}" for name in
        ("arguments", "outputs", "aliased", "temporaries", "generated_code")),
      f"  {'total':<15}{gib(mem['total'])}  of {gib(mem['hbm']).strip()} "
      f"HBM: {verdict}",
      f"compiled FLOPs per step  {report['compiled_flops_per_step']:.4e} "
      f"({report['compiled_flops_per_chip']:.4e} per chip)",
      f"model FLOPs per step     {report['model_flops_per_step']:.4e} "
      f"(6 x {report['forward_macs_per_example'] / 1e9:.3f} GMAC x "
      f"{report['global_batch']})",
      f"compiled / model FLOPs   {report['compiled_over_model_flops']:.3f}",
      f"step time at peak bf16   {report['step_seconds_at_peak'] * 1e3:.1f} "
      f"ms ({report['peak_bf16_flops_per_chip'] / 1e12:.0f} TFLOP/s per "
      f"chip; {report['examples_per_second_at_peak']:,.0f} examples/s)",
  ]
  return "\n".join(lines)


def _shapes(example_shapes: dict[str, list[int]]) -> str:
  """E.g. "image (224, 224, 3)" or "input_ids (128,), masked_ids (20,)"."""
  return ", ".join(f"{k} {tuple(v)}" for k, v in example_shapes.items()
                   if k not in ("label", "segment_ids", "input_mask",
                                "masked_positions", "masked_weights"))


def run(config: ml_collections.ConfigDict, workdir: str,
        topology: str) -> dict[str, Any]:
  """mode=aot: compiles for `topology`, writes DIR/aot_report.{json,txt}."""
  # The TPU devices are compile-only; everything else (tracing, eval_shape)
  # runs on the host, so do not claim a local accelerator.
  jax.config.update("jax_platforms", "cpu")
  devices = topology_devices(topology)
  compiled, facts = compile_train_step(config, devices)
  report = build_report(compiled, facts, topology, len(devices))
  os.makedirs(workdir, exist_ok=True)
  atomic_files.write_json(os.path.join(workdir, "aot_report.json"), report)
  text = format_report(report)
  with open(os.path.join(workdir, "aot_report.txt"), "w") as f:
    f.write(text + "\n")
  return report
