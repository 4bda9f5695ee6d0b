"""Choosing settings on validation scores: which candidate the rule picks, and what it refuses."""

from pathlib import Path

import pandas as pd
import pytest

from pcsnet_anomalib.benchmark.select import candidates_from_config, choose, main, validation_table

CONFIG = """
benchmark:
  model:
    grid:
      - class_path: Pcsnet
        init_args: {backbone: resnet18}
      - class_path: Padim
        init_args: {backbone: resnet18}
      - class_path: Pcsnet
        init_args: {backbone: resnet18, grid_stride: 7.0, cas_channels: 44, prior_channels: 100}
      - class_path: Pcsnet
        init_args: {backbone: resnet18, grid_stride: 7.0, cas_channels: 88, num_epochs: 100}
"""
REFERENCE = "grid_stride=3.5, cas_channels=default, prior_channels=200, num_epochs=50"
CHEAPEST = "grid_stride=7, cas_channels=44, prior_channels=100, num_epochs=50"
WIDER = "grid_stride=7, cas_channels=88, prior_channels=200, num_epochs=100"


def _rows(settings: dict, scores: dict[int, tuple[float, float]], model: str = "Pcsnet") -> list[dict]:
    """One row per k and seed 0/1, with the given (image, pixel) validation AUROC +- 0.01 over the seeds."""
    rows = []
    for k, (image, pixel) in scores.items():
        for seed, offset in ((0, -0.01), (1, 0.01)):
            row = {"model.class_path": f"anomalib.models.{model}", "data.init_args.k_shot": k}
            row |= {"data.init_args.k_shot_seed": seed, "val_image_AUROC": image + offset}
            row |= {"val_pixel_AUROC": pixel + offset, "image_AUROC": 0.0}  # test scores: never read
            rows.append(row | {f"model.init_args.{name}": value for name, value in settings.items()})
    return rows


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "selection.yaml"
    path.write_text(CONFIG)
    return path


def _results(cheapest: dict[int, tuple[float, float]], wider: dict[int, tuple[float, float]]) -> pd.DataFrame:
    reference = {1: (0.95, 0.97), 2: (0.90, 0.95)}
    return pd.DataFrame(
        _rows({}, reference)
        + _rows({}, {1: (0.5, 0.5), 2: (0.5, 0.5)}, model="Padim")  # other models are ignored
        + _rows({"grid_stride": 7.0, "cas_channels": 44, "prior_channels": 100}, cheapest)
        + _rows({"grid_stride": 7.0, "cas_channels": 88, "num_epochs": 100}, wider)
    )


def test_config_order_gives_reference_then_candidates(config: Path) -> None:
    entries = candidates_from_config(config)
    assert entries == [(3.5, None, 200.0, 50.0), (7.0, 44.0, 100.0, 50.0), (7.0, 88.0, 200.0, 100.0)]


def test_the_cheapest_candidate_within_tolerance_at_every_k_is_chosen(config: Path) -> None:
    results = _results(cheapest={1: (0.945, 0.96), 2: (0.895, 0.94)}, wider={1: (0.95, 0.97), 2: (0.9, 0.95)})
    choice = choose(validation_table(results, candidates_from_config(config)))
    assert choice.eligible == {CHEAPEST: True, WIDER: True}
    assert choice.chosen == CHEAPEST
    assert choice.table.loc[(REFERENCE, 2), ("val_image_AUROC", "mean")] == pytest.approx(0.90)
    assert choice.table.loc[(REFERENCE, 2), ("val_image_AUROC", "std")] == pytest.approx(0.01 * 2**0.5)
    assert (choice.table[("n", "seeds")] == 2).all()


def test_a_candidate_losing_at_one_k_or_on_pixels_is_not_eligible(config: Path) -> None:
    entries = candidates_from_config(config)
    image_loss_at_k2 = _results(cheapest={1: (0.95, 0.97), 2: (0.85, 0.95)}, wider={1: (0.96, 0.97), 2: (0.9, 0.95)})
    choice = choose(validation_table(image_loss_at_k2, entries))
    assert choice.eligible == {CHEAPEST: False, WIDER: True}
    assert choice.chosen == WIDER

    pixel_loss = _results(cheapest={1: (0.95, 0.94), 2: (0.9, 0.95)}, wider={1: (0.5, 0.97), 2: (0.9, 0.95)})
    none_eligible = choose(validation_table(pixel_loss, entries))
    assert none_eligible.chosen is None
    assert none_eligible.worst_image_loss == pytest.approx({CHEAPEST: 0.0, WIDER: 0.45})
    assert none_eligible.nearest == CHEAPEST
    assert choose(validation_table(pixel_loss, entries), pixel_tolerance=0.05).chosen == CHEAPEST


def test_missing_validation_scores_or_unlisted_settings_are_refused(config: Path) -> None:
    entries = candidates_from_config(config)
    results = _results(cheapest={1: (1, 1), 2: (1, 1)}, wider={1: (1, 1), 2: (1, 1)})
    with pytest.raises(ValueError, match="val_image_AUROC"):
        validation_table(results.drop(columns="val_image_AUROC"), entries)
    unlisted = results.copy()
    unlisted.loc[unlisted["model.init_args.cas_channels"] == 88, "model.init_args.num_epochs"] = 50
    with pytest.raises(ValueError, match="does not list"):
        validation_table(unlisted, entries)
    with pytest.raises(ValueError, match="Several results"):
        validation_table(pd.concat([results, results.iloc[:1]]), entries)
    with pytest.raises(ValueError, match="no jobs"):
        validation_table(results[results["model.init_args.cas_channels"] != 88], entries)


def test_command_line_writes_the_report(config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    results = _results(cheapest={1: (0.5, 0.97), 2: (0.9, 0.95)}, wider={1: (0.95, 0.97), 2: (0.9, 0.95)})
    first, second = tmp_path / "first.csv", tmp_path / "second.csv"  # the grid run in two parts
    results.iloc[:10].to_csv(first)
    results.iloc[10:].to_csv(second)
    report = tmp_path / "out" / "selection.md"
    main([str(first), str(second), "--config", str(config), "--output", str(report)])
    text = report.read_text()
    assert text == capsys.readouterr().out.removesuffix("\n")
    assert f"Chosen: {WIDER}." in text
    assert "Nearest miss" not in text
    assert f"| {CHEAPEST} | val_image_AUROC | 50.0 ± 1.4 | 90.0 ± 1.4 | no | 45.0 |" in text
