"""The report of a benchmark run with ``protocol.results_dir``: tables, plots and a page of heatmaps.

    python -m pcsnet_anomalib.benchmark.report benchmarks/results/demo_v2 --title "Demo data v2"

reads ``<results_dir>/results.csv`` (written by the benchmark), ``runs.json`` (wall times) and ``heatmaps/``, and
writes into ``--out`` (default: the results folder itself):

- ``summary.md`` / ``summary.csv`` / ``image_auroc_vs_k.png``: :mod:`pcsnet_anomalib.benchmark.aggregate`'s
  per-category and mean tables (image AUROC, pixel AUROC, pixel AUPRO; mean +- std over k-shot seeds) and plot;
- ``accuracy_vs_latency.png``: category-average image AUROC at ``--latency-k`` against the median batch-1
  latency of the showcase jobs (``protocol.showcase_k``, ``protocol.latency_runs``);
- ``heatmaps.png``: for each category, the test images whose maps the ``protocol.showcase_k`` jobs saved, with
  their ground truth and every model's anomaly map side by side;
- ``README.md``: the run (command, wall time), the mean tables, image AUROC per category kind, the spread of
  image AUROC between models at k = 1, and links to the rest.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from pcsnet_anomalib.benchmark.aggregate import (
    AVERAGE,
    CATEGORY,
    K_SHOT,
    MODEL,
    SEED,
    aggregate,
    k_label,
    load_results,
)
from pcsnet_anomalib.data.demo import demo_categories

VERSION = "data.init_args.version"
LATENCY = "latency_ms"


def kinds(results: pd.DataFrame) -> dict[str, str]:
    """Category -> kind (texture, object, oriented) for demo data; other datasets' categories are left out."""
    if "data.class_path" not in results.columns or not results["data.class_path"].str.contains("Demo").all():
        return {}
    version = int(results[VERSION].iloc[0]) if VERSION in results.columns else 1
    return {name: category.kind for name, category in demo_categories(version).items()}


def mean_table(summary: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Models x k of the category average of ``metric``, cells "mean ± std" in percent."""
    rows = summary[(summary["metric"] == metric) & (summary["category"] == AVERAGE)]
    cells = rows.assign(
        cell=[
            f"{100 * m:.1f}" + ("" if pd.isna(s) else f" ± {100 * s:.1f}")
            for m, s in zip(rows["mean"], rows["std"], strict=True)
        ]
    )
    table = cells.pivot(index="model", columns="k", values="cell")
    table.columns = [k_label(k) for k in table.columns]
    return table


def kind_table(results: pd.DataFrame, category_kinds: dict[str, str], metric: str = "image_AUROC") -> pd.DataFrame:
    """Models x (kind, k) of ``metric`` averaged over the categories of each kind and the seeds, in percent."""
    frame = results[results[CATEGORY].isin(category_kinds)].assign(kind=lambda f: f[CATEGORY].map(category_kinds))
    table = frame.groupby([MODEL, "kind", K_SHOT])[metric].mean().mul(100).round(1).unstack(["kind", K_SHOT])
    table.columns = [f"{kind} k={k_label(k)}" for kind, k in table.columns]
    return table.sort_index(axis=1)


def spread_at(summary: pd.DataFrame, k: int) -> tuple[str, float, str, float] | None:
    """(best model, its mean image AUROC, worst model, its) at ``k``, category averages; None if no such rows."""
    rows = summary[(summary["metric"] == "image_AUROC") & (summary["category"] == AVERAGE) & (summary["k"] == k)]
    if rows.empty:
        return None
    best, worst = rows.loc[rows["mean"].idxmax()], rows.loc[rows["mean"].idxmin()]
    return str(best["model"]), float(best["mean"]), str(worst["model"]), float(worst["mean"])


def plot_accuracy_vs_latency(results: pd.DataFrame, k: int, path: Path) -> pd.DataFrame:
    """Scatter of category-average image AUROC against median latency at ``k``; returns the plotted numbers."""
    import matplotlib as mpl

    mpl.use("Agg")
    import matplotlib.pyplot as plt

    rows = results[results[K_SHOT] == k]
    if LATENCY not in rows.columns or rows[LATENCY].isna().all():
        msg = f"No {LATENCY} at k={k_label(k)}: run the benchmark with showcase_k = {k_label(k)} and latency_runs > 0."
        raise ValueError(msg)
    per_seed = rows.groupby([MODEL, SEED])["image_AUROC"].mean().groupby(MODEL).mean()
    points = pd.DataFrame({"latency_ms": rows.groupby(MODEL)[LATENCY].median(), "image_AUROC": 100 * per_seed})
    figure, axes = plt.subplots(figsize=(5.5, 3.8), dpi=120)
    for model, point in points.iterrows():
        axes.scatter(point["latency_ms"], point["image_AUROC"], s=30)
        axes.annotate(str(model), (point["latency_ms"], point["image_AUROC"]), textcoords="offset points",
                      xytext=(4, 3), fontsize=8)  # fmt: skip
    axes.set_xscale("log")
    axes.set_xlabel("latency per image (ms, batch 1, median)")
    axes.set_ylabel(f"image AUROC (%), k = {k_label(k)}")
    axes.set_title(f"Accuracy against latency (k = {k_label(k)})")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return points


def heatmap_panels(results_dir: Path) -> dict[str, dict[str, dict[str, Path]]]:
    """Category -> test image name -> (model -> map PNG), from the ``heatmaps/<job>`` folders and their jobs."""
    panels: dict[str, dict[str, dict[str, Path]]] = {}
    for index_file in sorted((results_dir / "heatmaps").glob("*/index.json")):
        job = json.loads((results_dir / "jobs" / f"{index_file.parent.name}.json").read_text())
        model = job.get("model.label") or str(job["model.class_path"]).rsplit(".", 1)[-1]
        for name, entry in json.loads(index_file.read_text()).items():
            key = json.dumps([entry["image_path"], entry["mask_path"]])
            panels.setdefault(job[CATEGORY], {}).setdefault(key, {})[model] = index_file.parent / name
    return panels


def plot_heatmaps(results_dir: Path, path: Path, per_category: int = 2) -> None:
    """A page: one row per shown test image (``per_category`` per category), image, mask, then each model's map."""
    import matplotlib as mpl

    mpl.use("Agg")
    import matplotlib.pyplot as plt

    panels = heatmap_panels(results_dir)
    if not panels:
        msg = f"No heatmaps under {results_dir / 'heatmaps'}: run the benchmark with protocol.showcase_k."
        raise ValueError(msg)
    models = sorted({model for images in panels.values() for maps in images.values() for model in maps})
    rows = [(category, key) for category in sorted(panels) for key in sorted(panels[category])[:per_category]]
    columns = 2 + len(models)
    figure, axes = plt.subplots(len(rows), columns, figsize=(1.3 * columns, 1.35 * len(rows)), dpi=100, squeeze=False)
    for row, (category, key) in enumerate(rows):
        image_path, mask_path = json.loads(key)
        size = None
        for column, model in enumerate(["image", "ground truth", *models]):
            axis = axes[row, column]
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(model, fontsize=7)
            if column == 0:
                image = Image.open(image_path).convert("RGB")
                size = image.size
                axis.imshow(image)
                axis.set_ylabel(f"{category}\n{Path(image_path).parent.name}", fontsize=7)
            elif column == 1:
                axis.imshow(np.asarray(Image.open(mask_path).convert("L").resize(size)), cmap="gray", vmin=0, vmax=255)
            elif model in panels[category][key]:
                heatmap = Image.open(panels[category][key][model]).resize(size, Image.Resampling.BILINEAR)
                axis.imshow(np.asarray(heatmap), cmap="jet", vmin=0, vmax=255)
            else:
                axis.axis("off")
    figure.tight_layout(pad=0.2)
    figure.savefig(path)
    plt.close(figure)


def markdown_table(table: pd.DataFrame) -> str:
    """A markdown table of ``table``, index as the first column headed "model", empty cells for NaN."""
    header = "| model | " + " | ".join(map(str, table.columns)) + " |"
    rule = "| --- |" + " --- |" * len(table.columns)
    lines = [
        f"| {index} | " + " | ".join("" if pd.isna(v) else str(v) for v in row) + " |"
        for index, row in table.iterrows()
    ]
    return "\n".join([header, rule, *lines])


def report(
    results_dir: str | Path,
    out: str | Path | None = None,
    title: str = "Benchmark",
    latency_k: int = 8,
    command: str | None = None,
) -> Path:
    """Write the report (module docstring) and return the path of its ``README.md``."""
    results_dir = Path(results_dir)
    out = results_dir if out is None else Path(out)
    results_file = results_dir / "results.csv"
    if not results_file.is_file():
        msg = f"{results_file} not found: run the benchmark with protocol.results_dir={results_dir} first."
        raise FileNotFoundError(msg)
    summary = aggregate([results_file], out, title)
    results = load_results([results_file])
    lines = [f"# {title}", ""]
    if command:
        lines += ["Produced by", "", "```bash", command, "```", ""]
    runs_file = results_dir / "runs.json"
    if runs_file.is_file():
        runs = json.loads(runs_file.read_text())
        wall = sum(run["wall_s"] for run in runs)
        lines += [f"Wall time: {wall / 60:.1f} min over {len(runs)} run(s) of the command ({runs[-1]['end']}).", ""]
    lines += [f"{len(results)} jobs, {results[MODEL].nunique()} models, {results[CATEGORY].nunique()} categories.", ""]
    spread = spread_at(summary, 1)
    if spread is not None:
        best, best_score, worst, worst_score = spread
        lines += [
            (
                f"At k = 1 the best model ({best}) reaches {100 * best_score:.1f} mean image AUROC, the worst "
                f"({worst}) {100 * worst_score:.1f}: a spread of {100 * (best_score - worst_score):.1f} points."
            ),
            "",
        ]
    for metric, name in (("image_AUROC", "Image AUROC"), ("pixel_AUROC", "Pixel AUROC"), ("pixel_AUPRO", "AUPRO")):
        if metric in set(summary["metric"]):
            lines += [
                f"## {name} (%), category average, mean ± std over k-shot seeds",
                "",
                markdown_table(mean_table(summary, metric)),
                "",
            ]
    category_kinds = kinds(results)
    if category_kinds:
        lines += ["## Image AUROC (%) per category kind", "", markdown_table(kind_table(results, category_kinds)), ""]
    if LATENCY in results.columns and (results[K_SHOT] == latency_k).any():
        points = plot_accuracy_vs_latency(results, latency_k, out / "accuracy_vs_latency.png")
        lines += [
            f"## Accuracy and latency at k = {k_label(latency_k)}",
            "",
            "![accuracy against latency](accuracy_vs_latency.png)",
            "",
        ]
        lines += [markdown_table(points.round(1)), ""]
    if (results_dir / "heatmaps").is_dir():
        plot_heatmaps(results_dir, out / "heatmaps.png")
        lines += ["## Heatmaps", "", "![heatmaps](heatmaps.png)", ""]
    errors = [json.loads(path.read_text()) for path in sorted((results_dir / "errors").glob("*.json"))]
    if errors:
        lines += [
            "## Jobs that failed",
            "",
            "| model | category | k | seed | error |",
            "| --- | --- | --- | --- | --- |",
        ]
        lines += [
            f"| {e.get('model.label') or e.get('model.class_path')} | {e.get(CATEGORY)} | {e.get(K_SHOT)} | "
            f"{e.get(SEED)} | {str(e['error'])[:160]} |"
            for e in errors
        ]
        lines += [""]
    lines += [
        "## More",
        "",
        "- [summary.md](summary.md): every category, model and k; [summary.csv](summary.csv) unrounded.",
        "- ![image AUROC against k](image_auroc_vs_k.png)",
        "",
    ]
    readme = out / "README.md"
    readme.write_text("\n".join(lines), encoding="utf-8")
    return readme


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results_dir", help="the benchmark's protocol.results_dir")
    parser.add_argument("--out", help="output folder (default: results_dir)")
    parser.add_argument("--title", default="Benchmark", help="title of README.md")
    parser.add_argument("--latency-k", type=int, default=8, help="k of the accuracy-latency plot")
    parser.add_argument("--command", help="the benchmark command, quoted in README.md")
    args = parser.parse_args(argv)
    print(report(args.results_dir, args.out, args.title, args.latency_k, args.command))


if __name__ == "__main__":
    main()
