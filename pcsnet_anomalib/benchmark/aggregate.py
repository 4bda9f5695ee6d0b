"""Turn a k-shot benchmark's ``results.csv`` into paper-style tables and a plot.

    python -m pcsnet_anomalib.benchmark.aggregate runs/benchmark/<date>/results.csv --out benchmarks/kshot_demo

writes ``summary.md`` (one table per metric: rows category x model, columns k, cells mean ± std over the
k-shot seeds in percent, the best model of each category and k in bold), ``summary.csv`` (the same numbers,
long format, unrounded) and ``image_auroc_vs_k.png`` (category-average image AUROC against k, one line per
model, error bars = std over seeds).

Several result files can be combined; ``PATH@LABEL`` appends `` (LABEL)`` to the model names of one file, so
that two runs of the same model class (e.g. PCSNet with another preset) get rows of their own:

    python -m pcsnet_anomalib.benchmark.aggregate default/results.csv fast/results.csv@fast --out compare

``--metrics`` chooses the metric columns (default: the test metrics image AUROC, pixel AUROC, pixel AUPRO);
``--metrics val_image_AUROC val_pixel_AUROC`` gives the same tables for the validation split, to choose
settings without looking at test scores.

The ``mean`` row averages the categories within each seed first, then takes mean ± std over seeds, so its
spread is the seed-to-seed spread of the average (as in the paper), not the spread between categories.
Standard deviations are sample standard deviations (``ddof=1``); with one seed only the mean is shown.

``--sweep anomalous_shots`` tabulates the few-real-anomalies protocol instead: columns m (the real anomalies moved
from test to training, ``data.init_args.anomalous_shots``), mean ± std over the selection seeds
(``anomalous_shots_seed``), and the plot is ``image_auroc_vs_m.png``:

    python -m pcsnet_anomalib.benchmark.aggregate results.csv --out out --sweep anomalous_shots \
        --metrics image_AUROC pixel_AUROC pixel_AUPRO pixel_AUPR
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

MODEL = "model.class_path"
LABEL = "model.label"
CATEGORY = "data.init_args.category"
K_SHOT = "data.init_args.k_shot"
SEED = "data.init_args.k_shot_seed"
ALL_IMAGES = 1_000_000
"""``k`` of jobs that trained on all normal images (``k_shot: null``): sorts after every real k, shown as "all"."""
METRICS = ("image_AUROC", "pixel_AUROC", "pixel_AUPRO")
AVERAGE = "mean"
PAPER_SUFFIX = " (paper)"
SUMMARY_COLUMNS = ["metric", "category", "model", "k", "mean", "std", "n"]


@dataclass(frozen=True)
class Sweep:
    """The data setting a table's columns sweep, and the seed its cells average over."""

    column: str
    seed: str
    symbol: str
    axis_label: str


SWEEPS = {
    "k_shot": Sweep(K_SHOT, SEED, "k", "k (normal training images)"),
    "anomalous_shots": Sweep(
        "data.init_args.anomalous_shots", "data.init_args.anomalous_shots_seed", "m", "m (real anomalies in training)"
    ),
}
"""``--sweep`` choices: the k-shot protocol (default) and the few-real-anomalies protocol."""


def load_results(paths: Sequence[str | Path], sweep: Sweep = SWEEPS["k_shot"]) -> pd.DataFrame:
    """Read and concatenate ``results.csv`` files (``PATH@LABEL``: see the module docstring); short model names.

    With another ``sweep`` than k its setting and seed take the places of ``k_shot`` and ``k_shot_seed`` (the
    tables' columns and the seeds averaged over). Fails early on missing columns.
    """
    frames = []
    for entry in paths:
        path, label = _split_label(entry)
        frame = pd.read_csv(path)
        missing = [column for column in (MODEL, CATEGORY, K_SHOT) if column not in frame.columns]
        if missing:
            msg = f"{path}: missing columns {missing}; is this a k-shot benchmark's results.csv?"
            raise ValueError(msg)
        frame[MODEL] = frame[MODEL].astype(str).str.rsplit(".", n=1).str[-1]
        if LABEL in frame.columns:  # a grid entry's own name (two settings of one model class)
            frame[MODEL] = frame[LABEL].where(frame[LABEL].notna(), frame[MODEL]).astype(str)
        if label:
            frame[MODEL] = frame[MODEL] + f" ({label})"
        frames.append(frame)
    results = pd.concat(frames, ignore_index=True)
    if sweep.column != K_SHOT:
        missing = [column for column in (sweep.column, sweep.seed) if column not in results.columns]
        if missing:
            msg = f"Missing columns {missing} for a table over {sweep.symbol}; did the benchmark's grid set them?"
            raise ValueError(msg)
        results[K_SHOT], results[SEED] = results[sweep.column], results[sweep.seed]
    if SEED not in results.columns:
        results[SEED] = 0
    results[SEED] = results[SEED].fillna(0)
    results[K_SHOT] = results[K_SHOT].fillna(ALL_IMAGES).astype(int)
    return results


def k_label(k: int) -> str:
    """How a k appears in tables and plots: the number, or "all"."""
    return "all" if k == ALL_IMAGES else str(k)


def _split_label(entry: str | Path) -> tuple[Path, str | None]:
    """``PATH@LABEL`` -> (PATH, LABEL); a path that exists as given, or has no ``@``, has no label."""
    text = str(entry)
    if Path(text).exists() or "@" not in text:
        return Path(text), None
    path, label = text.rsplit("@", 1)
    return Path(path), label


def summarize(results: pd.DataFrame, metrics: Sequence[str] = METRICS) -> pd.DataFrame:
    """Mean, sample std and count over seeds per (metric, category, model, k), plus the category average.

    Metrics absent from ``results`` are skipped. Several rows for the same (category, model, k, seed) are an error:
    they would silently count as extra seeds.
    """
    keys = [CATEGORY, MODEL, K_SHOT, SEED]
    duplicated = results.duplicated(subset=keys, keep=False)
    if duplicated.any():
        msg = f"Several results for the same category, model, k and seed:\n{results.loc[duplicated, keys]}"
        raise ValueError(msg)
    rows = []
    for metric in (m for m in metrics if m in results.columns):
        values = results[[*keys, metric]].dropna(subset=[metric])
        per_category = values.groupby([CATEGORY, MODEL, K_SHOT])[metric].agg(["mean", "std", "count"]).reset_index()
        per_seed_average = values.groupby([MODEL, K_SHOT, SEED])[metric].mean().reset_index()
        average = per_seed_average.groupby([MODEL, K_SHOT])[metric].agg(["mean", "std", "count"]).reset_index()
        average[CATEGORY] = AVERAGE
        for frame in (per_category, average):
            renamed = frame.rename(columns={CATEGORY: "category", MODEL: "model", K_SHOT: "k", "count": "n"})
            renamed["metric"] = metric
            rows.append(renamed[SUMMARY_COLUMNS])
    if not rows:
        msg = f"None of the metrics {list(metrics)} is in the results (columns: {list(results.columns)})."
        raise ValueError(msg)
    summary = pd.concat(rows, ignore_index=True)
    categories = [*sorted(set(summary["category"]) - {AVERAGE}), AVERAGE]
    summary["category"] = pd.Categorical(summary["category"], categories=categories, ordered=True)
    summary = summary.sort_values(["metric", "category", "model", "k"], key=_metric_order(metrics))
    summary["category"] = summary["category"].astype(str)
    return summary.reset_index(drop=True)


def _metric_order(metrics: Sequence[str]):  # noqa: ANN202  (a pandas sort key)
    order = {metric: index for index, metric in enumerate(metrics)}

    def key(column: pd.Series) -> pd.Series:
        return column.map(order) if column.name == "metric" else column

    return key


def load_paper(path: str | Path, dataset: str) -> pd.DataFrame:
    """Reference numbers (``dataset, category, model, k, metric, mean, std``, in percent) as summary rows (0-1)."""
    paper = pd.read_csv(path, comment="#")
    paper = paper[paper["dataset"] == dataset].copy()
    if paper.empty:
        msg = f"{path} has no rows for dataset {dataset!r}."
        raise ValueError(msg)
    paper["model"] = paper["model"] + PAPER_SUFFIX
    paper["mean"] = paper["mean"] / 100
    paper["std"] = paper["std"] / 100
    paper["n"] = pd.NA
    return paper[SUMMARY_COLUMNS]


def _cell(mean: float, std: float, bold: bool) -> str:
    text = f"{100 * mean:.1f}" if math.isnan(std) else f"{100 * mean:.1f} ± {100 * std:.1f}"
    return f"**{text}**" if bold else text


def to_markdown(summary: pd.DataFrame, paper: pd.DataFrame | None = None, symbol: str = "k") -> str:
    """One Markdown table per metric: rows category x model, columns k; the best mean per category and k in bold.

    ``paper`` rows are shown under the model they belong to and never compete for bold; ``symbol`` names the
    columns' setting (``m`` for the anomalous-shots sweep).
    """
    blocks = []
    combined = summary if paper is None else pd.concat([summary, paper], ignore_index=True)
    ks = sorted(summary["k"].unique())
    categories = list(dict.fromkeys(summary["category"]))
    for metric in dict.fromkeys(summary["metric"]):
        measured = summary[summary["metric"] == metric]
        best = measured.groupby(["category", "k"])["mean"].max()
        table = combined[combined["metric"] == metric]
        models = sorted(table["model"].unique(), key=lambda name: (name.removesuffix(PAPER_SUFFIX), name))
        lines = [
            f"### {metric} (%)",
            "",
            "| category | model | " + " | ".join(f"{symbol}={k_label(k)}" for k in ks) + " |",
            "| --- | --- | " + " | ".join("---:" for _ in ks) + " |",
        ]
        for category in categories:
            for model in models:
                rows = table[(table["category"] == category) & (table["model"] == model)].set_index("k")
                if rows.empty:
                    continue
                cells = []
                for k in ks:
                    if k not in rows.index:
                        cells.append("")
                        continue
                    mean, std = float(rows.at[k, "mean"]), float(rows.at[k, "std"])
                    is_best = not model.endswith(PAPER_SUFFIX) and math.isclose(mean, best[(category, k)])
                    cells.append(_cell(mean, std, is_best))
                lines.append(f"| {category} | {model} | " + " | ".join(cells) + " |")
        blocks.append("\n".join(lines))
    seeds = summary["n"].max()
    header = (
        f"Mean ± sample std over {seeds} seed(s) of the {symbol} selection, in percent; bold: best measured model "
        f"per category and {symbol}. "
        f"`{AVERAGE}`: average over categories within each seed, then mean ± std over seeds."
    )
    return header + "\n\n" + "\n\n".join(blocks) + "\n"


def plot_image_auroc(
    summary: pd.DataFrame, path: str | Path, title: str | None = None, sweep: Sweep = SWEEPS["k_shot"]
) -> None:
    """Category-average image AUROC against k (or the ``sweep``'s setting), one line per model, bars = seed std."""
    import matplotlib as mpl

    mpl.use("Agg")
    import matplotlib.pyplot as plt

    average = summary[(summary["metric"] == "image_AUROC") & (summary["category"] == AVERAGE)]
    if average.empty:
        msg = f"No image_AUROC in the summary: cannot plot image AUROC against {sweep.symbol}."
        raise ValueError(msg)
    ks = sorted(average["k"].unique())
    finite = [k for k in ks if k != ALL_IMAGES]
    all_position = 2 * max(finite, default=1)  # "all" sits one octave right of the largest k
    figure, axes = plt.subplots(figsize=(5, 3.5), dpi=120)
    for model, group in average.groupby("model"):
        rows = group.sort_values("k")
        positions = rows["k"].replace(ALL_IMAGES, all_position)
        axes.errorbar(
            positions, 100 * rows["mean"], yerr=100 * rows["std"].fillna(0), marker="o", capsize=3, label=model
        )
    axes.set_xscale("log", base=2)
    axes.set_xticks([all_position if k == ALL_IMAGES else k for k in ks], [k_label(k) for k in ks])
    axes.set_xlabel(sweep.axis_label)
    axes.set_ylabel("image AUROC (%), category average")
    axes.set_title(title or f"Image AUROC against {sweep.symbol}")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def aggregate(
    results: Sequence[str | Path],
    out: str | Path,
    title: str | None = None,
    paper: str | Path | None = None,
    paper_dataset: str | None = None,
    metrics: Sequence[str] = METRICS,
    sweep: Sweep = SWEEPS["k_shot"],
) -> pd.DataFrame:
    """Write ``summary.md``, ``summary.csv`` and (with test image AUROC) ``image_auroc_vs_k.png`` into ``out``.

    With the anomalous-shots ``sweep`` the columns are m and the plot is ``image_auroc_vs_m.png``. Returns the
    summary.
    """
    if (paper is None) != (paper_dataset is None):
        msg = "Give both --paper and --paper-dataset, or neither."
        raise ValueError(msg)
    summary = summarize(load_results(results, sweep), metrics)
    reference = load_paper(paper, paper_dataset) if paper is not None and paper_dataset is not None else None
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary.to_csv(out / "summary.csv", index=False)
    heading = f"# {title}\n\n" if title else ""
    (out / "summary.md").write_text(heading + to_markdown(summary, reference, sweep.symbol), encoding="utf-8")
    if "image_AUROC" in set(summary["metric"]):
        plot_image_auroc(summary, out / f"image_auroc_vs_{sweep.symbol}.png", title, sweep)
    return summary


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", help="results.csv file(s) written by the k-shot benchmark, PATH[@LABEL]")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--title", help="title of the Markdown file and the plot")
    parser.add_argument("--paper", help="CSV of reference numbers (benchmarks/paper_results.csv)")
    parser.add_argument("--paper-dataset", help="dataset of --paper to show, e.g. mvtec_ad")
    parser.add_argument("--metrics", nargs="+", default=list(METRICS), help="metric columns to tabulate")
    parser.add_argument("--sweep", choices=sorted(SWEEPS), default="k_shot", help="the setting of the columns")
    args = parser.parse_args(argv)
    aggregate(args.results, args.out, args.title, args.paper, args.paper_dataset, args.metrics, SWEEPS[args.sweep])


if __name__ == "__main__":
    main()
