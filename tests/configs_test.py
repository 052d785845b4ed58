"""Tests for configs/*.py: every config validates; the ImageNet and JFT-style
configs train end to end in `smoke` mode on mock or generated data."""
import json
import logging
import pathlib

import numpy as np
import pytest
import tensorflow_datasets as tfds

from mrl_jax import sharding
from mrl_jax import train
from mrl_jax.data import pipeline
from mrl_jax.mrl import losses
from conftest import FOLDER_CONFIGS, write_image_tree

CONFIG_DIR = pathlib.Path(__file__).resolve().parents[1] / "configs"
CONFIGS = sorted(p.stem for p in CONFIG_DIR.glob("*.py"))
# Examples per split under tfds.testing.mock_data. Enough for the 4 smoke
# steps (+2 prefetched batches) to stay in epoch 0: mock_data's as_dataset
# swaps in a fake file system process-wide while it runs, so re-opening the
# split for epoch 1 during an async checkpoint save breaks the save.
NUM_MOCK = 128
# Same class count as the ImageNet smoke run: the ViT states then have the
# same shapes, so the checkpoint's per-device slice kernels are reused.
JFT_CLASSES = 1000


def test_all_configs_are_tested():
  assert {"default", "image_folder", "resnet50_imagenet", "vit_b16_imagenet",
          "vit_b16_jft", "text_mlm", "bert_base_mlm",
          "align_openclipart", "align_vit_b16_bert"} <= set(CONFIGS)


@pytest.mark.parametrize("arg", [None, "smoke", "head=mrl_e", "smoke,head=ff"])
@pytest.mark.parametrize("name", CONFIGS)
def test_config_validates(name, arg, config_module, image_tree):
  if name in FOLDER_CONFIGS:
    # image_folder infers classes and sizes from the folder; text_folder
    # and image_text_folder read it only when their data is prepared (setup
    # does no I/O).
    arg = ",".join(filter(None, [f"root={image_tree}", arg]))
  config = config_module(name).get_config(arg)
  if config.get("task") == "contrastive" and "mrl_e" in (arg or ""):
    # Two towers have no classifier head to tie: a one-line refusal.
    with pytest.raises(ValueError, match="heads mrl, ff"):
      train.setup(config)
    return
  s = train.setup(config)  # validation only: no I/O, no compilation
  assert config.batch_size % 8 == 0 and config.eval_batch_size % 8 == 0
  if arg and "smoke" in arg:
    assert config.total_steps <= 12
  if arg and "head=ff" in arg:
    assert len(s.nesting_dims) == 1


@pytest.mark.parametrize("name, dims", [
    ("resnet50_imagenet", (8, 16, 32, 64, 128, 256, 512, 1024, 2048)),
    ("vit_b16_imagenet", (12, 24, 48, 96, 192, 384, 768)),
    ("vit_b16_jft", (12, 24, 48, 96, 192, 384, 768)),
    ("bert_base_mlm", (12, 24, 48, 96, 192, 384, 768)),
    ("align_vit_b16_bert", (12, 24, 48, 96, 192, 384, 768)),
])
def test_paper_nesting(name, dims, config_module):
  assert train.setup(config_module(name).get_config()).nesting_dims == dims


def test_default_dim_argument_sets_width_and_halving_nesting(config_module):
  setup = train.setup(config_module("default").get_config("dim=2048"))
  assert setup.nesting_dims == (8, 16, 32, 64, 128, 256, 512, 1024, 2048)


def test_default_smoke_keeps_the_dim_argument(config_module):
  default = config_module("default")
  assert default.get_config("smoke").model.kwargs.embed_dim == 32
  setup = train.setup(default.get_config("smoke,dim=64"))
  assert setup.nesting_dims == (8, 16, 32, 64)


@pytest.mark.parametrize("arg", ["dim=7", "dim=12", "smoke,dim=9"])
def test_default_refuses_a_dim_with_one_nesting_dim(arg, config_module):
  with pytest.raises(ValueError) as e:
    train.setup(config_module("default").get_config(arg))
  assert "\n" not in str(e.value)
  assert "--config.mrl.nesting_dims" in str(e.value)


def test_one_nesting_dim_is_fixed_by_the_nesting_list_it_names(config_module):
  config = config_module("default").get_config("dim=7")
  config.mrl.nesting_dims = (2, 4, 7)
  assert train.setup(config).nesting_dims == (2, 4, 7)


@pytest.mark.parametrize("arg, dims", [
    ("min_dim=1", (1, 2, 4, 8, 16, 32, 64, 128)),
    ("head=mrl_e,min_dim=2", (2, 4, 8, 16, 32, 64, 128)),
    ("smoke,min_dim=4", (4, 8, 16, 32)),
])
def test_default_min_dim_extends_the_halving_nesting(arg, dims,
                                                     config_module):
  config = config_module("default").get_config(arg)
  assert train.setup(config).nesting_dims == dims
  assert config.baselines.dims == dims  # SVD / random at the same dims


def test_default_min_dim_leaves_an_ff_head_as_it_is(config_module):
  config = config_module("default").get_config("head=ff,min_dim=1")
  config.mrl.ff_dim = 4
  assert train.setup(config).nesting_dims == (4,)


@pytest.mark.parametrize("arg", ["min_dim=3", "min_dim=128", "min_dim=-1",
                                 "dim=8,min_dim=8"])
def test_default_refuses_a_min_dim_off_the_halving_list(arg, config_module):
  with pytest.raises(ValueError, match=r"^min_dim=-?\d+ is not a halving of "
                     r"dim=\d+; use one of \(1, 2, 4"):
    config_module("default").get_config(arg)


def test_default_ff_head_takes_any_dim(config_module):
  config = config_module("default").get_config("head=ff,dim=7")
  assert train.setup(config).nesting_dims == (7,)


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_has_the_shared_fields(name, config_module, image_tree):
  """The fields command lines override exist in every config."""
  arg = f"root={image_tree}" if name in FOLDER_CONFIGS else None
  config = config_module(name).get_config(arg)
  for field in ("seed", "grad_accum_steps", "mesh", "sharding.strategy",
                "keep_checkpoints", "eval_every_steps", "data.num_shards",
                "data.data_dir", "optimizer.state_dtype", "model.remat",
                "mrl.nesting_dims"):
    section, _, key = field.rpartition(".")
    assert key in (config[section] if section else config), field
  task_fields = {"classification": ("loss.label_smoothing",),
                 "mlm": ("data.corpus.seq_len", "mrl.prefix_norm"),
                 "contrastive": ("contrastive.embed_dim", "contrastive.loss",
                                 "text_model.remat")}
  for field in task_fields[config.get("task", "classification")]:
    section, _, key = field.rpartition(".")
    assert key in (config[section] if section else config), field


def test_resnet50_recipe(config_module):
  config = config_module("resnet50_imagenet").get_config()
  opt = config.optimizer
  assert (config.total_epochs, config.batch_size) == (40, 1024)
  assert (opt.name, opt.momentum, opt.nesterov) == ("sgd", 0.9, False)
  assert (opt.learning_rate, opt.warmup_epochs, opt.warmup_init_factor,
          opt.schedule, opt.weight_decay) == (0.425, 2, 1e-4, "linear", 1e-4)
  assert config.loss.label_smoothing == 0.1
  assert dict(config.data.resolution) == dict(
      min_res=160, max_res=192, start_ramp=29, end_ramp=34, multiple=32)
  assert config_module("resnet50_imagenet").get_config("head=ff,ff_dim=512"
                                               ).mrl.ff_dim == 512


def test_bert_base_mlm_recipe(config_module):
  """The paper's BERT-Base MLM run (section 4.3): MRL-E on the tied word
  embeddings, 450K steps of 1024 x 128 tokens, AdamW linear decay from 1e-4,
  FSDP over all chips, bfloat16 compute."""
  config = config_module("bert_base_mlm").get_config()
  s = train.setup(config)
  opt, corpus = config.optimizer, config.data.corpus
  assert (config.task, config.mrl.head, s.model.head_type) == ("mlm",) + (
      "mrl_e",) * 2
  assert s.relative_importance == (1.0,) * 7
  encoder = s.model.encoder
  assert (config.model.name, encoder.hidden, encoder.depth,
          encoder.vocab_size, config.model.dtype) == (
              "bert_base", 768, 12, 30522, "bfloat16")
  assert (config.total_steps, config.batch_size) == (450_000, 1024)
  assert (opt.name, opt.learning_rate, opt.schedule, opt.warmup_steps,
          opt.weight_decay, opt.b2) == ("adamw", 1e-4, "linear", 10_000,
                                        0.01, 0.999)
  assert (corpus.sources, corpus.tfds_name, corpus.seq_len,
          corpus.vocab_size) == (("tfds",), "wikipedia/20230601.en", 128,
                                 30522)
  assert config.data.train_preprocess == "mlm_mask(30522, 20, 0.15)"
  assert not config.data.cache
  assert config.sharding.strategy == "fsdp"
  assert dict(s.mesh.shape) == {"data": 1, "fsdp": 8, "model": 1}
  ff = train.setup(config_module("bert_base_mlm").get_config("head=ff"))
  assert (ff.nesting_dims, ff.model.head_type) == ((768,), "ff")
  assert train.setup(config_module("bert_base_mlm").get_config(
      "head=ff,ff_dim=96")).nesting_dims == (96,)


def test_align_vit_b16_bert_recipe(config_module):
  """ALIGN-MRL (paper section 4.2, App. C): ViT-B/16 + BERT-Base ([CLS])
  at d = 768, batch 4096 for 1M steps, Adafactor linear decay from 1e-3,
  ALIGN's softmax with one temperature at 1.0 and label smoothing 0.1."""
  module = config_module("align_vit_b16_bert")
  config = module.get_config()
  s = train.setup(config)
  opt, towers = config.optimizer, s.model.towers
  assert (config.task, config.data.name) == ("contrastive", "coco_captions")
  assert (config.model.name, config.text_model.name) == ("vit_b16",
                                                         "bert_base")
  assert (towers.text_tower.hidden, towers.text_tower.pool,
          towers.embed_dim) == (768, "cls", 768)
  assert s.relative_importance == (1.0,) * 7
  assert (config.total_steps, config.batch_size) == (1_000_000, 4096)
  assert (opt.name, opt.learning_rate, opt.schedule, opt.factored,
          opt.momentum) == ("adafactor", 1e-3, "linear", True, None)
  assert (s.model.kind, s.model.num_temperatures) == ("softmax", None)
  assert config.contrastive.label_smoothing == 0.1
  assert s.model.nesting_dims == (12, 24, 48, 96, 192, 384, 768)
  ff = train.setup(module.get_config("head=ff"))
  assert ff.model.nesting_dims == (768,)
  sigmoid = train.setup(module.get_config("loss=sigmoid,dataset=my_pairs"))
  assert sigmoid.model.kind == "sigmoid"
  assert sigmoid.config.data.name == "my_pairs"


def _check_summary(workdir, config):
  with open(workdir / "eval_summary.json") as f:
    summary = json.load(f)
  dims = [str(d) for d in train.setup(config).nesting_dims]
  assert summary["step"] == config.total_steps
  assert summary["num_examples"] > 0
  for metric in ("top1", "top5", "loss"):
    assert sorted(summary[metric], key=int) == dims
    assert all(np.isfinite(v) for v in summary[metric].values())
  return summary


@pytest.mark.slow
@pytest.mark.parametrize("name, arg", [("resnet50_imagenet", "smoke,robustness"),
                                       ("vit_b16_imagenet", "smoke")])
def test_imagenet_smoke_trains_on_mock_data(name, arg, tmp_path,
                                            config_module):
  config = config_module(name).get_config(arg)
  config.data.data_dir = str(tmp_path / "tfds")  # empty: all data is mock
  # Under mock_data the image is served encoded (skip_decode), every split
  # holds NUM_MOCK examples whatever its slice, and split info is empty.
  with tfds.testing.mock_data(num_examples=NUM_MOCK):
    train.train_and_evaluate(config, str(tmp_path / "work"))
  summary = _check_summary(tmp_path / "work", config)
  assert summary["num_examples"] == NUM_MOCK  # mock_data ignores [:32]
  # ImageNet-V2/R/A/Sketch: mock labels are random over the 1000 classes, so
  # R and A see few in-subset labels; what matters here is that all ran.
  extra = summary.get("extra_eval", {})
  assert set(extra) == ({"imagenet_v2", "imagenet_r", "imagenet_a",
                         "imagenet_sketch"} if "robustness" in arg else set())
  for result in extra.values():
    assert result["num_examples"] == NUM_MOCK
    assert sorted(result["top1"], key=int) == sorted(summary["top1"], key=int)


def _write_multilabel_dataset(data_dir: pathlib.Path) -> str:
  """A tiny JFT-like TFDS dataset: JPEG images, label = list of class ids."""
  rng = np.random.default_rng(0)

  def split(n):
    for i in range(n):
      k = int(rng.integers(0, 4))  # 0..3 labels, the empty list included
      yield str(i), {
          "image": rng.integers(0, 256, (40, 48, 3), dtype=np.uint8),
          "label": sorted(rng.choice(JFT_CLASSES, k, replace=False).tolist())}

  name = "mrl_test_multilabel"
  tfds.dataset_builders.store_as_tfds_dataset(
      name=name, version="1.0.0", data_dir=str(data_dir),
      features=tfds.features.FeaturesDict({
          "image": tfds.features.Image(shape=(None, None, 3),
                                       encoding_format="jpeg"),
          "label": tfds.features.Sequence(
              tfds.features.ClassLabel(num_classes=JFT_CLASSES))}),
      split_datasets={"train": list(split(64)),
                      "validation": list(split(32))})
  return name


@pytest.mark.slow
def test_jft_smoke_trains_on_generated_multilabel_data(tmp_path,
                                                       config_module):
  data_dir = tmp_path / "tfds"
  name = _write_multilabel_dataset(data_dir)
  config = config_module("vit_b16_jft").get_config(
      f"smoke,dataset={name},num_classes={JFT_CLASSES}")
  config.data.data_dir = str(data_dir)
  s = train.setup(config)
  assert s.loss_fn is losses.nested_sigmoid_cross_entropy
  # The model sees multi-hot [B, C] targets, not class ids.
  source = pipeline.open_source(config.data, config.data.eval_split)
  batch = next(pipeline.eval_batches(config.data, source,
                                     config.eval_batch_size,
                                     sharding.batch_sharding(s.mesh)))
  labels = np.asarray(batch["label"])
  assert labels.shape == (config.eval_batch_size, JFT_CLASSES)
  assert set(np.unique(labels)) <= {0.0, 1.0}
  assert labels.sum(axis=1).max() > 1  # some examples have several classes

  train.train_and_evaluate(config, str(tmp_path / "work"))
  summary = _check_summary(tmp_path / "work", config)
  assert summary["num_examples"] == 32


def test_missing_imagenet_error_is_one_line(tmp_path, config_module):
  config = config_module("resnet50_imagenet").get_config()
  config.data.data_dir = str(tmp_path)
  with pytest.raises(ValueError) as e:
    pipeline.open_source(config.data, config.data.train_split)
  message = str(e.value)
  assert "\n" not in message
  assert f"{tmp_path}/downloads/manual/" in message
  assert "ILSVRC2012_img_train.tar" in message
  assert "ILSVRC2012_img_val.tar" in message
  assert "config.data.data_dir" in message


def test_image_folder_small_images_get_the_small_image_recipe(
    config_module, tmp_path, caplog):
  root = write_image_tree(tmp_path, {"train": 8, "val": 2}, size=(28, 28),
                          gray=True)
  module = config_module("image_folder")
  module._SMALL_EXAMPLES = 24 * 10  # 24 train images: 10 epochs
  with caplog.at_level(logging.INFO):
    config = module.get_config(f"root={root}")
  data = config.data
  fit = "decode(1)|resize_small(28)|central_crop(28)"
  assert data.train_preprocess == (
      f"{fit}|pad_and_random_crop(4)|flip_lr|value_range(-1, 1)|"
      "keep('image', 'label')")
  assert data.eval_preprocess == (
      f"{fit}|value_range(-1, 1)|keep('image', 'label')")
  assert (config.model.name, config.model.kwargs.embed_dim) == ("small_cnn",
                                                                128)
  assert (config.total_epochs, config.batch_size) == (10, 128)
  assert train.setup(config).nesting_dims == (8, 16, 32, 64, 128)
  assert "small-image recipe" in caplog.text and "28 px < 64 px" in caplog.text
  # Explicit arguments win; no flip for images whose mirror is another class.
  config = module.get_config(f"root={root},flip=false,epochs=3,batch=16")
  assert "flip_lr" not in config.data.train_preprocess
  assert (config.total_epochs, config.batch_size) == (3, 16)
  smoke = module.get_config(f"root={root},smoke")
  assert train.setup(smoke).nesting_dims == (8, 16)  # cnn_mu


def test_image_folder_small_recipe_epochs_stay_in_bounds(config_module,
                                                         tmp_path):
  root = write_image_tree(tmp_path, {"train": 2}, size=(32, 32))
  module = config_module("image_folder")
  assert module.get_config(f"root={root}").total_epochs == 30  # 5 images
  module._SMALL_EXAMPLES = 1
  config = module.get_config(f"root={root}")
  assert config.total_epochs == 4
  assert "pad_and_random_crop(4)|flip_lr|normalize('imagenet')" in (
      config.data.train_preprocess)


def test_image_folder_large_images_keep_the_imagenet_recipe(
    config_module, tmp_path, caplog):
  root = write_image_tree(tmp_path, {"train": 2, "val": 1}, size=(96, 80))
  with caplog.at_level(logging.INFO):
    config = config_module("image_folder").get_config(f"root={root}")
  assert config.data.train_preprocess.startswith(
      "decode_jpeg_and_inception_crop(80)|flip_lr|")
  assert "central_crop(80)" in config.data.eval_preprocess
  assert (config.model.name, config.total_epochs, config.batch_size) == (
      "resnet18", 30, 64)
  assert "ImageNet-shaped recipe" in caplog.text
  # size= picks the recipe too: 28-px crops of these images are small ones.
  config = config_module("image_folder").get_config(f"root={root},size=28")
  assert "pad_and_random_crop(4)" in config.data.train_preprocess
