"""Nested two-tower contrastive learning: the paper's ALIGN family (MRL on
both embeddings, each prefix normalised on its own), as a trainer task.

Batches are {"image" [B, H, W, C], "input_ids", "input_mask" [B, L],
"label" [B]} of image-text pairs (row i's caption describes image i; the
label is a category or -1, used only by zero-shot evaluation). The model is
`models.two_tower.ContrastiveTwoTower`: config.model names the image tower,
config.text_model the text tower, config.contrastive the shared width d,
the loss (softmax = ALIGN, sigmoid = SigLIP), label smoothing and whether
each nesting dim has its own temperature. config.mrl.head is "mrl" (the
nesting list, default halving d down to 8) or "ff" (the plain model: d only,
evaluated at the nesting list's first m dims). config.contrastive.locked
starts one tower from another workdir's checkpoint and locks it (LiT,
tasks/locked_tower.py).

Evaluation (`evaluate`) embeds the whole eval split and reports per dim:
image->text and text->image Recall@K, the cosine span of matching vs random
pairs, and zero-shot top-1 over the split's categories with
config.contrastive.prompts (evaluators/cross_modal.py).
"""
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tensorflow as tf

from mrl_jax import model_flops
from mrl_jax import param_lock
from mrl_jax import train_step as step_lib
from mrl_jax.data import image_text
from mrl_jax.data import pipeline
from mrl_jax.evaluators import cross_modal
from mrl_jax.models import bert
from mrl_jax.models import classifier
from mrl_jax.models import registry
from mrl_jax.models import two_tower
from mrl_jax.mrl import contrastive
from mrl_jax.mrl import nesting
from mrl_jax.tasks import locked_tower
from mrl_jax.tasks import workdir_tokenizer

HEADS = ("mrl", "ff")


def _apply(model: nn.Module, variables: Any, batch: dict[str, jax.Array],
           train: bool, **kwargs):
  return model.apply(variables, batch["image"], batch["input_ids"],
                     batch["input_mask"], train=train, **kwargs)


def _nested(flat: dict[str, Any]) -> dict[str, dict[str, float]]:
  """{"i2t/recall@1/d=8": v} -> {"i2t/recall@1": {"8": v}}."""
  out: dict[str, dict[str, float]] = {}
  for key, value in flat.items():
    name, sep, dim = key.rpartition("/d=")
    if sep:
      out.setdefault(name, {})[dim] = value
  return out


@functools.partial(jax.jit, static_argnums=0)
def _encode_prompts(model: nn.Module, variables: Any, ids: jax.Array,
                    mask: jax.Array) -> jax.Array:
  """[N, L] prompt ids and mask -> raw text embeddings [N, d]; compiled once
  per model (the module is the static key), not at every evaluation."""
  return model.apply(variables, ids, mask, train=False,
                     method=model.encode_text)


def eval_dims(config: ml_collections.ConfigDict) -> tuple[int, ...]:
  """The dims evaluation reports: the nesting list, for either head, so the
  plain (ff) model is scored at its first m dims, the paper's baseline."""
  d = config.contrastive.embed_dim
  return nesting.validate_nesting(
      config.mrl.nesting_dims or nesting.default_nesting(d), d)


class Contrastive:
  """Image-text pairs -> two towers with a nested contrastive loss."""

  name = "contrastive"
  accuracy_name = "i2t_top1"  # in-batch image -> text top-1

  def build_model(self, config: ml_collections.ConfigDict
                  ) -> two_tower.ContrastiveTwoTower:
    image = classifier.configured_backbone(config.model,
                                           registry.build_backbone)
    text = classifier.configured_backbone(
        config.text_model, registry.build_text_encoder, "config.text_model")
    opts, head = config.contrastive, config.mrl.head
    d = opts.embed_dim
    if head not in HEADS:
      raise ValueError(f"config.mrl.head={head!r}: the contrastive task has "
                       f"heads {', '.join(HEADS)} (ff: the plain model at "
                       "the full width d)")
    if head == "ff":
      dims = (d,)
    elif config.mrl.nesting_dims is None:
      dims = nesting.default_nesting(d)
    else:
      dims = tuple(config.mrl.nesting_dims)
    dims = nesting.validate_nesting(dims, d)
    if opts.loss not in contrastive.KINDS:
      raise ValueError(f"config.contrastive.loss={opts.loss!r}; use one of "
                       f"{', '.join(contrastive.KINDS)}")
    towers = two_tower.TwoTower(image, text, d,
                                classifier.DTYPES[config.model.dtype],
                                locked=locked_tower.tower(config))
    return two_tower.ContrastiveTwoTower(
        towers, opts.loss, len(dims) if opts.per_dim_temperature else None,
        dims)

  def nesting_dims(self, model: nn.Module) -> tuple[int, ...]:
    return tuple(model.nesting_dims)

  def loss_fn(self, config: ml_collections.ConfigDict) -> None:
    del config  # mrl/contrastive.py

  def validate(self, config: ml_collections.ConfigDict,
               model: nn.Module) -> None:
    bert.check_fits(model.towers.text_tower,
                    seq_len=config.data.image_text.seq_len,
                    vocab_size=config.data.image_text.vocab_size,
                    data_section="config.data.image_text",
                    model_section="config.text_model")

  def fingerprint(self, config: ml_collections.ConfigDict) -> dict[str, Any]:
    return {"text_model": config.text_model.name,
            "text_model_kwargs": dict(config.text_model.get("kwargs", {})),
            "embed_dim": config.contrastive.embed_dim,
            "loss": config.contrastive.loss,
            "per_dim_temperature": config.contrastive.per_dim_temperature,
            "locked": locked_tower.fingerprint(config)}

  def locked_params(self, config: ml_collections.ConfigDict
                    ) -> param_lock.Lock | None:
    return locked_tower.from_config(config)

  def raw_example_spec(self, config: ml_collections.ConfigDict
                       ) -> dict[str, tf.TensorSpec]:
    """An image-text dataset's raw example (data/captioned_images.py)."""
    return {"image": tf.TensorSpec([None, None, 3], tf.uint8),
            "caption": tf.TensorSpec([], tf.string),
            "input_ids": tf.TensorSpec([config.data.image_text.seq_len],
                                       tf.int32),
            "label": tf.TensorSpec([], tf.int64),
            "id": tf.TensorSpec([], tf.string)}

  def init_variables(self, model: nn.Module, rng: jax.Array,
                     example: dict[str, Any]) -> dict[str, Any]:
    batch = {"image": jnp.zeros((1, *example["image"].shape), jnp.float32),
             "input_ids": jnp.zeros((1, *example["input_ids"].shape),
                                    jnp.int32),
             "input_mask": jnp.ones((1, *example["input_mask"].shape),
                                    jnp.int32)}
    return model.init(rng, batch["image"], batch["input_ids"],
                      batch["input_mask"], train=False)

  def objective(self, run_setup: Any) -> step_lib.Objective:
    model, weights = run_setup.model, run_setup.relative_importance
    opts = run_setup.config.contrastive
    smoothing = opts.label_smoothing if opts.loss == "softmax" else None

    def objective(params, batch_stats, batch, rng):
      (z_image, z_text, loss_params), updates = _apply(
          model, {"params": params, "batch_stats": batch_stats}, batch, True,
          mutable=["batch_stats"], rngs={"dropout": rng})
      # Gathers the embeddings, never the scores, over the batch axes.
      total, metrics = contrastive.sharded_nested_contrastive_loss(
          z_image, z_text, model.nesting_dims, mesh=run_setup.mesh,
          log_temperature=loss_params["log_temperature"],
          bias=loss_params.get("bias"), relative_importance=weights,
          label_smoothing=smoothing, kind=opts.loss)
      return total, (metrics["loss"], metrics["accuracy"],
                     updates.get("batch_stats", {}))
    return objective

  def eval_step(self, run_setup: Any, class_subset: Any = None):
    """step(state, batch) -> the batch's raw embeddings of both towers,
    its labels and its padding mask."""
    del class_subset
    model = run_setup.model

    def eval_step(state, batch):
      variables = {"params": state.params, "batch_stats": state.batch_stats}
      if "input_ids" not in batch:  # an image-only set (zero-shot only)
        z_image = model.apply(variables, batch["image"], train=False,
                              method=model.encode_image)
        return {"image": z_image, "label": batch["label"],
                "mask": batch["mask"]}
      z_image, z_text, _ = _apply(model, variables, batch, False)
      return {"image": z_image, "text": z_text, "label": batch["label"],
              "mask": batch["mask"]}
    return eval_step

  def evaluate(self, run_setup: Any, eval_step: Any, state: Any,
               batches: Any, source: Any) -> dict[str, Any]:
    """Image-text pairs: recall both ways, cosine span and zero-shot; an
    image-only set (an extra eval set such as Fashion-MNIST): zero-shot
    over its class names."""
    rows: dict[str, list[np.ndarray]] = {}
    for batch in batches:
      out = jax.tree.map(np.asarray, eval_step(state, batch))
      keep = out.pop("mask") > 0
      for key, value in out.items():
        rows.setdefault(key, []).append(value[keep])
    images, labels = np.concatenate(rows["image"]), np.concatenate(
        rows["label"])
    dims = eval_dims(run_setup.config)
    opts = run_setup.config.contrastive
    flat = {}
    if "text" in rows:
      texts = np.concatenate(rows["text"])
      flat.update(cross_modal.recall(images, texts, np.arange(len(texts)),
                                     dims, ks=tuple(opts.recall_ks)))
      flat.update(cross_modal.cosine_span(images, texts, dims))
    prompts = self._class_prompts(run_setup, state, source.class_names)
    if prompts is not None and (labels >= 0).any():
      labelled = labels >= 0
      flat.update(cross_modal.zero_shot(images[labelled], labels[labelled],
                                        prompts, dims))
    return {"task": self.name, "step": int(state.step),
            "nesting": [int(d) for d in dims],
            "num_examples": len(images), **_nested(flat)}

  def _class_prompts(self, run_setup: Any, state: Any,
                     names: Any) -> np.ndarray | None:
    """Text embeddings [C, T, d] of C class names in the T templates of
    config.contrastive.prompts, tokenized as the captions are; None when
    there are no class names or no prompts are configured."""
    config = run_setup.config
    templates = tuple(config.contrastive.get("prompts") or ())
    if not templates or not names:
      return None
    texts = [t.format(n.replace("_", " ")) for n in names for t in templates]
    captions = pipeline.open_source(config.data, config.data.eval_split)
    ids, mask = image_text.load_tokenizer(captions.builder).encode_padded(
        texts, config.data.image_text.seq_len)
    z = np.asarray(_encode_prompts(
        run_setup.model, {"params": state.params,
                          "batch_stats": state.batch_stats}, ids, mask))
    return z.reshape(len(names), len(templates), -1)

  def as_scalars(self, summary: dict[str, Any],
                 split: str) -> dict[str, float]:
    return {f"{split}/{name}/d={dim}": value
            for name, per_dim in summary.items() if isinstance(per_dim, dict)
            for dim, value in per_dim.items()}

  def format_table(self, summary: dict[str, Any], name: str = "") -> str:
    columns = [c for c in ("i2t/recall@1", "t2i/recall@1", "i2t/recall@5",
                           "zero_shot/top1", "cosine/span") if c in summary]
    lines = [f"image-text eval{' of ' + name if name else ''} at step "
             f"{summary['step']} on {summary['num_examples']} pairs",
             f"{'dim':>6}  " + "  ".join(f"{c:>14}" for c in columns)]
    for dim in summary["nesting"]:
      lines.append(f"{dim:>6}  " + "  ".join(
          f"{summary[c][str(dim)]:>14.4f}" for c in columns))
    for label, extra in summary.get("extra_eval", {}).items():
      if "zero_shot/top1" in extra:
        lines.append(f"zero-shot top-1 on {label} ({extra['num_examples']} "
                     "images): " + ", ".join(
                         f"{d}: {v:.4f}"
                         for d, v in extra["zero_shot/top1"].items()))
    return "\n".join(lines)

  def forward_macs(self, model: nn.Module, variables: Any,
                   example: dict[str, Any]) -> int:
    """Both towers and projections for one image-text pair."""
    image = jax.ShapeDtypeStruct((1, *example["image"].shape), jnp.float32)
    ids = jax.ShapeDtypeStruct((1, *example["input_ids"].shape), jnp.int32)
    return model_flops.forward_macs(
        lambda v, i, t: model.apply(v, i, t, jnp.ones_like(t),
                                    train=False)[:2], variables, image, ids)

  def bind_data(self, config: ml_collections.ConfigDict, source: Any,
                workdir: str, *, writer: bool) -> None:
    """The captions' tokenizer must fit the text tower and be the one the
    workdir was trained with (workdir_tokenizer.py)."""
    workdir_tokenizer.bind(
        image_text.load_tokenizer(source.builder),
        config.text_model.kwargs.get("vocab_size"),
        "config.text_model.kwargs.vocab_size", workdir,
        source.builder.data_dir, writer=writer)


TASK = Contrastive()
