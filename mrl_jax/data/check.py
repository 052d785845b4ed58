"""--mode=check_data: decode every file of the configured splits once.

Opening an image-folder split only decodes the files that do not look whole
(image_folder.unreadable); this pass decodes all of them, so a file corrupted
in the middle is found before a long run instead of during it. It lists every
unreadable file and fails if there is any. TFDS splits are not decoded here:
TFDS writes them from images it decoded when it prepared the dataset.
"""
from absl import logging
import ml_collections

from mrl_jax import errors
from mrl_jax.data import image_folder


def check_data(config: ml_collections.ConfigDict,
               workdir: str) -> dict[str, int]:
  """Decodes every file of config.data's train and eval splits.

  Args:
    config: the run's config (config.data is read).
    workdir: unused; nothing is written.
  Returns:
    {split: number of files decoded} when all are readable.
  Raises:
    errors.RunError: if any file is unreadable (each one is logged first).
    ValueError: for a bad folder or split.
  """
  del workdir  # the check writes nothing
  data = config.data
  if data.name != image_folder.NAME:
    logging.info("config.data.name=%r is a TFDS dataset: nothing to decode "
                 "(TFDS checks its files when it prepares them)", data.name)
    return {}
  checked, bad = {}, []
  for split in dict.fromkeys((data.train_split, data.eval_split)):
    paths, _, _ = image_folder.split_files(data, split)
    found = image_folder.unreadable(paths, thorough=True)
    for path, reason in found:
      logging.error("unreadable image %s (%s)", path, reason)
    checked[split] = len(paths)
    bad += found
  if bad:
    raise errors.RunError(
        f"{len(bad)} unreadable image(s) in {data.data_dir} (listed above); "
        "replace or remove them, or set config.data.skip_bad_files=True to "
        "leave them out")
  return checked


def format_report(checked: dict[str, int]) -> str:
  """One line per split: how many files decoded."""
  if not checked:
    return "no image folder to check"
  return "\n".join(f"{split}: {n} files, all readable"
                   for split, n in checked.items())
