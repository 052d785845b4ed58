"""Tests for mrl_jax.data.fashion_mnist (offline TFDS preparation)."""
import concurrent.futures
import gzip
import hashlib
import importlib.resources
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds

from mrl_jax.data import fashion_mnist

needs_debian = pytest.mark.skipif(
    not fashion_mnist.DEBIAN_DIR.is_dir(),
    reason=f"{fashion_mnist.DEBIAN_DIR} is absent; install it with "
    "`apt-get install -y dataset-fashion-mnist`")


def _registered_checksums() -> dict[str, tuple[int, str]]:
  """File name -> (size, sha256) from TFDS's own url_checksums file."""
  text = (importlib.resources.files("tensorflow_datasets") / "url_checksums" /
          "fashion_mnist.txt").read_text()
  rows = [line.split("\t") for line in text.splitlines() if line.strip()]
  return {name: (int(size), sha) for _, size, sha, name in rows}


def test_constants():
  assert len(fashion_mnist.CLASS_NAMES) == 10
  assert fashion_mnist.CLASS_NAMES[0] == "T-shirt/top"
  assert fashion_mnist.CLASS_NAMES[9] == "Ankle boot"
  assert (fashion_mnist.MEAN, fashion_mnist.STD) == (0.2860, 0.3530)
  registered = _registered_checksums()
  assert {f"{s}.gz": sha for s, (_, sha) in fashion_mnist.UPSTREAM.items()
         } == {name: sha for name, (_, sha) in registered.items()}


@needs_debian
def test_rebuild_matches_registered_upstream_sha256(tmp_path):
  fashion_mnist.rebuild_upstream(tmp_path)
  registered = _registered_checksums()
  assert sorted(p.name for p in tmp_path.iterdir()) == sorted(registered)
  for name, (size, sha) in registered.items():
    blob = (tmp_path / name).read_bytes()
    assert len(blob) == size, name
    assert hashlib.sha256(blob).hexdigest() == sha, name
    # FNAME field: the original name without ".gz", NUL-terminated.
    assert blob[10:10 + len(name) - 2] == name[:-3].encode() + b"\x00"
  with gzip.open(tmp_path / "t10k-labels-idx1-ubyte.gz") as f:
    data = f.read()
  assert data[:8] == b"\x00\x00\x08\x01\x00\x00\x27\x10"  # IDX, 10000 items.


def test_rebuild_rejects_wrong_files(tmp_path):
  src = tmp_path / "src"
  src.mkdir()
  for stem in fashion_mnist.UPSTREAM:
    (src / f"{stem}.gz").write_bytes(gzip.compress(b"not fashion", mtime=0))
  with pytest.raises(ValueError) as info:
    fashion_mnist.rebuild_upstream(tmp_path / "out", src)
  message = str(info.value)
  assert "train-images-idx3-ubyte.gz" in message and "SHA-256" in message
  assert "\n" not in message
  # A header with optional fields (here FNAME) is not Debian's either.
  (src / "train-images-idx3-ubyte.gz").write_bytes(
      b"\x1f\x8b\x08\x08" + bytes(6) + b"x\x00")
  with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz: not a "):
    fashion_mnist.rebuild_upstream(tmp_path / "out", src)


@pytest.mark.slow  # prepares the real dataset from Debian
@needs_debian
def test_prepare_then_load_offline(tmp_path, monkeypatch):
  data_dir = str(tmp_path / "tfds")
  # Two concurrent callers (as parallel processes on one host): one
  # prepares, the other waits for the lock and finds the data prepared.
  prepares = []
  original = tfds.core.DatasetBuilder.download_and_prepare
  def counted(self, *args, **kwargs):
    prepares.append(self.name)
    return original(self, *args, **kwargs)
  monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare",
                      counted)
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    for future in [pool.submit(fashion_mnist.prepare, data_dir)
                   for _ in range(2)]:
      future.result()
  assert prepares == ["fashion_mnist"]
  assert not (tmp_path / "tfds" / "downloads").exists()  # Not kept.

  ds = tfds.load("fashion_mnist", split="test", data_dir=data_dir,
                 download=False)
  batch = next(iter(ds.batch(20_000)))
  images, labels = batch["image"].numpy(), batch["label"].numpy()
  assert images.shape == (10_000, 28, 28, 1) and images.dtype == np.uint8
  np.testing.assert_array_equal(np.bincount(labels), [1000] * 10)
  # The test split's statistics are close to the train split's constants.
  assert abs(images.mean() / 255 - fashion_mnist.MEAN) < 0.002
  assert abs(images.std() / 255 - fashion_mnist.STD) < 0.002
  builder = tfds.builder("fashion_mnist", data_dir=data_dir)
  assert str(builder.version) == fashion_mnist.VERSION
  assert builder.info.features["label"].names == list(
      fashion_mnist.CLASS_NAMES)
  assert builder.info.splits["train"].num_examples == 60_000

  def fail(*args, **kwargs):
    raise AssertionError("prepared data must be reused")
  monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", fail)
  monkeypatch.setattr(fashion_mnist, "rebuild_upstream", fail)
  start = time.perf_counter()
  fashion_mnist.prepare(data_dir)
  assert time.perf_counter() - start < 5


def test_prepare_without_debian_files_or_network(tmp_path, monkeypatch):
  monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", tmp_path / "missing")
  monkeypatch.setattr(fashion_mnist, "_check_reachable", lambda: None)

  def no_network(*args, **kwargs):
    raise ConnectionError("Failed to resolve 'fashion-mnist.s3-website...'")
  monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare",
                      no_network)
  with pytest.raises(RuntimeError) as info:
    fashion_mnist.prepare(str(tmp_path / "tfds"))
  message = str(info.value)
  assert "\n" not in message
  assert "ConnectionError" in message
  assert "apt-get install -y dataset-fashion-mnist" in message
  assert "network access" in message
  assert isinstance(info.value.__cause__, ConnectionError)


def test_prepare_fails_fast_when_unreachable(tmp_path, monkeypatch):
  """The reachability probe turns TFDS's minutes of retries into an error."""
  requests = pytest.importorskip("requests")
  monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", tmp_path / "missing")

  def unreachable(*args, **kwargs):
    raise requests.ConnectionError("Name or service not known")
  monkeypatch.setattr(requests, "head", unreachable)
  monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare",
                      lambda *a, **k: pytest.fail("must not try to download"))
  with pytest.raises(RuntimeError, match="dataset-fashion-mnist"):
    fashion_mnist.prepare(str(tmp_path / "tfds"))
