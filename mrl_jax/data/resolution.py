"""Progressive resizing: the training crop size as a function of the epoch.

The official MRL ResNet-50 recipe trains with FFCV's schedule: `min_res`
until epoch `start_ramp`, `max_res` from epoch `end_ramp` on, and in between
the linear interpolation rounded to the nearest multiple of 32 (FFCV's
`get_resolution`, with numpy's round-half-to-even). With 160 -> 192 over
epochs 29..34 that is 160 up to epoch 31 and 192 from epoch 32.

Config (`config.data.resolution`, None for a fixed size): min_res, max_res,
start_ramp, end_ramp (epochs), multiple. The train preprocess spec then holds
`{res}` where the size goes, e.g. "decode_jpeg_and_inception_crop({res})".
The size at step s depends only on s // steps_per_epoch, so a resumed run
picks up the same size as an uninterrupted one.
"""
import ml_collections
import numpy as np

PLACEHOLDER = "{res}"
_FIELDS = ("min_res", "max_res", "start_ramp", "end_ramp", "multiple")


def resolution_at_epoch(epoch: int, min_res: int, max_res: int,
                        start_ramp: int, end_ramp: int,
                        multiple: int = 32) -> int:
  """The square training resolution for 0-based `epoch` (FFCV's rule)."""
  if epoch <= start_ramp:
    return min_res
  if epoch >= end_ramp:
    return max_res
  interp = min_res + (max_res - min_res) * (epoch - start_ramp) / (
      end_ramp - start_ramp)
  return int(np.round(interp / multiple)) * multiple


def validate(schedule: ml_collections.ConfigDict | None, spec: str) -> None:
  """Raises a one-line ValueError if `schedule` or its use in `spec` is bad."""
  if schedule is None:
    if PLACEHOLDER in spec:
      raise ValueError(f"config.data.train_preprocess uses {PLACEHOLDER} but "
                       "config.data.resolution is not set; set it or write "
                       "the size into the spec")
    return
  missing = [f for f in _FIELDS if schedule.get(f) is None]
  if missing:
    raise ValueError(f"config.data.resolution lacks {missing}; it needs "
                     f"{', '.join(_FIELDS)}")
  s = schedule
  if not 0 < s.min_res <= s.max_res or s.multiple <= 0:
    raise ValueError(f"config.data.resolution needs 0 < min_res <= max_res and"
                     f" multiple > 0, got min_res={s.min_res}, max_res="
                     f"{s.max_res}, multiple={s.multiple}")
  if not 0 <= s.start_ramp <= s.end_ramp:
    raise ValueError("config.data.resolution needs 0 <= start_ramp <= "
                     f"end_ramp, got {s.start_ramp}, {s.end_ramp}")
  if PLACEHOLDER not in spec:
    raise ValueError(f"config.data.resolution is set but "
                     f"config.data.train_preprocess has no {PLACEHOLDER} for "
                     f"the size: {spec!r}")


def scheduled_sizes(schedule: ml_collections.ConfigDict) -> list[int]:
  """Every size the schedule uses, in order of first use."""
  sizes = []
  for epoch in range(schedule.start_ramp, schedule.end_ramp + 1):
    size = resolution_at_epoch(epoch, **{f: schedule[f] for f in _FIELDS})
    if size not in sizes:
      sizes.append(size)
  return sizes


def train_spec(cfg: ml_collections.ConfigDict, epoch: int) -> str:
  """cfg.train_preprocess with the scheduled size of `epoch` filled in."""
  schedule = cfg.get("resolution")
  if schedule is None:
    return cfg.train_preprocess
  size = resolution_at_epoch(epoch, **{f: schedule[f] for f in _FIELDS})
  return cfg.train_preprocess.replace(PLACEHOLDER, str(size))
