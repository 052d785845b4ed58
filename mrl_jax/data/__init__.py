"""Input: TFDS sources, preprocessing ops, batching and device sharding.

  pipeline.py       config.data -> deterministic, resumable global batches
  preprocess.py     preprocessing ops composed from a spec string
  fashion_mnist.py  prepares TFDS's fashion_mnist offline from Debian files
  image_folder.py   user folders root/<split>/<class>/*.jpg|png as a source
  resolution.py     progressive resizing (train size per epoch, FFCV's rule)
  mixup.py          per-batch mixup on device, resumable
"""
