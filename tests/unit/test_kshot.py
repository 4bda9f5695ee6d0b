"""k-shot selection: reproducible per seed, different across seeds, clear errors."""

from pathlib import Path

import pytest
from anomalib.data import MVTecAD

from pcsnet_anomalib.callbacks import KShotSelection


def _train_data(root: Path):
    datamodule = MVTecAD(root=root, category="widget")
    datamodule.setup()
    return datamodule.train_data


def test_same_seed_same_images_other_seed_other_images(mvtec_root: Path) -> None:
    train_data = _train_data(mvtec_root)
    first = KShotSelection(k_shot=4, seed=3).select(train_data)
    assert first == KShotSelection(k_shot=4, seed=3).select(train_data)
    assert len(first) == len(set(first)) == 4
    others = {tuple(KShotSelection(k_shot=4, seed=seed).select(train_data)) for seed in range(5)}
    assert len(others) > 1


def test_none_keeps_every_normal_image(mvtec_root: Path) -> None:
    train_data = _train_data(mvtec_root)
    assert len(KShotSelection(k_shot=None).select(train_data)) == len(train_data)


def test_more_shots_than_images_is_a_clear_error(mvtec_root: Path) -> None:
    with pytest.raises(ValueError, match=r"k_shot=11 .* only 10 normal images"):
        KShotSelection(k_shot=11).select(_train_data(mvtec_root))


def test_non_positive_k_is_rejected() -> None:
    with pytest.raises(ValueError, match="k_shot must be"):
        KShotSelection(k_shot=0)


def test_setup_subsamples_the_datamodule_and_records_the_choice(
    mvtec_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    datamodule = MVTecAD(root=mvtec_root, category="widget")
    datamodule.setup()
    trainer = type("FakeTrainer", (), {"datamodule": datamodule})()
    callback = KShotSelection(k_shot=2, seed=0)
    with caplog.at_level("INFO"):
        callback.setup(trainer, None, "fit")  # type: ignore[arg-type]
    assert sorted(datamodule.train_data.samples.image_path) == callback.selected_paths
    assert len(datamodule.train_data) == 2
    assert all(Path(path).name in caplog.text for path in callback.selected_paths)
    assert callback.state_dict()["selected_paths"] == callback.selected_paths
    callback.setup(trainer, None, "fit")  # a second fit keeps the same images
    assert sorted(datamodule.train_data.samples.image_path) == callback.selected_paths


def test_kshot_datamodule_trains_every_model_on_the_same_images(mvtec_root: Path) -> None:
    from pcsnet_anomalib.data import KShotMVTecAD

    first = KShotMVTecAD(root=mvtec_root, category="widget", k_shot=3, k_shot_seed=5, num_workers=0)
    second = KShotMVTecAD(root=mvtec_root, category="widget", k_shot=3, k_shot_seed=5, num_workers=0)
    first.setup()
    second.setup()
    assert first.few_shot_paths == second.few_shot_paths == sorted(first.train_data.samples.image_path)
    assert len(first.train_data) == 3
    assert not set(first.few_shot_paths) & set(first.val_data.samples.image_path)

    trainer = type("FakeTrainer", (), {"datamodule": first})()
    model_selection = KShotSelection(k_shot=8, seed=0)
    model_selection.setup(trainer, None, "fit")  # type: ignore[arg-type]
    assert model_selection.selected_paths == first.few_shot_paths
    assert len(first.train_data) == 3


def test_kshot_datamodule_rejects_more_shots_than_images(mvtec_root: Path) -> None:
    from pcsnet_anomalib.data import KShotMVTecAD

    with pytest.raises(ValueError, match="k_shot=20"):
        KShotMVTecAD(root=mvtec_root, category="widget", k_shot=20, num_workers=0).setup()
