"""Pfm and Pefm end to end: export parity, checkpoints, bad input, determinism and resume (tiny sizes, CPU).

The same guarantees as Pcsnet's (``test_export.py``, ``test_reliability.py``, ``test_engine.py``), for both
models, with random-weight ResNet18 -> ResNet34 backbones, latent widths (8, 16, 32) and 64 px images. One
model of each class is trained once per module, 2 epochs of 2 steps (one epoch leaves a narrow normalisation
range that amplifies float32 rounding in the normalised export outputs to near 1e-4); the export and checkpoint
tests read it.
"""

import shutil
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import lightning
import pytest
import torch
from anomalib.data.utils import read_image
from anomalib.engine import Engine
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from pcsnet_anomalib import KShotMVTecAD, Pcsnet, Pefm, Pfm
from pcsnet_anomalib.models.components import IncompatibleCheckpointError, NonFiniteLossError
from pcsnet_anomalib.models.pfm.loss import PfmLoss
from tests.conftest import TINY_IMAGE_SIZE, TINY_MODEL, state_differences, write_mvtec_dataset
from tests.integration.export_parity import export_parity

pytestmark = pytest.mark.slow

CATEGORY = "widget"
TINY_PFM = {"source_backbone": "resnet18", "target_backbone": "resnet34", "pre_trained": False}
TINY_LATENT = (8, 16, 32)
MODEL_CLASSES = {"Pfm": Pfm, "Pefm": Pefm}


def _tiny(cls: type[Pfm], **kwargs: object) -> Pfm:
    pre_processor = cls.configure_pre_processor(image_size=(TINY_IMAGE_SIZE, TINY_IMAGE_SIZE))
    settings = {**TINY_PFM, "latent_dims": TINY_LATENT, "pre_processor": pre_processor, "visualizer": False, **kwargs}
    return cls(**settings)  # type: ignore[arg-type]


def _engine(root: Path, max_epochs: int = 1, callbacks: list[Callback] | None = None, **kwargs: object) -> Engine:
    return Engine(
        default_root_dir=root,
        max_epochs=max_epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        callbacks=callbacks,
        enable_progress_bar=False,
        **kwargs,
    )


def _datamodule(root: Path, k_shot: int | None = 4, **kwargs: object) -> KShotMVTecAD:
    """``k_shot`` images at batch 2 in a seeded, resumable order (the data side owns the shuffling)."""
    settings = {"train_batch_size": 2, "eval_batch_size": 4, "num_workers": 0, **kwargs}
    return KShotMVTecAD(root=root, category=CATEGORY, k_shot=k_shot, **settings)  # type: ignore[arg-type]


def _test_maps(model: Pfm, datamodule: KShotMVTecAD) -> torch.Tensor:
    """Raw anomaly maps of the test split from the bare torch model (eval mode)."""
    model.eval()
    transform = model.pre_processor.transform
    with torch.no_grad():
        return torch.cat([model.model(transform(b.image)).anomaly_map for b in datamodule.test_dataloader()])


# 1. Export and checkpoints -------------------------------------------------------------------------------------


@dataclass
class Trained:
    """A trained model, the engine that trained it, its checkpoint and the data."""

    name: str
    model: Pfm
    engine: Engine
    checkpoint: Path
    datamodule: KShotMVTecAD
    root: Path


@pytest.fixture(scope="module", params=sorted(MODEL_CLASSES))
def trained(
    request: pytest.FixtureRequest, mvtec_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Trained]:
    """One short fit per model, shared by the export and checkpoint tests; its folder is deleted afterwards."""
    name = request.param
    root = tmp_path_factory.mktemp(f"export_{name}")
    datamodule = _datamodule(mvtec_root)
    model = _tiny(MODEL_CLASSES[name])
    engine = _engine(root / "results", max_epochs=2)
    engine.fit(model, datamodule=datamodule)
    model.eval()
    yield Trained(name, model, engine, Path(engine.best_model_path), datamodule, root)
    shutil.rmtree(root, ignore_errors=True)


def _inputs(trained: Trained) -> Iterator[torch.Tensor]:
    """Random images (batch 1 and 3, and one needing a resize) and fresh real-looking images, normal and defective."""
    generator = torch.Generator().manual_seed(0)
    yield torch.rand(1, 3, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE, generator=generator)
    yield torch.rand(3, 3, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE, generator=generator)
    yield torch.rand(2, 3, 80, 96, generator=generator)
    fresh = write_mvtec_dataset(trained.root / "fresh", category=CATEGORY, n_train=0, seed=7)
    yield torch.stack([read_image(path, as_tensor=True) for path in sorted((fresh / CATEGORY / "test").rglob("*.png"))])


def test_torch_onnx_and_openvino_exports_match_the_model(trained: Trained) -> None:
    """Each export of the trained model gives its anomaly maps and scores within 1e-4 (relative); torch exactly."""
    parity = export_parity(trained.model, trained.engine, trained.root / "exported", _inputs(trained))
    print(f"{trained.name} export parity, max relative difference: {parity.figures()}")
    assert not parity.problems, parity.problems
    assert parity.unsaturated >= 4, (
        "the fresh images should give scores inside (0, 1), or the score parity proves little"
    )


def test_checkpoint_round_trip_is_bit_identical(trained: Trained) -> None:
    cls = MODEL_CLASSES[trained.name]
    loaded = cls.load_from_checkpoint(trained.checkpoint).eval()
    assert type(loaded) is cls
    assert loaded.hparams["position_encoding"] is (cls is Pefm)
    assert not state_differences(loaded.model.state_dict(), trained.model.model.state_dict())
    images = torch.stack([read_image(p, as_tensor=True) for p in sorted(trained.datamodule.root.rglob("test/*/*.png"))])
    with torch.no_grad():
        expected, actual = trained.model(images), loaded(images)
    assert torch.equal(actual.anomaly_map, expected.anomaly_map)
    assert torch.equal(actual.pred_score, expected.pred_score)

    # Engine.test with ckpt_path restores the same model into a fresh instance.
    fresh = _tiny(cls, seed=1)
    results = _engine(trained.root / "round_trip").test(
        fresh, datamodule=trained.datamodule, ckpt_path=trained.checkpoint
    )
    assert 0.0 <= results[0]["image_AUROC"] <= 1.0
    assert not state_differences(fresh.model.state_dict(), trained.model.model.state_dict())
    with torch.no_grad():
        assert torch.equal(fresh.eval()(images).anomaly_map, expected.anomaly_map)


def test_another_architecture_is_refused_naming_the_differing_tensors(trained: Trained) -> None:
    cls = MODEL_CLASSES[trained.name]
    with pytest.raises(IncompatibleCheckpointError, match=r"latent_dims': \[8, 16, 32\].*tensors differ.*mappings\.2"):
        cls.load_from_checkpoint(trained.checkpoint, latent_dims=(8, 16, 40))
    engine = _engine(trained.root / "wrong")
    with pytest.raises(IncompatibleCheckpointError, match=r"tensors differ \(first: missing model\.source_extractor"):
        engine.test(
            _tiny(cls, source_backbone="resnet10t"), datamodule=trained.datamodule, ckpt_path=trained.checkpoint
        )


def _checkpoint_of(model: LightningModule, path: Path) -> Path:
    """A checkpoint as Lightning writes it (state dict, hyper-parameters, the model's own section), without training."""
    checkpoint = {
        "state_dict": model.state_dict(),
        "hyper_parameters": dict(model.hparams),
        "pytorch-lightning_version": lightning.__version__,
    }
    model.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, path)
    return path


def test_a_pcsnet_checkpoint_is_refused_by_name(trained: Trained, tmp_path: Path) -> None:
    cls = MODEL_CLASSES[trained.name]
    pcsnet_checkpoint = _checkpoint_of(Pcsnet(**TINY_MODEL), tmp_path / "pcsnet.ckpt")
    with pytest.raises(IncompatibleCheckpointError, match="not written by Pfm or Pefm"):
        cls.load_from_checkpoint(pcsnet_checkpoint)
    engine = _engine(tmp_path / "run")
    with pytest.raises(IncompatibleCheckpointError, match="not written by Pfm or Pefm"):
        engine.test(_tiny(cls), datamodule=trained.datamodule, ckpt_path=pcsnet_checkpoint)
    with pytest.raises(IncompatibleCheckpointError, match="not written by Pcsnet"):
        engine.test(Pcsnet(**TINY_MODEL), datamodule=trained.datamodule, ckpt_path=trained.checkpoint)


# 2. Bad input --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(MODEL_CLASSES))
@pytest.mark.parametrize("where", ["train/good/001.png", "test/stain/000.png"])
def test_unreadable_file_fails_before_training_naming_the_file(tmp_path: Path, name: str, where: str) -> None:
    root = write_mvtec_dataset(tmp_path / "data", n_train=3, n_test_good=2, n_test_defect=2)
    path = root / CATEGORY / where
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # truncated
    model = _tiny(MODEL_CLASSES[name])
    before = {key: value.clone() for key, value in model.model.state_dict().items()}
    with pytest.raises(ValueError, match="cannot be read") as error:
        _engine(tmp_path / "run").fit(model, datamodule=_datamodule(root, k_shot=None))
    assert str(path) in str(error.value)
    assert model.global_step == 0
    assert not state_differences(before, model.model.state_dict())
    assert not list(tmp_path.rglob("*.ckpt"))


@pytest.mark.parametrize("name", sorted(MODEL_CLASSES))
def test_empty_train_folder_fails_before_training(tmp_path: Path, name: str) -> None:
    root = write_mvtec_dataset(tmp_path / "data", n_train=0, n_test_good=2, n_test_defect=2)
    model = _tiny(MODEL_CLASSES[name])
    with pytest.raises(ValueError, match="has no normal images: check the dataset root and category"):
        _engine(tmp_path / "run").fit(model, datamodule=_datamodule(root, k_shot=2))
    assert model.global_step == 0


def test_empty_train_folder_of_a_plain_mvtec_datamodule_fails_at_setup(tmp_path: Path) -> None:
    """Without the k-shot option too: zero training steps would otherwise save and test an untrained model."""
    from anomalib.data import MVTecAD

    root = write_mvtec_dataset(tmp_path / "data", n_train=0, n_test_good=2, n_test_defect=2)
    model = _tiny(Pfm)
    datamodule = MVTecAD(root=root, category=CATEGORY, train_batch_size=2, eval_batch_size=4, num_workers=0)
    with pytest.raises(ValueError, match="has no normal images: check the dataset root and category"):
        _engine(tmp_path / "run").fit(model, datamodule=datamodule)
    assert model.global_step == 0
    assert not list(tmp_path.rglob("*.ckpt"))


@pytest.mark.parametrize("name", sorted(MODEL_CLASSES))
def test_images_smaller_than_the_deepest_stride_fail_at_the_first_step(tmp_path: Path, name: str) -> None:
    root = write_mvtec_dataset(tmp_path / "data", size=16, n_train=2, n_test_good=1, n_test_defect=1)
    cls = MODEL_CLASSES[name]
    model = _tiny(cls, pre_processor=cls.configure_pre_processor(image_size=(12, 12)))
    with pytest.raises(ValueError, match=r"\(12, 12\) px are smaller than the deepest level's stride \(16\)"):
        _engine(tmp_path / "run").fit(model, datamodule=_datamodule(root, k_shot=None))
    assert model.global_step == 0
    assert not list(tmp_path.rglob("*.ckpt"))


@pytest.mark.parametrize("name", sorted(MODEL_CLASSES))
def test_non_finite_loss_stops_training_without_a_checkpoint(
    mvtec_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    original = PfmLoss.forward

    def nan_loss(self: PfmLoss, *args: object) -> dict[str, torch.Tensor]:
        losses = original(self, *args)
        return {**losses, "loss": losses["loss"] * float("nan")}

    monkeypatch.setattr(PfmLoss, "forward", nan_loss)
    callback = ModelCheckpoint(dirpath=tmp_path / "checkpoints", save_last=True, every_n_train_steps=1)
    engine = _engine(tmp_path / "run", max_epochs=2, callbacks=[callback])
    with pytest.raises(NonFiniteLossError, match="Non-finite training loss at epoch 0, step 0"):
        engine.fit(_tiny(MODEL_CLASSES[name]), datamodule=_datamodule(mvtec_root, k_shot=2))
    assert not list(tmp_path.rglob("*.ckpt"))


# 3. Determinism and resume -------------------------------------------------------------------------------------


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


@pytest.mark.parametrize("name", sorted(MODEL_CLASSES))
def test_same_seed_and_resuming_mid_epoch_give_the_same_weights_and_maps(
    mvtec_root: Path, tmp_path: Path, name: str
) -> None:
    """Same seeds, other global RNG state: identical weights and maps; and the same after an interruption.

    k=4 at batch 2: two steps per epoch, two epochs. The reference runs uninterrupted after
    ``torch.manual_seed(1)``; the other run, after ``torch.manual_seed(2)``, is killed before step 3 (in epoch 1)
    and resumed from last.ckpt. Validation is off: it changes no weight.
    """
    cls = MODEL_CLASSES[name]

    def fit(run: str, callbacks: list[Callback], ckpt_path: Path | None = None, model: Pfm | None = None) -> Pfm:
        model = model or _tiny(cls, seed=3)
        checkpoint = ModelCheckpoint(dirpath=tmp_path / run, save_last=True, every_n_train_steps=1)
        engine = _engine(tmp_path / f"run_{run}", 2, [checkpoint, *callbacks], limit_val_batches=0)
        engine.fit(model, datamodule=_datamodule(mvtec_root, k_shot=4, k_shot_seed=5, seed=3), ckpt_path=ckpt_path)
        return model

    torch.manual_seed(1)  # the seeds of the model and the data, not the global RNG, decide the result
    reference = fit("reference", [])
    torch.manual_seed(2)
    interrupted = _tiny(cls, seed=3)
    with pytest.raises(_InterruptedError):
        fit("interrupted", [_InterruptAtStep(3)], model=interrupted)
    assert interrupted.global_step == 3
    assert state_differences(reference.model.state_dict(), interrupted.model.state_dict())  # not trained to the end
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*dataloader is not resumable.*")
        resumed = fit("interrupted", [], ckpt_path=tmp_path / "interrupted" / "last.ckpt")

    assert resumed.global_step == reference.global_step == 4
    different = state_differences(reference.model.state_dict(), resumed.model.state_dict())
    assert not different, f"weights differ after resuming under another global RNG state: {different}"
    datamodule = _datamodule(mvtec_root)
    datamodule.setup()
    reference_maps, resumed_maps = _test_maps(reference, datamodule), _test_maps(resumed, datamodule)
    assert torch.isfinite(reference_maps).all()
    assert torch.equal(reference_maps, resumed_maps)
