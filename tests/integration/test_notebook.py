"""The quickstart notebook runs top to bottom (fast configuration) and produces what it shows."""

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.slow

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "quickstart.ipynb"


def test_quickstart_notebook_executes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PCSNET_NOTEBOOK_FAST", "1")
    monkeypatch.setenv("PCSNET_NOTEBOOK_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("PCSNET_DEMO_ROOT", str(tmp_path / "demo"))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(NOTEBOOK.parents[1]), os.environ.get("PYTHONPATH", "")]))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": tmp_path}}).execute()

    outputs = "".join(
        output.get("text", "") for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
    )
    assert "image_AUROC" in outputs
    assert "pixel_AUROC" in outputs
    assert "| Pcsnet" in outputs
    assert list((tmp_path / "results").glob("Pcsnet/KShotPcsnetDemo/brick/latest/images/*/*.png"))
    assert list((tmp_path / "results" / "export").rglob("model.pt"))
    assert any("image/png" in output.get("data", {}) for cell in notebook.cells for output in cell.get("outputs", []))
