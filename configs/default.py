r"""MRL on Fashion-MNIST: the embedded default (real data, no web needed).

  python -m mrl_jax.main --config=configs/default.py --workdir=workdirs/default

Arguments (comma-separated): `smoke` (tiny, < 1 min), `head=mrl|mrl_e|ff`,
`dim=D` (representation size, default 128; nesting halves from D down to 8:
`dim=2048` is the paper's ResNet-50 width, used by the retrieval benchmark).
Hardware: 2 CPU cores. Data: TFDS `fashion_mnist`, prepared offline from the
Debian package `dataset-fashion-mnist` (60k train / 10k test).
Model: a small CNN (`small_cnn`) with a 128-d representation; nesting
(8, 16, 32, 64, 128); 4 epochs of AdamW, batch 128.

Measured (2-core AMD EPYC VM, idle; BUILD_NOTES.md): 6 min 43 s of training
(~620 examples/s), 9 min 4 s for `scripts/train_default.sh` on a fresh clone
including set-up. Test-split top-1 per nesting dim (deterministic):

    dim      8      16      32      64     128
    top-1  0.9236  0.9249  0.9264  0.9268  0.9297
"""
import ml_collections
from ml_collections import config_dict

from mrl_jax import config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = config_lib.parse_arg(arg, smoke=False, head="mrl", dim=128)
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.total_epochs = 4
  config.total_steps = config_dict.placeholder(int)
  config.batch_size = 128
  config.grad_accum_steps = 1  # k > 1: k microbatches per update
  config.eval_batch_size = 1000

  config.data = ml_collections.ConfigDict()
  config.data.name = "fashion_mnist"
  config.data.data_dir = config_dict.placeholder(str)
  config.data.train_split = "train"
  config.data.eval_split = "test"
  config.data.num_classes = 10
  config.data.cache = True
  config.data.shuffle_buffer = 60_000
  # S data shards, each shuffled and batched alone (pipeline.py): batches are
  # the same for any process count dividing S. None: one per device.
  config.data.num_shards = config_dict.placeholder(int)
  config.data.train_preprocess = (
      "flip_lr|normalize('fashion_mnist')|keep('image', 'label')")
  config.data.eval_preprocess = "normalize('fashion_mnist')|keep('image', 'label')"

  config.model = config_lib.model_section("small_cnn", "float32",
                                          embed_dim=arg.dim)

  config.mrl = config_lib.mrl_section(arg.head)

  config.loss = ml_collections.ConfigDict()
  config.loss.name = "softmax"
  config.loss.label_smoothing = 0.1

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = "adamw"
  config.optimizer.state_dtype = "float32"  # or bfloat16 (momentum)
  config.optimizer.learning_rate = 3e-3
  config.optimizer.weight_decay = 1e-4
  config.optimizer.warmup_epochs = 0.5
  config.optimizer.schedule = "cosine"

  config.export = ml_collections.ConfigDict()  # --mode=export
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

  # --mode=adaptive / probe / baselines (mrl_jax/embedding_eval.py).
  config.adaptive = ml_collections.ConfigDict(
      {"holdout": 0.2, "seeds": 30, "tta": True, "tolerance": 0.0})
  config.probe = ml_collections.ConfigDict(
      {"shots": (1, 5, 10, 0), "seeds": 3, "l2": 1e-4, "steps": 200})
  config.baselines = ml_collections.ConfigDict(
      {"methods": ("svd", "random"), "dims": config_dict.placeholder(tuple),
       "seeds": 1, "l2": 1e-4, "steps": 200})

  config.mesh = (("data", -1),)  # axes data, fsdp, model; one size may be -1
  config.sharding = config_lib.sharding_section("dp")  # or fsdp, fsdp_tp
  config.log_every_steps = 100
  config.checkpoint_every_steps = 1000
  config.eval_every_steps = 0  # 0: evaluate only at the end
  config.keep_checkpoints = 2

  if arg.smoke:
    config.total_epochs = None
    config.total_steps = 12
    config.batch_size = 32
    config.eval_batch_size = 64
    config.data.train_split = "train[:1024]"
    config.data.eval_split = "test[:256]"
    config.data.shuffle_buffer = 1024
    config.model.kwargs.widths = (8, 16)
    config.model.kwargs.embed_dim = 32
    config.export.splits = ("train[:1024]", "test[:256]")
    config.export.examples_per_shard = 256
    config.export.logits_splits = ("test[:256]",)
    config.export.views.split = "train[:1024]"
    config.adaptive.seeds = 3
    config.probe.shots = (2, 0)
    config.probe.seeds = 2
    config.probe.steps = 30
    config.baselines.steps = 30
    config.log_every_steps = 4
    config.checkpoint_every_steps = 4
  return config
