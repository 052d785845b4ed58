"""What the experiments' report.py scripts share: reading a run's
`<kind>_summary.json` and writing the tables next to the README."""
import json
import os
from typing import Any


def load_summary(root: str, name: str, kind: str) -> dict[str, Any]:
  """ROOT/name/<kind>_summary.json as a dict; {} when the run did not write
  it (reported as missing, never guessed)."""
  path = os.path.join(root, name, f"{kind}_summary.json")
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def write_results(out_dir: str, results: dict[str, Any], markdown: str
                  ) -> None:
  """OUT/results.md (the tables) and OUT/results.json (every number)."""
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "results.md"), "w") as f:
    f.write(markdown)
  with open(os.path.join(out_dir, "results.json"), "w") as f:
    json.dump(results, f, indent=1)
