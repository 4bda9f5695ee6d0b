"""Prn in anomalib's Engine: prototypes, the seen bank, the unseen-only warning and checkpoints.

Prototypes come from the normal rows only, the real anomalies become the seen bank with their masks, a training
set without them gives the unseen-only warning, and a checkpoint restores the prototypes and the generator's stream.
"""

import logging
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from anomalib.data.utils import read_mask
from anomalib.engine import Engine

from pcsnet_anomalib.data import KShotMVTecAD
from pcsnet_anomalib.models.components import IncompatibleCheckpointError
from pcsnet_anomalib.models.prn import Prn
from tests.conftest import write_mvtec_dataset

SIZE = 128
N_NORMAL = 5


def _prn(**kwargs: object) -> Prn:
    return Prn(
        backbone="test_resnet",
        pre_trained=False,
        input_size=SIZE,
        msa_layers=1,
        prototype_ratio=1.0,  # K = N: the prototype count tells how many images they were fitted on
        pre_processor=Prn.configure_pre_processor((SIZE, SIZE)),
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_mvtec_dataset(tmp_path_factory.mktemp("prn_data"), n_train=N_NORMAL, n_test_good=2, n_test_defect=4)


def _fit(
    root: Path, project: Path, anomalous_shots: int, textures: Path, **kwargs: object
) -> tuple[Prn, KShotMVTecAD, Engine]:
    model = _prn(anomaly_source_path=textures, **kwargs)
    datamodule = KShotMVTecAD(
        root=root, category="widget", k_shot=None, anomalous_shots=anomalous_shots, train_batch_size=2, num_workers=0
    )
    engine = Engine(logger=False, default_root_dir=project, max_epochs=1, devices=1, accelerator="cpu")
    engine.fit(model=model, datamodule=datamodule)
    return model, datamodule, engine


@pytest.fixture(scope="module")
def textures(dataset_root: Path) -> Path:
    return dataset_root / "widget" / "train" / "good"  # any images will do


@pytest.mark.slow
def test_fit_with_real_anomalies(
    dataset_root: Path, textures: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        model, datamodule, engine = _fit(
            dataset_root, tmp_path, anomalous_shots=2, textures=textures, foreground_preset="mvtec_ad/bottle"
        )
    assert "no labelled anomalies" not in caplog.text
    assert len(datamodule.train_data) == N_NORMAL + 2
    # Prototypes come from the normal rows only: K = N (ratio 1) counts the 5 normal images, not the 2 anomalies.
    assert [memory.num_prototypes for memory in model.model.prototypes.memories] == [N_NORMAL] * 3
    assert model.anomaly_generator.background == (200.0, 60.0)  # the preset's object mask for seen anomalies
    # The seen bank holds the two real anomalies with their ground-truth masks, resized like the batches.
    generator = model.anomaly_generator
    assert generator.seen_masks is not None
    assert generator.seen_masks.shape == (2, 1, SIZE, SIZE)
    samples = datamodule.train_data.samples
    mask_paths = samples.mask_path[samples.label_index == 1].tolist()
    expected = torch.stack(
        [
            F.interpolate(read_mask(path, as_tensor=True)[None, None].float(), size=(SIZE, SIZE))[0]
            for path in mask_paths
        ]
    )
    assert torch.equal(generator.seen_masks, (expected > 0.5).float())

    # The paper's pixel metrics beside anomalib's defaults.
    metrics = engine.test(model=model, datamodule=datamodule)[0]
    assert {"image_AUROC", "pixel_AUROC", "pixel_AUPRO", "pixel_AUPR"} <= set(metrics)

    # A Lightning checkpoint restores the prototypes and continues the generator's random stream.
    checkpoint = tmp_path / "prn.ckpt"
    engine.trainer.save_checkpoint(checkpoint)
    loaded = Prn.load_from_checkpoint(checkpoint, backbone="test_resnet")
    assert torch.equal(loaded.anomaly_generator.generator.get_state(), generator.generator.get_state())
    for saved, restored in zip(model.model.prototypes.memories, loaded.model.prototypes.memories, strict=True):
        assert torch.equal(saved.prototypes, restored.prototypes)
    loaded.eval()
    model.eval()
    images = torch.rand(1, 3, SIZE, SIZE)
    torch.testing.assert_close(loaded.model(images).anomaly_map, model.model(images).anomaly_map)


@pytest.mark.slow
def test_fit_without_real_anomalies_warns_unseen_only(
    dataset_root: Path, textures: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    backbone = {name: tensor.clone() for name, tensor in _prn().model.feature_extractor.state_dict().items()}
    with caplog.at_level(logging.WARNING):
        model, _, _ = _fit(dataset_root, tmp_path, anomalous_shots=0, textures=textures)
    # The frozen backbone (weights and BatchNorm statistics) is unchanged by training: U's train-mode drift is gone.
    trained = model.model.feature_extractor.state_dict()
    assert all(torch.equal(tensor, trained[name]) for name, tensor in backbone.items())
    assert "no labelled anomalies" in caplog.text
    assert "unseen" in caplog.text
    assert not model.anomaly_generator.has_seen_bank
    assert model.anomaly_generator.background is None  # no preset for this dataset: the whole image is foreground
    assert model.model.prototypes.is_fitted


def test_a_checkpoint_of_another_model_is_refused() -> None:
    with pytest.raises(IncompatibleCheckpointError, match="not written by Prn"):
        _prn().on_load_checkpoint({"state_dict": {}, "hyper_parameters": {"backbone": "x"}})
