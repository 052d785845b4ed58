"""The error the launcher reports as one line and exit code 1.

Raise `RunError` (or a `ValueError`, for bad config values) with a one-line
message that names the problem and the fix; `mrl_jax.main` prints it as
`mrl_jax: error: <message>` without a traceback.
"""


class RunError(RuntimeError):
  """A run cannot go on: a failed save, a locked workdir, a bad file, ..."""
