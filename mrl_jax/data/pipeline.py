"""config.data -> streams of globally sharded batches.

Training batches are a deterministic function of (seed, step), whatever the
number of processes ("virtual data shards", as in big_vision / grain):

* The training split is cut into S = config.data.num_shards contiguous,
  near-equal shards (None: S = jax.device_count()). Shard j's stream depends
  only on (seed, epoch, j): its epoch is shuffled with a seed derived from
  (seed, epoch, j) (buffer config.data.shuffle_buffer // S), each example is
  preprocessed with a stateless seed (that seed, position in the shard's
  epoch), and it is batched B / S rows at a time.
* The global batch of step s is the concatenation of the S shards' batch s,
  in shard order. Process p of P reads only shards [p*S/P, (p+1)*S/P) and
  concatenates their batches into its local batch, which becomes rows
  [p*B/P, (p+1)*B/P) of one global `jax.Array` sharded over the mesh's batch
  axes (meshes laid over jax.devices() give each process a contiguous block
  of them). So the global batch is the same for every P that divides S (e.g.
  2 processes x 4 devices and 1 x 8: S = 8 in both). With S = 1 there is one
  stream over the whole split, shuffled with the plain per-epoch seed.
* Every epoch has the same steps_per_epoch (the fewest full batches any shard
  holds), and a run restored at step s starts at epoch s // steps_per_epoch,
  each shard skipping the examples already consumed in that epoch *before*
  they are decoded. So a resumed run sees exactly the batches an
  uninterrupted run would have seen.

Cost: S tf.data pipelines (each with its own shuffle buffer, and cache with
config.data.cache), split among the processes.

Eval streams are not sharded this way: each process reads its own slice of
the split (`tfds.split_for_jax_process`), since order does not matter there.
"""
from collections.abc import Callable, Iterator
import dataclasses
import math
from typing import Protocol

import jax
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from mrl_jax import errors
from mrl_jax import sharding as sharding_lib
from mrl_jax.data import fashion_mnist
from mrl_jax.data import image_folder
from mrl_jax.data import image_text
from mrl_jax.data import mixup as mixup_lib
from mrl_jax.data import mlm_masking  # noqa: F401 (registers mlm_mask)
from mrl_jax.data import text_corpus
from mrl_jax.data import preprocess as preprocess_lib
from mrl_jax.data import resolution
from mrl_jax.evaluators import class_subsets

Batch = dict[str, jax.Array]

# Datasets that can be prepared without the web (see datasets notes).
_OFFLINE_PREPARERS: dict[str, Callable[[str | None], None]] = {
    "fashion_mnist": fashion_mnist.prepare,
}


def _num_examples(builder: tfds.core.DatasetBuilder, split) -> int:
  """Examples in `split`, from split metadata (no data read); counted under
  tfds.testing.mock_data, which has none."""
  if builder.info.splits:
    return builder.info.splits[split].num_examples
  return int(builder.as_dataset(split=split).cardinality())


class ExampleSource(Protocol):
  """One split as this process reads it: a TFDS `Source` or an image
  folder's `image_folder.FolderSource`."""

  @property
  def num_examples(self) -> int:
    """Examples this process reads (its part of the split, or one shard)."""

  @property
  def total_examples(self) -> int:
    """Examples in the whole split, over all processes."""

  @property
  def whole_split(self) -> str:
    """The split as given, over all processes."""

  @property
  def class_names(self) -> tuple[str, ...] | None:
    """Label names (None if the labels are not a class list)."""

  def shard(self, index: int, count: int) -> "ExampleSource":
    """Data shard `index` of `count` of the whole split."""

  def read(self, shuffle_seed: int | None = None) -> tf.data.Dataset:
    """Raw examples {"image", "label", ...}; shuffled files when seeded."""


@dataclasses.dataclass(frozen=True)
class Source:
  """One split of a TFDS dataset, as read by this process."""
  builder: tfds.core.DatasetBuilder
  split: str  # this process's part of the split (or one data shard)
  num_examples: int  # in `split`
  total_examples: int  # in the whole split, over all processes
  whole_split: str  # the split as given, over all processes
  skip_decode: bool = False  # images stay encoded (for decode_* ops)

  def shard(self, index: int, count: int) -> "Source":
    """Data shard `index` of `count`: a contiguous, near-equal part of the
    whole split (`tfds.even_splits`), whichever process reads it; its size
    comes from split metadata, without reading data."""
    part = tfds.even_splits(self.whole_split, count)[index]
    return dataclasses.replace(self, split=part,
                               num_examples=_num_examples(self.builder, part))

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
                split: str) -> ExampleSource:
  """Opens `split` of dataset `cfg.name` in `cfg.data_dir` for this process.

  `cfg.name` is a TFDS name (registered, or any dataset prepared in
  data_dir), "image_folder" for a folder tree at data_dir (see
  image_folder.py), "mrl_text_corpus" for the packed MLM corpus that
  `cfg.corpus` describes (prepared offline on first use, text_corpus.py),
  or image-text data, "openclipart", "image_text_folder" or any TFDS
  dataset given with a config.data.image_text section (image_text.py,
  prepared on first use).
  All have the same reading interface.

  Raises:
    ValueError: if the dataset is not prepared, with where and how to get it.
  """
  if cfg.name == image_folder.NAME:
    return image_folder.open_source(cfg, split)
  if cfg.name == text_corpus.NAME:
    builder = text_corpus.open_builder(cfg.corpus, cfg.get("data_dir"))
  elif image_text.is_image_text(cfg):
    builder = image_text.open_image_text(cfg)
  else:
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
    total = _num_examples(builder, split)
    num_examples = _num_examples(builder, process_split)
  except (KeyError, ValueError) as e:
    raise ValueError(f"bad split {split!r} for {cfg.name!r} (known: "
                     f"{sorted(builder.info.splits)}): {e}") from None
  return Source(builder, process_split, num_examples, total, split,
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
  eval_preprocess, ...) are config.data's unless the entry sets them (None
  removes one: `"image_text": None` reads an image-only set next to
  image-text data).
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
      for key, value in entry.items():
        if key in ("name", "split", "class_subset"):
          continue
        if value is None:
          if key in sub:
            del sub[key]
        else:
          sub[key] = value
    out[label] = sub
  return out


def num_shards(cfg: ml_collections.ConfigDict,
               num_devices: int | None = None) -> int:
  """S: config.data.num_shards, or, when None, one data shard per device
  (`num_devices`, default jax.device_count())."""
  shards = cfg.get("num_shards")
  if shards is not None:
    return shards
  return jax.device_count() if num_devices is None else num_devices


def check_shards(cfg: ml_collections.ConfigDict, global_batch: int,
                 num_devices: int, num_processes: int) -> int:
  """Checks the data shards against the batch and processes, without I/O.

  Args:
    cfg: config.data (num_shards).
    global_batch: the global training batch size B.
    num_devices: devices of the run (S when config.data.num_shards is None).
    num_processes: processes of the run.
  Returns:
    S, the number of data shards.
  Raises:
    ValueError (one line): S is not an integer >= 1, B is not a multiple of
      S, or S is not a multiple of the process count.
  """
  given = cfg.get("num_shards")
  if given is not None and (not isinstance(given, int)
                            or isinstance(given, bool) or given < 1):
    raise ValueError(f"config.data.num_shards={given!r} must be an integer "
                     ">= 1, or None for one data shard per device")
  shards = num_shards(cfg, num_devices)
  what = (f"config.data.num_shards={shards}" if given is not None else
          f"the {shards} data shards (config.data.num_shards=None: one per "
          "device)")
  if global_batch % shards:
    raise ValueError(f"config.batch_size={global_batch} is not divisible by "
                     f"{what}; use a batch size that is a multiple of "
                     f"{shards}, or set config.data.num_shards to a divisor "
                     f"of {global_batch}")
  if shards % num_processes:
    raise ValueError(f"{what} is not divisible by the {num_processes} "
                     "processes; set config.data.num_shards to a multiple of "
                     f"{num_processes}")
  return shards


def process_shards(shards: int, process_index: int,
                   process_count: int) -> range:
  """The data shards process `process_index` of `process_count` reads: the
  contiguous block [p*S/P, (p+1)*S/P)."""
  per_process = shards // process_count
  return range(process_index * per_process, (process_index + 1) * per_process)


def describe_process_shards(source: ExampleSource,
                            shards: int, process_index: int,
                            process_count: int) -> str:
  """E.g. "shards 4..7 of 8 of train[:256] (128 of 256 examples)"."""
  mine = process_shards(shards, process_index, process_count)
  count = sum(source.shard(j, shards).num_examples for j in mine)
  return (f"shards {mine[0]}..{mine[-1]} of {shards} of {source.whole_split}"
          f" ({count} of {source.total_examples} examples)")


def _shard_seed(seed: int, epoch: int, shard: int) -> int:
  """Seed of data shard `shard` in `epoch`, from (seed, epoch, shard) only.

  Shard 0's seed is the plain per-epoch seed SeedSequence([seed, epoch]),
  so S = 1 is bitwise one unsharded stream.
  """
  words = [seed, epoch] + ([shard] if shard else [])
  return int(np.random.SeedSequence(words).generate_state(1)[0])


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


def steps_per_epoch(source: ExampleSource, global_batch: int,
                    shards: int) -> int:
  """Full batches per epoch: the fewest that any of the `shards` data shards
  fills with its B / S rows. The same on every process and for every process
  count; from split metadata, without reading data."""
  shard_batch = global_batch // shards
  sizes = [source.shard(j, shards).num_examples for j in range(shards)]
  steps = min(sizes) // shard_batch
  if steps == 0:
    raise ValueError(f"split {source.whole_split!r} has {min(sizes)} examples"
                     f" in its smallest of {shards} data shards, fewer than "
                     f"one batch of {shard_batch} per shard; lower the batch "
                     "size or config.data.num_shards")
  return steps


@dataclasses.dataclass(frozen=True)
class _Shard:
  """One data shard's training stream, a function of (seed, epoch, index)."""
  source: ExampleSource  # the shard's part of the split
  index: int
  batch: int  # B / S rows per step
  epoch_size: int  # examples used per epoch: steps_per_epoch * batch
  shuffle_buffer: int
  seed: int
  cached: tf.data.Dataset | None  # the epoch's examples (config.data.cache)

  def epoch(self, epoch: int, offset: int,
            preprocess: preprocess_lib.PreprocessFn) -> tf.data.Dataset:
    """Batches {"image": [B/S, ...], "label": [B/S, ...], ...} of `epoch`,
    from its batch `offset` on."""
    seed = _shard_seed(self.seed, epoch, self.index)
    ds = (self.cached if self.cached is not None
          else self.source.read(shuffle_seed=seed).take(self.epoch_size))
    ds = ds.shuffle(self.shuffle_buffer, seed=seed)
    ds = ds.enumerate().skip(offset * self.batch)  # skip before decoding
    ds = ds.map(lambda i, ex: preprocess(ex, tf.stack([seed % 2**62, i])),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(self.batch, drop_remainder=True)


def _open_shard(cfg: ml_collections.ConfigDict,
                source: ExampleSource, index: int,
                shards: int, per_epoch: int, global_batch: int,
                seed: int) -> _Shard:
  """Shard `index` of `shards` of the split, ready to stream epochs."""
  part = source.shard(index, shards)
  batch = global_batch // shards
  # Every epoch uses the same per_epoch * batch examples of every shard, so
  # shards and processes stay in step; `take` comes before `cache` so that
  # the cache is complete.
  epoch_size = per_epoch * batch
  cached = (part.read().take(epoch_size).cache() if cfg.get("cache", False)
            else None)
  buffer = max(cfg.get("shuffle_buffer", 10_000) // shards, 1)
  return _Shard(part, index, batch, epoch_size, buffer, seed, cached)


def _concat_shards(datasets: list[tf.data.Dataset]) -> tf.data.Dataset:
  """Zips shard batch streams and concatenates each step's batches in order
  (one shard: its stream unchanged)."""
  if len(datasets) == 1:
    return datasets[0]
  return tf.data.Dataset.zip(tuple(datasets)).map(
      lambda *parts: {k: tf.concat([p[k] for p in parts], axis=0)
                      for k in parts[0]})


def process_batches(cfg: ml_collections.ConfigDict,
                    source: ExampleSource,
                    global_batch: int, seed: int, start_step: int,
                    process_index: int, process_count: int
                    ) -> Iterator[dict[str, np.ndarray]]:
  """Endless process-local batches of process `process_index` of
  `process_count`, starting with the one for `start_step`.

  Each batch [B/P, ...] is the concatenation, in shard order, of the batches
  [B/S, ...] of this process's data shards (`process_shards`); only those are
  read. The process is a parameter, so any layout can be emulated in one
  process.
  """
  shards = check_shards(cfg, global_batch, jax.device_count(), process_count)
  per_epoch = steps_per_epoch(source, global_batch, shards)
  mine = [_open_shard(cfg, source, j, shards, per_epoch, global_batch, seed)
          for j in process_shards(shards, process_index, process_count)]
  epoch, offset = divmod(start_step, per_epoch)
  while True:
    # The size scheduled for this epoch (config.data.resolution), if any.
    preprocess = preprocess_lib.build(resolution.train_spec(cfg, epoch))
    ds = _concat_shards([s.epoch(epoch, offset, preprocess) for s in mine])
    try:
      yield from ds.prefetch(tf.data.AUTOTUNE).as_numpy_iterator()
    except tf.errors.InvalidArgumentError as e:
      raise _example_error([s.source for s in mine], e) from None
    epoch, offset = epoch + 1, 0


def _example_error(sources: list[ExampleSource],
                   error: tf.errors.InvalidArgumentError) -> errors.RunError:
  """A one-line error for an example tf.data could not read or preprocess.

  For image folders it names the unreadable files of `sources`, found by
  decoding them all (image files that look whole but are broken inside pass
  the check done when a split opens); this costs a pass over the files, but
  only when the run is failing anyway.
  """
  paths = [p for s in sources if isinstance(s, image_folder.FolderSource)
           for p in s.paths]
  bad = image_folder.unreadable(paths, thorough=True)
  if bad:
    more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
    return errors.RunError(
        f"unreadable image {bad[0][0]} ({bad[0][1]}){more}; replace or "
        "remove it (--mode=check_data lists every unreadable file)")
  reason = " ".join(error.message.split())
  return errors.RunError(
      f"an example of split {sources[0].whole_split!r} could not be read or "
      f"preprocessed ({reason[:300]}); check the data and the preprocess "
      "spec")


def train_batches(cfg: ml_collections.ConfigDict, source: ExampleSource,
                  global_batch: int, seed: int, start_step: int,
                  sharding: jax.sharding.Sharding) -> Iterator[Batch]:
  """Endless global training batches [B, ...], starting with the one for
  `start_step`; the same for any process count dividing the data shards.

  With config.data.mixup_alpha > 0, batches come mixed (soft labels [B, C]).
  """
  local = process_batches(cfg, source, global_batch, seed, start_step,
                          jax.process_index(), jax.process_count())
  mix = mixup_lib.make(cfg, seed, sharding)

  def all_batches() -> Iterator[Batch]:
    for step, batch in enumerate(local, start_step):
      batch = _to_global(batch, sharding)
      yield mix(batch, step) if mix else batch

  return _prefetch(all_batches())


def _eval_dataset(cfg: ml_collections.ConfigDict, source: ExampleSource,
                  start: int = 0, view: tuple[str, int] | None = None
                  ) -> tf.data.Dataset:
  """The split from example `start` on, eval-preprocessed; or, with view =
  (spec, v), preprocessed by spec with the stateless seed (v, position)."""
  # Eval ops are not random, so the seed only matters for views.
  spec, v = view or (cfg.eval_preprocess, 0)
  preprocess, v = preprocess_lib.build(spec), tf.constant(v, tf.int64)
  ds = source.read().enumerate().skip(start)  # positions count from 0
  return ds.map(lambda i, ex: preprocess(ex, tf.stack([v, i])),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def example_spec(cfg: ml_collections.ConfigDict, source: ExampleSource
                 ) -> dict[str, jax.ShapeDtypeStruct]:
  """One eval-preprocessed example's shapes and dtypes (reads no data)."""
  return {k: jax.ShapeDtypeStruct(tuple(v.shape), v.dtype.as_numpy_dtype)
          for k, v in _eval_dataset(cfg, source).element_spec.items()}


def image_shape(cfg: ml_collections.ConfigDict,
                source: ExampleSource) -> tuple[int, ...]:
  """Per-example model input shape after eval preprocessing (reads no data)."""
  return example_spec(cfg, source)["image"].shape


def eval_local_batch_size(global_batch: int, mesh: jax.sharding.Mesh) -> int:
  """Rows per process of each eval batch: `global_batch` padded to split over
  the mesh's batch shards and the processes (`padded_batch_size`), / P."""
  return local_batch_size(sharding_lib.padded_batch_size(global_batch, mesh))


def eval_batches(cfg: ml_collections.ConfigDict, source: ExampleSource,
                 global_batch: int, sharding: jax.sharding.NamedSharding,
                 start: int = 0, view: tuple[str, int] | None = None
                 ) -> Iterator[Batch]:
  """One pass over the split from this process's example `start` on.

  global_batch: examples per step, any size > 0; steps read it rounded up to
    split over the batch shards of `sharding` (a `batch_sharding`) and the
    processes (`eval_local_batch_size`).
  view: (preprocess spec, v) for augmented view v of the split (example i
    gets the stateless seed (v, i)); default the eval preprocessing.
  The last batch is padded, with "mask" = 0 on the padding rows.
  """
  local_batch = eval_local_batch_size(global_batch, sharding.mesh)
  ds = _eval_dataset(cfg, source, start, view).batch(local_batch)
  ds = ds.prefetch(tf.data.AUTOTUNE)
  # Every process runs the same number of steps (collectives must match).
  per_process = math.ceil(source.total_examples / jax.process_count())
  num_batches = math.ceil(max(per_process - start, 0) / local_batch)

  def padded() -> Iterator[Batch]:
    it = ds.as_numpy_iterator()
    for _ in range(num_batches):
      try:
        batch = next(it, None)
      except tf.errors.InvalidArgumentError as e:
        raise _example_error([source], e) from None
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


