r"""Nested two-tower contrastive learning (ALIGN-MRL) on openclipart.

  python -m mrl_jax.main --config=configs/align_openclipart.py \
      --workdir=workdirs/align

Arguments (comma-separated): `smoke` (a few steps of tiny towers on a
slice, for tests), `head=mrl|ff` (ff: the plain two-tower model, the
paper's baseline, evaluated at its first m dims), `loss=softmax|sigmoid`
(ALIGN's softmax both ways with label smoothing 0.1, or SigLIP's pairwise
sigmoid with a learnable bias), `per_dim_temperature`, `steps=`,
`lock=image|text` with `lock_from=<workdir>` (LiT: that tower starts from
the workdir's latest checkpoint and stays fixed, its projection to d
trains; image: a classification or contrastive workdir whose backbone is
config.model at 32x32x3 inputs; text: an mlm or contrastive workdir).
Hardware: 2 CPU cores. Data: TFDS `openclipart` (data/openclipart.py),
prepared offline on first use from the Debian package openclipart-svg
(scripts/setup.sh installs it and librsvg2-bin): public-domain drawings
rendered at 64x64 with their titles, keywords and descriptions as
captions (32 tokens, a 2048-piece tokenizer trained on the train
captions), 22 categories, split by normalised title.
Model: a small CNN image tower on the drawings resized to 32x32 and a
BERT-Tiny text tower (mean-pooled), each projected to d = 128, nesting (8, 16, ..., 128); one learnable temperature
(initialised at 1, ALIGN); batch 128, AdamW at 1e-3 with cosine decay.
Prints per dim on the validation split: image->text and text->image
Recall@1, zero-shot top-1 over the 22 categories (prompt ensemble of
config.contrastive.prompts) and the cosine span of matching vs random pairs;
eval_summary.json adds zero-shot top-1 on Fashion-MNIST's test set over its
ten class names ("extra_eval").
"""
import ml_collections
from ml_collections import config_dict

from mrl_jax import config_lib
from mrl_jax.data import image_text
from mrl_jax.mrl import nesting

_VOCAB, _TEXT_LEN = 2048, 32
_IMAGE = 32  # pixels: the 64-px drawings resized for the 2-core budget
_KEEP = "keep('image', 'input_ids', 'input_mask', 'label')"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = config_lib.parse_arg(arg, smoke=False, head="mrl", loss="softmax",
                             per_dim_temperature=False, steps=800,
                             lock="", lock_from="")
  config = config_lib.base_config(total_steps=arg.steps, batch_size=128,
                                  eval_batch_size=128, log_every_steps=50,
                                  checkpoint_every_steps=400)
  config.task = "contrastive"
  config.data = config_lib.data_section(
      "openclipart", num_classes=len(image_text.openclipart.CATEGORIES),
      eval_split="validation", cache=True, shuffle_buffer=4096,
      train_preprocess=(f"caption_tokens|resize({_IMAGE})|flip_lr|"
                        f"value_range(-1, 1)|{_KEEP}"),
      eval_preprocess=(f"caption_tokens|resize({_IMAGE})|value_range(-1, 1)|"
                       f"{_KEEP}"),
      image_text=image_text.section(seq_len=_TEXT_LEN, vocab_size=_VOCAB))
  # Zero-shot on Fashion-MNIST's ten class names as well (the final eval,
  # "extra_eval" in eval_summary.json): its 28-px gray clothes made 32-px
  # RGB and inverted to dark on light, like the drawings.
  config.data.extra_eval_sets = ml_collections.ConfigDict({
      "fashion_mnist": {
          "name": "fashion_mnist", "split": "test", "image_text": None,
          "eval_preprocess": (f"gray_to_rgb|resize({_IMAGE})|"
                              "value_range(1, -1)|keep('image', 'label')")}})
  config.model = config_lib.model_section("small_cnn", "float32",
                                          widths=(16, 32, 64),
                                          embed_dim=256)
  config.text_model = config_lib.model_section(
      "bert_tiny", "float32", vocab_size=_VOCAB, max_len=_TEXT_LEN,
      pool="mean")
  config.contrastive = ml_collections.ConfigDict({
      "embed_dim": 128, "loss": arg.loss, "label_smoothing": 0.1,
      "per_dim_temperature": arg.per_dim_temperature,
      "recall_ks": (1, 5, 10),
      "locked": {"tower": config_dict.placeholder(str),
               "from_workdir": config_dict.placeholder(str)},
      "prompts": ("a drawing of {}.", "clipart of {}.",
                  "an illustration of {}.", "{}.")})
  config.mrl = config_lib.mrl_section(arg.head)
  # --mode=export: the image tower's embeddings of the train and eval splits
  # with their categories, for --mode=knn / probe / baselines.
  config.export = ml_collections.ConfigDict({
      "splits": (), "dtype": "float16", "examples_per_shard": 8192,
      "text_embeddings": False})  # True: the captions' too
  # --mode=baselines of the plain (ff) model: its first m dims and SVD to m
  # dims, at the nesting list.
  config.baselines = ml_collections.ConfigDict({
      "methods": ("truncate", "svd"),
      "dims": nesting.default_nesting(config.contrastive.embed_dim)})
  config.optimizer = config_lib.optimizer_section(
      "adamw", learning_rate=1e-3, weight_decay=1e-4, warmup_steps=50,
      schedule="cosine")
  # arg["lock"]: arg.lock is ConfigDict's own lock() method.
  if arg["lock"] or arg.lock_from:
    config.contrastive.locked.tower = arg["lock"] or None
    config.contrastive.locked.from_workdir = arg.lock_from or None
  if arg.smoke:
    _smoke(config)
  return config


def _smoke(config: ml_collections.ConfigDict) -> None:
  """6 steps of tiny towers on slices of the splits."""
  config_lib.apply_smoke(config, total_steps=6, batch_size=32,
                         eval_batch_size=64, every_steps=3,
                         train_split="train[:512]",
                         eval_split="validation[:128]", shuffle_buffer=512)
  config.export.examples_per_shard = 256
  config.data.extra_eval_sets.fashion_mnist.split = "test[:256]"
  # The slice has categories with a single drawing: 1-shot and all-shot
  # probes only.
  config.probe = ml_collections.ConfigDict(
      {"shots": (1, 0), "seeds": 2, "steps": 30})
  config.baselines.steps = 30
  config.baselines.dims = (8, 16, 32)
  config.model.kwargs.widths = (8, 16)
  config.model.kwargs.embed_dim = 32
  config.text_model.name = "bert_mu"
  config.contrastive.embed_dim = 32
  config.optimizer.warmup_steps = 2
