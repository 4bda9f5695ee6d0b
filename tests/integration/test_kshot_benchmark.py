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
  n_jobs: {n_jobs}
benchmark:
  seed: 42
  model:
    grid:
      - class_path: Pcsnet
        init_args: {{backbone: resnet18, pre_trained: false, prior_channels: 16, grid_stride: 4,
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


def _run_benchmark(root: Path, folder: Path, n_jobs: int) -> tuple[Path, str]:
    """Run the benchmark command in ``folder``; return its results.csv and its log."""
    folder.mkdir()
    config = folder / "kshot.yaml"
    config.write_text(CONFIG.format(root=root, n_jobs=n_jobs))
    command = [sys.executable, "-m", "pcsnet_anomalib.benchmark", "--config", str(config)]
    run = subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=600, check=False)
    log = (folder / "runs" / "pipeline.log").read_text()
    assert run.returncode == 0, run.stderr[-3000:] + log[-3000:]
    (results,) = (folder / "runs" / "benchmark").glob("*/results.csv")
    return results, log


def test_benchmark_serial_and_parallel_then_aggregate(mvtec_root: Path, tmp_path: Path) -> None:
    results, log = _run_benchmark(mvtec_root, tmp_path / "serial", n_jobs=1)
    parallel_results, _ = _run_benchmark(mvtec_root, tmp_path / "parallel", n_jobs=2)  # anomalib's ParallelRunner

    table = pd.read_csv(results)
    keys = ["model.class_path", "data.init_args.k_shot"]
    metrics = ["image_AUROC", "pixel_AUROC", "pixel_AUPRO", "val_image_AUROC", "val_pixel_AUROC"]
    serial, parallel = (t.sort_values(keys).reset_index() for t in (table, pd.read_csv(parallel_results)))
    assert serial[keys].equals(parallel[keys])
    pd.testing.assert_frame_equal(serial[metrics], parallel[metrics], atol=1e-4, rtol=0)
    assert len(table) == 4  # 2 models x 2 k x 1 seed
    assert set(table["model.class_path"]) == {"Pcsnet", "Padim"}
    # Both models of a k trained on the same images: one logged choice per k, repeated for each model.
    choices = set(re.findall(r"KShotMVTecAD widget: (k_shot=\d+, seed=0: .*)", log))
    assert len(choices) == 2, choices
    # Validation scores of every job (equal serial and parallel, above). They need not equal the test AUROC even
    # here, where validation is the test set: anomalib scores test outputs after clamping them to [0, 1].
    assert table[["val_image_AUROC", "val_pixel_AUROC"]].apply(lambda column: column.between(0, 1)).all().all()

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

    validation_out = tmp_path / "validation_tables"
    aggregate_main([str(results), "--out", str(validation_out), "--metrics", "val_image_AUROC", "val_pixel_AUROC"])
    validation_summary = pd.read_csv(validation_out / "summary.csv")
    assert set(validation_summary["metric"]) == {"val_image_AUROC", "val_pixel_AUROC"}
    assert not (validation_out / "image_auroc_vs_k.png").exists()  # the plot is of test image AUROC only
