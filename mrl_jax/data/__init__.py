"""Input: TFDS sources, preprocessing ops, batching and device sharding.

  pipeline.py       config.data -> deterministic, resumable global batches
  preprocess.py     preprocessing ops composed from a spec string
  fashion_mnist.py  prepares TFDS's fashion_mnist offline from Debian files
  image_folder.py   user folders root/<split>/<class>/*.jpg|png as a source
  resolution.py     progressive resizing (train size per epoch, FFCV's rule)
  mixup.py          per-batch mixup on device, resumable
  image_text.py     open_image_text: image-caption pairs for contrastive
                    training, from openclipart.py (Debian's Open Clip Art
                    drawings, rasterised offline), image_text_folder.py (a
                    user's images + captions.jsonl/.csv) or tfds_image_text.py
                    (any prepared TFDS image-caption dataset, e.g.
                    coco_captions); captioned_images.py holds their shared
                    TFDS builder and the caption_tokens op
"""
