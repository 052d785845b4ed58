"""The errors the launcher reports as one line and exit code 1.

Raise `RunError` (or a `ValueError`, for bad config values) with a one-line
message that names the problem and the fix; `mrl_jax.main` prints it as
`mrl_jax: error: <message>` on stderr without a traceback (`--verbosity=1`
logs the traceback too). An `OSError` from the workdir (a full or read-only
disk) is reported the same way, naming the path.
"""
import errno
import sys
from typing import NoReturn

from absl import flags
from absl import logging

# What to do about the OSErrors a run's writes meet; others: check the path.
_OS_ERROR_FIXES = {
    errno.ENOSPC: "free space there or point --workdir at another disk",
    errno.EDQUOT: "free space there or point --workdir at another disk",
    errno.EROFS: "point --workdir at a writable directory",
    errno.EACCES: "make it writable for this user or point --workdir "
                  "elsewhere",
    errno.EPERM: "make it writable for this user or point --workdir "
                 "elsewhere",
}


class RunError(RuntimeError):
  """A run cannot go on: a failed save, a locked workdir, a bad file, ..."""


def one_line(error: Exception) -> str:
  """What the launcher prints after `mrl_jax: error: ` for `error`."""
  if isinstance(error, OSError) and error.strerror:
    fix = _OS_ERROR_FIXES.get(error.errno, "check that path")
    where = f" {error.filename}" if error.filename else ""
    return f"{error.strerror}:{where}; {fix}"
  return str(error)


def exit_with(error: Exception) -> NoReturn:
  """Prints `mrl_jax: error: <one line>` on stderr and exits with 1."""
  logging.debug("stopping on error", exc_info=error)
  sys.exit(f"mrl_jax: error: {one_line(error)}")


def parse_flags(argv: list[str]) -> list[str]:
  """`app.run`'s flags_parser: a bad flag is one error line, not a usage dump.

  absl's own parser prints "FATAL Flags parsing error", the message indented
  and "Pass --helpshort ..." after it.
  """
  try:
    return flags.FLAGS(argv)
  except flags.IllegalFlagValueError as e:  # names the flag and its value
    sys.exit(f"mrl_jax: error: {e}")
  except flags.Error as e:  # an unknown flag, ...
    sys.exit(f"mrl_jax: error: {e}; see --helpshort for the flags")
  except OSError as e:  # a config file reading an unreadable folder, ...
    exit_with(e)
