"""config.data -> streams of globally sharded batches.

Training batches are a deterministic function of (seed, step): epoch e is
shuffled with a seed derived from (seed, e), each example is preprocessed with
a stateless seed (epoch seed, position in the epoch), and a run restored at
step s starts at epoch s // steps_per_epoch, skipping the examples already
consumed in that epoch *before* they are decoded. So a resumed run sees
exactly the batches an uninterrupted run would have seen.

Each process reads its own slice of the split (`tfds.split_for_jax_process`)
and contributes its local batch to one global `jax.Array` sharded over the
mesh's data axis.
"""
from collections.abc import Callable, Iterator
import dataclasses
import math

import jax
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from mrl_jax.data import fashion_mnist
from mrl_jax.data import image_folder
from mrl_jax.data import mixup as mixup_lib
from mrl_jax.data import preprocess as preprocess_lib
from mrl_jax.data import resolution
from mrl_jax.evaluators import class_subsets

Batch = dict[str, jax.Array]

# Datasets that can be prepared without the web (see datasets notes).
_OFFLINE_PREPARERS: dict[str, Callable[[str | None], None]] = {
    "fashion_mnist": fashion_mnist.prepare,
}


@dataclasses.dataclass(frozen=True)
class Source:
  """One split of a TFDS dataset, as read by this process."""
  builder: tfds.core.DatasetBuilder
  split: str  # this process's part of the split
  num_examples: int  # in this process's part
  total_examples: int  # in the whole split, over all processes
  skip_decode: bool = False  # images stay encoded (for decode_* ops)

  @property
  def class_names(self) -> tuple[str, ...] | None:
    """Names of the "label" ClassLabel feature (None if it is not one)."""
    features = self.builder.info.features
    label = features["label"] if "label" in features else None
    if isinstance(label, tfds.features.Sequence):  # multi-label
      label = label.feature
    if not isinstance(label, tfds.features.ClassLabel):
      return None
    return tuple(label.names)

  def read(self, shuffle_seed: int | None = None) -> tf.data.Dataset:
    """Raw examples; files shuffled with `shuffle_seed` when given."""
    read_config = tfds.ReadConfig(shuffle_seed=shuffle_seed,
                                  try_autocache=False)
    decoders = ({"image": tfds.decode.SkipDecoding()} if self.skip_decode
                else None)
    return self.builder.as_dataset(split=self.split,
                                   shuffle_files=shuffle_seed is not None,
                                   read_config=read_config, decoders=decoders)


def open_source(cfg: ml_collections.ConfigDict,
                split: str) -> Source | image_folder.FolderSource:
  """Opens `split` of dataset `cfg.name` in `cfg.data_dir` for this process.

  `cfg.name` is a TFDS name (registered, or any dataset prepared in
  data_dir), or "image_folder" for a folder tree at data_dir (see
  image_folder.py). Both have the same reading interface.

  Raises:
    ValueError: if the dataset is not prepared, with where and how to get it.
  """
  if cfg.name == image_folder.NAME:
    return image_folder.open_source(cfg, split)
  if cfg.name in _OFFLINE_PREPARERS:
    _OFFLINE_PREPARERS[cfg.name](cfg.get("data_dir"))
  builder = tfds.builder(cfg.name, data_dir=cfg.get("data_dir"))
  process_split = tfds.split_for_jax_process(split)
  if not builder.is_prepared():
    try:  # tfds.testing.mock_data serves builders that are not prepared.
      builder.as_dataset(split=process_split)
    except AssertionError:  # TFDS: "could not find data in ..."
      root = builder.data_dir_root
      manual = " ".join((builder.MANUAL_DOWNLOAD_INSTRUCTIONS or "").split())
      how = (f"it needs a manual download into {root}/downloads/manual/ "
             f"({manual}), then `tfds build {cfg.name} --data_dir={root}`"
             if manual else f"prepare it with `tfds build {cfg.name} "
             f"--data_dir={root}`")
      raise ValueError(
          f"dataset {cfg.name!r} is not prepared in {builder.data_dir}; {how}"
          "; or point config.data.data_dir at the directory that holds it"
          ) from None
  try:
    if builder.info.splits:
      total = builder.info.splits[split].num_examples
      num_examples = builder.info.splits[process_split].num_examples
    else:  # No split metadata (mock_data): count the examples instead.
      total = int(builder.as_dataset(split=split).cardinality())
      num_examples = int(builder.as_dataset(split=process_split).cardinality())
  except (KeyError, ValueError) as e:
    raise ValueError(f"bad split {split!r} for {cfg.name!r} (known: "
                     f"{sorted(builder.info.splits)}): {e}") from None
  return Source(builder, process_split, num_examples, total,
                cfg.get("skip_decode", False))


def validate(cfg: ml_collections.ConfigDict) -> None:
  """Checks config.data without I/O: preprocess specs (at every scheduled
  train size), resolution schedule, mixup; raises a one-line ValueError."""
  schedule = cfg.get("resolution")
  resolution.validate(schedule, cfg.train_preprocess)
  sizes = resolution.scheduled_sizes(schedule) if schedule else [None]
  for size in sizes:
    preprocess_lib.build(cfg.train_preprocess.replace(resolution.PLACEHOLDER,
                                                      str(size)))
  preprocess_lib.build(cfg.eval_preprocess)
  mixup_lib.validate(cfg.get("mixup_alpha"))
  extra_eval_sets(cfg)


def extra_eval_sets(cfg: ml_collections.ConfigDict
                    ) -> dict[str, ml_collections.ConfigDict]:
  """Eval-only sources of config.data.extra_eval_sets (e.g. ImageNet-V2/R/A/
  Sketch), as {label: a copy of cfg with name, eval_split, class_subset}.

  Each entry is {"name": TFDS name, "split": split, "class_subset": a key of
  evaluators/class_subsets.SUBSETS or None}; the other fields (data_dir,
  eval_preprocess, ...) are config.data's.
  """
  out = {}
  for label, entry in (cfg.get("extra_eval_sets") or {}).items():
    missing = [k for k in ("name", "split") if not entry.get(k)]
    if missing:
      raise ValueError(f"config.data.extra_eval_sets.{label} lacks {missing};"
                       " give name (TFDS dataset) and split")
    class_subsets.get(entry.get("class_subset"))  # checks the name
    sub = cfg.copy_and_resolve_references()
    with sub.unlocked():
      del sub["extra_eval_sets"]
      sub.name, sub.eval_split = entry.name, entry.split
      sub.class_subset = entry.get("class_subset")
    out[label] = sub
  return out


def _epoch_seed(seed: int, epoch: int) -> int:
  return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def _to_global(batch: dict[str, np.ndarray],
               sharding: jax.sharding.Sharding) -> Batch:
  return {k: jax.make_array_from_process_local_data(sharding, v)
          for k, v in batch.items()}


def _prefetch(batches: Iterator[Batch], size: int = 2) -> Iterator[Batch]:
  """Keeps `size` batches in flight so host-to-device copies overlap steps."""
  queue = []
  for batch in batches:
    queue.append(batch)
    if len(queue) > size:
      yield queue.pop(0)
  yield from queue


def local_batch_size(global_batch: int) -> int:
  return global_batch // jax.process_count()


def steps_per_epoch(source: Source, global_batch: int) -> int:
  """Full batches per epoch (the same on every process)."""
  steps = source.num_examples // local_batch_size(global_batch)
  if steps == 0:
    raise ValueError(f"split {source.split!r} has {source.num_examples} "
                     f"examples per process, fewer than one batch of "
                     f"{local_batch_size(global_batch)}; lower the batch size")
  return steps


def train_batches(cfg: ml_collections.ConfigDict, source: Source,
                  global_batch: int, seed: int, start_step: int,
                  sharding: jax.sharding.Sharding) -> Iterator[Batch]:
  """Endless training batches, starting with the one for `start_step`.

  With config.data.mixup_alpha > 0, batches come mixed (soft labels [B, C]).
  """
  local_batch = local_batch_size(global_batch)
  per_epoch = steps_per_epoch(source, global_batch)
  # Every epoch uses the same per_epoch * local_batch examples, so processes
  # stay in step; `take` comes before `cache` so that the cache is complete.
  epoch_size = per_epoch * local_batch
  cached = (source.read().take(epoch_size).cache() if cfg.get("cache", False)
            else None)
  epoch, offset = divmod(start_step, per_epoch)

  def epoch_batches(epoch: int, offset: int) -> Iterator[dict[str, np.ndarray]]:
    eseed = _epoch_seed(seed, epoch)
    # The size scheduled for this epoch (config.data.resolution), if any.
    preprocess = preprocess_lib.build(resolution.train_spec(cfg, epoch))
    ds = (cached if cached is not None
          else source.read(shuffle_seed=eseed).take(epoch_size))
    ds = ds.shuffle(cfg.get("shuffle_buffer", 10_000), seed=eseed)
    ds = ds.enumerate().skip(offset * local_batch)  # skip before decoding
    ds = ds.map(lambda i, ex: preprocess(ex, tf.stack([eseed % 2**62, i])),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(local_batch, drop_remainder=True)
    return ds.prefetch(tf.data.AUTOTUNE).as_numpy_iterator()

  mix = mixup_lib.make(cfg, seed, sharding)

  def all_batches() -> Iterator[Batch]:
    e, o, step = epoch, offset, start_step
    while True:
      for batch in epoch_batches(e, o):
        batch = _to_global(batch, sharding)
        yield mix(batch, step) if mix else batch
        step += 1
      e, o = e + 1, 0

  return _prefetch(all_batches())


def _eval_dataset(cfg: ml_collections.ConfigDict, source: Source,
                  start: int = 0) -> tf.data.Dataset:
  preprocess = preprocess_lib.build(cfg.eval_preprocess)
  seed = tf.constant([0, 0], tf.int64)  # eval ops are not random
  return source.read().skip(start).map(lambda ex: preprocess(ex, seed),
                                       num_parallel_calls=tf.data.AUTOTUNE)


def image_shape(cfg: ml_collections.ConfigDict,
                source: Source) -> tuple[int, ...]:
  """Per-example model input shape after eval preprocessing (reads no data)."""
  return tuple(_eval_dataset(cfg, source).element_spec["image"].shape)


def eval_batches(cfg: ml_collections.ConfigDict, source: Source,
                 global_batch: int, sharding: jax.sharding.Sharding,
                 start: int = 0) -> Iterator[Batch]:
  """One pass over the split from this process's example `start` on.

  The last batch is padded, with "mask" = 0 on the padding rows.
  """
  local_batch = local_batch_size(global_batch)
  ds = _eval_dataset(cfg, source, start).batch(local_batch)
  ds = ds.prefetch(tf.data.AUTOTUNE)
  # Every process runs the same number of steps (collectives must match).
  per_process = math.ceil(source.total_examples / jax.process_count())
  num_batches = math.ceil(max(per_process - start, 0) / local_batch)

  def padded() -> Iterator[Batch]:
    it = ds.as_numpy_iterator()
    for _ in range(num_batches):
      batch = next(it, None)
      yield _to_global(_pad(batch, local_batch, template), sharding)

  template = ds.element_spec
  return _prefetch(padded())


def _pad(batch, size: int, spec) -> dict[str, np.ndarray]:
  """Pads a (possibly missing) local batch to `size` rows; adds "mask"."""
  if batch is None:
    batch = {k: np.zeros((0, *s.shape[1:]), s.dtype.as_numpy_dtype)
             for k, s in spec.items()}
  n = len(next(iter(batch.values())))
  out = {k: np.concatenate([v, np.zeros((size - n, *v.shape[1:]), v.dtype)])
         for k, v in batch.items()}
  out["mask"] = (np.arange(size) < n).astype(np.float32)
  return out


