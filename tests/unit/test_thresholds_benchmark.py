"""benchmarks/thresholds.py's table: the thresholds it recomputes from stored jobs and the figures it prints."""

import math
import runpy
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "thresholds.py"


@pytest.fixture(scope="module")
def thresholds() -> SimpleNamespace:
    """The script's functions (it is run as a module, not as ``__main__``: nothing is fitted)."""
    return SimpleNamespace(**runpy.run_path(str(SCRIPT), run_name="thresholds_benchmark_under_test"))


def _job(model: str, category: str, k: int, seed: int, test_scores: list[float], scale: float = 1.0) -> dict[str, Any]:
    """A stored job as run_job writes it: 2 defective then 2 good test images; 2 normal and 2 + 2 pseudo-anomalies."""
    normal, anomalies = [0.2 * scale, 0.3 * scale], [0.6 * scale, 0.7 * scale, 0.5 * scale, 0.55 * scale]
    report = {
        "operating_point": "f1",
        "preset": "default",
        "folds": 2,
        "normal_images": ["a.png", "b.png"],
        "pseudo_anomalies": 4,
        "failed_pseudo_anomalies": 0,
        "image_threshold": 0.45 * scale,
        "pixel_threshold": 0.5,
        "false_rejection_rate": 0.0,
        "miss_rate": 0.0,
        "image_f1": 1.0,
        "normal_scores": normal,
        "anomaly_scores": anomalies,
        "anomaly_kinds": ["perlin", "perlin", "patch_exchange", "patch_exchange"],
        "anchored": False,
        "normal_shifts": [0.0, 0.0],
        "anomaly_shifts": [0.0] * 4,
    }
    return {
        "model": model,
        "category": category,
        "k": k,
        "seed": seed,
        "thresholds": {
            "(a) anomalib, real anomalies": 0.5 * scale,
            "(b) anomalib, no anomalies": 0.9 * scale,
            "(c) anomalib, synthetic": 0.0,
        },
        "test_scores": [score * scale for score in test_scores],
        "test_labels": [1, 1, 0, 0],
        "val_scores": [0.8 * scale, 0.1 * scale],
        "val_labels": [1, 0],
        "report": report,
    }


def test_auroc_counts_pairs_and_ties_on_any_score_scale(thresholds: SimpleNamespace) -> None:
    """P(defective > good), ties as one half, also for distances far above 1 (Patchcore's scores)."""
    scores = [0.9, 0.5, 0.5, 0.1]  # defective 0.9 and 0.5; good 0.5 and 0.1: 3 pairs won, 1 tied of 4
    assert thresholds.test_auroc(_job("Pcsnet", "brick", 2, 0, scores)) == pytest.approx(0.875)
    assert thresholds.test_auroc(_job("Patchcore", "brick", 2, 0, scores, scale=40.0)) == pytest.approx(0.875)


def test_the_calibrated_threshold_is_recomputed_from_the_report_and_rejecting_everything_is_a_row(
    thresholds: SimpleNamespace,
) -> None:
    job = _job("Patchcore", "brick", 2, 0, [0.9, 0.42, 0.5, 0.1])
    computed = thresholds.job_thresholds(job)
    assert computed["calibrated (F1)"] == pytest.approx(0.45)  # midway: highest normal 0.3, lowest Perlin score 0.6
    assert computed["reject every image"] == -math.inf
    f1, false_rejection, miss = thresholds.job_rates(job, "reject every image", "test")
    assert (f1, false_rejection, miss) == (pytest.approx(2 * 2 / (2 * 2 + 2)), 1.0, 0.0)
    f1, false_rejection, miss = thresholds.job_rates(job, "calibrated (F1)", "test")
    assert (f1, false_rejection, miss) == (0.5, 0.5, 0.5)  # calls 0.9 (defective) and 0.5 (good); misses 0.42


def test_the_headline_averages_categories_then_complete_seeds_then_cells(thresholds: SimpleNamespace) -> None:
    separated, reversed_scores = [0.9, 0.8, 0.1, 0.0], [0.0, 0.1, 0.8, 0.9]
    jobs = [
        _job("Pcsnet", "brick", 2, 0, separated),
        _job("Pcsnet", "grass", 2, 0, reversed_scores),
        _job("Pcsnet", "brick", 2, 1, separated),
        _job("Pcsnet", "grass", 2, 1, separated),
        _job("Pcsnet", "brick", 2, 2, reversed_scores),  # seed 2 lacks grass: kept out of the means
        _job("Patchcore", "brick", 8, 0, separated),
    ]
    table = thresholds.headline(jobs)
    lines = {line.split(" | ")[0].strip("| "): line for line in table.splitlines()}
    # (a) at 0.5: F1 1 on separated jobs, 0 on the reversed one; seed means 0.5 and 1; cell means 75 and 100.
    assert lines["(a) anomalib, real anomalies"].endswith("| 100.0 (1 seed) | 75.0 ± 35.4 | 87.5 |")
    auroc = lines["*(the model's test image AUROC, no threshold)*"]
    assert "| 100.0 (1 seed) | 75.0 ± 35.4 |" in auroc
    coverage = thresholds.coverage(jobs)
    assert "- Pcsnet at k = 2: 5 jobs; categories brick, grass; seeds 0, 1 (per-category table only: brick seed 2)" in (
        coverage
    )
    assert "- Patchcore at k = 8: 1 jobs; categories brick; seeds 0" in coverage
    rows = [line for line in thresholds.per_category(jobs).splitlines() if line.startswith("| Pcsnet | 2 | brick |")]
    # brick over its 3 seeds: AUROC 1, 1, 0; calibrated (F1) threshold 0.45: F1 1, 1, 0.
    assert len(rows) == 1
    assert rows[0].startswith("| Pcsnet | 2 | brick | 3 | 66.7 ± 57.7 | 66.7 ± 57.7 |")
