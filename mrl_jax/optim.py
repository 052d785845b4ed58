"""Optimizer and learning-rate schedule from config, built from optax parts.

SGD+momentum with coupled (torch-style) weight decay for ResNets, AdamW for
ViTs, Adafactor (factored second moments, no momentum by default) for the
ALIGN-MRL recipe. Weight decay skips every parameter with ndim <= 1:
BatchNorm/LayerNorm scales and offsets and all biases. (The official MRL code exempts only names
containing "bn", which still decays torchvision's downsample BN and biases;
we apply the intended rule.)
"""
import jax
import jax.numpy as jnp
import ml_collections
import optax

# config.optimizer.state_dtype -> dtype of the momentum / first moment.
STATE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
OPTIMIZERS = ("sgd", "adamw", "adafactor")


def decay_mask(params: optax.Params) -> optax.Params:
  """True for leaves that get weight decay: kernels/embeddings (ndim > 1)."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


def build_schedule(cfg: ml_collections.ConfigDict, total_steps: int,
                   steps_per_epoch: int) -> optax.Schedule:
  """Linear warm-up from `warmup_init_factor * lr` to lr, then decay to 0.

  The official MRL/FFCV recipe: warm-up over 2 epochs from 1e-4 x peak, then
  linear decay to 0 at the last step.
  """
  warmup = cfg.get("warmup_steps")
  if warmup is None:
    warmup = int(round(cfg.get("warmup_epochs", 0) * steps_per_epoch))
  warmup = min(warmup, total_steps)
  peak = cfg.learning_rate
  decay_steps = max(total_steps - warmup, 1)
  if cfg.schedule == "linear":
    decay = optax.linear_schedule(peak, 0.0, decay_steps)
  elif cfg.schedule == "cosine":
    decay = optax.cosine_decay_schedule(peak, decay_steps)
  elif cfg.schedule == "constant":
    decay = optax.constant_schedule(peak)
  else:
    raise ValueError(f"unknown schedule {cfg.schedule!r}; set "
                     "config.optimizer.schedule to linear, cosine or constant")
  if not warmup:
    return decay
  ramp = optax.linear_schedule(cfg.get("warmup_init_factor", 0.0) * peak,
                               peak, warmup)
  return optax.join_schedules([ramp, decay], [warmup])


def build_optimizer(cfg: ml_collections.ConfigDict, total_steps: int,
                    steps_per_epoch: int) -> optax.GradientTransformation:
  """config.optimizer -> optax transformation (clip, decay, update rule).

  `state_dtype="bfloat16"` stores SGD's momentum / Adam's first moment in
  bfloat16 (half their memory); Adam's second moment stays float32 (optax
  has no option for it, and its squares need the range), and so do the
  master weights.
  """
  lr = build_schedule(cfg, total_steps, steps_per_epoch)
  wd = cfg.get("weight_decay", 0.0)
  state_dtype = cfg.get("state_dtype", "float32")
  if state_dtype not in STATE_DTYPES:
    raise ValueError(f"unknown optimizer state dtype {state_dtype!r}; set "
                     "config.optimizer.state_dtype to one of "
                     f"{sorted(STATE_DTYPES)}")
  dtype = STATE_DTYPES[state_dtype]
  if cfg.name not in OPTIMIZERS:
    raise ValueError(f"unknown optimizer {cfg.name!r}; set "
                     f"config.optimizer.name to one of {', '.join(OPTIMIZERS)}")
  if cfg.name == "sgd":
    rule = optax.chain(
        optax.add_decayed_weights(wd, mask=decay_mask) if wd else
        optax.identity(),
        optax.sgd(lr, momentum=cfg.get("momentum", 0.9),
                  nesterov=cfg.get("nesterov", False),
                  accumulator_dtype=dtype))
  elif cfg.name == "adamw":
    rule = optax.adamw(lr, b1=cfg.get("b1", 0.9), b2=cfg.get("b2", 0.999),
                       mu_dtype=dtype, weight_decay=wd, mask=decay_mask)
  else:
    rule = _adafactor(cfg, lr, wd, dtype)
  clip = cfg.get("grad_clip_norm")
  return optax.chain(optax.clip_by_global_norm(clip), rule) if clip else rule


def _adafactor(cfg: ml_collections.ConfigDict, lr: optax.Schedule, wd: float,
               dtype: jnp.dtype) -> optax.GradientTransformation:
  """optax.adafactor with the learning rate as an absolute step size.

  `parameter_scale=False` (default) is big_vision's Adafactor: the step is
  lr x the RMS-normalised update, like Adam's, so lr 1e-3 means what it
  means for Adam; True is T5's relative step (x the parameter block's RMS).
  `momentum` (default None: no first moment, Adafactor's memory saving)
  keeps one in `state_dtype`. `factored` (default True) stores the second
  moment of each matrix as its row and column means. Weight decay follows the schedule as AdamW's does (lr_t x
  weight_decay x p) and skips ndim <= 1 parameters.
  """
  momentum = cfg.get("momentum")
  if momentum is not None and not 0.0 <= momentum < 1.0:
    raise ValueError(f"config.optimizer.momentum={momentum} is outside "
                     "[0, 1); use e.g. 0.9, or None for no momentum")
  return optax.adafactor(
      lr, factored=cfg.get("factored", True),
      decay_rate=cfg.get("decay_rate", 0.8),
      clipping_threshold=cfg.get("clipping_threshold", 1.0),
      multiply_by_parameter_scale=cfg.get("parameter_scale", False),
      momentum=momentum, dtype_momentum=dtype,
      weight_decay_rate=(lambda step: wd * lr(step)) if wd else None,
      weight_decay_mask=decay_mask)
