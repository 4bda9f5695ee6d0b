"""ThresholdCalibration end to end: thresholds from held-out training images, in checkpoints and exports.

A tiny Pcsnet (k = 4, 2 epochs) and anomalib's Patchcore (random ResNet-18) on generated data.
"""

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from anomalib.data.utils import read_image
from anomalib.deploy import ExportType
from anomalib.engine import Engine
from anomalib.models import Patchcore
from lightning.pytorch import seed_everything

from pcsnet_anomalib import KShotMVTecAD, Pcsnet, ThresholdCalibration
from tests.conftest import TINY_IMAGE_SIZE, TINY_MODEL

pytestmark = pytest.mark.slow

CATEGORY = "widget"
OPENVINO_FP32 = {"INFERENCE_PRECISION_HINT": "f32"}


@dataclass
class Calibrated:
    """A model fitted with calibration, its engine, callback, checkpoint and data."""

    model: Pcsnet
    engine: Engine
    calibration: ThresholdCalibration
    checkpoint: Path
    datamodule: KShotMVTecAD
    root: Path


def _datamodule(root: Path, k_shot: int = 4) -> KShotMVTecAD:
    return KShotMVTecAD(
        root=root, category=CATEGORY, num_workers=0, k_shot=k_shot, train_batch_size=2, eval_batch_size=4
    )


def _tiny_pcsnet() -> Pcsnet:
    pre_processor = Pcsnet.configure_pre_processor(image_size=(TINY_IMAGE_SIZE, TINY_IMAGE_SIZE))
    return Pcsnet(**{**TINY_MODEL, "pre_processor": pre_processor})  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def calibrated(mvtec_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Calibrated:
    root = tmp_path_factory.mktemp("calibration")
    datamodule = _datamodule(mvtec_root)
    calibration = ThresholdCalibration(folds=2, anomalies_per_image=3, pseudo_anomalies="both", seed=1)
    engine = Engine(
        default_root_dir=root / "results",
        max_epochs=2,
        accelerator="cpu",
        devices=1,
        logger=False,
        callbacks=[calibration],
    )
    model = _tiny_pcsnet()
    engine.fit(model, datamodule=datamodule)
    model.eval()
    return Calibrated(model, engine, calibration, Path(engine.best_model_path), datamodule, root)


def _test_images(datamodule: KShotMVTecAD) -> torch.Tensor:
    paths = sorted((Path(datamodule.root) / CATEGORY / "test").rglob("*.png"))
    return torch.stack([read_image(path, as_tensor=True) for path in paths])


def test_every_training_image_is_held_out_once_and_the_report_says_what_was_used(calibrated: Calibrated) -> None:
    report = calibrated.calibration.report
    assert report is not None
    assert report.normal_images == calibrated.datamodule.few_shot_paths  # all 4, each scored by a model without it
    assert report.folds == 2
    assert report.pseudo_anomalies + report.failed_pseudo_anomalies == 4 * 3 * 2  # 3 per image per generator
    assert sorted(set(report.anomaly_kinds)) == ["patch_exchange", "perlin"]
    assert len(report.normal_scores) == 4
    assert len(report.anomaly_scores) == report.pseudo_anomalies
    assert report.operating_point == "f1"
    assert report.anchored  # a model trained by gradient steps: anchored by default


def test_the_thresholds_are_the_post_processors_and_label_test_images(calibrated: Calibrated) -> None:
    report = calibrated.calibration.report
    assert report is not None
    post = calibrated.model.post_processor
    assert float(post.image_threshold) == pytest.approx(report.image_threshold)
    assert float(post.pixel_threshold) == pytest.approx(report.pixel_threshold)
    images = _test_images(calibrated.datamodule)
    with torch.no_grad():
        output = calibrated.model(images)
        raw = calibrated.model.model(calibrated.model.pre_processor(images))
    assert torch.equal(output.pred_label, raw.pred_score > post.image_threshold)
    # a validation run with the callback attached keeps the calibrated values
    calibrated.engine.validate(calibrated.model, datamodule=calibrated.datamodule)
    assert float(post.image_threshold) == pytest.approx(report.image_threshold)


def test_the_checkpoint_holds_the_calibrated_thresholds_and_the_report(calibrated: Calibrated) -> None:
    loaded = Pcsnet.load_from_checkpoint(calibrated.checkpoint).eval()
    images = _test_images(calibrated.datamodule)
    with torch.no_grad():
        expected, actual = calibrated.model(images), loaded(images)
    assert torch.equal(actual.pred_label, expected.pred_label)
    assert torch.equal(actual.pred_mask, expected.pred_mask)
    for name in ("image_threshold", "pixel_threshold", "image_min", "image_max", "pixel_min", "pixel_max"):
        assert torch.equal(getattr(loaded.post_processor, name), getattr(calibrated.model.post_processor, name))
    checkpoint = torch.load(calibrated.checkpoint, map_location="cpu", weights_only=False)
    (state,) = [value for key, value in checkpoint["callbacks"].items() if "ThresholdCalibration" in key]
    assert state["report"]["normal_images"] == calibrated.datamodule.few_shot_paths


@pytest.mark.parametrize("export_type", ["torch", "onnx", "openvino"])
def test_exported_models_label_the_same_images_anomalous(calibrated: Calibrated, export_type: str) -> None:
    path = calibrated.engine.export(
        calibrated.model, export_type=ExportType(export_type), export_root=calibrated.root / export_type
    )
    noise = torch.rand(4, 3, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE, generator=torch.Generator().manual_seed(0))
    images = torch.cat([_test_images(calibrated.datamodule), noise])  # noise: far outside the normal images
    with torch.no_grad():
        expected = calibrated.model(images).pred_label.numpy()
    if export_type == "torch":
        loaded = torch.load(path, weights_only=False)["model"].eval()
        with torch.no_grad():
            labels = loaded(images).pred_label.numpy()
    elif export_type == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        names = [output.name for output in session.get_outputs()]
        labels = session.run(None, {session.get_inputs()[0].name: images.numpy()})[names.index("pred_label")]
    else:
        import openvino

        compiled = openvino.Core().compile_model(str(path), "CPU", OPENVINO_FP32)
        result = compiled(images.numpy())
        labels = next(result[output] for output in compiled.outputs if output.any_name == "pred_label")
    assert 0 < expected.sum() < len(expected)  # the threshold separates something: a real check
    np.testing.assert_array_equal(labels, expected)


def _patchcore() -> Patchcore:
    pre_processor = Patchcore.configure_pre_processor(image_size=(TINY_IMAGE_SIZE, TINY_IMAGE_SIZE))
    return Patchcore(backbone="resnet18", pre_trained=False, pre_processor=pre_processor)


def test_a_target_false_rejection_rate_on_anomalibs_patchcore(mvtec_root: Path, tmp_path: Path) -> None:
    """Any anomalib one-class model: 8 held-out normal images, reject at most 1 of them (rate 0.125)."""
    seed_everything(0)
    calibration = ThresholdCalibration(operating_point="false_rejection_rate", false_rejection_rate=0.125, folds=4)
    engine = Engine(default_root_dir=tmp_path, accelerator="cpu", devices=1, logger=False, callbacks=[calibration])
    model = _patchcore()
    engine.fit(model, datamodule=_datamodule(mvtec_root, k_shot=8))
    report = calibration.report
    assert report is not None
    normal = torch.tensor(report.normal_scores)
    assert len(normal) == 8
    assert int((normal > report.image_threshold).sum()) == 1  # one rejection allowed, and the lowest such threshold
    assert report.false_rejection_rate == pytest.approx(0.125)
    assert not report.anchored  # anomalib's memory-bank models are not anchored by default
    assert float(model.post_processor.image_threshold) == pytest.approx(report.image_threshold)


def test_one_training_image_is_refused_before_training(mvtec_root: Path, tmp_path: Path) -> None:
    engine = Engine(
        default_root_dir=tmp_path, accelerator="cpu", devices=1, logger=False, callbacks=[ThresholdCalibration()]
    )
    model = _patchcore()
    with pytest.raises(ValueError, match=r"at least 2 normal images \(k_shot >= 2\)"):
        engine.fit(model, datamodule=_datamodule(mvtec_root, k_shot=1))
    assert not bool(model._is_fitted)  # anomalib's memory-bank flag: nothing was trained


@pytest.mark.parametrize(("model_name", "warns"), [("pcsnet", True), ("patchcore", False)])
def test_one_image_fold_models_of_gradient_trained_models_are_warned_about(
    mvtec_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, model_name: str, warns: bool
) -> None:
    """At k = 2 each fold model has one image: a warning for Pcsnet (held-out scores run high), none for Patchcore."""
    model = _tiny_pcsnet() if model_name == "pcsnet" else _patchcore()
    calibration = ThresholdCalibration(anomalies_per_image=1)
    engine = Engine(
        default_root_dir=tmp_path, max_epochs=1, accelerator="cpu", devices=1, logger=False, callbacks=[calibration]
    )
    with caplog.at_level(logging.WARNING, logger="pcsnet_anomalib.callbacks.calibration"):
        engine.fit(model, datamodule=_datamodule(mvtec_root, k_shot=2))
    assert calibration.report is not None  # calibrated all the same
    assert ("a fold model is fitted on one image" in caplog.text) is warns


def test_the_same_seeds_calibrate_to_the_same_thresholds(mvtec_root: Path, tmp_path: Path) -> None:
    reports = []
    for run in range(2):
        seed_everything(0)  # anomalib's Patchcore samples its coreset from torch's global generator
        calibration = ThresholdCalibration(pseudo_anomalies="both", folds=2, anomalies_per_image=2, seed=3)
        engine = Engine(
            default_root_dir=tmp_path / str(run), accelerator="cpu", devices=1, logger=False, callbacks=[calibration]
        )
        engine.fit(_patchcore(), datamodule=_datamodule(mvtec_root, k_shot=4))
        reports.append(calibration.report)
    assert reports[0] == reports[1]
