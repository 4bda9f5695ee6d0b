r"""Compare settings on validation scores only: per category kind, at one k, from one or more benchmark runs.

    python -m pcsnet_anomalib.benchmark.ablation benchmarks/results/demo_v2_pcsnet_ablation \
        benchmarks/results/demo_v2 --k 1 --models Pcsnet-fast Pcsnet-fast-rotation Pcsnet-fast-small Patchcore

reads each folder's ``results.csv`` and prints (or writes with ``--out``) the validation image and pixel AUROC of
the chosen models at ``k``, averaged over the k-shot seeds and over the categories of each demo kind (texture,
object, oriented) and of all. Test columns are never read, so a setting chosen from this table is chosen without
the test images (the demo's validation half is disjoint from its test half).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from pcsnet_anomalib.benchmark.aggregate import CATEGORY, K_SHOT, MODEL, SEED, load_results
from pcsnet_anomalib.benchmark.report import kinds, markdown_table

VALIDATION_METRICS = ("val_image_AUROC", "val_pixel_AUROC")
ALL_KINDS = "all"


def validation_table(results: pd.DataFrame, k: int, models: Sequence[str] | None = None) -> pd.DataFrame:
    """Models x (metric, kind) of the validation metrics at ``k`` in percent, seeds and categories averaged.

    Only categories every model ran at every seed count, so that each column compares the same jobs.

    Raises:
        ValueError: no demo-data rows at ``k``, a requested model without rows there, or no validation columns.
    """
    category_kinds = kinds(results)
    if not category_kinds:
        msg = "Validation tables by kind need demo-data results (data.class_path *Demo)."
        raise ValueError(msg)
    missing_columns = [metric for metric in VALIDATION_METRICS if metric not in results.columns]
    if missing_columns:
        msg = f"No {missing_columns} in the results: they come from benchmark runs of pcsnet-anomalib 0.2 or later."
        raise ValueError(msg)
    rows = results[results[K_SHOT] == k]
    names = list(models) if models else sorted(rows[MODEL].unique())
    absent = sorted(set(names) - set(rows[MODEL]))
    if absent:
        msg = f"No rows at k={k} for {absent}; models there: {sorted(rows[MODEL].unique())}."
        raise ValueError(msg)
    rows = rows[rows[MODEL].isin(names)]
    runs = rows.groupby([CATEGORY, MODEL])[SEED].nunique().unstack(MODEL)
    shared = runs.index[runs.notna().all(axis=1) & (runs.nunique(axis=1) == 1)]
    rows = rows[rows[CATEGORY].isin(shared)].assign(kind=lambda frame: frame[CATEGORY].map(category_kinds))
    per_category = rows.groupby([MODEL, "kind", CATEGORY])[list(VALIDATION_METRICS)].mean()
    by_kind = per_category.groupby([MODEL, "kind"]).mean()
    overall = per_category.groupby(MODEL).mean().assign(kind=ALL_KINDS).set_index("kind", append=True)
    table = pd.concat([by_kind, overall]).mul(100).round(1).unstack("kind")
    return table.reindex(names)


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: results folders (or ``results.csv`` files) -> the validation table in markdown."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", type=Path, help="benchmark results folders or results.csv files")
    parser.add_argument("--k", type=int, default=1, help="the k-shot size compared (default 1)")
    parser.add_argument("--models", nargs="*", default=None, help="models (grid labels) in table order")
    parser.add_argument("--out", type=Path, default=None, help="markdown file to write (default: print)")
    args = parser.parse_args(argv)
    files = [path / "results.csv" if path.is_dir() else path for path in args.results]
    table = validation_table(load_results(files), args.k, args.models)
    table.columns = [f"{metric.removeprefix('val_')} {kind}" for metric, kind in table.columns]
    text = (
        f"Validation half, k = {args.k}, percent (mean over k-shot seeds and categories)\n\n{markdown_table(table)}\n"
    )
    if args.out is None:
        print(text)
    else:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
