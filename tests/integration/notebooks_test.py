"""Every notebook in experiments/notebooks runs top to bottom, headless, in
its small (MRL_NOTEBOOK_SMOKE=1) setting, so none of them rots."""
import os
import pathlib

import nbclient
import nbformat
import pytest
import torch

import torch_resnet  # tests/torch_resnet.py

REPO = pathlib.Path(__file__).resolve().parents[2]
NOTEBOOKS = REPO / "experiments" / "notebooks"



def test_every_notebook_is_tested():
  assert sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")) == [
      "adaptive_retrieval", "import_official_checkpoint", "quickstart"]


def _run(name: str, workdir: pathlib.Path, monkeypatch,
         **env: str) -> nbformat.NotebookNode:
  monkeypatch.setenv("MRL_NOTEBOOK_SMOKE", "1")
  monkeypatch.setenv("MRL_NOTEBOOK_WORKDIR", str(workdir))
  monkeypatch.setenv("MRL_JAX_ROOT", str(REPO))
  # The kernel starts in the notebook's folder: import this checkout.
  monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
      filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
  monkeypatch.setenv("MPLBACKEND", "Agg")
  for key, value in env.items():
    monkeypatch.setenv(key, value)
  nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
  nbclient.NotebookClient(
      nb, timeout=300, kernel_name="python3",
      resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
  return nb


def _text(nb: nbformat.NotebookNode) -> str:
  return "\n".join(out.get("text", "") for cell in nb.cells
                   if cell.cell_type == "code" for out in cell.outputs)


@pytest.fixture(scope="module", name="default_workdir")
def fixture_default_workdir(tmp_path_factory):
  """Shared by the two notebooks on the default config: the second resumes
  the first's finished run instead of training again (saves CI time)."""
  return tmp_path_factory.mktemp("default") / "work"


def test_quickstart(default_workdir, monkeypatch):
  nb = _run("quickstart", default_workdir, monkeypatch)
  assert "top-1" in _text(nb)
  assert (default_workdir / "eval_summary.json").exists()


def test_adaptive_retrieval(default_workdir, monkeypatch):
  nb = _run("adaptive_retrieval", default_workdir, monkeypatch)
  text = _text(nb)
  assert "mAP@10" in text and "Ds=8->Dr=32" in text


def test_import_official_checkpoint(tmp_path, monkeypatch):
  # A stand-in for the official file: same key layout (module. prefix,
  # BlurPool), tiny ResNet so it runs on CPU with the smoke config.
  model = torch_resnet.build("resnet_mu", "mrl", (8, 16, 32, 64), 1000,
                             seed=0, blurpool=True)
  path = tmp_path / "stand_in.pt"
  torch.save({f"module.{k}": v for k, v in model.state_dict().items()},
             str(path))
  nb = _run("import_official_checkpoint", tmp_path / "work", monkeypatch,
            MRL_CHECKPOINT=str(path), MRL_CONFIG_ARG="smoke")
  text = _text(nb)
  assert "top-1" in text and "(2, 16)" in text
