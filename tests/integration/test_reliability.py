"""Reliability end to end: odd image files, degenerate data, interrupted and repeated runs (tiny sizes, CPU)."""

import hashlib
import logging
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from anomalib.engine import Engine
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from PIL import Image

from pcsnet_anomalib import KShotMVTecAD, Pcsnet
from pcsnet_anomalib.models.components import NonFiniteLossError
from pcsnet_anomalib.models.pcsnet.loss import PcsnetLoss
from tests.conftest import TINY_IMAGE_SIZE, TINY_MODEL, state_differences, write_mvtec_dataset

pytestmark = pytest.mark.slow


def _tiny_pcsnet(**kwargs: object) -> Pcsnet:
    pre_processor = Pcsnet.configure_pre_processor(image_size=(TINY_IMAGE_SIZE, TINY_IMAGE_SIZE))
    return Pcsnet(**{**TINY_MODEL, "pre_processor": pre_processor, **kwargs})  # type: ignore[arg-type]


def _engine(root: Path, max_epochs: int = 1, callbacks: list[Callback] | None = None) -> Engine:
    return Engine(
        default_root_dir=root,
        max_epochs=max_epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        callbacks=callbacks,
        enable_progress_bar=False,
    )


def _datamodule(root: Path, k_shot: int | None = None, **kwargs: object) -> KShotMVTecAD:
    """The paper's data protocol: ``k_shot`` images (``None``: all) at batch 2, in a seeded, resumable order."""
    settings = {"train_batch_size": 2, "num_workers": 0, **kwargs}
    return KShotMVTecAD(root=root, category="widget", k_shot=k_shot, **settings)  # type: ignore[arg-type]


def _test_maps(model: Pcsnet, datamodule: KShotMVTecAD) -> torch.Tensor:
    """Anomaly maps of the test split from the bare torch model (eval mode)."""
    model.eval()
    transform = model.pre_processor.transform
    with torch.no_grad():
        return torch.cat([model.model(transform(b.image)).anomaly_map for b in datamodule.test_dataloader()])


# 1. Input handling ---------------------------------------------------------------------------------------------


def test_grayscale_rgba_and_16_bit_images_train_and_predict(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = write_mvtec_dataset(tmp_path / "data", n_train=3, n_test_good=2, n_test_defect=2)
    train = root / "widget/train/good"
    grey = np.asarray(Image.open(train / "000.png").convert("L"))
    Image.fromarray(grey).save(train / "000.png")  # mode L
    rgb = np.asarray(Image.open(train / "001.png"))
    Image.fromarray(np.dstack([rgb, np.full(grey.shape, 90, np.uint8)]), "RGBA").save(train / "001.png")
    Image.fromarray(grey.astype(np.uint16)).save(train / "002.png")  # 16-bit with 8-bit values: converts unchanged
    assert [Image.open(train / f"00{i}.png").mode for i in range(3)] == ["L", "RGBA", "I;16"]

    datamodule = _datamodule(root)
    model = _tiny_pcsnet()
    engine = _engine(tmp_path / "run")
    with caplog.at_level(logging.WARNING, logger="pcsnet_anomalib.data.validation"):
        engine.fit(model, datamodule=datamodule)
    assert "more than 8 bits per channel" in caplog.text
    assert "002.png" in caplog.text
    for item in datamodule.train_data:
        assert item.image.shape == (3, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE)
    maps = _test_maps(model, datamodule)
    assert maps.shape == (4, 1, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE)
    assert torch.isfinite(maps).all()


@pytest.mark.parametrize("where", ["train/good/001.png", "test/stain/000.png", "ground_truth/stain/001_mask.png"])
@pytest.mark.parametrize("damage", ["truncated", "not_an_image"])
def test_unreadable_file_fails_before_training_naming_the_file(tmp_path: Path, where: str, damage: str) -> None:
    root = write_mvtec_dataset(tmp_path / "data", n_train=3, n_test_good=2, n_test_defect=2)
    path = root / "widget" / where
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"this is not a PNG")
    model = _tiny_pcsnet()
    with pytest.raises(ValueError, match="cannot be read") as error:
        _engine(tmp_path / "run").fit(model, datamodule=_datamodule(root))
    assert str(path) in str(error.value)
    assert not model.model.memory.is_initialized  # failed before the prototypes were built


def test_empty_train_folder_fails_before_training(tmp_path: Path) -> None:
    root = write_mvtec_dataset(tmp_path / "data", n_train=0, n_test_good=2, n_test_defect=2)
    model = _tiny_pcsnet()
    with pytest.raises(ValueError, match="has no normal images: check the dataset root and category"):
        _engine(tmp_path / "run").fit(model, datamodule=_datamodule(root, k_shot=2))
    assert not model.model.memory.is_initialized


def test_k_shot_above_the_available_images_fails_before_training(tmp_path: Path) -> None:
    root = write_mvtec_dataset(tmp_path / "data", n_train=3, n_test_good=2, n_test_defect=2)
    model = _tiny_pcsnet()
    with pytest.raises(ValueError, match=r"k_shot=5 but .* has only 3 normal images: set k_shot to at most 3"):
        _engine(tmp_path / "run").fit(model, datamodule=_datamodule(root, k_shot=5))
    assert not model.model.memory.is_initialized


def test_images_too_small_for_the_prior_fail_before_training(tmp_path: Path) -> None:
    root = write_mvtec_dataset(tmp_path / "data", n_train=2, n_test_good=1, n_test_defect=1)
    model = _tiny_pcsnet(pre_processor=Pcsnet.configure_pre_processor(image_size=(24, 24)))
    with pytest.raises(ValueError, match=r"fewer than prior_channels=64: use larger images \(at least 29 px"):
        _engine(tmp_path / "run").fit(model, datamodule=_datamodule(root))
    assert model.global_step == 0


def test_images_too_small_for_the_map_blur_fail_at_the_first_step(tmp_path: Path) -> None:
    root = write_mvtec_dataset(tmp_path / "data", size=16, n_train=2, n_test_good=1, n_test_defect=1)
    pre_processor = Pcsnet.configure_pre_processor(image_size=(16, 16))
    model = _tiny_pcsnet(prior_channels=16, blur_sigma=4.0, pre_processor=pre_processor)
    with pytest.raises(ValueError, match=r"\(16, 16\) px are too small for the anomaly-map blur"):
        _engine(tmp_path / "run").fit(model, datamodule=_datamodule(root))
    assert model.global_step == 0
    assert not list(tmp_path.rglob("*.ckpt"))


# 2. Degenerate training ----------------------------------------------------------------------------------------


def test_one_shot_trains(mvtec_root: Path, tmp_path: Path) -> None:
    datamodule = _datamodule(mvtec_root, k_shot=1)
    model = _tiny_pcsnet()
    engine = _engine(tmp_path, max_epochs=2)
    engine.fit(model, datamodule=datamodule)
    assert len(datamodule.train_data) == 1
    assert engine.trainer.current_epoch == 2
    assert torch.isfinite(_test_maps(model, datamodule)).all()


def test_identical_blank_images_train_finite_and_log_the_synthesis_fallbacks(tmp_path: Path) -> None:
    """Zero-variance data, and an object preset that finds no object on a plain background: every patch falls back."""
    root = write_mvtec_dataset(tmp_path / "data", n_train=2, n_test_good=1, n_test_defect=1)
    for path in (root / "widget/train/good").glob("*.png"):
        Image.fromarray(np.full((TINY_IMAGE_SIZE, TINY_IMAGE_SIZE, 3), 200, np.uint8)).save(path)
    datamodule = _datamodule(root, k_shot=2)
    model = _tiny_pcsnet(synthesis_preset="mvtec_ad/bottle")
    engine = _engine(tmp_path / "run", max_epochs=2)
    engine.fit(model, datamodule=datamodule)
    metrics = engine.trainer.callback_metrics
    assert float(metrics["train_synthesis_fallback_rate"]) == 1.0
    assert model.model.synthesizer.failed_patches == model.model.synthesizer.total_patches == 4
    for name in ("train_loss", "train_normal", "train_anomalous", "train_pdc", "train_segmentation"):
        assert torch.isfinite(metrics[name]), name
    assert torch.isfinite(_test_maps(model, datamodule)).all()


def test_textured_images_log_a_zero_fallback_rate(mvtec_root: Path, tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    engine.fit(_tiny_pcsnet(), datamodule=_datamodule(mvtec_root, k_shot=2))
    assert float(engine.trainer.callback_metrics["train_synthesis_fallback_rate"]) == 0.0


def test_non_finite_loss_stops_training_without_a_checkpoint(
    mvtec_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = PcsnetLoss.forward

    def nan_loss(self: PcsnetLoss, *args: object) -> dict[str, torch.Tensor]:
        losses = original(self, *args)
        return {**losses, "loss": losses["loss"] * float("nan")}

    monkeypatch.setattr(PcsnetLoss, "forward", nan_loss)
    checkpoints = tmp_path / "checkpoints"
    callback = ModelCheckpoint(dirpath=checkpoints, save_last=True, every_n_train_steps=1)
    model = _tiny_pcsnet()
    engine = _engine(tmp_path / "run", max_epochs=2, callbacks=[callback])
    with pytest.raises(NonFiniteLossError, match="Non-finite training loss at epoch 0, step 0"):
        engine.fit(model, datamodule=_datamodule(mvtec_root, k_shot=2))
    assert not list(tmp_path.rglob("*.ckpt"))


# 3. Interruption -----------------------------------------------------------------------------------------------


class _InterruptedError(RuntimeError):
    """Stands for a crash or a kill in the middle of training."""


class _InterruptAtStep(Callback):
    """Stop a fit with an exception before the given optimisation step, as a crash or a kill would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: object, batch_idx: int) -> None:
        del pl_module, batch, batch_idx
        if trainer.global_step == self.step:
            raise _InterruptedError


@pytest.mark.parametrize("interrupt_at_step", [1, 3], ids=["mid-epoch-0", "mid-epoch-1"])
def test_resuming_from_the_last_checkpoint_gives_the_uninterrupted_weights(
    mvtec_root: Path, tmp_path: Path, interrupt_at_step: int
) -> None:
    """k=4 at batch size 2: two steps per epoch, two epochs; killed in mid-epoch, resumed from last.ckpt."""

    def fit(name: str, callbacks: list[Callback], ckpt_path: Path | None = None, model: Pcsnet | None = None) -> Pcsnet:
        model = model or _tiny_pcsnet(seed=3)
        checkpoint = ModelCheckpoint(dirpath=tmp_path / name, save_last=True, every_n_train_steps=1)
        engine = _engine(tmp_path / f"run_{name}", max_epochs=2, callbacks=[checkpoint, *callbacks])
        engine.fit(model, datamodule=_datamodule(mvtec_root, k_shot=4, seed=3), ckpt_path=ckpt_path)
        return model

    reference = fit("reference", [])
    interrupted = _tiny_pcsnet(seed=3)
    with pytest.raises(_InterruptedError):
        fit("interrupted", [_InterruptAtStep(interrupt_at_step)], model=interrupted)
    assert interrupted.global_step == interrupt_at_step
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*dataloader is not resumable.*")
        resumed = fit("interrupted", [], ckpt_path=tmp_path / "interrupted" / "last.ckpt")

    assert resumed.global_step == reference.global_step == 4
    different = state_differences(reference.model.state_dict(), resumed.model.state_dict())
    assert not different, f"weights or random streams differ after resuming: {different}"


def _tree_digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
    }


def test_a_second_run_writes_a_new_version_folder(mvtec_root: Path, tmp_path: Path) -> None:
    results = tmp_path / "results"
    _engine(results).fit(_tiny_pcsnet(), datamodule=_datamodule(mvtec_root, k_shot=2))
    category_dir = results / "Pcsnet" / "KShotMVTecAD" / "widget"
    first = _tree_digest(category_dir / "v0")
    assert any(name.endswith(".ckpt") for name in first)

    _engine(results).fit(_tiny_pcsnet(), datamodule=_datamodule(mvtec_root, k_shot=2))
    assert sorted(p.name for p in category_dir.iterdir()) == ["latest", "v0", "v1"]
    assert (category_dir / "latest").resolve() == (category_dir / "v1").resolve()
    assert _tree_digest(category_dir / "v0") == first
    assert any(name.endswith(".ckpt") for name in _tree_digest(category_dir / "v1"))


# 4. Reproducibility --------------------------------------------------------------------------------------------


def test_same_seed_gives_identical_maps_whatever_the_global_rng(mvtec_root: Path, tmp_path: Path) -> None:
    def run(global_seed: int) -> tuple[torch.Tensor, list[str], dict[str, object]]:
        torch.manual_seed(global_seed)  # the seeds of the model and the data, not the global RNG, decide the result
        datamodule = _datamodule(mvtec_root, k_shot=4, k_shot_seed=5, seed=5)
        model = _tiny_pcsnet(seed=5)
        _engine(tmp_path / f"run{global_seed}", max_epochs=2).fit(model, datamodule=datamodule)
        assert datamodule.few_shot_paths is not None
        return _test_maps(model, datamodule), datamodule.few_shot_paths, model.model.state_dict()

    first_maps, first_paths, first_state = run(global_seed=1)
    second_maps, second_paths, second_state = run(global_seed=2)
    assert first_paths == second_paths
    assert not state_differences(first_state, second_state)
    assert torch.equal(first_maps, second_maps)
