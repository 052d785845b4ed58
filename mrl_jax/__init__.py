"""mrl_jax: Matryoshka Representation Learning (Kusupati et al., 2022) in JAX.

Where things live:
  mrl/nesting.py      nesting lists (defaults, validation)
  mrl/heads.py        MRL, MRL-E and FF-k classification heads
  mrl/losses.py       nested softmax / sigmoid cross-entropy
  mrl/metrics.py      per-dim top-k counts and metric names
  models/             backbones (resnet.py, vit.py, cnn.py), registry.py, classifier.py
  data/               TFDS / image-folder input pipeline, preprocessing ops,
                      progressive resizing, mixup, offline Fashion-MNIST
  sharding.py         device mesh, batch shardings, activation constraints
  sharding_rules.py   dp / fsdp / fsdp_tp rules -> param and optimizer specs
  optim.py            optax optimizer and schedule from config
  train_step.py       pure, jittable train and eval steps
  train.py            train_and_evaluate(config, workdir) and evaluate(...)
  export.py           embedding export (mode=export)
  embedding_files.py  export paths, load_split(...) (numpy only: no TF, no Flax)
  encoder.py          encoder bundles (mode=export_encoder), load_encoder(path)
  tools/import_torch.py  official PyTorch checkpoints -> mrl_jax checkpoint
  embedding_eval.py   knn / retrieval / adaptive / probe / baselines modes
  checkpointing.py    Orbax CheckpointManager wrapper (resume, mismatch vs
                      damage, checksums, failed saves)
  workdir_lock.py     one trainer per workdir (flock on DIR/lock)
  evaluators/         per-nesting-dim evaluation
  search/             exact top-k over nested prefixes (adaptive / funnel
                      retrieval): index, plan, topk kernels, scan placement
  metric_writer.py    metrics.jsonl + TensorBoard
  atomic_files.py     JSON / npz writes that never leave half a file
  config_lib.py       config-file argument parsing, durations
  distributed.py      multi-process start-up (launcher flags, TPU pods, SLURM)
  aot.py              mode=aot: compile the train step for a TPU topology
  model_flops.py      analytic forward MACs of a model (from its jaxpr)
  main.py             absl launcher (the only file that defines flags)
"""


def __getattr__(name: str):
  # `mrl_jax.load_encoder` without importing jax at `import mrl_jax`.
  if name == "load_encoder":
    from mrl_jax.encoder import load_encoder  # pylint: disable=import-outside-toplevel
    return load_encoder
  raise AttributeError(f"module 'mrl_jax' has no attribute {name!r}")
