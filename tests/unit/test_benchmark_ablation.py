"""The validation-only comparison table: averages per demo kind, same jobs per column, never the test columns."""

from pathlib import Path

import pandas as pd
import pytest

from pcsnet_anomalib.benchmark.ablation import main, validation_table
from pcsnet_anomalib.benchmark.aggregate import CATEGORY, K_SHOT, MODEL, SEED


def _results(rows: list[tuple[str, str, int, int, float, float]]) -> pd.DataFrame:
    """Rows of (model, category, k, seed, val image AUROC, val pixel AUROC) on demo data v2, with test columns."""
    frame = pd.DataFrame(rows, columns=[MODEL, CATEGORY, K_SHOT, SEED, "val_image_AUROC", "val_pixel_AUROC"])
    return frame.assign(**{"data.class_path": "KShotPcsnetDemo", "data.init_args.version": 2}).assign(
        image_AUROC=0.123, pixel_AUROC=0.456
    )


def test_averages_seeds_then_categories_per_kind() -> None:
    results = _results(
        [
            ("A", "brick", 1, 0, 0.6, 0.9),
            ("A", "brick", 1, 1, 0.8, 0.7),  # brick: 0.7, 0.8
            ("A", "grass", 1, 0, 0.5, 0.5),
            ("A", "grass", 1, 1, 0.5, 0.5),  # grass: 0.5, 0.5
            ("A", "plate", 1, 0, 1.0, 1.0),
            ("A", "plate", 1, 1, 1.0, 1.0),
            ("A", "plate", 2, 0, 0.0, 0.0),  # another k: not read
        ]
    )
    table = validation_table(results, k=1)
    assert table.loc["A", ("val_image_AUROC", "texture")] == pytest.approx(60.0)
    assert table.loc["A", ("val_pixel_AUROC", "texture")] == pytest.approx(65.0)
    assert table.loc["A", ("val_image_AUROC", "object")] == pytest.approx(100.0)
    assert table.loc["A", ("val_image_AUROC", "all")] == pytest.approx(73.3)  # (70 + 50 + 100) / 3, to 0.1


def test_compares_only_categories_every_model_ran_alike_and_never_reads_test_columns() -> None:
    results = _results(
        [
            ("A", "brick", 1, 0, 0.6, 0.6),
            ("B", "brick", 1, 0, 0.8, 0.8),
            ("A", "grass", 1, 0, 0.1, 0.1),  # B has no grass: left out for both
            ("A", "moon", 1, 0, 0.2, 0.2),
            ("A", "moon", 1, 1, 0.2, 0.2),
            ("B", "moon", 1, 0, 0.9, 0.9),  # seeds differ: left out
        ]
    )
    table = validation_table(results, k=1, models=["B", "A"])
    assert list(table.index) == ["B", "A"]
    assert table[("val_image_AUROC", "texture")].tolist() == pytest.approx([80.0, 60.0])
    assert table.equals(validation_table(results.drop(columns=["image_AUROC", "pixel_AUROC"]), k=1, models=["B", "A"]))


def test_clear_errors() -> None:
    results = _results([("A", "brick", 1, 0, 0.6, 0.6)])
    with pytest.raises(ValueError, match=r"No rows at k=1 for \['C'\]"):
        validation_table(results, k=1, models=["A", "C"])
    with pytest.raises(ValueError, match="val_pixel_AUROC"):
        validation_table(results.drop(columns=["val_pixel_AUROC"]), k=1)
    with pytest.raises(ValueError, match="demo-data"):
        validation_table(results.assign(**{"data.class_path": "KShotMVTecAD"}), k=1)


def test_command_writes_the_table(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    _results([("A", "screw", 1, 0, 0.75, 0.5)]).to_csv(folder / "results.csv", index=False)
    main([str(folder), "--k", "1", "--out", str(tmp_path / "table.md")])
    text = (tmp_path / "table.md").read_text()
    assert "| A | 75.0 | 75.0 | 50.0 | 50.0 |" in text
    assert "image_AUROC oriented" in text
