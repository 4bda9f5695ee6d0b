"""Prn's exports: torch bit-identical, ONNX and OpenVINO within 1e-4 of the model, after a fit with real anomalies.

A random-weight timm test ResNet at 128 px (Prn's smallest input), one attention block per level, 2 real anomalies
moved into training by the datamodule (``anomalous_shots=2``), 2 epochs; the figures are printed (``-s``). Image
scores are compared before the post-processor's normalisation: after so short a fit the validation scores span
about 1e-4, so normalising multiplies float32 rounding by thousands (``export_parity.raw_scores``). A trained Prn's
normalised scores: ``benchmarks/export_latency.py --model Prn --ckpt ...`` (figures in the model README).
"""

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from anomalib.data.utils import read_image
from anomalib.engine import Engine

from pcsnet_anomalib.data import KShotMVTecAD
from pcsnet_anomalib.models.prn import Prn
from tests.conftest import write_mvtec_dataset
from tests.integration.export_parity import export_parity

pytestmark = pytest.mark.slow

SIZE = 128
CATEGORY = "widget"


def _inputs(root: Path) -> Iterator[torch.Tensor]:
    """Random images (batch 1 and 3, and one needing a resize) and fresh real-looking images, normal and defective."""
    generator = torch.Generator().manual_seed(0)
    yield torch.rand(1, 3, SIZE, SIZE, generator=generator)
    yield torch.rand(3, 3, SIZE, SIZE, generator=generator)
    yield torch.rand(2, 3, 80, 96, generator=generator)
    fresh = write_mvtec_dataset(root / "fresh", category=CATEGORY, n_train=0, size=SIZE, seed=7)
    yield torch.stack([read_image(path, as_tensor=True) for path in sorted((fresh / CATEGORY / "test").rglob("*.png"))])


def test_torch_onnx_and_openvino_exports_match_the_model(tmp_path: Path) -> None:
    data = write_mvtec_dataset(
        tmp_path / "data", category=CATEGORY, n_train=5, n_test_good=2, n_test_defect=4, size=SIZE
    )
    datamodule = KShotMVTecAD(
        root=data, category=CATEGORY, k_shot=None, anomalous_shots=2, train_batch_size=2, num_workers=0
    )
    model = Prn(
        backbone="test_resnet",
        pre_trained=False,
        input_size=SIZE,
        msa_layers=1,
        anomaly_source_path=data / CATEGORY / "train" / "good",  # any images will do as textures
        pre_processor=Prn.configure_pre_processor((SIZE, SIZE)),
        visualizer=False,
    )
    engine = Engine(default_root_dir=tmp_path / "results", max_epochs=2, accelerator="cpu", devices=1, logger=False)
    engine.fit(model, datamodule=datamodule)
    model.eval()
    parity = export_parity(model, engine, tmp_path / "exported", _inputs(tmp_path), compare_raw_scores=True)
    print(f"Prn export parity, max relative difference: {parity.figures()}")
    shutil.rmtree(tmp_path / "results", ignore_errors=True)
    assert not parity.problems, parity.problems
    assert parity.unsaturated >= 4, "fresh images should give scores inside (0, 1), or score parity proves little"
