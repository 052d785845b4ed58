"""Atomic file writes: a reader (or a rerun after a kill) never sees half a
file, because each write goes to a temporary name and is renamed into place."""
import json
import os
from typing import Any

import numpy as np


def write_json(path: str, obj: Any) -> None:
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=1)
  os.replace(tmp, path)


def write_npz(path: str, **arrays: np.ndarray) -> None:
  tmp = f"{path}.tmp.npz"  # np.savez appends .npz to names without it
  np.savez(tmp, **arrays)
  os.replace(tmp, path)


def write_text(path: str, text: str) -> None:
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)


def write_bytes(path: str, data: bytes) -> None:
  tmp = f"{path}.tmp"
  with open(tmp, "wb") as f:
    f.write(data)
  os.replace(tmp, path)
