"""Smoke test of benchmarks/speed.py at a tiny size: it runs end to end and prints a well-formed table."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "speed.py"


@pytest.mark.slow
def test_speed_benchmark_runs_at_tiny_size(tmp_path: Path) -> None:
    output = tmp_path / "speed.md"
    command = [
        sys.executable,
        str(SCRIPT),
        "--image-size",
        "64",
        "--backbone",
        "resnet18",
        "--models",
        "pcsnet",
        "padim",
        "--kinds",
        "infer1",
        "train",
        "--warmup",
        "0",
        "--repeats",
        "1",
        "--output",
        str(output),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    table = output.read_text()
    rows = [line for line in table.splitlines() if line.startswith(("| pcsnet", "| padim"))]
    # pcsnet: inference and training; padim: inference only (no training step).
    assert [row.split("|")[1:3] for row in rows] == [
        [" pcsnet ", " infer1 "],
        [" pcsnet ", " train "],
        [" padim ", " infer1 "],
    ]
    assert "GFLOP/s" in table


def _run_tiny(models: list[str], output: Path, *extra: str) -> str:
    command = [
        sys.executable,
        str(SCRIPT),
        "--image-size",
        "64",
        "--models",
        *models,
        "--kinds",
        "infer1",
        "train",
        "--throughput-batch",
        "2",
        "--train-batch",
        "2",
        "--warmup",
        "0",
        "--repeats",
        "1",
        "--output",
        str(output),
        *extra,
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    return output.read_text()


def _rows(table: str) -> list[list[str]]:
    """Model, measurement and speed-up of each row of the table (not its header and separator)."""
    lines = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith(("| model", "| ---"))]
    return [[cell.strip() for cell in (row[1], row[2], row[11])] for row in (line.split("|") for line in lines)]


@pytest.mark.slow
def test_speed_benchmark_runs_pfm_and_pefm_at_tiny_size(tmp_path: Path) -> None:
    table = _run_tiny(["pfm", "pefm"], tmp_path / "speed.md")
    # Without the authors' rows there is nothing to compare against.
    assert _rows(table) == [
        ["pfm", "infer1", "-"],
        ["pfm", "train", "-"],
        ["pefm", "infer1", "-"],
        ["pefm", "train", "-"],
    ]
    assert "resnet34 -> resnet50 (PFM/PEFM)" in table


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("PFM_AUTHORS_CODE"), reason="PFM_AUTHORS_CODE: a checkout of the PFM/PEFM authors' code"
)
def test_speed_benchmark_compares_pfm_with_the_authors_modules(tmp_path: Path) -> None:
    table = _run_tiny(
        ["pfm", "authors-pfm"], tmp_path / "speed.md", "--pfm-authors-code", os.environ["PFM_AUTHORS_CODE"]
    )
    rows = _rows(table)
    assert [row[:2] for row in rows] == [
        ["pfm", "infer1"],
        ["pfm", "train"],
        ["authors-pfm", "infer1"],
        ["authors-pfm", "train"],
    ]
    assert all(row[2].endswith("x (authors-pfm)") for row in rows)
    assert [row[2] for row in rows[2:]] == ["1.00x (authors-pfm)"] * 2
    difference = re.search(
        r"pfm vs authors-pfm, same weights, batch 2: anomaly maps differ by at most (\S+) \((\S+) of", table
    )
    assert difference is not None
    assert float(difference[2]) < 1e-4


def test_unknown_authors_checkout_is_refused(tmp_path: Path) -> None:
    command = [sys.executable, str(SCRIPT), "--models", "authors-pefm", "--pfm-authors-code", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=300)
    assert done.returncode != 0
    assert "does not contain PEFM_AD.py" in done.stderr
