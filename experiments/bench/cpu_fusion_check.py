r"""Which parts of a prefix scan XLA:CPU hands to YNNPACK.

  .venv/bin/python experiments/bench/cpu_fusion_check.py

The search engine compiles wide scans (prefixes above 64 dims) with YNNPACK
taking the score matmul only, and leaves the group max to XLA's own
fusions, which is the faster split for them on CPU; low-dim scans keep
XLA's default (YNNPACK takes the reduction too). That is a compiler choice
that a jax upgrade can change without changing any result, so it is
checked here, next to the benchmarks that motivate it, not in the unit
tests: the script compiles 16-d, 40-d, 64-d (the whole array of a 64-d
index) and 96-d scans, prints what YNNPACK got, and exits 1 if a scan does
not get the expected split.
"""
import re
import sys

import jax.numpy as jnp
import numpy as np

from mrl_jax import platforms
from mrl_jax import search
from mrl_jax import sharding
from mrl_jax.search import plan as plan_lib
from mrl_jax.search import scan


def ynn_fusion_bodies(hlo: str) -> list[str]:
  """HLO text of each computation XLA:CPU hands to YNNPACK."""
  names = re.findall(r"calls=(%[\w.-]+), [^\n]*__ynn_fusion", hlo)
  return [hlo.split(f"\n{name} ")[1].split("\n}\n")[0] for name in names]


def ynn_ops(dim: int, d: int, rows: int = 4096) -> dict[str, bool]:
  """{"dot": ..., "reduce": ...}: what YNNPACK gets in a `dim`-prefix scan
  (k = 10, 1024-row chunks: the two-pass scan, one device)."""
  rng = np.random.default_rng(0)
  db = rng.normal(size=(rows, d)).astype(np.float32)
  queries = rng.normal(size=(8, d)).astype(np.float32)
  mesh = sharding.make_mesh([("data", 1)])
  index = search.build_index(db, mesh=mesh)
  plan = plan_lib.make_plan(index, dim, queries)
  fn = scan._device_search_fn(mesh, "data", plan, 10, 1024)  # pylint: disable=protected-access
  blocks, norm = scan._used(index, plan)  # pylint: disable=protected-access
  hlo = fn.lower(queries, blocks, norm,
                 jnp.int32(rows)).compile().as_text()
  bodies = ynn_fusion_bodies(hlo)
  return {"dot": any(" dot(" in b for b in bodies),
          "reduce": any(" reduce(" in b for b in bodies)}


def main() -> int:
  platforms.use_cpu_if_no_accelerator()
  ok = True
  for dim, d in ((16, 128), (40, 128), (64, 64), (96, 128)):
    got = ynn_ops(dim, d)
    want = {"dot": True, "reduce": dim <= 64}
    ok &= got == want
    print(f"{dim}-d scan of a {d}-d index: YNNPACK takes {got} "
          f"(expected {want})")
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())
