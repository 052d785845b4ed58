"""Input: TFDS sources, preprocessing ops, batching and device sharding.

  pipeline.py       config.data -> deterministic, resumable global batches
  preprocess.py     preprocessing ops composed from a spec string
  fashion_mnist.py  prepares TFDS's fashion_mnist offline from Debian files
"""
