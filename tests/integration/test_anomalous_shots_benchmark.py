"""End to end at tiny size: the few-real-anomalies protocol in the benchmark, with fits shared between jobs."""

import json
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
  image_size: [128, 128]
  center_crop_size: null
  n_jobs: 1
  pixel_ap: true
  reuse_fits: {reuse}
  results_dir: {results}
  trainer:
    Prn: {{max_epochs: 1}}
  limits:
    Prn: {{train_on_anomalous_shots: [true]}}
    Padim: {{train_on_anomalous_shots: [false], anomalous_shots: {padim_m}, anomalous_shots_seed: {padim_seeds}}}
benchmark:
  seed: 42
  model:
    grid:
      - class_path: Prn
        init_args: {{backbone: resnet18, pre_trained: false, input_size: 128, msa_layers: 1}}
      - class_path: Padim
        init_args: {{backbone: resnet18, pre_trained: false, layers: [layer1, layer2]}}
  data:
    class_path: KShotMVTecAD
    init_args:
      root: {root}
      category: widget
      num_workers: 0
      eval_batch_size: 4
      k_shot: null
      anomalous_shots: {{grid: [1, 2]}}
      anomalous_shots_seed: {{grid: [0, 1]}}
      train_on_anomalous_shots: {{grid: [true, false]}}
"""


def _run(folder: Path, results: Path, reuse: bool, padim_m: str = "[1, 2]", padim_seeds: str = "[0, 1]") -> None:
    config = folder / f"benchmark_{results.name}.yaml"
    config.write_text(
        CONFIG.format(
            root=folder / "data", results=results, reuse=str(reuse).lower(), padim_m=padim_m, padim_seeds=padim_seeds
        )
    )
    command = [sys.executable, "-m", "pcsnet_anomalib.benchmark", "--config", str(config)]
    completed = subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=900, check=False)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert not (results / "errors").exists() or not any((results / "errors").iterdir()), "a job failed"


def test_anomalous_shot_rows_share_unsupervised_fits_and_tabulate_over_m(make_mvtec, tmp_path: Path) -> None:
    make_mvtec(n_train=6, n_test_good=4, n_test_defect=6)
    results = tmp_path / "shared"
    _run(tmp_path, results, reuse=True)

    table = pd.read_csv(results / "results.csv")
    table["model"] = table["model.class_path"].str.rsplit(".", n=1).str[-1]
    assert sorted(table["model"]) == ["Padim"] * 4 + ["Prn"] * 4  # m in {1, 2} x 2 selection seeds each
    assert "pixel_AUPR" in table.columns
    assert table["pixel_AUPR"].between(0, 1).all()
    names = sorted(path.name for path in (results / "jobs").glob("*.json"))
    assert sum(name.startswith("Prn-widget-kall-s0-m2-a1-") for name in names) == 1
    # Padim trains on the same normal images whatever m and the selection seed: one fit, three jobs reuse it.
    # Prn trains on its m real anomalies too, so each of its jobs has a training set, and a fit, of its own.
    padim = table[table["model"] == "Padim"]
    assert sorted(padim["fit_reused"]) == [False, True, True, True]
    assert len(list((results / "fits").glob("Padim-widget-*.ckpt"))) == 1
    assert len(list((results / "fits").glob("Prn-widget-*.ckpt"))) == 4
    assert not table.loc[table["model"] == "Prn", "fit_reused"].any()
    assert (padim["fit_duration"] > 0).all(), "reusing jobs report the fit they share"

    # A reused fit scores a test set exactly as a job that fits on its own does.
    alone = tmp_path / "alone"
    _run(tmp_path, alone, reuse=False, padim_m="[2]", padim_seeds="[1]")
    (alone_row,) = [json.loads(path.read_text()) for path in (alone / "jobs").glob("Padim-*.json")]
    (shared_row,) = [json.loads(path.read_text()) for path in (results / "jobs").glob("Padim-widget-kall-s0-m2-a1-*")]
    assert shared_row["fit_reused"]
    for metric in ("image_AUROC", "pixel_AUROC", "pixel_AUPRO", "pixel_AUPR", "val_image_AUROC"):
        assert shared_row[metric] == alone_row[metric], metric

    out = tmp_path / "summary"
    metrics = ["image_AUROC", "pixel_AUPRO", "pixel_AUPR"]
    aggregate_main(
        [str(results / "results.csv"), "--out", str(out), "--sweep", "anomalous_shots", "--metrics", *metrics]
    )
    summary = pd.read_csv(out / "summary.csv")
    assert set(summary["k"]) == {1, 2}  # the columns are m
    assert set(summary["metric"]) == set(metrics)
    assert (summary["n"] == 2).all(), "two selection seeds per cell"
    markdown = (out / "summary.md").read_text()
    assert "| category | model | m=1 | m=2 |" in markdown
    assert "seed(s) of the m selection" in markdown
    assert (out / "image_auroc_vs_m.png").stat().st_size > 0
