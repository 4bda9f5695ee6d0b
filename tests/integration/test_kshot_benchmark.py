"""End to end: the k-shot benchmark command on generated data, then its aggregated tables."""

import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from pcsnet_anomalib.benchmark.aggregate import main as aggregate_main

pytestmark = pytest.mark.slow

CONFIG = """
accelerator: cpu
protocol:
  image_size: [64, 64]
  center_crop_size: null
  trainer:
    Pcsnet: {{max_epochs: 1}}
benchmark:
  seed: 42
  model:
    grid:
      - class_path: Pcsnet
        init_args: {{backbone: resnet18, pre_trained: false, num_epochs: 1, prior_channels: 16, grid_stride: 4,
                    cas_channels: 32}}
      - class_path: Padim
        init_args: {{backbone: resnet18, pre_trained: false}}
  data:
    class_path: KShotMVTecAD
    init_args:
      root: {root}
      category: widget
      num_workers: 0
      eval_batch_size: 4
      k_shot: {{grid: [1, 2]}}
      k_shot_seed: {{grid: [0]}}
"""


def test_benchmark_then_aggregate(mvtec_root: Path, tmp_path: Path) -> None:
    config = tmp_path / "kshot.yaml"
    config.write_text(CONFIG.format(root=mvtec_root))
    command = [sys.executable, "-m", "pcsnet_anomalib.benchmark", "--config", str(config)]
    run = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False)
    log = (tmp_path / "runs" / "pipeline.log").read_text()
    (results,) = (tmp_path / "runs" / "benchmark").glob("*/results.csv")
    assert run.returncode == 0, run.stderr[-3000:] + log[-3000:]

    table = pd.read_csv(results)
    assert len(table) == 4  # 2 models x 2 k x 1 seed
    assert set(table["model.class_path"]) == {"Pcsnet", "Padim"}
    # Both models of a k trained on the same images: one logged choice per k, repeated for each model.
    choices = set(re.findall(r"KShotMVTecAD widget: (k_shot=\d+, seed=0: .*)", log))
    assert len(choices) == 2, choices

    out = tmp_path / "tables"
    aggregate_main([str(results), "--out", str(out)])
    summary = pd.read_csv(out / "summary.csv")
    # 3 metrics x (1 category + mean) x 2 models x 2 k
    assert len(summary) == 24
    assert set(summary["metric"]) == {"image_AUROC", "pixel_AUROC", "pixel_AUPRO"}
    assert summary["mean"].between(0, 1).all()
    assert (summary["n"] == 1).all()
    assert (out / "summary.md").read_text().count("| widget | ") == 3 * 2
    assert (out / "image_auroc_vs_k.png").stat().st_size > 0
