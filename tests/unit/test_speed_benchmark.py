"""Smoke test of benchmarks/speed.py at a tiny size: it runs end to end and prints a well-formed table."""

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
