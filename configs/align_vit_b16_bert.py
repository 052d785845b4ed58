r"""ALIGN-MRL at the paper's scale: ViT-B/16 + BERT-Base two towers.

  python -m mrl_jax.main --config=configs/align_vit_b16_bert.py \
      --workdir=workdirs/align_vit_b16_bert --config.data.data_dir=/path/to/tfds

Arguments (comma-separated): `dataset=<tfds name>` (an image-text TFDS
dataset, default "coco_captions"), `smoke` (a few steps of tiny towers
with the same optimizer and loss, for tests), `head=mrl|ff` (ff: the plain
two-tower model, the paper's baseline, evaluated at its first m dims),
`loss=softmax|sigmoid` (ALIGN's softmax both ways with label smoothing 0.1,
or SigLIP's pairwise sigmoid with a learnable bias), `steps=`.

Paper (Kusupati et al. 2022, section 4.2 and appendix C): ALIGN-MRL, a
ViT-B/16 image tower and a BERT-Base text tower, each projected to d = 768,
MRL on both embeddings with nesting (12, 24, 48, 96, 192, 384, 768), every
c_m = 1; global batch 4096 (64 pairs per chip) on an 8x8 TPU pod (64
chips) for 1M steps; Adafactor with linear decay from lr 1e-3; ALIGN's loss:
softmax both ways (image->text + text->image) with label smoothing 0.1 and
one learnable temperature shared by all dims, initialised at 1.0. ALIGN's
text embedding is BERT's [CLS] token (pool="cls") through a linear
projection; the image tower's is ViT-B/16's class token (as in the MRL
paper's ViT). Expected result: ImageNet-1K 1-NN of the image tower at 12
dims 43.57% with MRL against 11.90% for the plain model's first 12 dims (not
part of this config's evaluation, which reports in-batch and split-level
retrieval and zero-shot top-1 per dim).

Filled in where the paper is silent (our choices): 224-px inception crops +
flip, pixels in [-1, 1]; 64 caption tokens; BERT's vocabulary size 30,522;
10k warm-up steps; no weight decay; Adafactor's step as an absolute lr
(optim.py), no momentum, factored second moments; bfloat16 compute with
float32 parameters and optimizer state, replicated over the 64 chips (pure
data parallelism). ALIGN itself trained its towers (EfficientNet-L2 +
BERT-Large) on 1.8B noisy alt-text pairs, which are not public.

Data: any prepared TFDS image-caption dataset by name
(data/tfds_image_text.py; field map `--config.data.image_text.image_key`,
`caption_key` (default COCO's "captions/text"), `label_key`), copied once
with its tokenized captions next to it; splits "train" and "val" (COCO's
Karpathy names; `--config.data.eval_split=` for others).
The text tower's vocabulary is BERT's: pass its WordPiece file with
`--config.data.image_text.tokenizer_path=/path/to/vocab.txt` (otherwise a
30,522-piece sentencepiece tokenizer is trained on the train captions).
`--mode=aot` reads no data: the example shapes come from the preprocess
strings alone. Compiled for v4:4x4x4 (64 chips, experiments/aot/README.md)
it fits with 24.6 GiB of the 32 free per chip, at 1.013x the towers' model
FLOPs and 1.0001x the plain model's (head=ff) compiled FLOPs; wall time and
accuracy here: not measured.
"""
import ml_collections
from ml_collections import config_dict

from mrl_jax import config_lib
from mrl_jax.data import image_text

VOCAB = 30522  # BERT's (bert.BERT_VOCAB_SIZE)
TEXT_LEN = 64
IMAGE = 224
NESTING = (12, 24, 48, 96, 192, 384, 768)
_KEEP = "keep('image', 'input_ids', 'input_mask', 'label')"


def preprocess(size: int) -> dict[str, str]:
  """Train (inception crop + flip) and eval (resize + centre crop) strings
  on decoded images and stored caption tokens, pixels in [-1, 1]."""
  return {
      "train_preprocess": (f"caption_tokens|inception_crop({size})|flip_lr|"
                           f"value_range(-1, 1)|{_KEEP}"),
      "eval_preprocess": (f"caption_tokens|resize_small({size * 8 // 7})|"
                          f"central_crop({size})|value_range(-1, 1)|{_KEEP}")}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = config_lib.parse_arg(arg, smoke=False, head="mrl", loss="softmax",
                             dataset="coco_captions", steps=1_000_000)
  config = config_lib.base_config(total_steps=arg.steps, batch_size=4096,
                                  eval_batch_size=4096, log_every_steps=1000,
                                  checkpoint_every_steps=10_000)
  config.task = "contrastive"
  config.data = config_lib.data_section(
      arg.dataset, num_classes=None, eval_split="val", cache=False,
      shuffle_buffer=50_000, **preprocess(IMAGE),
      image_text=image_text.section(seq_len=TEXT_LEN, vocab_size=VOCAB))
  config.model = config_lib.model_section("vit_b16", "bfloat16")
  config.text_model = config_lib.model_section(
      "bert_base", "bfloat16", vocab_size=VOCAB, max_len=TEXT_LEN,
      pool="cls")
  config.contrastive = ml_collections.ConfigDict({
      "embed_dim": 768, "loss": arg.loss,
      "label_smoothing": 0.1 if arg.loss == "softmax" else 0.0,
      "per_dim_temperature": False, "recall_ks": (1, 5, 10),
      "prompts": ("a photo of a {}.",)})
  config.mrl = config_lib.mrl_section(arg.head, nesting_dims=NESTING)
  config.optimizer = config_lib.optimizer_section(
      "adafactor", learning_rate=1e-3, weight_decay=0.0, warmup_steps=10_000,
      schedule="linear", factored=True,
      momentum=config_dict.placeholder(float))  # None: no first moment
  if arg.smoke:
    _smoke(config)
  return config


def _smoke(config: ml_collections.ConfigDict) -> None:
  """6 steps of ViT-mu + BERT-mu (d = 32) on 32-px crops of slices."""
  config_lib.apply_smoke(config, total_steps=6, batch_size=32,
                         eval_batch_size=64, every_steps=3,
                         train_split="train[:512]",
                         eval_split="val[:128]", shuffle_buffer=512,
                         **preprocess(32))
  config.model.name = "vit_mu"
  config.text_model.name = "bert_mu"
  config.contrastive.embed_dim = 32
  config.mrl.nesting_dims = (4, 8, 16, 32)
  config.optimizer.warmup_steps = 2
