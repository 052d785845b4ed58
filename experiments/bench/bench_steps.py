"""What the train-step benchmarks share: the real train step on synthetic data.

Imported by the scripts in this directory (run as
`python experiments/bench/<script>.py`, which puts this directory on the path).
"""
from collections.abc import Callable
import dataclasses
import functools
import os
import platform
import time
from typing import Any

import jax
import ml_collections
import optax

from mrl_jax import aot
from mrl_jax import atomic_files
from mrl_jax import optim
from mrl_jax import train
from mrl_jax import train_step as step_lib
from mrl_jax.models import classifier
from mrl_jax.models import registry
from mrl_jax.mrl import heads
from mrl_jax.mrl import losses

def cpu_model() -> str:
  """The CPU's marketing name on Linux, else the architecture."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.machine()


def results_header(device: Any, **fields: Any) -> dict[str, Any]:
  """The machine, the load at the start and the run's settings (`fields`),
  which every step benchmark's results begin with; "models" is filled by
  `run_models`."""
  return {"device": f"{device.platform}:{device.device_kind}",
          "processor": cpu_model(), "cpu_count": os.cpu_count(),
          "jax": jax.__version__, **fields,
          "loadavg_start": os.getloadavg(), "models": {}}


NUM_CLASSES = 1000
LABEL_SMOOTHING = 0.1
# Forward MACs at 224 px (timm's infer_gmacs).
BACKBONE_MACS_224 = {"resnet50": 4.11e9, "vit_b16": 17.58e9}


def optimizer_for(model_name: str) -> optax.GradientTransformation:
  """The recipe's optimizer (configs/*_imagenet.py) at a constant, small LR.

  The LR is small so that training on random data stays finite: a diverged
  variant would take the step's skip path and no longer be comparable; the
  update costs the same at any LR.
  """
  cfg = ml_collections.ConfigDict({"schedule": "constant",
                                   "warmup_steps": 0})
  if model_name.startswith("resnet"):
    cfg.update(name="sgd", learning_rate=1e-3, momentum=0.9,
               weight_decay=1e-4)
  else:
    cfg.update(name="adamw", learning_rate=1e-4, weight_decay=0.1,
               grad_clip_norm=1.0)
  return optim.build_optimizer(cfg, total_steps=1, steps_per_epoch=1)


def flops(cost: Any) -> float:
  """The "flops" entry of a `cost_analysis()` result (0 when unavailable)."""
  # Some jax versions return one dict per program.
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return float((cost or {}).get("flops", 0.0))


def synthetic_batch(batch: int, image_size: int) -> dict[str, jax.Array]:
  """Random images [B, S, S, 3] and labels [B], made on the default device."""
  k_image, k_label = jax.random.split(jax.random.key(1, impl="rbg"))
  return {
      "image": jax.random.normal(k_image, (batch, image_size, image_size, 3)),
      "label": jax.random.randint(k_label, (batch,), 0, NUM_CLASSES),
  }


def compile_step(model_name: str, head_type: str, dtype: Any,
                 batch: dict[str, jax.Array]) -> dict[str, Any]:
  """Builds, initialises and AOT-compiles one (backbone, head) train step.

  Returns:
    {"step": compiled step (donates the state), "state", "head",
     "embedding_dim", "compile_s", "lowered"}.
  """
  backbone = registry.build_backbone(model_name, dtype=dtype)
  head = heads.build_head(head_type, backbone.embedding_dim, NUM_CLASSES)
  model = classifier.MRLClassifier(backbone=backbone, head=head)
  tx = optimizer_for(model_name)
  # Same rbg key for every variant (threefry init compiles slowly on CPU):
  # flax derives each param's key from its path, so all variants start from
  # the same backbone weights.
  init = functools.partial(step_lib.create_train_state, model, tx,
                           image_shape=batch["image"].shape[1:])
  state = jax.jit(init)(jax.random.key(0, impl="rbg"))
  step_fn = step_lib.make_train_step(
      model, tx, losses.get_loss_fn("softmax", LABEL_SMOOTHING),
      (1.0,) * len(head.nesting_dims), seed=0)
  start = time.perf_counter()
  lowered = jax.jit(step_fn, donate_argnums=0).lower(state, batch)
  compiled = lowered.compile()
  return {"step": compiled, "state": state, "head": head,
          "embedding_dim": backbone.embedding_dim,
          "compile_s": time.perf_counter() - start, "lowered": lowered}


@dataclasses.dataclass
class TrainerVariant:
  """One compiled trainer step (`train.jit_train_step`) and its live
  (donated) state."""
  nesting_dims: tuple[int, ...]
  step: Callable[..., Any]
  state: Any
  batch: dict[str, jax.Array]
  compile_s: float
  flops_per_step: float
  temp_bytes: int
  cpu_s: list[float] = dataclasses.field(default_factory=list)

  def timed_step(self) -> float:
    """Runs one step to completion; returns its wall time in seconds and
    records the process's CPU seconds in `cpu_s`."""
    start, start_cpu = time.perf_counter(), time.process_time()
    self.state, metrics = self.step(self.state, self.batch)
    jax.block_until_ready((self.state, metrics))
    self.cpu_s.append(time.process_time() - start_cpu)
    return time.perf_counter() - start


def trainer_variant(config: ml_collections.ConfigDict,
                    make_batch: Callable[[Any, dict[str, Any]],
                                         dict[str, jax.Array]]
                    ) -> TrainerVariant:
  """The trainer's own jitted step of `config` on the default device,
  initialised and AOT-compiled, on the batch `make_batch(run_setup,
  example_spec)` gives (synthetic, of `aot.example_spec`'s shapes)."""
  run_setup = train.setup(config, [jax.devices()[0]])
  tx = optim.build_optimizer(config.optimizer, 10, 1)
  spec = aot.example_spec(config)
  init, rng, target = train.abstract_train_state(run_setup, config, tx, spec)
  shardings = jax.tree.map(lambda t: t.sharding, target)
  state = jax.jit(init, out_shardings=shardings)(rng)
  batch = make_batch(run_setup, spec)
  step = train.jit_train_step(run_setup, tx, shardings, config.seed)
  start = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  compile_s = time.perf_counter() - start
  return TrainerVariant(run_setup.nesting_dims, compiled, state, batch,
                        compile_s, flops(compiled.cost_analysis()),
                        compiled.memory_analysis().temp_size_in_bytes)


def run_models(results: dict[str, Any],
               bench_model: Callable[[str, Any], dict[str, Any]], args: Any,
               device: jax.Device) -> None:
  """Fills results["models"][name] = bench_model(name, args) for every name
  in args.models (comma-separated) on `device`, and results["wall_s"]."""
  start = time.perf_counter()
  with jax.default_device(device):
    for model_name in args.models.split(","):
      results["models"][model_name] = bench_model(model_name, args)
  results["wall_s"] = time.perf_counter() - start


def report(results: dict[str, Any],
           print_table: Callable[[dict[str, Any]], None],
           out: str | None) -> dict[str, Any]:
  """Prints the table and writes the results to `out` (JSON) if given."""
  print_table(results)
  if out:
    atomic_files.write_json(out, results)
  return results
