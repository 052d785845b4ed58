r"""BERT-Base nested masked language modelling: the MRL paper's MLM recipe.

  python -m mrl_jax.main --config=configs/bert_base_mlm.py \
      --workdir=workdirs/bert_base_mlm --config.data.data_dir=/path/to/tfds

Arguments (comma-separated): `smoke` (4 steps of BERT-mu on WordNet
glosses, offline, for tests),
`head=mrl_e|mrl|ff` (mrl_e, the paper's: the decoder is the tied word
embeddings; mrl: untied decoders per dim; ff: FF-k, one tied decoder at
`ff_dim=k`, default 768 = plain BERT MLM), `steps=`.

Paper (Kusupati et al. 2022, section 4.3 and appendix): BERT-Base (768 wide,
12 blocks, 12 heads, vocabulary 30,522) with MRL-E through the tied word
embeddings, nesting (12, 24, ..., 768), every c_m = 1; 128-token sequences
with 20 predictions each; global batch 1024 for 450K steps on a 4x4 TPU pod
(16 chips), AdamW with linear decay from 1e-4. BERT's own settings fill in
what the paper leaves out: 10k warm-up steps, weight decay 0.01, b2 0.999,
global-norm clipping 1.0, 15% of the tokens masked (80/10/10). Expected
result: MLM validation accuracy within 0.5% of the FF model at every dim.

Data: TFDS `wikipedia/20230601.en` (the `text` field of its train split),
tokenized by a 30,522-piece sentencepiece model trained on its train
documents and packed into 128-token sequences by data/text_corpus.py, with
a share of the documents held out as validation (not cached: too large for
host memory). Missing against the paper: BooksCorpus (no redistributable
copy in TFDS), BERT's uncased WordPiece vocabulary by default (pass
--config.data.corpus.tokenizer_path=<BERT's vocab.txt>, 30,522 lines, to
use it, or another .model), and BERT's next-sentence objective (the paper's MLM-only training has none); Adam's
epsilon is optax's 1e-8, not BERT's 1e-6.

Hardware: 16 chips (e.g. TPU v4-32 as `v4:2x2x4`, or v5e `4x4`), bfloat16
compute with float32 parameters and optimizer state, parameters and Adam
moments split over all chips (FSDP), 64 sequences per chip. Compiled for
v4:2x2x4 (`--mode=aot`, experiments/aot/README.md) it fits with over 26 GiB
of the 32 free per chip, at 1.013x plain BERT MLM's compiled FLOPs (dp
count; the nested decoder reads 4/3 of plain's table columns). Wall time
and accuracy here: not measured.
"""
import ml_collections

from mrl_jax import config_lib

# BERT's vocabulary size (bert.BERT_VOCAB_SIZE) and its 128-token phase.
VOCAB = 30522
SEQ_LEN = 128
NESTING = (12, 24, 48, 96, 192, 384, 768)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = config_lib.parse_arg(arg, smoke=False, head="mrl_e", ff_dim=0,
                             steps=450_000)
  config = config_lib.base_config(total_steps=arg.steps, batch_size=1024,
                                  eval_batch_size=1024, log_every_steps=1000,
                                  checkpoint_every_steps=10_000)
  config.task = "mlm"
  config.data = config_lib.mlm_data_section(
      config_lib.text_corpus_section(
          None, sources=("tfds",), seq_len=SEQ_LEN, vocab_size=VOCAB,
          tfds_name="wikipedia/20230601.en", tfds_split="train",
          text_key="text"),
      vocab_size=VOCAB, max_predictions=20, cache=False)
  config.model = config_lib.model_section(
      "bert_base", "bfloat16", vocab_size=VOCAB, max_len=SEQ_LEN, pool="cls")
  config.mrl = config_lib.mrl_section(arg.head, nesting_dims=NESTING,
                                      ff_dim=arg.ff_dim or None)
  config.mrl.prefix_norm = False  # the paper's head: one shared LayerNorm
  config.optimizer = config_lib.optimizer_section(
      "adamw", learning_rate=1e-4, weight_decay=0.01, warmup_steps=10_000,
      schedule="linear", b1=0.9, b2=0.999, grad_clip_norm=1.0)
  # FSDP over every chip: the batch splits over them too (64 sequences per
  # chip on 16), and each chip keeps 1/16 of the float32 state.
  config.mesh = (("data", 1), ("fsdp", -1))
  config.sharding.strategy = "fsdp"
  if arg.smoke:
    _smoke(config)
  return config


def _smoke(config: ml_collections.ConfigDict) -> None:
  """4 steps of bert_mu (nesting 8, 16, 32) on 64-token sequences of 2000
  WordNet glosses (the corpus of configs/text_mlm.py's smoke run), FSDP and
  bfloat16 kept."""
  vocab = 512
  config_lib.apply_smoke(config, total_steps=4, batch_size=16)
  config.data = config_lib.mlm_data_section(
      config_lib.text_corpus_section(
          sources=("wordnet",), seq_len=64, vocab_size=vocab,
          max_documents=2000, validation_fraction=0.05),
      vocab_size=vocab, max_predictions=10)
  config_lib.smoke_model(config, "bert_mu", 32)
  config.model.kwargs.update(vocab_size=vocab, max_len=64)
  config.mrl.nesting_dims = None  # bert_mu's halving list
  config.optimizer.warmup_steps = 1
