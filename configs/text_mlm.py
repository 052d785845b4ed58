r"""Nested masked language modelling on the offline English corpus.

  python -m mrl_jax.main --config=configs/text_mlm.py --workdir=workdirs/mlm

Arguments (comma-separated): `smoke` (a few steps of a two-block BERT on a
small slice of WordNet, for tests), `head=mrl_e|mrl|ff` (mrl_e, the paper's
form: the decoder is the tied word embeddings; mrl: untied decoders per
dim; ff: FF-k, one tied decoder at `ff_dim=k`, default the full width),
`prefix_norm` (LayerNorm each prefix with its own statistics), `model=`
(a registered text encoder, default bert_tiny), `steps=`.
Hardware: 2 CPU cores. Data: `mrl_text_corpus/debian_128`: WordNet glosses
and GCIDE dictionary entries (Debian packages wordnet-base and dict-gcide,
which scripts/setup.sh installs), a sentencepiece tokenizer of 8192 pieces
trained on the train documents, 128-token packed sequences, 2% of the
documents held out; prepared offline on first use.
Model: BERT-Tiny (2 blocks, 128 wide, 2 heads), nesting (8, 16, ..., 128),
mean-pooled sentence embeddings; 600 steps of batch 32, 15% of the tokens
masked (at most 20 per sequence), AdamW at 1e-3 with warm-up and linear
decay.
Prints MLM accuracy and loss per nesting dim on the validation split.
On the 2-core CPU box (shared with other jobs) training took 6-8 min
(40-70 sequences/s), after about 1.5 min of first-use corpus preparation.

Then `--mode=export` writes the mean-pooled sentence embeddings of WordNet
glosses with their 45 lexicographer classes (`wordnet_lexnames`), which the
1-NN (`--mode=knn`) and linear-probe (`--mode=probe`) evaluators score per
dim; `--mode=export_encoder` writes a text bundle (the encoder and its
tokenizer) whose `mrl_jax.load_encoder(DIR/encoder).embed(texts, dim=m)`
gives the same embeddings. Results and the MRL / MRL-E / FF-k comparison:
experiments/text_mlm/README.md.
"""
import ml_collections
from ml_collections import config_dict

from mrl_jax import config_lib

_VOCAB = 8192


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = config_lib.parse_arg(arg, smoke=False, head="mrl_e", ff_dim=0,
                             prefix_norm=False, model="bert_tiny", steps=600)
  config = config_lib.base_config(total_steps=arg.steps, batch_size=32,
                                  eval_batch_size=256, log_every_steps=50,
                                  checkpoint_every_steps=500)
  config.task = "mlm"
  config.data = config_lib.mlm_data_section(
      config_lib.text_corpus_section("debian_128", vocab_size=_VOCAB),
      vocab_size=_VOCAB, max_predictions=20)
  config.model = config_lib.model_section(
      arg.model, "float32", vocab_size=_VOCAB, max_len=128, pool="mean")
  config.mrl = config_lib.mrl_section(arg.head, ff_dim=arg.ff_dim or None)
  config.mrl.prefix_norm = arg.prefix_norm
  config.optimizer = config_lib.optimizer_section(
      "adamw", learning_rate=1e-3, weight_decay=0.01, warmup_steps=100,
      schedule="linear", b2=0.999, grad_clip_norm=1.0)
  _add_offline_modes(config)
  if arg.smoke:
    _smoke(config)
  return config


def _add_offline_modes(config: ml_collections.ConfigDict) -> None:
  """Settings of --mode=export, knn, probe and baselines: the pooled
  sentence embeddings of WordNet glosses, labelled with their 45
  lexicographer classes (tokenized with the workdir's tokenizer.model)."""
  config.export = ml_collections.ConfigDict()
  config.export.dataset = ml_collections.ConfigDict({
      "name": "wordnet_lexnames", "train_split": "train",
      "eval_split": "validation", "num_classes": 45,
      "data_dir": config_dict.placeholder(str)})
  config.export.splits = ()  # the dataset's train and eval splits
  config.export.dtype = "float16"
  config.export.examples_per_shard = 16_384
  # mrl_jax/embedding_eval.py (knn keeps its defaults): few-shot and full
  # linear probes, and the SVD / random-feature baselines of an FF-full model.
  config.probe = ml_collections.ConfigDict(
      {"shots": (5, 0), "seeds": 3, "l2": 1e-4, "steps": 200})
  config.baselines = ml_collections.ConfigDict(
      {"methods": ("svd", "random"), "dims": config_dict.placeholder(tuple),
       "seeds": 1, "l2": 1e-4, "steps": 200})


def _smoke(config: ml_collections.ConfigDict) -> None:
  """6 steps of bert_mu on 64-token sequences of 2000 WordNet glosses."""
  vocab = 512
  config_lib.apply_smoke(config, total_steps=6, batch_size=16,
                         eval_batch_size=32, every_steps=3)
  config.data = config_lib.mlm_data_section(
      config_lib.text_corpus_section(
          sources=("wordnet",), seq_len=64, vocab_size=vocab,
          max_documents=2000, validation_fraction=0.05),
      vocab_size=vocab, max_predictions=10)
  config.model.name = "bert_mu"
  config.model.kwargs.vocab_size = vocab
  config.model.kwargs.max_len = 64
  if config.mrl.ff_dim is not None:
    config.mrl.ff_dim = min(config.mrl.ff_dim, 32)
  config.optimizer.warmup_steps = 2
  config.export.dataset.train_split = "train[:2048]"
  config.export.dataset.eval_split = "validation[:512]"
  config.export.examples_per_shard = 1024
  config.probe.shots = (0,)  # all: rare classes have < 5 glosses in the slice
  config.probe.seeds = 2
  config.probe.steps = 30
  config.baselines.steps = 30
