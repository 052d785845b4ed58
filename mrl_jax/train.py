"""Training and evaluation entry points: `train_and_evaluate`, `evaluate`.

Callable from the launcher, tests and notebooks. Everything the config can get
wrong is checked in `setup` before any dataset is opened or anything compiled.
"""
import dataclasses
import json
import os
import time
from typing import Any

from absl import logging
import jax
import ml_collections
import optax

from mrl_jax import atomic_files
from mrl_jax import checkpointing
from mrl_jax import config_lib
from mrl_jax import errors
from mrl_jax import metric_writer
from mrl_jax import optim
from mrl_jax import param_lock
from mrl_jax import sharding
from mrl_jax import sharding_rules
from mrl_jax import tasks
from mrl_jax import train_step as step_lib
from mrl_jax import workdir_lock
from mrl_jax.data import pipeline
from mrl_jax.evaluators import class_subsets
from mrl_jax.mrl import losses
from mrl_jax.mrl import nesting


@dataclasses.dataclass(frozen=True)
class Setup:
  """What the config describes, validated, before any I/O or compilation."""
  config: ml_collections.ConfigDict
  task: tasks.Task
  model: Any  # the task's model, e.g. classifier.MRLClassifier
  nesting_dims: tuple[int, ...]
  relative_importance: tuple[float, ...]
  loss_fn: losses.NestedLossFn | None  # None: the task's objective has one
  mesh: jax.sharding.Mesh
  fingerprint: dict[str, Any]
  sharding_rules: tuple[Any, ...]  # compiled config.sharding
  grad_accum_steps: int
  lock: param_lock.Lock | None = None  # parameters copied, never trained


def setup(config: ml_collections.ConfigDict,
          devices: list[jax.Device] | None = None) -> Setup:
  """Validates the config; raises a one-line ValueError on bad input.

  Args:
    config: the run's config.
    devices: the mesh's devices; None: all devices (`--mode=aot` passes
      compile-only TPU devices).
  """
  task = tasks.get(config)
  model = task.build_model(config)
  dims = task.nesting_dims(model)
  weights = nesting.validate_relative_importance(
      config.mrl.relative_importance, len(dims))
  loss_fn = task.loss_fn(config)
  pipeline.validate(config.data)
  task.validate(config, model)
  mesh = sharding.make_train_mesh(config.mesh, devices)
  sharding.check_batch_size(config.batch_size, mesh, "batch_size")
  _check_eval_batch_size(config.eval_batch_size, mesh)
  pipeline.check_shards(config.data, config.batch_size, mesh.devices.size,
                        len({d.process_index for d in mesh.devices.flat}))
  rules = sharding_rules.from_config(config.get("sharding"))
  _check_grad_accum(config, mesh)
  optim.build_optimizer(config.optimizer, 1, 1)  # validates optimizer fields
  return Setup(config, task, model, dims, weights, loss_fn, mesh,
               _fingerprint(config, task, dims), rules,
               config.get("grad_accum_steps", 1), task.locked_params(config))


def optimizer(run_setup: Setup, total_steps: int,
              steps_per_epoch: int) -> optax.GradientTransformation:
  """config.optimizer's transformation, holding locked parameters still."""
  return param_lock.hold(
      optim.build_optimizer(run_setup.config.optimizer, total_steps,
                            steps_per_epoch), run_setup.lock)


def _fingerprint(config: ml_collections.ConfigDict, task: tasks.Task,
                 dims: tuple[int, ...]) -> dict[str, Any]:
  """What a checkpoint must share with the config to be resumed or read.

  The optimizer's name and state dtype decide what its state holds (the
  restore also compares the whole state tree); the task adds what its
  outputs mean (e.g. class names, the corpus).
  """
  fingerprint = {"model": config.model.name,
                 "model_kwargs": dict(config.model.get("kwargs", {})),
                 "head": config.mrl.head, "nesting_dims": list(dims),
                 "dataset": config.data.name,
                 "optimizer": {"name": config.optimizer.name,
                               "state_dtype": config.optimizer.get(
                                   "state_dtype", "float32")}}
  if task.name != "classification":
    fingerprint["task"] = task.name
  return {**fingerprint, **task.fingerprint(config)}


def _check_eval_batch_size(eval_batch: Any, mesh: jax.sharding.Mesh) -> None:
  """Any positive eval batch works: eval pads it to the batch shards."""
  if not isinstance(eval_batch, int) or eval_batch < 1:
    raise ValueError(f"config.eval_batch_size={eval_batch!r} must be an "
                     "integer >= 1")
  padded = sharding.padded_batch_size(eval_batch, mesh)
  if padded != eval_batch:
    logging.info("eval: %d examples per step (config.eval_batch_size=%d "
                 "rounded up to the %d batch shards)", padded, eval_batch,
                 sharding.batch_shards(mesh))


def _check_grad_accum(config: ml_collections.ConfigDict,
                      mesh: jax.sharding.Mesh) -> None:
  """Each device's share of the batch must split into k microbatches."""
  k = config.get("grad_accum_steps", 1)
  if not isinstance(k, int) or k < 1:
    raise ValueError(f"config.grad_accum_steps={k!r} must be an integer >= 1")
  unit = sharding.batch_shards(mesh) * k
  if k > 1 and config.batch_size % unit:
    raise ValueError(
        f"config.batch_size={config.batch_size} does not split into "
        f"grad_accum_steps={k} microbatches on {unit // k} batch shards; use "
        f"a multiple of {unit}")


def train_state_shardings(abstract_state: step_lib.TrainState,
                          run_setup: Setup) -> step_lib.TrainState:
  """NamedShardings for every leaf of the train state, from config.sharding.

  Parameters follow the rules, optimizer state follows the parameters,
  BatchNorm statistics and counters are replicated (they are small).
  """
  specs, notes = sharding_rules.param_specs(
      abstract_state.params, run_setup.sharding_rules, run_setup.mesh)
  for note in notes:
    logging.info("sharding: %s", note)
  replicated = jax.tree.map(lambda _: sharding.replicated(run_setup.mesh),
                            abstract_state)
  return replicated.replace(
      params=sharding_rules.named(specs, run_setup.mesh),
      opt_state=sharding_rules.named(
          sharding_rules.opt_state_specs(abstract_state.opt_state,
                                         abstract_state.params, specs),
          run_setup.mesh))


def abstract_train_state(run_setup: Setup, config: ml_collections.ConfigDict,
                         tx: optax.GradientTransformation,
                         example: dict[str, jax.ShapeDtypeStruct]):
  """The train state as shapes, dtypes and shardings, without any arrays.

  Args:
    example: one preprocessed example's shapes (`pipeline.example_spec`),
      which the task's model is initialised on.
  Returns:
    (init, rng, target): `init(rng)` creates the state; `target` is a
    TrainState of `jax.ShapeDtypeStruct`s carrying the state's shardings
    (the restore target, and what `--mode=aot` compiles against).
  """
  def init(rng):
    variables = run_setup.task.init_variables(run_setup.model, rng, example)
    return step_lib.state_from_variables(variables, tx)

  # threefry init compiles slowly on CPU (seconds per kernel shape); rbg is
  # as good for initialisation and compiles in a fraction of the time.
  rng = jax.random.key(config.seed, impl="rbg")
  abstract = jax.eval_shape(init, rng)
  shardings = train_state_shardings(abstract, run_setup)
  target = jax.tree.map(
      lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh),
      abstract, shardings)
  return init, rng, target


def _init_or_restore(run_setup: Setup, config: ml_collections.ConfigDict,
                     tx: optax.GradientTransformation,
                     ckpt: checkpointing.Checkpointer, example):
  """Resumes from the newest readable checkpoint, else initialises (train)."""
  init, rng, target = abstract_train_state(run_setup, config, tx, example)
  shardings = jax.tree.map(lambda t: t.sharding, target)
  restored = ckpt.restore_latest(target)
  if restored is not None:
    logging.info("resumed from checkpoint at step %d", restored[1])
    return restored[0], shardings
  logging.info("no checkpoint in %s: initialising from scratch",
               ckpt.directory)
  state = jax.jit(init, out_shardings=shardings)(rng)
  if run_setup.lock is not None:
    state = param_lock.load(run_setup.lock, state, target)
    logging.info("%s: read from %s, locked", run_setup.lock.what,
                 run_setup.lock.from_workdir)
  return state, shardings


def _raise_if_nonfinite(state: step_lib.TrainState,
                        ckpt: checkpointing.Checkpointer) -> None:
  bad = int(state.nonfinite_step)
  if bad >= 0:
    ckpt.wait()
    last = ckpt.latest_step()
    kept = ("no checkpoint was saved" if last is None else
            f"last good checkpoint: step {last}")
    raise FloatingPointError(
        f"non-finite loss or gradient at step {bad + 1}; stopped without "
        f"saving it ({kept}); lower config.optimizer.learning_rate or check "
        "the input data")


def jit_train_step(run_setup: Setup, tx, state_shardings, seed: int):
  """The sharded, jitted train step (also what `--mode=aot` compiles)."""
  step = step_lib.make_step(run_setup.task.objective(run_setup), tx, seed,
                            run_setup.grad_accum_steps)
  return jax.jit(
      sharding.traced_under_mesh(step, run_setup.mesh),
      in_shardings=(state_shardings, sharding.batch_sharding(run_setup.mesh)),
      out_shardings=(state_shardings, sharding.replicated(run_setup.mesh)),
      donate_argnums=0)


def _jit_eval_step(run_setup: Setup, state_shardings, class_subset=None):
  step = run_setup.task.eval_step(run_setup, class_subset)
  return jax.jit(sharding.traced_under_mesh(step, run_setup.mesh),
                 in_shardings=(state_shardings,
                               sharding.batch_sharding(run_setup.mesh)),
                 out_shardings=sharding.replicated(run_setup.mesh))


def _train_scalars(sums: dict[str, Any], count: int,
                   run_setup: Setup) -> dict[str, float]:
  out = {"train/loss": float(sums["loss"]) / count,
         "train/grad_norm": float(sums["grad_norm"]) / count}
  accuracy = run_setup.task.accuracy_name
  for d, loss, acc in zip(run_setup.nesting_dims, sums["loss_per_dim"],
                          sums["accuracy_per_dim"]):
    out[f"train/loss/d={d}"] = float(loss) / count
    out[f"train/{accuracy}/d={d}"] = float(acc) / count
  return out


class _Progress:
  """Throughput and ETA between log points."""

  def __init__(self, step: int, total: int, batch: int):
    self.step, self.total, self.batch, self.time = step, total, batch, time.time()

  def update(self, step: int) -> dict[str, float]:
    now = time.time()
    rate = (step - self.step) / max(now - self.time, 1e-9)
    self.step, self.time = step, now
    return {"examples_per_sec": rate * self.batch,
            "eta_minutes": (self.total - step) / max(rate, 1e-9) / 60}


def _run_eval(config, run_setup: Setup, eval_step, state,
              data_cfg=None) -> dict[str, Any]:
  data_cfg = data_cfg or config.data
  source = pipeline.open_source(data_cfg, data_cfg.eval_split)
  batches = pipeline.eval_batches(data_cfg, source, config.eval_batch_size,
                                  sharding.batch_sharding(run_setup.mesh))
  return run_setup.task.evaluate(run_setup, eval_step, state, batches,
                                 source)


def _finish(config, run_setup: Setup, eval_step, state, workdir: str,
            writer: metric_writer.MetricWriter | None,
            state_sh: Any) -> dict[str, Any]:
  """The final evaluation, on every eval set; writes the summary.

  `writer` None (--mode=eval): nothing is added to metrics.jsonl.
  """
  summary = _run_eval(config, run_setup, eval_step, state)
  if writer is not None:
    writer.write(summary["step"], run_setup.task.as_scalars(summary, "val"))
  # Eval-only sets (ImageNet-V2/R/A/Sketch), R and A scored on their classes.
  for label, data_cfg in pipeline.extra_eval_sets(config.data).items():
    subset = class_subsets.get(data_cfg.class_subset)
    extra = _run_eval(config, run_setup,
                      _jit_eval_step(run_setup, state_sh, subset), state,
                      data_cfg)
    if writer is not None:
      writer.write(extra["step"], run_setup.task.as_scalars(extra, label))
    summary.setdefault("extra_eval", {})[label] = extra
  if jax.process_index() == 0:
    _write_summary(workdir, summary, must=writer is not None)
  return summary


def _write_summary(workdir: str, summary: dict[str, Any], must: bool) -> None:
  """Writes DIR/eval_summary.json unless it holds a newer step.

  Args:
    must: a trainer's summary: failing to write it is a RunError. Otherwise
      (--mode=eval) a failure is a warning: the table is still printed.
  """
  path = os.path.join(workdir, "eval_summary.json")
  try:
    with open(path) as f:
      newer = json.load(f).get("step", -1)
  except (OSError, ValueError):
    newer = -1
  if newer > summary["step"]:
    logging.warning("%s is of step %d, newer than this evaluation's step %d: "
                    "kept it (this evaluation is only printed)", path, newer,
                    summary["step"])
    return
  try:
    atomic_files.write_json(path, summary)
  except OSError as e:
    if must:
      raise errors.RunError(f"cannot write {path} ({e.strerror or e}); make "
                            "the workdir writable and rerun") from e
    logging.warning("cannot write %s (%s); the evaluation is only printed",
                    path, e.strerror or e)


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> dict[str, Any]:
  """Trains (resuming from workdir if it has checkpoints), then evaluates.

  Holds workdir's lock (one writer per workdir) while it runs.

  Returns:
    the final eval summary (also written to workdir/eval_summary.json).
  Raises:
    errors.RunError: another run holds workdir, or a save failed.
  """
  run_setup = setup(config)
  if run_setup.lock is not None:
    _check_lock_source(config, run_setup, workdir)
  with workdir_lock.exclusive(workdir, "train", jax.process_index() == 0):
    ckpt = checkpointing.Checkpointer(
        os.path.join(workdir, "checkpoints"), run_setup.fingerprint,
        config.keep_checkpoints)
    try:
      summary = _train(config, run_setup, ckpt, workdir)
    except BaseException:
      ckpt.abandon()
      raise
    ckpt.close()
  return summary


def _check_lock_source(config: ml_collections.ConfigDict, run_setup: Setup,
                       workdir: str) -> None:
  """A fresh run will copy its locked parameters from another workdir:
  checks them against the model before anything is written or compiled
  (reads metadata only). A resumed run does not read that workdir."""
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"), {},
                                    read_only=True)
  resumes = ckpt.latest_step() is not None
  ckpt.close()
  if resumes:
    return
  example = pipeline.example_spec(
      config.data, pipeline.open_source(config.data, config.data.train_split))
  variables = jax.eval_shape(
      lambda rng: run_setup.task.init_variables(run_setup.model, rng,
                                                example),
      jax.random.key(config.seed, impl="rbg"))
  param_lock.check_source(run_setup.lock, variables)


def _train(config: ml_collections.ConfigDict, run_setup: Setup,
           ckpt: checkpointing.Checkpointer, workdir: str) -> dict[str, Any]:
  ckpt.check_compatible()
  source = pipeline.open_source(config.data, config.data.train_split)
  run_setup.task.bind_data(config, source, workdir,
                           writer=jax.process_index() == 0)
  # Fail before training on a missing or unreadable eval split too.
  pipeline.open_source(config.data, config.data.eval_split)
  for data_cfg in pipeline.extra_eval_sets(config.data).values():
    pipeline.open_source(data_cfg, data_cfg.eval_split)
  shards = pipeline.num_shards(config.data)
  logging.info("data: process %d of %d reads %s", jax.process_index(),
               jax.process_count(), pipeline.describe_process_shards(
                   source, shards, jax.process_index(), jax.process_count()))
  per_epoch = pipeline.steps_per_epoch(source, config.batch_size, shards)
  total = config_lib.steps("total", config, per_epoch)
  tx = optimizer(run_setup, total, per_epoch)
  state, state_sh = _init_or_restore(run_setup, config, tx, ckpt,
                                     pipeline.example_spec(config.data, source))
  train_step = jit_train_step(run_setup, tx, state_sh, config.seed)
  eval_step = _jit_eval_step(run_setup, state_sh)
  start = int(state.step)
  writer = metric_writer.MetricWriter(workdir, resume_step=start)
  batches = pipeline.train_batches(config.data, source, config.batch_size,
                                   config.seed, start,
                                   sharding.batch_sharding(run_setup.mesh))
  logging.info("training steps %d..%d (%d per epoch), nesting %s", start,
               total, per_epoch, run_setup.nesting_dims)
  progress, sums, count = _Progress(start, total, config.batch_size), None, 0
  for step in range(start + 1, total + 1):
    batch = next(batches)
    state, metrics = train_step(state, batch)
    sums = metrics if sums is None else jax.tree.map(lambda a, b: a + b,
                                                     sums, metrics)
    count += 1
    if step % config.log_every_steps == 0 or step == total:
      _raise_if_nonfinite(state, ckpt)
      scalars = {**_train_scalars(sums, count, run_setup),
                 **progress.update(step)}
      if "image" in batch:  # the size config.data.resolution scheduled
        scalars["train/image_size"] = batch["image"].shape[1]
      writer.write(step, scalars)
      logging.info("step %d/%d loss %.4f, %.0f ex/s, ETA %.1f min", step,
                   total, scalars["train/loss"], scalars["examples_per_sec"],
                   scalars["eta_minutes"])
      sums, count = None, 0
    if step % config.checkpoint_every_steps == 0 or step == total:
      _raise_if_nonfinite(state, ckpt)
      ckpt.save(step, state, config.to_json())
    if config.eval_every_steps and step % config.eval_every_steps == 0 \
        and step != total:
      summary = _run_eval(config, run_setup, eval_step, state)
      writer.write(step, run_setup.task.as_scalars(summary, "val"))
  ckpt.wait()
  summary = _finish(config, run_setup, eval_step, state, workdir, writer,
                    state_sh)
  writer.close()
  return summary


def restore_latest(config: ml_collections.ConfigDict, workdir: str
                   ) -> tuple[Setup, step_lib.TrainState, Any]:
  """Validated setup and the latest checkpoint's state, for inference modes.

  Reads only: takes no lock, moves nothing; an unreadable checkpoint, or one
  a trainer removes meanwhile, is skipped for the previous one.

  Returns:
    (setup, state, state shardings).
  Raises:
    errors.RunError: workdir has no readable checkpoint (never a fresh,
      random model).
    ValueError: its checkpoints do not match the config.
  """
  run_setup = setup(config)
  directory = os.path.join(workdir, "checkpoints")
  ckpt = checkpointing.Checkpointer(directory, run_setup.fingerprint,
                                    read_only=True)
  if ckpt.latest_step() is None:
    raise errors.RunError(f"no checkpoint in {directory}; train first "
                          "(--mode=train) or fix --workdir")
  ckpt.check_compatible()
  source = pipeline.open_source(config.data, config.data.eval_split)
  run_setup.task.bind_data(config, source, workdir, writer=False)
  # The optimizer state is restored too (one checkpoint format); its schedule
  # does not matter here.
  tx = optimizer(run_setup, 1, 1)
  _, _, target = abstract_train_state(
      run_setup, config, tx, pipeline.example_spec(config.data, source))
  restored = ckpt.restore_latest(target)
  ckpt.close()
  if restored is None:
    raise errors.RunError(
        f"no readable checkpoint in {directory} (see the warnings above); "
        "restore the files, or rerun --mode=train, which sets unreadable "
        "checkpoints aside and trains on")
  logging.info("restored the checkpoint at step %d", restored[1])
  return run_setup, restored[0], jax.tree.map(lambda t: t.sharding, target)


def evaluate(config: ml_collections.ConfigDict,
             workdir: str) -> dict[str, Any]:
  """Evaluates the latest checkpoint in workdir (mode=eval).

  Read-only apart from DIR/eval_summary.json, which it writes unless that
  holds a newer step or cannot be written (a warning either way).
  """
  run_setup, state, state_sh = restore_latest(config, workdir)
  eval_step = _jit_eval_step(run_setup, state_sh)
  return _finish(config, run_setup, eval_step, state, workdir, None, state_sh)
