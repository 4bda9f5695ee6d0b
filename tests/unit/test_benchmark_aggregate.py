"""The k-shot tables: grouping, mean ± std over seeds, the category average, Markdown, CSV and plot."""

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pcsnet_anomalib.benchmark.aggregate import (
    ALL_IMAGES,
    CATEGORY,
    K_SHOT,
    MODEL,
    SEED,
    aggregate,
    load_paper,
    load_results,
    main,
    summarize,
    to_markdown,
)

REPO = Path(__file__).resolve().parents[2]


def _value(model: str, category: str, k: int, seed: int) -> float:
    """A distinct, known score per cell: the tests recompute the expected statistics from it."""
    base = {"Pcsnet": 0.80, "Padim": 0.60}[model] + {"alpha": 0.0, "beta": 0.05}[category]
    return base + 0.01 * k + 0.02 * seed


def _write_results(path: Path, seeds: tuple[int, ...] = (0, 1, 2)) -> Path:
    rows = []
    for model in ("Pcsnet", "Padim"):
        for category in ("beta", "alpha"):
            for k in (1, 4):
                for seed in seeds:
                    value = _value(model, category, k, seed)
                    rows.append(
                        {
                            MODEL: f"anomalib.models.{model}" if model == "Padim" else model,
                            CATEGORY: category,
                            K_SHOT: k,
                            SEED: seed,
                            "model.init_args.n_features": 100 if model == "Padim" else None,
                            "image_AUROC": value,
                            "pixel_AUROC": value / 2,
                            "pixel_AUPRO": value / 4,
                            "image_F1Score": 0.5,
                        }
                    )
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_mean_and_sample_std_per_category_model_and_k(tmp_path: Path) -> None:
    summary = summarize(load_results([_write_results(tmp_path / "results.csv")]))
    assert set(summary["metric"]) == {"image_AUROC", "pixel_AUROC", "pixel_AUPRO"}  # F1 is not reported
    assert set(summary["model"]) == {"Pcsnet", "Padim"}  # class paths shortened
    # 3 metrics x (2 categories + mean) x 2 models x 2 k
    assert len(summary) == 3 * 3 * 2 * 2
    row = summary[
        (summary["metric"] == "image_AUROC")
        & (summary["category"] == "beta")
        & (summary["model"] == "Padim")
        & (summary["k"] == 4)
    ].iloc[0]
    values = [_value("Padim", "beta", 4, seed) for seed in (0, 1, 2)]
    assert row["mean"] == pytest.approx(np.mean(values))
    assert row["std"] == pytest.approx(np.std(values, ddof=1))  # 0.02 between seeds
    assert row["n"] == 3


def test_category_average_is_averaged_within_each_seed_first(tmp_path: Path) -> None:
    summary = summarize(load_results([_write_results(tmp_path / "results.csv")]))
    row = summary[
        (summary["metric"] == "pixel_AUPRO")
        & (summary["category"] == "mean")
        & (summary["model"] == "Pcsnet")
        & (summary["k"] == 1)
    ].iloc[0]
    per_seed = [np.mean([_value("Pcsnet", c, 1, seed) / 4 for c in ("alpha", "beta")]) for seed in (0, 1, 2)]
    assert row["mean"] == pytest.approx(np.mean(per_seed))
    # the categories differ by 0.05 but the seeds only by 0.02: the std is the seed-to-seed one
    assert row["std"] == pytest.approx(np.std(per_seed, ddof=1))
    assert list(summary[summary["metric"] == "image_AUROC"]["category"].unique()) == ["alpha", "beta", "mean"]


def test_duplicate_jobs_and_foreign_files_are_rejected(tmp_path: Path) -> None:
    results = load_results([_write_results(tmp_path / "results.csv")])
    with pytest.raises(ValueError, match="Several results"):
        summarize(pd.concat([results, results.iloc[:1]]))
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match=r"missing columns \['model.class_path'"):
        load_results([tmp_path / "other.csv"])
    with pytest.raises(ValueError, match="None of the metrics"):
        summarize(results.drop(columns=["image_AUROC", "pixel_AUROC", "pixel_AUPRO"]))


def test_a_labelled_file_gets_model_rows_of_its_own(tmp_path: Path) -> None:
    default = _write_results(tmp_path / "default.csv")
    fast = _write_results(tmp_path / "fast.csv")
    results = load_results([default, f"{fast}@fast"])
    assert sorted(results[MODEL].unique()) == ["Padim", "Padim (fast)", "Pcsnet", "Pcsnet (fast)"]
    summary = summarize(results)
    rows = summary[(summary["metric"] == "image_AUROC") & (summary["k"] == 4) & (summary["category"] == "alpha")]
    means = dict(zip(rows["model"], rows["mean"], strict=True))
    assert means["Pcsnet (fast)"] == pytest.approx(means["Pcsnet"])
    with pytest.raises(FileNotFoundError):
        load_results([f"{tmp_path / 'missing.csv'}@fast"])


def test_markdown_table_shape_bold_best_and_paper_rows(tmp_path: Path) -> None:
    summary = summarize(load_results([_write_results(tmp_path / "results.csv")]))
    paper = pd.DataFrame(
        {
            "metric": ["image_AUROC"],
            "category": ["mean"],
            "model": ["Pcsnet (paper)"],
            "k": [4],
            "mean": [0.999],
            "std": [math.nan],
            "n": [pd.NA],
        }
    )
    text = to_markdown(summary, paper)
    assert text.count("### ") == 3
    image = text.split("### image_AUROC (%)")[1].split("###")[0]
    rows = [line for line in image.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) == 3 * 2 + 1  # (2 categories + mean) x 2 models + the paper row
    alpha_pcsnet = next(line for line in rows if line.startswith("| alpha | Pcsnet |"))
    assert alpha_pcsnet == "| alpha | Pcsnet | **83.0 ± 2.0** | **86.0 ± 2.0** |"  # Pcsnet beats Padim here
    assert "| mean | Pcsnet (paper) |  | 99.9 |" in image  # paper rows: no std, never bold
    assert "| alpha | Padim | 63.0 ± 2.0 | 66.0 ± 2.0 |" in image


def test_one_seed_shows_means_only(tmp_path: Path) -> None:
    summary = summarize(load_results([_write_results(tmp_path / "results.csv", seeds=(0,))]))
    assert summary["std"].isna().all()
    assert "±" not in to_markdown(summary).split("\n\n", 1)[1]


def test_command_line_writes_markdown_csv_and_png(tmp_path: Path) -> None:
    results = _write_results(tmp_path / "results.csv")
    main([str(results), "--out", str(tmp_path / "out"), "--title", "Synthetic"])
    written = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert list(written.columns) == ["metric", "category", "model", "k", "mean", "std", "n"]
    assert len(written) == 36
    assert (tmp_path / "out" / "summary.md").read_text().startswith("# Synthetic\n")
    assert (tmp_path / "out" / "image_auroc_vs_k.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_shipped_paper_numbers_load_for_both_datasets(tmp_path: Path) -> None:
    mvtec = load_paper(REPO / "benchmarks" / "paper_results.csv", "mvtec_ad")
    assert len(mvtec) == 16 * 3  # 15 categories + the average, k = 2, 4, 8
    assert mvtec[(mvtec["category"] == "mean") & (mvtec["k"] == 8)]["mean"].item() == pytest.approx(0.949)
    mpdd = load_paper(REPO / "benchmarks" / "paper_results.csv", "mpdd")
    assert mpdd["mean"].item() == pytest.approx(0.802)
    with pytest.raises(ValueError, match="no rows for dataset 'btad'"):
        load_paper(REPO / "benchmarks" / "paper_results.csv", "btad")
    with pytest.raises(ValueError, match="both --paper and --paper-dataset"):
        aggregate([_write_results(tmp_path / "results.csv")], tmp_path / "out", paper="x.csv")


def test_jobs_on_all_images_form_a_k_all_column_after_every_k(tmp_path: Path) -> None:
    """``k_shot: null`` (all normal images) is written as an empty cell; it becomes the last column, "k=all"."""
    few = _write_results(tmp_path / "few.csv")
    everything = tmp_path / "all.csv"
    pd.DataFrame(
        [
            {MODEL: "Pcsnet", CATEGORY: "alpha", K_SHOT: None, SEED: 0, "image_AUROC": 0.97},
            {MODEL: "Pcsnet", CATEGORY: "beta", K_SHOT: None, SEED: 0, "image_AUROC": 0.91},
        ]
    ).to_csv(everything, index=False)
    summary = aggregate([few, everything], tmp_path / "out", metrics=["image_AUROC"])
    header = next(line for line in to_markdown(summary).splitlines() if line.startswith("| category"))
    assert header == "| category | model | k=1 | k=4 | k=all |"
    all_rows = summary[summary["k"] == ALL_IMAGES].set_index(["category", "model"])
    assert math.isclose(all_rows.loc[("mean", "Pcsnet"), "mean"], 0.94)
    assert ("mean", "Padim") not in all_rows.index  # no k=all job for Padim: its cell stays empty
    assert (tmp_path / "out" / "image_auroc_vs_k.png").is_file()
