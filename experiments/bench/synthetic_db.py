"""A synthetic database of distinct items that looks like MRL embeddings.

Every row is mean + class centre + sub-cluster centre + noise, each term
drawn per dimension with its own variance:

  x = mu + c[label] + s[label, sub] + e,   c_j ~ N(0, var_class_j),
  s_j ~ N(0, var_sub_j),   e_j ~ N(0, var_noise_j),

with `classes` classes of `subclusters` sub-clusters each (labels and
sub-clusters uniform). Queries are further rows of the same model (new
items, never database rows).

Variances: `fit` measures them on a real export (an exported split of an
MRL model: mu = the mean, var_class = the variance of the class means,
var_sub = the variance of k-means sub-cluster centres within each class,
var_noise = the rest), interpolated to the target width by relative
position. Without an export, `default_variances` applies an MRL-like decay
of variance with the dimension index j = 0..d-1: early dims carry most of
the class signal (signal-to-noise 4 at j = 0, 1 at j = 15, 0.09 at
j = 2047) and late dims little variance of any kind, so extra dims help
less and less but never hurt much:

  var_class_j = 4 (1 + j)^-1.5,  var_sub_j = 1.2 (1 + j)^-1.5,
  var_noise_j = (1 + j)^-1,  mu = 0.

(With 200 classes of 100 rows at d = 2048 this gives exact mAP@10 of about
0.47 at 16 dims, 0.79 at 64 and 0.87 at 2048; more classes lower all three.)

Rows are written as a float16 np.memmap in chunks (each chunk seeded by
(seed, chunk), so any row range is reproducible), with the labels, the
queries and a JSON spec next to it; a file that exists with the same spec
is reused. The files are never committed.

The scripts that use this database (retrieval_bench.py, shortlist_bound.py,
search_accel.py) also share from here its absl flags (`define_flags`,
`define_stored_flags`), their timer (`median_seconds`) and the machine
record around a run (`run_on_machine`).
"""
from collections.abc import Callable
import json
import os
import platform
import re
import statistics
import time
from typing import Any

from absl import flags
import jax
import numpy as np

from mrl_jax import atomic_files
from mrl_jax.export import embedding_files

_CHUNK = 1 << 15
_QUERY_STREAM = 1 << 30  # seeds the queries apart from the database chunks


def define_flags() -> None:
  """The database's absl flags, shared by the scripts that generate it:
  --rows, --dim, --classes, --subclusters, --seed."""
  flags.DEFINE_integer("rows", 1_000_000, "database rows N.")
  flags.DEFINE_integer("dim", 2048, "embedding dim d.")
  flags.DEFINE_integer("classes", 1000, "classes.")
  flags.DEFINE_integer("subclusters", 4, "sub-clusters per class.")
  flags.DEFINE_integer("seed", 0, "database seed.")


def define_stored_flags() -> None:
  """--work_dir and --queries, for the scripts that keep the database on
  disk (retrieval_bench.py, shortlist_bound.py): one directory serves both."""
  flags.DEFINE_string("work_dir", os.path.expanduser(
      "~/.cache/mrl_jax/retrieval_bench"), "where the synthetic database "
                      "and its ground truth are generated and reused.")
  flags.DEFINE_integer("queries", 1000, "queries (quality is measured on "
                       "all).")


def run_on_machine(script: str, run: Callable[[str], dict[str, Any]]
                   ) -> dict[str, Any]:
  """run(--work_dir)'s results with the machine: platform, CPU, cores, JAX
  devices, load average before and after, wall seconds. A ValueError (a
  bad flag, raised before anything is written) exits with one line,
  `<script>: error: ...`."""
  machine = {"platform": platform.platform(), "cpu": cpu_model(),
             "cpus": os.cpu_count(), "load_avg": os.getloadavg(),
             "jax_devices": str(jax.devices())}
  start = time.perf_counter()
  try:
    results = run(flags.FLAGS.work_dir)
  except ValueError as e:
    raise SystemExit(f"{script}: error: {e}") from None
  machine.update(load_avg_end=os.getloadavg(),
                 wall_s=time.perf_counter() - start)
  return {"machine": machine, **results}


def cpu_model() -> str:
  """The CPU's model name and widest x86 vector extension (the search
  kernels' speed ratios differ between AVX2 and AVX-512 parts of the same
  model name), e.g. "AMD EPYC, avx512f"; the platform's processor string
  where /proc/cpuinfo is missing."""
  try:
    with open("/proc/cpuinfo") as f:
      info = f.read()
  except OSError:
    return platform.processor()
  field = lambda name: re.search(rf"^{name}\s*:(.*)$", info, re.M)
  model, features = field("model name"), field("flags")
  features = features.group(1).split() if features else []
  isa = next((x for x in ("avx512f", "avx2", "avx") if x in features), None)
  return ", ".join(x for x in (model and model.group(1).strip(), isa) if x)


def median_seconds(fn: Callable[[], Any], repeats: int) -> float:
  """Median seconds of `repeats` calls of fn after one warm-up call (which
  compiles), each ending when its result is ready."""
  jax.block_until_ready(fn())
  seconds = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    seconds.append(time.perf_counter() - start)
  return statistics.median(seconds)


def default_variances(dim: int) -> dict[str, np.ndarray]:
  """The module doc's MRL-like decay: {mean, class, sub, noise} [dim]."""
  j = np.arange(dim, dtype=np.float64)
  return {"mean": np.zeros(dim), "class": 4 * (1 + j) ** -1.5,
          "sub": 1.2 * (1 + j) ** -1.5, "noise": (1 + j) ** -1.0}


def fit(split_dir: str, dim: int, subclusters: int = 4,
        seed: int = 0) -> dict[str, np.ndarray]:
  """Per-dimension {mean, class, sub, noise} variances [dim] of an export.

  Args:
    split_dir: an exported split (DIR/embeddings/<dataset>/<split>).
    dim: the target width; the fitted curves are interpolated to it.
    subclusters: k-means clusters per class that define var_sub.
    seed: k-means seed.
  """
  import faiss  # pylint: disable=import-outside-toplevel
  x, labels, _ = embedding_files.load_split(split_dir)
  x = x.astype(np.float32)
  mean = x.mean(axis=0)
  centres = {c: x[labels == c].mean(axis=0) for c in np.unique(labels)}
  var_class = np.var(np.stack(list(centres.values())), axis=0)
  sub_parts, noise_parts = [], []
  for c, centre in centres.items():
    resid = x[labels == c] - centre
    k = min(subclusters, len(resid))
    km = faiss.Kmeans(resid.shape[1], k, niter=10, seed=seed)
    km.train(resid)
    _, assign = km.index.search(resid, 1)
    sub = km.centroids[assign[:, 0]]
    sub_parts.append(sub)
    noise_parts.append(resid - sub)
  fitted = {"mean": mean, "class": var_class,
            "sub": np.var(np.concatenate(sub_parts), axis=0),
            "noise": np.var(np.concatenate(noise_parts), axis=0)}
  src = np.linspace(0, 1, x.shape[1])
  dst = np.linspace(0, 1, dim)
  return {name: np.interp(dst, src, curve) for name, curve in fitted.items()}


def _draw(rng: np.random.Generator, n: int, centres: np.ndarray,
          subs: np.ndarray, variances: dict[str, np.ndarray]
          ) -> tuple[np.ndarray, np.ndarray]:
  labels = rng.integers(0, centres.shape[0], n)
  sub = rng.integers(0, subs.shape[1], n)
  noise = rng.standard_normal((n, centres.shape[1]), np.float32)
  rows = (variances["mean"] + centres[labels] + subs[labels, sub]
          + noise * np.sqrt(variances["noise"]))
  return rows.astype(np.float32), labels.astype(np.int32)


def generate(directory: str, rows: int, dim: int, classes: int,
             num_queries: int, *, subclusters: int = 4, seed: int = 0,
             variances: dict[str, np.ndarray] | None = None,
             fitted_from: str | None = None) -> dict[str, Any]:
  """Writes (or reuses) the database and queries under `directory`.

  Returns:
    {"database": [rows, dim] float16 memmap, "labels": [rows] int32,
     "queries": [num_queries, dim] float32, "query_labels", "spec"}.
  """
  variances = variances or default_variances(dim)
  spec = {"rows": rows, "dim": dim, "classes": classes,
          "subclusters": subclusters, "queries": num_queries, "seed": seed,
          "variances": fitted_from or "default (MRL-like decay, v2)"}
  name = f"db-{rows}x{dim}-c{classes}-s{seed}"
  base = os.path.join(directory, name)
  if _load_spec(base) != spec:
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng([seed, 0])
    centres = (rng.standard_normal((classes, dim))
               * np.sqrt(variances["class"])).astype(np.float32)
    subs = (rng.standard_normal((classes, subclusters, dim))
            * np.sqrt(variances["sub"])).astype(np.float32)
    db = np.lib.format.open_memmap(f"{base}.f16.npy.tmp", "w+", np.float16,
                                   (rows, dim))
    labels = np.zeros(rows, np.int32)
    for i, r0 in enumerate(range(0, rows, _CHUNK)):
      n = min(_CHUNK, rows - r0)
      db[r0:r0 + n], labels[r0:r0 + n] = _draw(
          np.random.default_rng([seed, 1 + i]), n, centres, subs, variances)
    db.flush()
    del db
    os.replace(f"{base}.f16.npy.tmp", f"{base}.f16.npy")
    queries, q_labels = _draw(np.random.default_rng([seed, _QUERY_STREAM]),
                              num_queries, centres, subs, variances)
    atomic_files.write_npz(f"{base}.rest.npz", labels=labels,
                           queries=queries, query_labels=q_labels)
    atomic_files.write_json(f"{base}.json", spec)
  rest = np.load(f"{base}.rest.npz")
  return {"database": np.load(f"{base}.f16.npy", mmap_mode="r"),
          "labels": rest["labels"], "queries": rest["queries"],
          "query_labels": rest["query_labels"], "spec": spec, "path": base}


def _load_spec(base: str) -> dict[str, Any] | None:
  try:
    with open(f"{base}.json") as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def ground_truth(db: dict[str, Any], k: int = 100,
                 chunk_rows: int = 1 << 16) -> np.ndarray:
  """[Q, k] exact top-k ids by full-dim cosine (ties: lower id), cached
  next to the database as <name>.gt<k>.npy."""
  path = f"{db['path']}.gt{k}.npy"
  if os.path.exists(path):
    gt = np.load(path)
    if gt.shape == (len(db["queries"]), k):
      return gt
  q = db["queries"] / np.linalg.norm(db["queries"], axis=1, keepdims=True)
  best_s = np.full((len(q), 0), -np.inf, np.float32)
  best_i = np.zeros((len(q), 0), np.int64)
  x = db["database"]
  for r0 in range(0, x.shape[0], chunk_rows):
    rows = np.asarray(x[r0:r0 + chunk_rows], np.float32)
    rows /= np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
    s = np.concatenate([best_s, q @ rows.T], axis=1)
    i = np.concatenate([best_i, np.broadcast_to(
        np.arange(r0, r0 + len(rows)), (len(q), len(rows)))], axis=1)
    # Stable on (score desc, id asc): ties keep the lower id.
    order = np.lexsort((i, -s), axis=1)[:, :k]
    best_s, best_i = np.take_along_axis(s, order, 1), np.take_along_axis(
        i, order, 1)
  np.save(f"{path}.tmp.npy", best_i)
  os.replace(f"{path}.tmp.npy", path)
  return best_i
