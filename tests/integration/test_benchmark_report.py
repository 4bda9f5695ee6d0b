"""End to end at tiny size: the resumable benchmark with latency and heatmaps, a failing job, and its report."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from pcsnet_anomalib.benchmark.report import main as report_main

pytestmark = pytest.mark.slow

CONFIG = """
accelerator: cpu
protocol:
  image_size: [64, 64]
  center_crop_size: null
  n_jobs: 1
  results_dir: {results}
  latency_runs: 2
  showcase_k: 1
  trainer:
    Padim-small: {{max_epochs: 1}}
  limits:
    Dfm: {{k_shot_seed: [0]}}
  k_shot_seeds:
    2: [1]
benchmark:
  seed: 42
  model:
    grid:
      - class_path: Padim
        label: Padim-small
        init_args: {{backbone: resnet18, pre_trained: false, layers: [layer1, layer2]}}
      - class_path: Dfm
        init_args: {{backbone: resnet18, pre_trained: false, layer: layer2}}
  data:
    class_path: KShotMVTecAD
    init_args:
      root: {root}
      category: widget
      num_workers: 0
      eval_batch_size: 4
      k_shot: {{grid: [1, 2, null]}}
      k_shot_seed: {{grid: [0, 1]}}
"""


def _run(config: Path, folder: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "pcsnet_anomalib.benchmark", "--config", str(config)]
    return subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=600, check=False)


def test_resumable_benchmark_with_latency_heatmaps_and_a_failing_job(mvtec_root: Path, tmp_path: Path) -> None:
    results = tmp_path / "results"
    config = tmp_path / "benchmark.yaml"
    config.write_text(CONFIG.format(root=mvtec_root, results=results))

    first = _run(config, tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    jobs = sorted(path.name for path in (results / "jobs").glob("*.json"))
    # Padim: k=1 x 2 seeds, k=2 x seed 1 (k_shot_seeds), k=all once (the same images for every seed); Dfm (limited
    # to seed 0, so no k=2): k=all only, since its PCA cannot fit one image (that job fails, is reported, and does
    # not stop the others).
    assert len(jobs) == 5, jobs
    k2_jobs = [name for name in jobs if "-k2-" in name]
    assert len(k2_jobs) == 1
    assert k2_jobs[0].startswith("Padim-small-widget-k2-s1-")
    assert sum(name.startswith("Padim-small-widget-kall-") for name in jobs) == 1
    errors = [json.loads(path.read_text()) for path in (results / "errors").glob("*.json")]
    assert len(errors) == 1, "Dfm at k=1, seed 0 (seed 1 is outside its limits)"
    assert errors[0]["model.class_path"] == "Dfm"
    assert errors[0]["data.init_args.k_shot"] == 1
    table = pd.read_csv(results / "results.csv")
    assert len(table) == 5
    showcase = (table["data.init_args.k_shot"] == 1) & (table["data.init_args.k_shot_seed"] == 0)
    assert (table.loc[showcase, "latency_ms"] > 0).all()
    assert table.loc[~showcase, "latency_ms"].isna().all(), "latency is timed in the showcase jobs only"
    assert set(table["model.label"].dropna()) == {"Padim-small"}
    # Heatmaps: the k=1, seed-0 jobs that finished, one map per defect type (the fixture has one, "stain").
    (heatmap_folder,) = (results / "heatmaps").iterdir()
    index = json.loads((heatmap_folder / "index.json").read_text())
    assert [entry["label"] for entry in index.values()] == ["stain"]
    assert heatmap_folder.name.startswith("Padim-small-widget-k1-s0-")

    stamps = {path.name: path.stat().st_mtime_ns for path in (results / "jobs").glob("*.json")}
    second = _run(config, tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert {path.name: path.stat().st_mtime_ns for path in (results / "jobs").glob("*.json")} == stamps
    runs = json.loads((results / "runs.json").read_text())
    assert len(runs) == 2
    assert runs[1]["wall_s"] < runs[0]["wall_s"], "the second run only re-tried the failing jobs"

    out = tmp_path / "report"
    report_main([str(results), "--out", str(out), "--latency-k", "1", "--title", "Tiny"])
    readme = (out / "README.md").read_text()
    assert readme.startswith("# Tiny")
    assert "over 2 run(s)" in readme
    assert "| Padim-small |" in readme
    assert "## Jobs that failed" in readme
    assert "Dfm" in readme.split("## Jobs that failed")[1]
    for picture in ("accuracy_vs_latency.png", "heatmaps.png", "image_auroc_vs_k.png"):
        assert (out / picture).stat().st_size > 0, picture

    # Narrowing the grid's limits leaves the dropped job's result on disk but out of results.csv.
    dfm_limit = "Dfm: {{k_shot_seed: [0]}}"
    narrowed = CONFIG.replace(dfm_limit, dfm_limit + "\n    Padim-small: {{k_shot: [1, null]}}")
    config.write_text(narrowed.format(root=mvtec_root, results=results))
    third = _run(config, tmp_path)
    assert third.returncode == 0, third.stderr[-3000:]
    table = pd.read_csv(results / "results.csv")
    assert len(table) == 4
    assert 2 not in set(table["data.init_args.k_shot"])
    assert len(list((results / "jobs").glob("*.json"))) == 5
