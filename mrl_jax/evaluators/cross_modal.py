"""Image-text evaluation per nesting dim: cross-modal recall, zero-shot
classification with prompt ensembles, and the cosine span.

Every score uses the m-prefixes of both towers, each L2-normalised on its
own (the contrastive loss's geometry), for every nesting dim m.

* Recall@K (`recall`): image -> text, an image counts as found when any of
  its captions is among the K texts nearest to it; text -> image, a caption
  when its image is among the K images nearest to it (ALIGN / CLIP
  protocol; one or several captions per image). Exact search with
  `mrl_jax.search` (ties: the lower index ranks first).
* Zero-shot (`zero_shot`): each class is described by T prompt templates
  ("a drawing of a {}.", ...); per dim the template prefixes are normalised,
  averaged and normalised again (CLIP's prompt ensembling, done per prefix),
  and an image takes the class of the nearest class embedding.
* Cosine span (`cosine_span`): the mean cosine of matching pairs minus the
  mean cosine of all non-matching pairs (every image with every other
  row's text: exact, and independent of the rows' order, so the same for
  any number of processes), the paper's "larger span between positive and
  random pairs".
"""
from collections.abc import Sequence
from typing import Any

import numpy as np

from mrl_jax import search
from mrl_jax.mrl import metrics

# Recall cut-offs.
DEFAULT_KS = (1, 5, 10)


def _prefix(z: np.ndarray, m: int) -> np.ndarray:
  """[N, d] -> its L2-normalised m-prefixes [N, m] (zero rows stay 0)."""
  p = np.asarray(z, np.float64)[:, :m]
  return p / np.maximum(np.linalg.norm(p, axis=-1, keepdims=True), 1e-12)


def _check(images: np.ndarray, texts: np.ndarray, dims: Sequence[int]
           ) -> list[int]:
  if images.ndim != 2 or texts.ndim != 2 or images.shape[1] != texts.shape[1]:
    raise ValueError(f"image embeddings {images.shape} and text embeddings "
                     f"{texts.shape} must be [N, d] of one width d")
  dims = [int(m) for m in dims]
  if not dims or min(dims) < 1 or max(dims) > images.shape[1]:
    raise ValueError(f"nesting dims {dims} must lie in 1..{images.shape[1]}")
  return dims


def recall(images: Any, texts: Any, text_image: Any,
           nesting_dims: Sequence[int], ks: Sequence[int] = DEFAULT_KS,
           **search_kwargs: int) -> dict[str, Any]:
  """Image->text and text->image Recall@K per dim.

  Args:
    images: [N, d] raw image embeddings.
    texts: [T, d] raw text embeddings (captions).
    text_image: [T] index of each caption's image in `images`.
    nesting_dims: prefix lengths m.
    ks: the K of Recall@K (capped at the database size).
    **search_kwargs: block sizes for `search.search`.
  Returns:
    {"i2t/recall@K/d=m": fraction of images, "t2i/recall@K/d=m": fraction
     of captions, "num_images", "num_texts", "nesting", "ks"}.
  """
  images, texts = np.asarray(images, np.float32), np.asarray(texts,
                                                              np.float32)
  owner = np.asarray(text_image)
  dims = _check(images, texts, nesting_dims)
  if owner.shape != (len(texts),) or owner.min() < 0 or owner.max() >= len(
      images):
    raise ValueError(f"text_image must give each of the {len(texts)} "
                     f"captions an image index in 0..{len(images) - 1}")
  ks = sorted({int(k) for k in ks})
  out = {"nesting": dims, "ks": ks, "num_images": len(images),
         "num_texts": len(texts)}
  text_index = search.build_index(texts, boundaries=dims, normalize=True)
  image_index = search.build_index(images, boundaries=dims, normalize=True)
  for m in dims:
    k_i2t = min(max(ks), len(texts))
    _, ids = search.search(text_index, images, m, k_i2t, **search_kwargs)
    found_i2t = owner[np.asarray(ids)] == np.arange(len(images))[:, None]
    k_t2i = min(max(ks), len(images))
    _, ids = search.search(image_index, texts, m, k_t2i, **search_kwargs)
    found_t2i = np.asarray(ids) == owner[:, None]
    for k in ks:
      out[metrics.metric_name("i2t", f"recall@{k}", m)] = float(
          found_i2t[:, :k].any(-1).mean())
      out[metrics.metric_name("t2i", f"recall@{k}", m)] = float(
          found_t2i[:, :k].any(-1).mean())
  return out


def class_embeddings(template_embeddings: Any, m: int) -> np.ndarray:
  """[C, T, d] raw text embeddings of C classes x T templates -> [C, m]:
  per class, the normalised m-prefixes averaged and normalised again."""
  z = np.asarray(template_embeddings, np.float64)
  c, t, d = z.shape
  mean = _prefix(z.reshape(c * t, d), m).reshape(c, t, m).mean(1)
  return mean / np.maximum(np.linalg.norm(mean, axis=-1, keepdims=True),
                           1e-12)


def zero_shot(images: Any, labels: Any, template_embeddings: Any,
              nesting_dims: Sequence[int]) -> dict[str, Any]:
  """Zero-shot top-1 per dim.

  Args:
    images: [N, d] raw image embeddings.
    labels: [N] class indices.
    template_embeddings: [C, T, d] raw text embeddings of every class's T
      prompts.
    nesting_dims: prefix lengths m.
  Returns:
    {"zero_shot/top1/d=m": fraction, "num_classes", "num_templates"}.
  """
  images, labels = np.asarray(images), np.asarray(labels)
  prompts = np.asarray(template_embeddings)
  if prompts.ndim != 3:
    raise ValueError(f"template embeddings {prompts.shape} must be "
                     "[classes, templates, d]")
  dims = _check(images, prompts[:, 0], nesting_dims)
  out = {"nesting": dims, "num_classes": prompts.shape[0],
         "num_templates": prompts.shape[1]}
  for m in dims:
    pred = (_prefix(images, m) @ class_embeddings(prompts, m).T).argmax(-1)
    out[metrics.metric_name("zero_shot", "top1", m)] = float(
        np.mean(pred == labels))
  return out


def cosine_span(images: Any, texts: Any,
                nesting_dims: Sequence[int]) -> dict[str, Any]:
  """Mean cosine of matching pairs (images[i], texts[i]) minus that of all
  non-matching pairs (images[i], texts[j]), j != i, per dim.

  Args:
    images, texts: [N, d] raw embeddings, row i of each a matching pair
      (N >= 2).
    nesting_dims: prefix lengths m <= d.
  Returns:
    {"cosine/positive/d=m", "cosine/random/d=m", "cosine/span/d=m"}.
  """
  images, texts = np.asarray(images), np.asarray(texts)
  dims = _check(images, texts, nesting_dims)
  n = len(images)
  if n != len(texts):
    raise ValueError(f"{n} images and {len(texts)} texts: the cosine span "
                     "needs matching pairs row by row")
  if n < 2:
    raise ValueError(f"random pairs need at least 2 pairs, got {n}")
  out: dict[str, Any] = {"nesting": dims}
  for m in dims:
    a = _prefix(images, m).astype(np.float64)
    b = _prefix(texts, m).astype(np.float64)
    matching = np.sum(a * b)
    # Sum over all (i, j) pairs is (sum_i a_i) . (sum_j b_j): O(N m).
    every = a.sum(0) @ b.sum(0)
    positive = float(matching / n)
    random = float((every - matching) / (n * (n - 1)))
    out[metrics.metric_name("cosine", "positive", m)] = positive
    out[metrics.metric_name("cosine", "random", m)] = random
    out[metrics.metric_name("cosine", "span", m)] = positive - random
  return out
