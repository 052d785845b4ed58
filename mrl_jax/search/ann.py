"""Approximate shortlists from FAISS on a D_s prefix, re-ranked exactly.

Adaptive retrieval as the MRL paper timed it (and as vector databases run
it): an approximate nearest-neighbour index over the D_s-dim prefix of every
row, L2-normalised per prefix (the official code builds
`faiss.IndexHNSWFlat(d, 32)` on each sliced, normalised prefix), returns K
candidate ids per query; the exact engine (`mrl_jax.search.rerank` on the
`PrefixIndex` that already holds the database) re-scores them at D_r and
keeps k. The ANN index holds only the [N, D_s] prefix (plus its graph or
lists), never a second copy of the full rows.

Kinds: "hnsw" (`IndexHNSWFlat`, inner product on normalised prefixes =
cosine; M, efConstruction, efSearch) and "ivf" (`IndexIVFFlat`, or
`IndexIVFPQ` with `pq_m` sub-quantisers; nlist, nprobe). IVF-Flat with
nprobe = nlist scans every list: the exact shortlist.

Files: `save` writes `<dir>/<kind>-d<D_s>.faiss` and a JSON next to it
recording the parameters and the provenance of the embeddings it was built
on (row count, width, and the export's metadata: model, step, dataset,
split, ...); `load` refuses an index whose provenance differs from the
embeddings it is asked to serve. Both files are written aside and renamed.

Threads: FAISS runs on its OpenMP pool, all cores by default; this module
never changes it (call `faiss.omp_set_num_threads(n)` to share the machine).

FAISS is the `ann` extra: `pip install -e '.[ann]'`.
"""
import dataclasses
import json
import os
from typing import Any

import numpy as np

from mrl_jax import atomic_files
from mrl_jax import errors
from mrl_jax.search.codes import check_queries, normalized_prefix
from mrl_jax.search.index import Array, PrefixIndex

KINDS = ("hnsw", "ivf")
# Rows normalised and added per FAISS call while building (bounds the float32
# copy of a memmapped prefix).
_ADD_ROWS = 1 << 16
# Rows FAISS trains the IVF centroids on: its own guidance is 30-256 per list.
_TRAIN_ROWS_PER_LIST = 64


def import_faiss() -> Any:
  """The faiss module, or a one-line RunError naming the extra."""
  try:
    import faiss  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise errors.RunError(
        "ANN shortlists need FAISS, which is not installed; run "
        "pip install -e '.[ann]' (faiss-cpu)") from e
  return faiss


@dataclasses.dataclass(frozen=True)
class AnnIndex:
  """A FAISS index over the normalised D_s prefix of N rows.

  Attributes:
    kind: "hnsw" or "ivf".
    dim: D_s, the prefix it indexes.
    params: build parameters (m, ef_construction / nlist, pq_m, ...).
    provenance: what it was built on: num_rows, embedding_dim and the
      export's metadata fields (see `provenance`).
    faiss_index: the FAISS index (ids are the database row numbers).
  """
  kind: str
  dim: int
  params: dict[str, Any]
  provenance: dict[str, Any]
  faiss_index: Any

  @property
  def num_rows(self) -> int:
    return int(self.faiss_index.ntotal)

  def shortlist(self, queries: Any, k: int, *, ef_search: int | None = None,
                nprobe: int | None = None) -> np.ndarray:
    """K candidate ids per query by cosine at the D_s prefix.

    Args:
      queries: [Q, d_q] with d_q >= dim; only [:, :dim] is read.
      k: K, candidates per query, 1 <= K <= N.
      ef_search: HNSW search breadth, >= K; default max(K, 16).
      nprobe: IVF lists scanned, in [1, nlist]; default the built `nprobe`.

    Returns:
      [Q, K] int64 ids, best first; -1 where the index found fewer than K
      (the re-rank scores those -inf).
    """
    check_queries(queries, self.dim)
    if not 1 <= k <= self.num_rows:
      raise ValueError(f"shortlist K={k} must be in [1, {self.num_rows}]")
    faiss = import_faiss()
    if self.kind == "hnsw":
      ef = max(k, 16) if ef_search is None else int(ef_search)
      if ef < k:
        raise ValueError(f"ef_search={ef} < shortlist K={k}: HNSW cannot "
                         f"return K candidates; set ef_search >= {k}")
      params = faiss.SearchParametersHNSW(efSearch=ef)
    else:
      probe = self.params["nprobe"] if nprobe is None else int(nprobe)
      if not 1 <= probe <= self.params["nlist"]:
        raise ValueError(f"nprobe={probe} must be in [1, nlist="
                         f"{self.params['nlist']}]")
      params = faiss.SearchParametersIVF(nprobe=probe)
    _, ids = self.faiss_index.search(normalized_prefix(queries, self.dim), k,
                                     params=params)
    return ids


def provenance(num_rows: int, embedding_dim: int,
               metadata: dict[str, Any] | None = None) -> dict[str, Any]:
  """What an ANN index must match: the row count and width of the
  embeddings and the export's identifying metadata (model, step, dataset,
  split, nesting, head, dtype, views, where present)."""
  meta = metadata or {}
  keys = ("model", "step", "dataset", "split", "nesting", "head", "dtype",
          "views")
  return {"num_rows": int(num_rows), "embedding_dim": int(embedding_dim),
          **{key: meta[key] for key in keys if key in meta}}


def build(embeddings: Any, kind: str, dim: int, *, m: int = 32,
          ef_construction: int = 40, nlist: int | None = None,
          nprobe: int = 16, pq_m: int = 0, pq_bits: int = 8, seed: int = 0,
          metadata: dict[str, Any] | None = None) -> AnnIndex:
  """Builds an ANN index over the normalised [:, :dim] prefix.

  Args:
    embeddings: [N, d] array (numpy or np.memmap; read in row chunks).
    kind: "hnsw" or "ivf".
    dim: D_s, 1 <= D_s <= d.
    m: HNSW neighbours per node (the paper: 32).
    ef_construction: HNSW build breadth (FAISS default 40).
    nlist: IVF lists; default about 4 sqrt(N), at most N / 39 (FAISS wants
      >= 39 training rows per centroid).
    nprobe: IVF lists scanned by default at search time (at most the
      default nlist when nlist is not given).
    pq_m: IVF-PQ sub-quantisers (must divide D_s); 0 = IVF-Flat.
    pq_bits: bits per PQ code.
    seed: seeds the IVF training sample and k-means.
    metadata: the export's metadata.json, recorded as provenance.
  """
  faiss = import_faiss()
  _check_build(embeddings, kind, dim, m, ef_construction, pq_m)
  n, d = embeddings.shape
  params: dict[str, Any]
  if kind == "hnsw":
    index = faiss.IndexHNSWFlat(dim, m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = ef_construction
    params = {"m": m, "ef_construction": ef_construction}
  else:
    if not nlist:
      nlist = max(1, min(int(4 * np.sqrt(n)), n // 39))
      nprobe = min(nprobe, nlist)
    if not 1 <= nlist <= n or not 1 <= nprobe <= nlist:
      raise ValueError(f"IVF needs 1 <= nprobe ({nprobe}) <= nlist ({nlist})"
                       f" <= N ({n}); lower nlist or nprobe")
    quantizer = faiss.IndexFlatIP(dim)
    index = (faiss.IndexIVFPQ(quantizer, dim, nlist, pq_m, pq_bits,
                              faiss.METRIC_INNER_PRODUCT) if pq_m else
             faiss.IndexIVFFlat(quantizer, dim, nlist,
                                faiss.METRIC_INNER_PRODUCT))
    index.cp.seed = seed
    # PQ codebooks want >= 256 rows per code value too.
    rows = min(n, max(nlist * _TRAIN_ROWS_PER_LIST,
                      (256 << pq_bits) if pq_m else 0))
    sample = np.sort(np.random.default_rng(seed).choice(n, rows,
                                                        replace=False))
    index.train(normalized_prefix(embeddings[sample], dim))
    params = {"nlist": nlist, "nprobe": nprobe, "pq_m": pq_m,
              "pq_bits": pq_bits, "seed": seed}
  for r0 in range(0, n, _ADD_ROWS):
    index.add(normalized_prefix(embeddings[r0:r0 + _ADD_ROWS], dim))
  return AnnIndex(kind, dim, params, provenance(n, d, metadata), index)


def index_path(directory: str, kind: str, dim: int) -> str:
  """<directory>/<kind>-d<dim>.faiss (its JSON: the same name + .json)."""
  return os.path.join(directory, f"{kind}-d{dim}.faiss")


def save(ann: AnnIndex, directory: str) -> str:
  """Writes the index and its JSON into `directory`; returns the path."""
  faiss = import_faiss()
  os.makedirs(directory, exist_ok=True)
  path = index_path(directory, ann.kind, ann.dim)
  tmp = f"{path}.tmp"
  faiss.write_index(ann.faiss_index, tmp)
  # The JSON goes in first: an index file is never without its provenance.
  atomic_files.write_json(f"{path}.json", {
      "kind": ann.kind, "dim": ann.dim, "params": ann.params,
      "provenance": ann.provenance, "faiss_version": faiss.__version__})
  os.replace(tmp, path)
  return path


def load(path: str, expected_provenance: dict[str, Any]) -> AnnIndex:
  """Reads an index `save` wrote, checked against the embeddings it serves.

  Args:
    path: the .faiss file.
    expected_provenance: `provenance(...)` of the database it will shortlist
      for.

  Raises:
    ValueError: if it was built on other embeddings (other export, step,
      row count or width).
    RunError: if the files are missing or unreadable.
  """
  faiss = import_faiss()
  try:
    with open(f"{path}.json") as f:
      info = json.load(f)
    index = faiss.read_index(path)
  except (OSError, RuntimeError, ValueError) as e:
    raise errors.RunError(f"cannot read the ANN index {path} ({e}); delete it "
                          "and its .json to rebuild it") from e
  built_on = info["provenance"]
  differ = [f"{key} {built_on.get(key)!r} != {expected_provenance.get(key)!r}"
            for key in sorted(set(built_on) | set(expected_provenance))
            if built_on.get(key) != expected_provenance.get(key)]
  if index.ntotal != expected_provenance["num_rows"]:
    differ.append(f"{index.ntotal} indexed rows")
  if differ:
    raise ValueError(f"{path} was built on other embeddings ("
                     f"{'; '.join(differ)}); delete it and its .json to "
                     "rebuild it from these")
  return AnnIndex(info["kind"], int(info["dim"]), info["params"], built_on,
                  index)


def shortlist_search(index: PrefixIndex, shortlister: Any, queries: Any,
                     shortlist_k: int, stages: list[tuple[int, int]], *,
                     query_batch_size: int | None = None,
                     **shortlist_kwargs: Any) -> tuple[Array, Array]:
  """Adaptive (or funnel) retrieval with an approximate first stage.

  Args:
    index: the database the shortlister was built on (same rows).
    shortlister: an `AnnIndex` or a `codes` index: anything with `dim`,
      `num_rows` and `shortlist(queries, k, **kwargs) -> [Q, K] ids`.
    queries: [Q, d_q].
    shortlist_k: K candidates from the shortlister.
    stages: [(D_r, k)] for adaptive retrieval, or more (dim, k) stages for a
      funnel (sizes non-increasing).
    query_batch_size: queries per compiled re-rank call.
    **shortlist_kwargs: e.g. ef_search, nprobe.

  Returns:
    scores [Q, k_last] at the last stage's dim and ids [Q, k_last].
  """
  stages = [(int(m), int(kk)) for m, kk in stages]
  check_stages(shortlist_k, stages, shortlister.dim, index.dim)
  if shortlister.num_rows != index.num_rows:
    raise ValueError(f"the shortlist index has {shortlister.num_rows} rows, "
                     f"the database {index.num_rows}; build it on the same "
                     "embeddings")
  ids = shortlister.shortlist(queries, shortlist_k, **shortlist_kwargs)
  return rerank_shortlist(index, queries, ids, stages,
                          query_batch_size=query_batch_size)


def rerank_shortlist(index: PrefixIndex, queries: Any, candidate_ids: Any,
                     stages: list[tuple[int, int]], *,
                     query_batch_size: int | None = None
                     ) -> tuple[Array, Array]:
  """Exact re-rank of given candidates through funnel stages.

  Args:
    index: the database (the ANN index or codes were built on its rows).
    queries: [Q, d_q].
    candidate_ids: [Q, K] shortlist ids (-1: none).
    stages: [(dim, k), ...], each k <= the previous (first <= K); one stage
      (D_r, k) is adaptive retrieval, more is a funnel.
    query_batch_size: queries per compiled re-rank call.

  Returns:
    scores [Q, k_last] at the last stage's dim and ids [Q, k_last].
  """
  # Imported here: mrl_jax.search imports this module.
  from mrl_jax import search  # pylint: disable=import-outside-toplevel
  ids = candidate_ids
  for m, kk in stages:
    scores, ids = search.rerank(index, queries, ids, m, kk,
                                query_batch_size=query_batch_size)
  return scores, ids


def check_stages(shortlist_k: int, stages: list[tuple[int, int]],
                 dim_shortlist: int, index_dim: int) -> None:
  """Raises a one-line ValueError unless K >= k_1 >= k_2 ... and every dim
  fits the database (checked before any index is built or searched)."""
  if not stages:
    raise ValueError("need at least one re-rank stage (D_r, k)")
  sizes = [shortlist_k] + [kk for _, kk in stages]
  if any(a < b for a, b in zip(sizes, sizes[1:])) or sizes[-1] < 1:
    raise ValueError(f"shortlist K={shortlist_k} and re-rank sizes "
                     f"{sizes[1:]} must not increase (K >= k >= 1); raise "
                     "the shortlist K")
  for m in [dim_shortlist] + [m for m, _ in stages]:
    if not 1 <= m <= index_dim:
      raise ValueError(f"prefix dim {m} is above the embeddings' dim "
                       f"{index_dim}; use a dim in [1, {index_dim}]")


def _check_build(embeddings: Any, kind: str, dim: int, m: int,
                 ef_construction: int, pq_m: int) -> None:
  if kind not in KINDS:
    raise ValueError(f"unknown ANN kind {kind!r}; use one of {KINDS}")
  if len(embeddings.shape) != 2 or not embeddings.shape[0]:
    raise ValueError(f"embeddings must be [N>0, d], got {embeddings.shape}")
  if not 1 <= dim <= embeddings.shape[1]:
    raise ValueError(f"shortlist dim D_s={dim} is above the embeddings' dim "
                     f"{embeddings.shape[1]}; use D_s in [1, "
                     f"{embeddings.shape[1]}]")
  if m < 2 or ef_construction < 1:
    raise ValueError(f"HNSW needs m >= 2 and ef_construction >= 1, got "
                     f"{m} and {ef_construction}")
  if pq_m and dim % pq_m:
    raise ValueError(f"pq_m={pq_m} must divide D_s={dim}; pick a divisor "
                     "or pq_m=0 for IVF-Flat")
