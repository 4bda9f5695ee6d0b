"""Image thresholds without defect images, against anomalib's thresholds, on the offline demo data.

For each model x category x k x seed, the model is fitted on k normal images (``KShotPcsnetDemo``) with
:class:`~pcsnet_anomalib.ThresholdCalibration` attached, and its raw image scores on the demo's validation and test
halves are recorded. Image thresholds compared, each judged on the test half (real defects, never used to set a
threshold here except by the reference):

* ``calibrated (F1)``: the callback's threshold at its defaults (held-out training images + Perlin
  pseudo-anomalies, balanced F1, anchored for Pcsnet, not for Patchcore); ``calibrated (F1, anchored / not
  anchored / patch exchange / both)``: the same with one setting changed (``anchor``, ``pseudo_anomalies``),
  recomputed from the same run's report (``job_thresholds``);
* ``calibrated (FRR 1%)``: the ``false_rejection_rate=0.01`` operating point on the same held-out images;
* ``(a) anomalib, real anomalies``: anomalib's ``F1AdaptiveThreshold`` on the validation half (normal and real
  anomalous images): the reference a user with no defect images cannot have;
* ``(b) anomalib, no anomalies``: the same metric on the validation half's normal images only, i.e. anomalib's
  fall-back (the highest normal validation score); it uses normal images beyond the k;
* ``(c) anomalib, synthetic``: the same metric on anomalib's ``SyntheticAnomalyDataset`` (what
  ``ValSplitMode.SYNTHETIC`` validates on) built from the k training images, the only normal images a k-shot user
  has (anomalib's datamodule would split them off the training set instead, training on fewer images).

* ``reject every image``: the trivial threshold below every score, the F1 a model that does not separate good
  from defective images reaches by rejecting everything (80 % on the demo's test halves: 12 defective, 6 good).

Each job's scores are saved as JSON in ``--out/jobs``; an interrupted run resumes without redoing finished jobs.
The table (``--out/summary.md``) summarises every job stored there, whichever run wrote it, with the categories and
seeds of each (model, k) cell. Run from the repository root; the committed result is the full grid (3 categories x
3 seeds x k in {2, 8} for both models), written by these runs (one Pcsnet job at k = 8 is 5 fits of 200 steps:
40-60 minutes on the 2-core CI machine, depending on how many jobs share it)::

    .venv/bin/python benchmarks/thresholds.py --out benchmarks/results/thresholds --models Patchcore
    .venv/bin/python benchmarks/thresholds.py --out benchmarks/results/thresholds --models Pcsnet --k 2
    .venv/bin/python benchmarks/thresholds.py --out benchmarks/results/thresholds --models Pcsnet --k 8

The last one was run per category and seed (``--categories grass --seeds 1``), several in parallel with
``OMP_NUM_THREADS=1``; each job seeds itself from its own seed, so the split changes no setting (the thread count
can change floating-point rounding only).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from anomalib.data.utils.synthetic import SyntheticAnomalyDataset  # what ValSplitMode.SYNTHETIC uses
from anomalib.engine import Engine
from anomalib.metrics import F1AdaptiveThreshold
from anomalib.models import Patchcore
from anomalib.models.components import MemoryBankMixin
from lightning.pytorch import seed_everything

from pcsnet_anomalib import KShotPcsnetDemo, Pcsnet, ThresholdCalibration
from pcsnet_anomalib.backbones.weights import register_packaged_timm_weights
from pcsnet_anomalib.callbacks.calibration import (
    CalibrationReport,
    f1_optimal_threshold,
    false_rejection_threshold,
    raw_predictions,
)

BACKBONE = "tf_efficientnet_lite0.package_in1k"
MODEL_CLASSES = {"Patchcore": Patchcore, "Pcsnet": Pcsnet}
METHODS = (
    "calibrated (F1)",
    "calibrated (F1, anchored)",
    "calibrated (F1, not anchored)",
    "calibrated (F1, patch exchange)",
    "calibrated (F1, both)",
    "calibrated (FRR 1%)",
    "(a) anomalib, real anomalies",
    "(b) anomalib, no anomalies",
    "(c) anomalib, synthetic",
    "reject every image",
)
HEADLINE = ("calibrated (F1)", "calibrated (FRR 1%)", *METHODS[-4:])  # the rows of the per-cell F1 table


def build_model(name: str, seed: int, fast: bool) -> tuple[Any, int]:
    """The model at the offline benchmark's settings (packaged EfficientNet-Lite0) and its epoch count."""
    if name == "Patchcore":
        return Patchcore(backbone=BACKBONE, layers=["blocks.2", "blocks.4"], pre_trained=True), 1
    extra = {"grid_stride": 4.667, "cas_channels": 448} if fast else {}
    model = Pcsnet(backbone=BACKBONE, layers=["blocks.1", "blocks.2", "blocks.4"], pre_trained=True, seed=seed, **extra)
    return model, 100 if fast else 50


def dataset_scores(model: Any, dataset: Any) -> tuple[list[float], list[int]]:
    """Raw image scores and labels of every image of an anomalib dataset."""
    items = [dataset[index] for index in range(len(dataset))]
    scores, _, _ = raw_predictions(model, torch.stack([item.image for item in items]).float())
    return scores.tolist(), [int(item.gt_label) for item in items]


def anomalib_threshold(scores: list[float], labels: list[int]) -> float:
    """Image threshold as anomalib sets it: ``F1AdaptiveThreshold`` over (score, label) pairs, fall-back included."""
    metric = F1AdaptiveThreshold(fields=["pred_score", "gt_label"])
    metric.update(SimpleNamespace(pred_score=torch.tensor(scores), gt_label=torch.tensor(labels)))
    return float(metric.compute())


def run_job(model_name: str, category: str, k: int, seed: int, fast: bool, folds: int, work: Path) -> dict[str, Any]:
    """Fit one model with calibration; return every threshold and the test scores."""
    seed_everything(seed, workers=True)
    datamodule = KShotPcsnetDemo(
        category=category, k_shot=k, k_shot_seed=seed, train_batch_size=2, eval_batch_size=8, num_workers=0
    )
    model, epochs = build_model(model_name, seed, fast)
    calibration = ThresholdCalibration(folds=folds, pseudo_anomalies="both", seed=seed)
    engine = Engine(
        callbacks=[calibration],
        default_root_dir=work,
        logger=False,
        accelerator="cpu",
        max_epochs=epochs,
        check_val_every_n_epoch=epochs,
        enable_progress_bar=False,
    )
    started = time.perf_counter()
    engine.fit(model, datamodule=datamodule)
    fit_seconds = time.perf_counter() - started
    report = calibration.report
    assert report is not None
    val_scores, val_labels = dataset_scores(model, datamodule.val_data)
    test_scores, test_labels = dataset_scores(model, datamodule.test_data)
    with tempfile.TemporaryDirectory() as synthetic_root:
        synthetic = SyntheticAnomalyDataset.from_dataset(datamodule.train_data)
        synthetic_scores, synthetic_labels = dataset_scores(model, synthetic)
        del synthetic, synthetic_root
    normal_val = [score for score, label in zip(val_scores, val_labels, strict=True) if label == 0]
    thresholds = {
        "(a) anomalib, real anomalies": anomalib_threshold(val_scores, val_labels),
        "(b) anomalib, no anomalies": anomalib_threshold(normal_val, [0] * len(normal_val)),
        "(c) anomalib, synthetic": anomalib_threshold(synthetic_scores, synthetic_labels),
    }
    return {
        "model": model_name,
        "category": category,
        "k": k,
        "seed": seed,
        "fit_seconds": fit_seconds,
        "folds": folds,
        "thresholds": thresholds,
        "test_scores": test_scores,
        "test_labels": test_labels,
        "val_scores": val_scores,
        "val_labels": val_labels,
        "report": dataclasses.asdict(report),
    }


def calibration_scores(report: CalibrationReport, kinds: set[str], anchored: bool) -> tuple[list[float], list[float]]:
    """Normal and pseudo-anomaly scores of a report as the callback sees them with ``kinds`` and ``anchored``."""

    def score(used: float, shift: float) -> float:
        raw = used - shift if report.anchored else used
        return raw + shift if anchored else raw

    normal = [score(*pair) for pair in zip(report.normal_scores, report.normal_shifts, strict=True)]
    anomalies = [
        score(used, shift)
        for used, shift, kind in zip(report.anomaly_scores, report.anomaly_shifts, report.anomaly_kinds, strict=True)
        if kind in kinds
    ]
    return normal, anomalies


def balanced_f1_threshold(normal: list[float], anomalies: list[float]) -> float:
    """The callback's F1 operating point on these scores."""
    scores = torch.tensor(normal + anomalies)
    return f1_optimal_threshold(scores, torch.arange(len(scores)) >= len(normal), balanced=True)


def job_thresholds(job: dict[str, Any]) -> dict[str, float]:
    """Every threshold of a job: the calibrated ones from its stored report, anomalib's as the job computed them.

    Settings other than the run's (generators, anchoring) are recomputed from the report's scores with the
    callback's own functions: the generators draw from separate seeded streams, so each subset holds the images the
    callback scores with that setting alone (equal up to the float rounding of batched inference), and the report
    records the anchoring shifts whether applied or not.
    """
    report_fields = dict(job["report"])
    report_fields.setdefault("anchored", True)  # jobs written at 78460ab, before `anchored` was recorded: always on
    report = CalibrationReport(**report_fields)
    default = not issubclass(MODEL_CLASSES[job["model"]], MemoryBankMixin)  # the callback's anchor=None rule
    perlin, patch_exchange = {"perlin"}, {"patch_exchange"}
    normal, _ = calibration_scores(report, perlin, default)
    calibrated = {
        "calibrated (F1)": balanced_f1_threshold(*calibration_scores(report, perlin, default)),
        "calibrated (F1, anchored)": balanced_f1_threshold(*calibration_scores(report, perlin, True)),
        "calibrated (F1, not anchored)": balanced_f1_threshold(*calibration_scores(report, perlin, False)),
        "calibrated (F1, patch exchange)": balanced_f1_threshold(*calibration_scores(report, patch_exchange, default)),
        "calibrated (F1, both)": balanced_f1_threshold(*calibration_scores(report, perlin | patch_exchange, default)),
        "calibrated (FRR 1%)": false_rejection_threshold(torch.tensor(normal), 0.01),
    }
    anomalib = {method: value for method, value in job["thresholds"].items() if method.startswith("(")}
    return calibrated | anomalib | {"reject every image": -math.inf}


def rates(threshold: float, scores: list[float], labels: list[int]) -> tuple[float, float, float]:
    """Image F1, false-rejection rate and miss rate of ``score > threshold``."""
    score, label = np.asarray(scores), np.asarray(labels).astype(bool)
    called = score > threshold
    true_positives = int((called & label).sum())
    f1 = 2 * true_positives / (int(called.sum()) + int(label.sum()))
    return f1, float(called[~label].mean()), float((~called[label]).mean())


def job_rates(job: dict[str, Any], method: str, split: str) -> tuple[float, float, float]:
    """``rates`` of a job's ``method`` threshold on its ``split`` ("test" or "val") scores."""
    return rates(job_thresholds(job)[method], job[f"{split}_scores"], job[f"{split}_labels"])


def test_auroc(job: dict[str, Any]) -> float:
    """The fitted model's image AUROC on the test half (how well any threshold could do): P(defective > good).

    Counted over all (defective, good) pairs, ties as one half; computed here because torchmetrics' ``binary_auroc``
    reads scores outside [0, 1] (Patchcore's distances) as logits and saturates them.
    """
    scores, labels = np.asarray(job["test_scores"]), np.asarray(job["test_labels"]).astype(bool)
    difference = scores[labels][:, None] - scores[~labels][None, :]
    return float((difference > 0).mean() + 0.5 * (difference == 0).mean())


def cell_jobs(jobs: list[dict[str, Any]], model: str, k: int) -> list[dict[str, Any]]:
    """The jobs of one (model, k) cell."""
    return [job for job in jobs if (job["model"], job["k"]) == (model, k)]


def complete_seeds(jobs: list[dict[str, Any]], model: str, k: int) -> list[int]:
    """The seeds that have a (model, k) job for every category the cell has: those the cell's means average."""
    chosen = cell_jobs(jobs, model, k)
    categories_of = {seed: {j["category"] for j in chosen if j["seed"] == seed} for seed in {j["seed"] for j in chosen}}
    return sorted(seed for seed, categories in categories_of.items() if categories == {j["category"] for j in chosen})


def per_seed(jobs: list[dict[str, Any]], model: str, k: int, value: Callable[[dict[str, Any]], Any]) -> np.ndarray:
    """``value`` of each (model, k) job averaged over categories, one row per complete seed (``complete_seeds``).

    A seed run on some categories only would weigh them more than the others: its jobs appear in the per-category
    table only.
    """
    in_cell = cell_jobs(jobs, model, k)
    rows = []
    for seed in complete_seeds(jobs, model, k):
        chosen = [job for job in in_cell if job["seed"] == seed]
        rows.append(np.mean([value(job) for job in chosen], axis=0))
    return np.asarray(rows)


def mean_std(values: np.ndarray) -> str:
    """Mean ± sample std over seeds (first axis) in percent, or the single seed's value."""
    if len(values) == 1:
        return f"{values[0] * 100:.1f} (1 seed)"
    return f"{values.mean() * 100:.1f} ± {values.std(ddof=1) * 100:.1f}"


def cells(jobs: list[dict[str, Any]]) -> list[tuple[str, int]]:
    """The (model, k) pairs that have jobs, in table order."""
    return sorted({(job["model"], job["k"]) for job in jobs})


def coverage(jobs: list[dict[str, Any]]) -> str:
    """A bullet per (model, k) cell: its categories, the seeds its means average and the jobs they leave out."""
    lines = []
    for model, k in cells(jobs):
        chosen = cell_jobs(jobs, model, k)
        categories = ", ".join(sorted({job["category"] for job in chosen}))
        complete = complete_seeds(jobs, model, k)
        extra = sorted(f"{job['category']} seed {job['seed']}" for job in chosen if job["seed"] not in complete)
        left_out = f" (per-category table only: {', '.join(extra)})" if extra else ""
        seeds = ", ".join(str(seed) for seed in complete)
        lines.append(f"- {model} at k = {k}: {len(chosen)} jobs; categories {categories}; seeds {seeds}{left_out}")
    return "\n".join(lines)


def per_category(jobs: list[dict[str, Any]]) -> str:
    """Test-half image F1 of the headline thresholds and test image AUROC per (model, k, category), over its seeds."""
    lines = [
        f"| model | k | category | seeds | image AUROC | {' | '.join(HEADLINE)} |",
        "| --- | ---: | --- | ---: |" + " ---: |" * (len(HEADLINE) + 1),
    ]
    for model, k in cells(jobs):
        in_cell = cell_jobs(jobs, model, k)
        for category in sorted({job["category"] for job in in_cell}):
            chosen = [job for job in in_cell if job["category"] == category]
            figures = [mean_std(np.asarray([test_auroc(job) for job in chosen]))]
            figures += [mean_std(np.asarray([job_rates(job, m, "test")[0] for job in chosen])) for m in HEADLINE]
            lines.append(f"| {model} | {k} | {category} | {len(chosen)} | {' | '.join(figures)} |")
    return "\n".join(lines)


def summarise(jobs: list[dict[str, Any]], split: str = "test") -> str:
    """Markdown table on ``split``: mean ± std over seeds of the category mean, per model, k and threshold."""
    lines = [
        "| model | k | threshold | image F1 (%) | false rejection (%) | miss rate (%) |",
        "| --- | ---: | --- | ---: | ---: | ---: |",
    ]
    for model, k in cells(jobs):
        for method in METHODS:
            values = per_seed(jobs, model, k, lambda j, m=method: job_rates(j, m, split))
            lines.append(f"| {model} | {k} | {method} | {' | '.join(mean_std(column) for column in values.T)} |")
    return "\n".join(lines)


def headline(jobs: list[dict[str, Any]]) -> str:
    """Test-half image F1 per (model, k) and their mean, for the headline thresholds; the models' image AUROC."""
    pairs = cells(jobs)
    header = " | ".join(f"{model} k = {k}" for model, k in pairs)
    lines = [f"| threshold | {header} | mean |", "| --- |" + " ---: |" * (len(pairs) + 1)]
    for method in HEADLINE:
        means = []
        row = []
        for model, k in pairs:
            values = per_seed(jobs, model, k, lambda j, m=method: job_rates(j, m, "test")[0])
            means.append(values.mean())
            row.append(mean_std(values))
        lines.append(f"| {method} | {' | '.join(row)} | {np.mean(means) * 100:.1f} |")
    aurocs = [mean_std(per_seed(jobs, model, k, test_auroc)) for model, k in pairs]
    lines.append(f"| *(the model's test image AUROC, no threshold)* | {' | '.join(aurocs)} | |")
    return "\n".join(lines)


def main() -> None:
    """Run the grid (resuming finished jobs) and write the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--models", nargs="+", default=["Patchcore", "Pcsnet"], choices=["Patchcore", "Pcsnet"])
    parser.add_argument("--categories", nargs="+", default=["brick", "grass", "gravel"])
    parser.add_argument("--k", nargs="+", type=int, default=[2, 8])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--pcsnet-fast", action="store_true", help="Pcsnet's fast preset (100 epochs)")
    parser.add_argument("--folds", type=int, default=4, help="ThresholdCalibration's folds")
    args = parser.parse_args()
    register_packaged_timm_weights()
    jobs_dir = args.out / "jobs"
    jobs_dir.mkdir(parents=True, exist_ok=True)
    for model in args.models:
        for k in args.k:
            for seed in args.seeds:
                for category in args.categories:
                    path = jobs_dir / f"{model}_{category}_k{k}_seed{seed}.json"
                    if not path.exists():
                        with tempfile.TemporaryDirectory() as work:
                            job = run_job(model, category, k, seed, args.pcsnet_fast, args.folds, Path(work))
                        path.write_text(json.dumps(job))
                        print(f"{path.name}: fit + calibration {job['fit_seconds']:.0f} s", flush=True)
    jobs = [json.loads(path.read_text()) for path in sorted(jobs_dir.glob("*.json"))]
    text = (
        "# Image thresholds without defect images (offline demo data)\n\n"
        "Mean ± sample std over seeds of the mean over categories, in percent, over the seeds that cover every "
        "category of a (model, k) cell. Every job stored in jobs/:\n\n"
        f"{coverage(jobs)}\n\n"
        "## Image F1 on the test half, per model and k\n\n"
        "'reject every image' is the trivial threshold below every score: with 12 defective and 6 good images per "
        "category it scores 80.0 % F1, the level a threshold reaches on a model that does not separate the two.\n\n"
        f"{headline(jobs)}\n\n"
        "Per category (mean ± std over that category's seeds):\n\n"
        f"{per_category(jobs)}\n\n"
        "## On the test half (real defects; no threshold was set on it)\n\n"
        f"{summarise(jobs, 'test')}\n\n"
        "## On the validation half (how the default pseudo-anomaly generator was chosen; (a) is fitted on it)\n\n"
        f"{summarise(jobs, 'val')}\n"
    )
    (args.out / "summary.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
