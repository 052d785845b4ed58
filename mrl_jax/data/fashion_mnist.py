"""Prepares TFDS's own `fashion_mnist` builder offline from Debian's files.

The project's machines reach package registries only, so TFDS cannot download
Fashion-MNIST. Debian's `dataset-fashion-mnist` package ships the original
files, but its build (strip-nondeterminism) rewrote the 10-byte gzip header of
each one: the original file name (FNAME) was dropped and MTIME reset. The
deflate stream and trailer are untouched, yet the SHA-256 differs, and TFDS
rejects a manual_dir file whose checksum does not match its registered one.
We therefore restore the upstream header (flag FNAME, upstream MTIME, the name
and a NUL) in front of Debian's bytes 10.., check the result against the
upstream SHA-256 (= TFDS's registered checksum), and feed the rebuilt files to
the unchanged builder as `manual_dir`.
"""
import fcntl
import hashlib
import pathlib
import struct
import tempfile

from absl import logging

VERSION = "3.0.1"
DEBIAN_DIR = pathlib.Path("/usr/share/datasets/fashion-mnist")
URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
# Pixel/255 statistics of the train split.
MEAN = 0.2860
STD = 0.3530
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
               "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")

# File stem -> (upstream gzip MTIME, upstream SHA-256 as registered in
# tensorflow_datasets/url_checksums/fashion_mnist.txt).
UPSTREAM = {
    "train-images-idx3-ubyte": (1504176606, "3aede38d61863908ad78613f6a32ed27"
                                            "1626dd12800ba2636569512369268a84"),
    "train-labels-idx1-ubyte": (1504176606, "a04f17134ac03560a47e3764e11b92fc"
                                            "97de4d1bfaf8ba1a3aa29af54cc90845"),
    "t10k-images-idx3-ubyte": (1504176627, "346e55b948d973a97e58d2351dde16a4"
                                           "84bd415d4595297633bb08f03db6a073"),
    "t10k-labels-idx1-ubyte": (1504176627, "67da17c76eaffca5446c3361aaab5c3c"
                                           "d6d1c2608764d35dfb1850b086bf8dd5"),
}
_FIX = ("install the Debian package (apt-get install -y dataset-fashion-mnist)"
        " or give this machine network access")


def rebuild_upstream(out_dir: str | pathlib.Path,
                     src_dir: str | pathlib.Path | None = None) -> None:
  """Writes the four upstream .gz files, byte-exact, rebuilt from Debian's.

  Args:
    out_dir: directory to write `<stem>.gz` into (created if missing).
    src_dir: directory with Debian's files; default `DEBIAN_DIR`.

  Raises:
    ValueError: a file has an unexpected header or fails its SHA-256.
  """
  src = pathlib.Path(src_dir or DEBIAN_DIR)
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  for stem, (mtime, want) in UPSTREAM.items():
    deb = (src / f"{stem}.gz").read_bytes()
    if deb[:4] != b"\x1f\x8b\x08\x00":  # gzip, deflate, no optional fields.
      raise ValueError(f"{src / stem}.gz: not a plain gzip header; expected "
                       "Debian's dataset-fashion-mnist file")
    header = b"\x1f\x8b\x08\x08" + struct.pack("<I", mtime) + b"\x00\x03"
    blob = header + stem.encode("ascii") + b"\x00" + deb[10:]
    got = hashlib.sha256(blob).hexdigest()
    if got != want:
      raise ValueError(f"{src / stem}.gz: rebuilt SHA-256 {got} does not match "
                       f"upstream {want}")
    (out / f"{stem}.gz").write_bytes(blob)


def _check_reachable() -> None:
  """Fails fast offline (TFDS itself retries for minutes before giving up)."""
  import requests  # pylint: disable=import-outside-toplevel
  requests.head(URL + "t10k-labels-idx1-ubyte.gz", timeout=10)


def prepare(data_dir: str | None = None) -> None:
  """Makes `tfds.load("fashion_mnist", data_dir=data_dir)` work offline.

  Order: already prepared -> return; Debian files present -> rebuild them and
  prepare from those; else let TFDS download.

  Args:
    data_dir: TFDS data dir; None is TFDS's default (honours $TFDS_DATA_DIR).

  Raises:
    ValueError: a Debian file fails its checksum.
    RuntimeError: no Debian files and the download failed.
  """
  # Imported here so that the constants above cost no TensorFlow import.
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  builder = tfds.builder(f"fashion_mnist:{VERSION}", data_dir=data_dir)
  if builder.is_prepared():
    return
  # Several processes on one host (local multi-process runs, parallel test
  # workers) may start preparing at once; the first prepares, the others
  # wait for it and then find the dataset prepared.
  root = pathlib.Path(builder.data_dir_root)
  root.mkdir(parents=True, exist_ok=True)
  with open(root / ".fashion_mnist.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not builder.is_prepared():
      _prepare_unlocked(builder)


def _prepare_unlocked(builder) -> None:
  """Prepares `builder` from the Debian files, else by download."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  if all((DEBIAN_DIR / f"{s}.gz").is_file() for s in UPSTREAM):
    logging.info("Preparing fashion_mnist from %s", DEBIAN_DIR)
    with tempfile.TemporaryDirectory(prefix="fashion_mnist_") as tmp:
      manual = pathlib.Path(tmp, "manual")
      rebuild_upstream(manual)
      # download_dir in tmp, so the extracted copies (53 MB) are not kept.
      builder.download_and_prepare(
          download_dir=pathlib.Path(tmp, "downloads"),
          download_config=tfds.download.DownloadConfig(manual_dir=manual))
    return
  logging.info("No %s; downloading fashion_mnist from %s", DEBIAN_DIR, URL)
  try:
    _check_reachable()
    builder.download_and_prepare()
  except Exception as e:  # pylint: disable=broad-exception-caught
    raise RuntimeError(
        f"cannot prepare fashion_mnist in {builder.data_dir}: {DEBIAN_DIR} is "
        f"missing and the download from {URL} failed ({type(e).__name__}); "
        f"fix: {_FIX}") from e
