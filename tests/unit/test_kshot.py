"""k-shot selection: one pure rule, reproducible per seed, different across seeds, clear errors; its datamodules."""

import inspect
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from anomalib.data import MPDD, MVTecAD
from jsonargparse import ArgumentParser
from torchvision.transforms.v2 import RandomHorizontalFlip

from pcsnet_anomalib.callbacks import KShotSelection
from pcsnet_anomalib.data import KShotMPDD, KShotMVTecAD, KShotPcsnetDemo, PcsnetDemo, select_k_shot


def _train_data(root: Path):
    datamodule = MVTecAD(root=root, category="widget")
    datamodule.setup()
    return datamodule.train_data


def test_same_seed_same_images_other_seed_other_images(mvtec_root: Path) -> None:
    train_data = _train_data(mvtec_root)
    torch.manual_seed(0)
    first = select_k_shot(train_data, 4, seed=3)
    torch.manual_seed(1)  # no global random state plays a part
    assert first == select_k_shot(train_data, 4, seed=3)
    assert len(first) == len(set(first)) == 4
    others = {tuple(select_k_shot(train_data, 4, seed=seed)) for seed in range(5)}
    assert len(others) > 1


def test_the_choice_does_not_depend_on_the_order_of_the_samples(mvtec_root: Path) -> None:
    train_data = _train_data(mvtec_root)
    reversed_data = SimpleNamespace(samples=train_data.samples.iloc[::-1].reset_index(drop=True))
    assert list(reversed_data.samples.image_path) != list(train_data.samples.image_path)
    assert select_k_shot(reversed_data, 4, seed=3) == select_k_shot(train_data, 4, seed=3)


def test_none_keeps_every_normal_image(mvtec_root: Path) -> None:
    train_data = _train_data(mvtec_root)
    assert len(select_k_shot(train_data, None, seed=0)) == len(train_data)


def test_more_shots_than_images_is_a_clear_error(mvtec_root: Path) -> None:
    with pytest.raises(ValueError, match=r"k_shot=11 .* only 10 normal images"):
        select_k_shot(_train_data(mvtec_root), 11, seed=0)


@pytest.mark.parametrize("k_shot", [0, -1, 2.5, True])
def test_a_k_that_is_no_positive_count_is_rejected_at_construction(k_shot: object) -> None:
    with pytest.raises(ValueError, match="k_shot must be a positive number of images or None"):
        KShotSelection(k_shot=k_shot)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="k_shot must be a positive number of images or None"):
        KShotMVTecAD(k_shot=k_shot)  # type: ignore[arg-type]


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
    with pytest.raises(ValueError, match="k_shot=20"):
        KShotMVTecAD(root=mvtec_root, category="widget", k_shot=20, num_workers=0).setup()


@pytest.mark.parametrize(
    ("kshot_class", "parent"), [(KShotMVTecAD, MVTecAD), (KShotMPDD, MPDD), (KShotPcsnetDemo, PcsnetDemo)]
)
def test_kshot_datamodules_accept_every_argument_of_their_parent(kshot_class: type, parent: type) -> None:
    """The CLI (jsonargparse follows ``**kwargs`` to the parent) offers every parent argument, none dropped."""
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(kshot_class, "data")
    offered = {action.dest.removeprefix("data.") for action in parser._actions if action.dest.startswith("data.")}
    expected = set(inspect.signature(parent.__init__).parameters) - {"self"}
    assert expected | {"k_shot", "k_shot_seed"} <= offered


def test_kshot_datamodule_forwards_augmentations_and_split_settings(mvtec_root: Path) -> None:
    flip = RandomHorizontalFlip()
    datamodule = KShotMVTecAD(
        root=mvtec_root,
        category="widget",
        k_shot=2,
        train_batch_size=5,
        train_augmentations=flip,
        test_split_mode="synthetic",
        test_split_ratio=0.3,
        val_split_mode="from_test",
        val_split_ratio=0.25,
        seed=7,
    )
    assert datamodule.train_augmentations is flip
    assert (datamodule.test_split_mode, datamodule.test_split_ratio) == ("synthetic", 0.3)
    assert (datamodule.val_split_mode, datamodule.val_split_ratio) == ("from_test", 0.25)
    assert (datamodule.train_batch_size, datamodule.seed) == (5, 7)


def test_kshot_datamodule_records_its_choice_in_its_state(mvtec_root: Path) -> None:
    datamodule = KShotMVTecAD(root=mvtec_root, category="widget", k_shot=3, k_shot_seed=1, num_workers=0)
    datamodule.setup()
    state = datamodule.state_dict()
    assert {key: state[key] for key in ("k_shot", "k_shot_seed", "few_shot_paths")} == {
        "k_shot": 3,
        "k_shot_seed": 1,
        "few_shot_paths": datamodule.few_shot_paths,
    }
    assert state["anomalous_shot_paths"] == []  # no anomalous shots by default (test_anomalous_shots.py)
