"""What leaves the trainer: embeddings on disk and encoder bundles.

  embedding_writer.py  --mode=export: a checkpoint's embeddings (and per-dim
                       logits) of TFDS splits, in resumable shards that record
                       the checkpoint they come from
  task_inputs.py       what each trainer task embeds: images through the
                       backbone, labelled text through the BERT encoder, or
                       image-text pairs through a two-tower model's towers
  embedding_files.py   export paths and readers, numpy and json only (no
                       TensorFlow, no Flax): what evaluators and users import
  encoder.py           encoder bundles: layout and `load_encoder`
  encoder_writer.py    --mode=export_encoder (writes a bundle)

This file imports nothing, so `mrl_jax.export.embedding_files` stays light.
"""
