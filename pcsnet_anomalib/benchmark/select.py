r"""Choose among PCSNet settings on validation scores only: the cheapest candidate that keeps the reference's accuracy.

    python -m pcsnet_anomalib.benchmark.select --config configs/benchmark_kshot_demo_fast_selection.yaml \
        runs/benchmark/<date>/results.csv --output benchmarks/results/fast_preset_selection.md

The config is the k-shot benchmark config that produced ``results.csv`` (several files: parts of its grid run
separately). Its Pcsnet grid entries are read in order: the first is the reference (the paper's settings), the
others are the candidates, cheapest first. A candidate is eligible when, at every k, its validation image AUROC
(mean over the k-shot seeds) is at most ``--image-tolerance`` below the reference's and its validation pixel
AUROC at most ``--pixel-tolerance`` below; the first eligible candidate is chosen. When none is, the report
also names the nearest miss: the candidate whose largest image AUROC loss over k is the smallest (the cheaper
one on ties). Test scores are never read: the choice is fair only when the datamodule's validation split is
disjoint from its test split (the demo's ``val_split_mode: from_test``).
"""

from __future__ import annotations

import argparse
import inspect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from pcsnet_anomalib.benchmark.aggregate import K_SHOT, MODEL, SEED
from pcsnet_anomalib.models import Pcsnet

MODEL_SETTINGS = ("grid_stride", "cas_channels", "prior_channels")
EPOCHS = "num_epochs"
"""Pcsnet's epoch argument in pcsnet-anomalib 0.1, which produced the committed selection results (and whose
config, ``configs/benchmark_kshot_demo_fast_selection.yaml``, gives some candidates 100). Since 0.2 the epoch
count is ``trainer.max_epochs`` only, so candidates with other epoch counts are separate benchmark runs."""
EPOCHS_OF_0_1 = 50  # Pcsnet(num_epochs=50), 0.1's default: the paper's 50 epochs
SETTINGS = (*MODEL_SETTINGS, EPOCHS)
VALIDATION_METRICS = ("val_image_AUROC", "val_pixel_AUROC")
_DEFAULTS = {name: inspect.signature(Pcsnet).parameters[name].default for name in MODEL_SETTINGS} | {
    EPOCHS: EPOCHS_OF_0_1
}


@dataclass(frozen=True)
class Choice:
    """The per-candidate validation table, eligibility, worst image AUROC loss over k, and the choice.

    ``chosen`` is the first eligible candidate (None if there is none); ``nearest`` the one with the smallest
    worst-case image AUROC loss, the earlier (cheaper) one on ties.
    """

    table: pd.DataFrame
    eligible: dict[str, bool]
    worst_image_loss: dict[str, float]
    chosen: str | None
    nearest: str


def _settings(init_args: Mapping[str, Any]) -> tuple[Any, ...]:
    """The compared settings of one Pcsnet, with the model's defaults for the ones not given (NaN included)."""
    values = []
    for name in SETTINGS:
        value = init_args.get(name)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            value = _DEFAULTS[name]
        values.append(None if value is None else float(value))
    return tuple(values)


def settings_label(init_args: Mapping[str, Any]) -> str:
    """How a Pcsnet's compared settings are named in the report, e.g. ``grid_stride=7, cas_channels=44, ...``."""
    return _label(_settings(init_args))


def _label(settings: tuple[Any, ...]) -> str:
    shown = ("default" if value is None else f"{value:g}" for value in settings)
    return ", ".join(f"{name}={value}" for name, value in zip(SETTINGS, shown, strict=True))


def candidates_from_config(path: str | Path) -> list[tuple[Any, ...]]:
    """The Pcsnet grid entries' settings, in the config's order (reference first)."""
    config = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    grid = config["benchmark"]["model"]["grid"]
    entries = [_settings(entry.get("init_args", {})) for entry in grid if entry["class_path"].endswith("Pcsnet")]
    if len(entries) < 2 or len(set(entries)) != len(entries):
        msg = f"{path}: needs a reference and at least one candidate, all with different {list(SETTINGS)}."
        raise ValueError(msg)
    return entries


def validation_table(results: pd.DataFrame, entries: Sequence[tuple[Any, ...]]) -> pd.DataFrame:
    """Mean, sample std and count over seeds of each validation metric, per candidate (rows) and k (columns)."""
    missing = [column for column in VALIDATION_METRICS if column not in results.columns]
    if missing:
        msg = f"results.csv has no {missing}: run the benchmark with this version (validation scores per job)."
        raise ValueError(msg)
    results = results[results[MODEL].astype(str).str.endswith("Pcsnet")].copy()
    given = pd.DataFrame({name: results.get(f"model.init_args.{name}") for name in SETTINGS}, index=results.index)
    results["candidate"] = [settings_label(row) for row in given.to_dict("records")]
    labels = [_label(entry) for entry in entries]
    unknown = sorted(set(results["candidate"]) - set(labels))
    if unknown:
        msg = f"results.csv has Pcsnet settings the config does not list: {unknown}"
        raise ValueError(msg)
    keys = ["candidate", K_SHOT, SEED]
    duplicated = results.duplicated(subset=keys, keep=False)
    if duplicated.any():
        msg = f"Several results for the same settings, k and seed:\n{results.loc[duplicated, keys]}"
        raise ValueError(msg)
    table = results.groupby(["candidate", K_SHOT])[list(VALIDATION_METRICS)].agg(["mean", "std"])
    table[("n", "seeds")] = results.groupby(["candidate", K_SHOT])[SEED].nunique()
    absent = sorted(set(labels) - set(results["candidate"]))
    if absent:
        msg = f"results.csv has no jobs for {absent}."
        raise ValueError(msg)
    return table.reindex(pd.MultiIndex.from_product([labels, sorted(results[K_SHOT].unique())]))


def choose(table: pd.DataFrame, image_tolerance: float = 0.01, pixel_tolerance: float = 0.02) -> Choice:
    """Apply the rule of the module docstring to a :func:`validation_table` (first candidate = reference)."""
    labels = list(dict.fromkeys(table.index.get_level_values(0)))
    reference = table.loc[labels[0]]
    reference_image, reference_pixel = (reference[(metric, "mean")] for metric in VALIDATION_METRICS)
    eligible, worst_image_loss = {}, {}
    for label in labels[1:]:
        image, pixel = (table.loc[label][(metric, "mean")] for metric in VALIDATION_METRICS)
        worst_image_loss[label] = float((reference_image - image).max())
        image_ok = (image >= reference_image - image_tolerance).all()
        pixel_ok = (pixel >= reference_pixel - pixel_tolerance).all()
        eligible[label] = bool(image_ok and pixel_ok)
    chosen = next((label for label, ok in eligible.items() if ok), None)
    nearest = min(worst_image_loss, key=worst_image_loss.__getitem__)  # the first of equal values
    return Choice(table=table, eligible=eligible, worst_image_loss=worst_image_loss, chosen=chosen, nearest=nearest)


def to_markdown(choice: Choice, image_tolerance: float, pixel_tolerance: float) -> str:
    """The validation table (percent, mean ± std over seeds), each candidate's verdict and the choice."""
    ks = list(dict.fromkeys(choice.table.index.get_level_values(1)))
    labels = list(dict.fromkeys(choice.table.index.get_level_values(0)))
    lines = [
        (
            f"Validation AUROC (%), mean ± sample std over the k-shot seeds. Eligible: at every k, image AUROC at "
            f"most {100 * image_tolerance:g} and pixel AUROC at most {100 * pixel_tolerance:g} points below the "
            "reference."
        ),
        "",
        "| settings | metric | " + " | ".join(f"k={k}" for k in ks) + " | eligible | worst image loss |",
        "| --- | --- | " + " | ".join("---:" for _ in ks) + " | --- | ---: |",
    ]
    for label in labels:
        verdict = "reference" if label == labels[0] else ("yes" if choice.eligible[label] else "no")
        loss = "" if label == labels[0] else f"{100 * choice.worst_image_loss[label]:.1f}"
        for metric in VALIDATION_METRICS:
            cells = []
            for k in ks:
                row = choice.table.loc[(label, k), metric]
                mean, std = float(row["mean"]), float(row["std"])
                cells.append(f"{100 * mean:.1f}" if math.isnan(std) else f"{100 * mean:.1f} ± {100 * std:.1f}")
            lines.append(f"| {label} | {metric} | " + " | ".join(cells) + f" | {verdict} | {loss} |")
    lines += ["", f"Chosen: {choice.chosen or 'none (no candidate is eligible)'}."]
    if choice.chosen is None:
        loss = 100 * choice.worst_image_loss[choice.nearest]
        lines.append(f"Nearest miss (smallest worst-case image AUROC loss, {loss:.1f} points): {choice.nearest}.")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", help="results.csv file(s) of k-shot benchmark runs of --config's grid")
    parser.add_argument("--config", required=True, help="the benchmark config: reference first, candidates by cost")
    parser.add_argument("--image-tolerance", type=float, default=0.01, help="largest image AUROC loss (0-1)")
    parser.add_argument("--pixel-tolerance", type=float, default=0.02, help="largest pixel AUROC loss (0-1)")
    parser.add_argument("--output", type=Path, help="also write the Markdown report here")
    args = parser.parse_args(argv)
    results = pd.concat([pd.read_csv(path) for path in args.results], ignore_index=True)
    table = validation_table(results, candidates_from_config(args.config))
    choice = choose(table, args.image_tolerance, args.pixel_tolerance)
    report = to_markdown(choice, args.image_tolerance, args.pixel_tolerance)
    print(report)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(report, encoding="utf-8")


if __name__ == "__main__":
    main()
