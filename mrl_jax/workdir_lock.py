"""One writer per workdir: an exclusive `flock` on `DIR/lock`.

A run that writes checkpoints holds the lock for its whole life; a second
one is refused with a one-line `errors.RunError` naming the holder (pid,
host, mode, start time, as the holder wrote them into the file). The kernel
drops the lock when the holder's process ends, however it ends (SIGKILL
included), so a stale lock file never blocks anyone: only a live holder
does. Readers (eval, export, knn, ...) take no lock. `flock` is local to one
machine on some network filesystems (older NFS); there the lock guards only
against runs on the same host.
"""
import contextlib
import datetime
import fcntl
import json
import os
import socket
from typing import Iterator

from mrl_jax import errors

LOCK_NAME = "lock"


@contextlib.contextmanager
def exclusive(workdir: str, mode: str, primary: bool = True) -> Iterator[None]:
  """Holds workdir's lock while the body runs.

  Args:
    workdir: the run's directory (created if missing).
    mode: what the holder does, written into the lock file for others.
    primary: False on processes other than 0 of a multi-process run: they
      share process 0's workdir and lock nothing.
  Raises:
    errors.RunError: another live process holds the lock, or workdir is not
      writable.
  """
  if not primary:
    yield
    return
  path = os.path.join(workdir, LOCK_NAME)
  try:
    os.makedirs(workdir, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  except OSError as e:
    raise errors.RunError(f"cannot create {path} ({e.strerror or e}); a run "
                          "needs a writable --workdir") from e
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      raise errors.RunError(
          f"{workdir} is in use by another run ({_holder(fd)}); wait for it "
          "to end or stop it, or use another --workdir") from None
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps({
        "pid": os.getpid(), "host": socket.gethostname(), "mode": mode,
        "since": datetime.datetime.now().isoformat(timespec="seconds"),
    }).encode())
    yield
  finally:
    os.close(fd)  # releases the lock


def _holder(fd: int) -> str:
  """The holder as it described itself, e.g. 'pid 12, host a, mode train'."""
  try:
    info = json.loads(os.pread(fd, 4096, 0) or b"{}")
  except ValueError:  # written at this very moment
    info = {}
  if not info:
    return "holder unknown"
  return ", ".join(f"{k} {info[k]}" for k in ("pid", "host", "mode", "since")
                   if k in info)
