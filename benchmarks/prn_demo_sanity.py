"""CPU sanity run of Prn: does it learn? One demo category, small input, offline EfficientNet-Lite0 backbone.

Trains ``Prn`` on a category of the built-in demo data (version 2) with ``anomalous_shots`` real anomalies moved
from test to training, then prints the validation metrics. Far below the paper's budget (U: 700 epochs of 2N items at
batch 48 on a GPU); it checks that the pieces learn together, not how well PRN does.

    python benchmarks/prn_demo_sanity.py --category plate --anomalous-shots 5 --epochs 40 --lr 1e-3

Prints the validation AUROCs (the half of the demo's test images that ``KShotPcsnetDemo`` holds out for validation),
on which settings are chosen; ``--test`` adds the test metrics. Measured (2026-12-01, one CPU thread per run, two
runs at once on the 2-core machine, 128 px, batch 8, plate, 24 normal training images, m = 5): 40 epochs at lr 1e-3
-> validation image AUROC 0.903, pixel AUROC 0.734 (297 s); at U's lr 1e-4 -> 0.597 / 0.657 (295 s). This is why the
CPU configs (``configs/prn_demo.yaml``, ``configs/benchmark_prn_demo_v2.yaml``) train at 1e-3. At this budget the
numbers swing widely between settings and seeds: read them as "trains and runs", not as a measure of the method.
"""

import argparse
import tempfile
import time

from anomalib.engine import Engine

from pcsnet_anomalib.backbones import PACKAGED_EFFICIENTNET_LITE0
from pcsnet_anomalib.benchmark.pipeline import Protocol
from pcsnet_anomalib.data import KShotPcsnetDemo
from pcsnet_anomalib.models.prn import Prn

LITE0_FOUR_LEVELS = ("blocks.1", "blocks.2", "blocks.4", "blocks.6")
"""``tf_efficientnet_lite0`` levels at strides 4, 8, 16, 32 (24, 40, 112, 320 channels)."""


def main() -> None:
    """Command line: train on one demo category, print the validation metrics (and the test's) and the fit time."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--category", default="plate")
    parser.add_argument("--anomalous-shots", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--test", action="store_true", help="also the test metrics (never choose settings on them)")
    args = parser.parse_args()

    datamodule = KShotPcsnetDemo(
        category=args.category,
        version=2,
        k_shot=None,
        anomalous_shots=args.anomalous_shots,
        train_batch_size=8,
        eval_batch_size=8,
        num_workers=0,
    )
    model = Prn(
        backbone="tf_efficientnet_lite0",
        layers=LITE0_FOUR_LEVELS,
        backbone_weights=PACKAGED_EFFICIENTNET_LITE0,
        input_size=args.size,
        pre_processor=Prn.configure_pre_processor((args.size, args.size)),
        learning_rate=args.lr,
        evaluator=Protocol(pixel_ap=True).evaluator(),  # validation AUROCs besides the test metrics
    )
    engine = Engine(
        logger=False,
        default_root_dir=tempfile.mkdtemp(),
        max_epochs=args.epochs,
        devices=1,
        accelerator="cpu",
        enable_progress_bar=False,
    )
    start = time.perf_counter()
    engine.fit(model=model, datamodule=datamodule)
    fit_seconds = time.perf_counter() - start
    metrics = engine.validate(model=model, datamodule=datamodule, verbose=False)[0]
    if args.test:
        metrics |= {f"test_{name}": value for name, value in engine.test(model=model, datamodule=datamodule)[0].items()}
    print({"fit_s": round(fit_seconds), **{name: round(float(value), 3) for name, value in metrics.items()}})


if __name__ == "__main__":
    main()
