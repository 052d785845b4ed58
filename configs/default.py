r"""MRL on Fashion-MNIST: the embedded default (real data, no web needed).

  python -m mrl_jax.main --config=configs/default.py --workdir=workdirs/default

Arguments (comma-separated): `smoke` (tiny, < 1 min), `head=mrl|mrl_e|ff`,
`dim=D` (representation size, default 128, or 32 with `smoke`; nesting halves
from D down to 8, so D must halve at least once: `dim=2048` is the paper's
ResNet-50 width, used by the retrieval benchmark), `min_dim=M` (the smallest
nesting dim, one of D's halvings: `min_dim=1` gives (1, 2, 4, ..., 128), the
low-dim operating point where 10 classes need more bits than the prefix has;
the SVD / random-feature baselines then run at the same dims).
Hardware: 2 CPU cores. Data: TFDS `fashion_mnist`, prepared offline from the
Debian package `dataset-fashion-mnist` (60k train / 10k test).
Model: a small CNN (`small_cnn`) with a 128-d representation; nesting
(8, 16, 32, 64, 128); 4 epochs of AdamW, batch 128.

On a 2-core CPU (AMD EPYC, Debian): about 7 min of training (~620
examples/s); timings of the whole command in
experiments/fashion_mnist/README.md. Test-split top-1 per nesting dim
(deterministic):

    dim      8      16      32      64     128
    top-1  0.9236  0.9249  0.9264  0.9268  0.9297
"""
import ml_collections
from ml_collections import config_dict

from mrl_jax import config_lib
from mrl_jax.mrl import nesting

_DIM, _SMOKE_DIM = 128, 32


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  # dim=0: the default width (_DIM, or _SMOKE_DIM with smoke); min_dim=0:
  # the head's default nesting (halving down to 8), left to build_head so
  # that --config.mrl.nesting_dims can still replace it.
  arg = config_lib.parse_arg(arg, smoke=False, head="mrl", dim=0, min_dim=0)
  dim = arg.dim or (_SMOKE_DIM if arg.smoke else _DIM)
  config = config_lib.base_config(total_epochs=4, batch_size=128,
                                  eval_batch_size=1000)
  config.data = config_lib.data_section(
      "fashion_mnist", num_classes=10, eval_split="test", cache=True,
      shuffle_buffer=60_000,
      train_preprocess=(
          "flip_lr|normalize('fashion_mnist')|keep('image', 'label')"),
      eval_preprocess="normalize('fashion_mnist')|keep('image', 'label')")
  config.model = config_lib.model_section("small_cnn", "float32",
                                          embed_dim=dim)
  config.mrl = config_lib.mrl_section(arg.head)
  config.loss = config_lib.loss_section("softmax", label_smoothing=0.1)
  config.optimizer = config_lib.optimizer_section(
      "adamw", learning_rate=3e-3, weight_decay=1e-4, warmup_epochs=0.5,
      schedule="cosine")
  _add_offline_modes(config)
  if arg.min_dim:
    config.mrl.nesting_dims = _halving_down_to(dim, arg.min_dim)
    config.baselines.dims = config.mrl.nesting_dims
  if arg.smoke:
    _smoke(config)
  return config


def _halving_down_to(dim: int, min_dim: int) -> tuple[int, ...]:
  """(min_dim, 2 min_dim, ..., dim); min_dim must be one of dim's halvings."""
  dims = nesting.default_nesting(dim, smallest=max(min_dim, 1))
  if dims[0] != min_dim or len(dims) < 2:
    halvings = nesting.default_nesting(dim, smallest=1)[:-1]
    raise ValueError(f"min_dim={min_dim} is not a halving of dim={dim}; use "
                     f"one of {halvings}")
  return dims


def _add_offline_modes(config: ml_collections.ConfigDict) -> None:
  """Settings of --mode=export, adaptive, probe and baselines."""
  config.export = ml_collections.ConfigDict()
  config.export.splits = ("train", "test")
  config.export.dtype = "float16"
  config.export.examples_per_shard = 20_000
  config.export.logits_splits = ("test",)  # per-dim logits for --mode=adaptive
  config.export.flip_tta = True  # and those of the flipped images
  # count > 0: also export `count` augmented copies of `split` (a larger
  # database of real embeddings for the search benchmark: 16 views of the
  # train split are 960k rows).
  config.export.views = ml_collections.ConfigDict({
      "split": "train", "count": 0,
      "preprocess": ("pad_and_random_crop(2)|flip_lr|"
                     "normalize('fashion_mnist')|keep('image', 'label')")})
  # mrl_jax/embedding_eval.py.
  config.adaptive = ml_collections.ConfigDict(
      {"holdout": 0.2, "seeds": 30, "tta": True, "tolerance": 0.0})
  config.probe = ml_collections.ConfigDict(
      {"shots": (1, 5, 10, 0), "seeds": 3, "l2": 1e-4, "steps": 200})
  config.baselines = ml_collections.ConfigDict(
      {"methods": ("svd", "random"), "dims": config_dict.placeholder(tuple),
       "seeds": 1, "l2": 1e-4, "steps": 200})


def _smoke(config: ml_collections.ConfigDict) -> None:
  """12 steps of a narrow CNN on slices of both splits."""
  config_lib.apply_smoke(
      config, total_steps=12, batch_size=32, eval_batch_size=64,
      every_steps=4, train_split="train[:1024]", eval_split="test[:256]",
      shuffle_buffer=1024)
  config.model.kwargs.widths = (8, 16)
  config.export.splits = ("train[:1024]", "test[:256]")
  config.export.examples_per_shard = 256
  config.export.logits_splits = ("test[:256]",)
  config.export.views.split = "train[:1024]"
  config.adaptive.seeds = 3
  config.probe.shots = (2, 0)
  config.probe.seeds = 2
  config.probe.steps = 30
  config.baselines.steps = 30
