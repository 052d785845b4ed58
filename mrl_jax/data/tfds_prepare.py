"""Preparing a local TFDS dataset without TFDS's console chatter.

TFDS prints a "Downloading and preparing dataset..." banner on stdout
(where the launcher prints its results), draws progress bars on stderr and
warns about every builder config that is not one of a builder's named
configs. The datasets prepared here are local, so none of that helps: a
single log line says what is prepared, and where.
"""
import contextlib
import io
import logging

from absl import logging as absl_logging
import tensorflow_datasets as tfds

# TFDS notices that say nothing about a local, offline preparation.
_NOTICES = ("Using custom data configuration", "Variant folder")


class _DropNotices(logging.Filter):
  def filter(self, record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(_NOTICES)


def silence_config_notices() -> None:
  """Drops TFDS's custom-config and variant-folder warnings (idempotent)."""
  logger = logging.getLogger("absl")
  if not any(isinstance(f, _DropNotices) for f in logger.filters):
    logger.addFilter(_DropNotices())


def prepare(builder: tfds.core.DatasetBuilder, what: str) -> None:
  """builder.download_and_prepare(), offline, with one log line instead of
  TFDS's banner and progress bars. `what` describes the dataset."""
  absl_logging.info("preparing %s in %s", what, builder.data_dir)
  tfds.display_progress_bar(False)
  try:
    with contextlib.redirect_stdout(io.StringIO()):
      builder.download_and_prepare(
          download_config=tfds.download.DownloadConfig(
              try_download_gcs=False))
  finally:
    tfds.display_progress_bar(True)
