"""Anomalous shots: m stratified test anomalies move to training, leave test and validation, compose with k-shot."""

import inspect
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from anomalib.data import MVTecAD
from jsonargparse import ArgumentParser

from pcsnet_anomalib.callbacks import KShotSelection
from pcsnet_anomalib.data import (
    AnomalousShotsMixin,
    KShotFolder,
    KShotMPDD,
    KShotMVTecAD,
    KShotPcsnetDemo,
    demo_dataset_root,
    select_anomalous_shots,
)
from pcsnet_anomalib.data.validation import check_normal_training_set
from pcsnet_anomalib.models import Pcsnet, Pfm
from tests.conftest import TINY_MODEL, write_mvtec_dataset

TYPES = ("crack", "dent", "stain")
TINY_PFM = {"source_backbone": "resnet18", "target_backbone": "resnet18", "pre_trained": False}


class AnomalousShotsMVTecAD(AnomalousShotsMixin, MVTecAD):
    """The mixin alone, in front of a plain anomalib datamodule."""


def write_defect_types(root: Path, counts: dict[str, int], n_train: int = 6, n_test_good: int = 4) -> Path:
    """An MVTec-layout ``widget`` category with ``counts[name]`` abnormal images (and masks) per defect type."""
    write_mvtec_dataset(root, n_train=n_train, n_test_good=n_test_good, n_test_defect=max(counts.values()))
    base = root / "widget"
    for kind, suffix in (("test", ""), ("ground_truth", "_mask")):
        source = (base / kind / "stain").rename(base / kind / "source")
        for name, count in counts.items():
            (base / kind / name).mkdir()
            for index in range(count):
                shutil.copy(source / f"{index:03d}{suffix}.png", base / kind / name)
        shutil.rmtree(source)
    return root


@pytest.fixture(scope="module")
def three_types(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 normal training images; test: 4 normal, 4 abnormal of each of 3 defect types."""
    return write_defect_types(tmp_path_factory.mktemp("three_types"), dict.fromkeys(TYPES, 4))


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default demo dataset (version 1: 24 normal training images; 4 defect types of 6 test images)."""
    return demo_dataset_root(tmp_path_factory.mktemp("cache") / "demo")


def _test_data(root: Path) -> Any:
    datamodule = MVTecAD(root=root, category="widget", num_workers=0)
    datamodule.setup()
    return datamodule.test_data


def _paths(dataset: Any, label_index: int | None = None) -> set[str]:
    samples = dataset.samples
    if label_index is not None:
        samples = samples[samples.label_index == label_index]
    return set(samples.image_path)


def _types(paths: list[str]) -> list[str]:
    return sorted(Path(path).parent.name for path in paths)


# The selection rule.


@pytest.mark.parametrize(("shots", "least"), [(10, 3), (7, 2), (3, 1), (2, 0), (12, 4)])
def test_stratified_floor_per_type_then_the_remainder(three_types: Path, shots: int, least: int) -> None:
    chosen = select_anomalous_shots(_test_data(three_types), shots, seed=0)
    types = _types(chosen)
    assert len(chosen) == len(set(chosen)) == shots
    assert all(types.count(name) >= least for name in TYPES)
    assert sum(types.count(name) - least for name in TYPES) == shots % 3


def test_the_remainder_comes_from_every_type_across_seeds(three_types: Path) -> None:
    """The m mod T extra images are drawn from the leftovers of all types, not always from the first type."""
    test_data = _test_data(three_types)
    extra_types = set()
    for seed in range(10):
        types = _types(select_anomalous_shots(test_data, 10, seed))
        extra_types |= {name for name in TYPES if types.count(name) == 4}
    assert extra_types == set(TYPES)


def test_defect_types_are_the_label_column_for_mvtec(three_types: Path) -> None:
    test_data = _test_data(three_types)
    samples = test_data.samples[test_data.samples.label_index == 1]
    assert all(Path(path).parent.name == label for path, label in zip(samples.image_path, samples.label, strict=True))


def test_same_seed_same_images_other_seed_other_images(three_types: Path) -> None:
    test_data = _test_data(three_types)
    torch.manual_seed(0)
    np.random.seed(0)  # noqa: NPY002 (the global state must play no part)
    first = select_anomalous_shots(test_data, 5, seed=3)
    torch.manual_seed(1)
    np.random.seed(1)  # noqa: NPY002
    assert first == select_anomalous_shots(test_data, 5, seed=3) == sorted(first)
    assert len({tuple(select_anomalous_shots(test_data, 5, seed)) for seed in range(5)}) > 1


def test_the_choice_does_not_depend_on_the_order_of_the_samples(three_types: Path) -> None:
    test_data = _test_data(three_types)
    reversed_data = SimpleNamespace(samples=test_data.samples.iloc[::-1].reset_index(drop=True))
    assert select_anomalous_shots(reversed_data, 7, seed=2) == select_anomalous_shots(test_data, 7, seed=2)


def test_zero_shots_choose_nothing_even_without_anomalies(make_mvtec) -> None:
    assert select_anomalous_shots(_test_data(make_mvtec(n_test_defect=0)), 0, seed=0) == []


# Errors.


@pytest.mark.parametrize("shots", [-1, 2.5, True, "3", None])
def test_a_count_that_is_no_number_of_images_is_rejected_at_construction(shots: object) -> None:
    with pytest.raises(ValueError, match=r"anomalous_shots must be a number of abnormal test images .* got"):
        KShotMVTecAD(anomalous_shots=shots)  # type: ignore[arg-type]


def test_more_shots_than_anomalies_is_a_clear_error(three_types: Path) -> None:
    with pytest.raises(ValueError, match=r"anomalous_shots=13 .* only 12 abnormal images: set anomalous_shots to at"):
        select_anomalous_shots(_test_data(three_types), 13, seed=0)


def test_more_shots_per_type_than_a_type_has_names_the_type(tmp_path: Path) -> None:
    root = write_defect_types(tmp_path / "uneven", {"crack": 4, "dent": 1, "stain": 4})
    test_data = _test_data(root)
    assert len(select_anomalous_shots(test_data, 5, seed=0)) == 5  # 1 per type + 2: the most that works
    message = r"2 images of each of the 3 defect types of widget, but defect type 'dent' has only 1: .* at most 5\."
    with pytest.raises(ValueError, match=message):
        select_anomalous_shots(test_data, 6, seed=0)


def test_no_anomalies_at_all_is_a_clear_error(make_mvtec) -> None:
    datamodule = AnomalousShotsMVTecAD(root=make_mvtec(n_test_defect=0), category="widget", anomalous_shots=1)
    with pytest.raises(ValueError, match=r"anomalous_shots=1 but the test set of widget has no abnormal images"):
        datamodule.setup()


def test_a_chosen_image_without_a_mask_is_a_clear_error(three_types: Path) -> None:
    base = three_types / "widget"
    datamodule = KShotFolder(
        name="widget",
        root=base,
        normal_dir="train/good",
        abnormal_dir=[f"test/{name}" for name in TYPES],
        normal_test_dir="test/good",
        k_shot=None,
        anomalous_shots=2,
        num_workers=0,
    )
    with pytest.raises(ValueError, match=r"Abnormal image .*test/\w+/00\d\.png .* has no mask file .*mask_dir"):
        datamodule.setup()


# The datamodules.


def _folder(root: Path, **kwargs: Any) -> KShotFolder:
    base = root / "widget"
    return KShotFolder(
        name="widget",
        root=base,
        normal_dir="train/good",
        abnormal_dir=[f"test/{name}" for name in TYPES],
        normal_test_dir="test/good",
        mask_dir=[f"ground_truth/{name}" for name in TYPES],
        num_workers=0,
        **kwargs,
    )


@pytest.mark.parametrize("val_split_mode", ["same_as_test", "from_test", "synthetic", "none", "from_train"])
def test_the_shots_train_with_their_masks_and_leave_test_and_validation(three_types: Path, val_split_mode: str) -> None:
    datamodule = AnomalousShotsMVTecAD(
        root=three_types, category="widget", anomalous_shots=5, val_split_mode=val_split_mode, num_workers=0
    )
    datamodule.setup()
    shots = datamodule.anomalous_shot_paths or []
    assert len(shots) == 5
    assert _paths(datamodule.train_data, 1) == set(shots)
    if val_split_mode in {"same_as_test", "from_test", "none"}:
        assert len(_paths(datamodule.train_data, 0)) == 6
    evaluated = [datamodule.test_data] + ([datamodule.val_data] if val_split_mode != "none" else [])
    assert not set(shots) & set().union(*(_paths(dataset) for dataset in evaluated))
    real = {path for dataset in evaluated for path in _paths(dataset, 1) if "widget" in path}
    assert len(real) == 12 - 5  # synthetic validation anomalies aside, the real ones left are all evaluated

    train = datamodule.train_data
    assert train.task == "segmentation"
    moved = train.samples[train.samples.label_index == 1]
    assert set(moved.split) == {"train"}
    for index in moved.index:
        item = train[index]
        assert int(item.gt_label) == 1
        assert item.gt_mask.any()


def test_the_shots_leave_a_synthetic_test_set_too(three_types: Path) -> None:
    datamodule = AnomalousShotsMVTecAD(
        root=three_types, category="widget", anomalous_shots=4, test_split_mode="synthetic", num_workers=0
    )
    datamodule.setup()
    assert _paths(datamodule.train_data, 1) == set(datamodule.anomalous_shot_paths or [])


def test_folder_and_demo_datamodules_take_the_option(three_types: Path, demo_root: Path) -> None:
    folder = _folder(three_types, k_shot=None, anomalous_shots=7, anomalous_shots_seed=1)
    folder.setup()
    shots = folder.anomalous_shot_paths or []
    assert all(_types(shots).count(name) >= 2 for name in TYPES)  # defect types = the abnormal folders
    assert _paths(folder.train_data, 1) == set(shots)
    assert set(folder.train_data.samples.split) == {folder.train_data.samples.split.iloc[0]}  # "Split.TRAIN" here
    assert folder.train_data.task == "segmentation"
    assert not set(shots) & (_paths(folder.test_data) | _paths(folder.val_data))

    demo = KShotPcsnetDemo(root=demo_root, category="brick", k_shot=4, anomalous_shots=10, anomalous_shots_seed=2)
    demo.setup()
    shots = demo.anomalous_shot_paths or []
    types = _types(shots)
    assert len(shots) == 10
    assert len(set(types)) == 4
    assert all(types.count(name) >= 2 for name in set(types))
    assert _paths(demo.train_data) == set(shots) | set(demo.few_shot_paths or [])
    assert not set(shots) & (_paths(demo.test_data) | _paths(demo.val_data))


def test_zero_shots_change_nothing(three_types: Path) -> None:
    plain = MVTecAD(root=three_types, category="widget", val_split_mode="from_test", seed=0, num_workers=0)
    with_mixin = AnomalousShotsMVTecAD(
        root=three_types, category="widget", val_split_mode="from_test", seed=0, num_workers=0
    )
    plain.setup()
    with_mixin.setup()
    assert with_mixin.anomalous_shot_paths == []
    for name in ("train_data", "val_data", "test_data"):
        expected, actual = getattr(plain, name).samples, getattr(with_mixin, name).samples
        pd.testing.assert_frame_equal(actual, expected)
        assert actual.attrs == expected.attrs


def test_composes_with_k_shot_keeping_k_normal_and_m_abnormal_images(three_types: Path) -> None:
    normal_only = KShotMVTecAD(root=three_types, category="widget", k_shot=3, k_shot_seed=4, num_workers=0)
    both = KShotMVTecAD(root=three_types, category="widget", k_shot=3, k_shot_seed=4, anomalous_shots=6, num_workers=0)
    normal_only.setup()
    both.setup()
    assert both.few_shot_paths == normal_only.few_shot_paths  # the k-shot choice is independent of the shots
    assert _paths(both.train_data, 0) == set(both.few_shot_paths or [])
    assert _paths(both.train_data, 1) == set(both.anomalous_shot_paths or [])
    assert len(both.train_data) == 3 + 6


def test_the_k_shot_callback_keeps_the_shots(three_types: Path) -> None:
    datamodule = AnomalousShotsMVTecAD(root=three_types, category="widget", anomalous_shots=3, num_workers=0)
    datamodule.setup()
    trainer = SimpleNamespace(datamodule=datamodule)
    KShotSelection(k_shot=2, seed=0).setup(trainer, None, "fit")  # type: ignore[arg-type]
    assert len(_paths(datamodule.train_data, 0)) == 2
    assert _paths(datamodule.train_data, 1) == set(datamodule.anomalous_shot_paths or [])


def test_without_training_on_them_the_shots_only_leave_test(three_types: Path) -> None:
    kwargs = {"root": three_types, "category": "widget", "k_shot": None, "anomalous_shots": 5, "num_workers": 0}
    supervised = KShotMVTecAD(**kwargs)
    baseline = KShotMVTecAD(**kwargs, train_on_anomalous_shots=False)
    supervised.setup()
    baseline.setup()
    assert baseline.anomalous_shot_paths == supervised.anomalous_shot_paths
    assert len(baseline.train_data) == len(_paths(baseline.train_data, 0)) == 6
    assert _paths(baseline.test_data) == _paths(supervised.test_data)
    assert not set(baseline.anomalous_shot_paths or []) & (_paths(baseline.test_data) | _paths(baseline.val_data))


def test_the_state_records_both_choices_and_warns_on_mismatch(
    three_types: Path, caplog: pytest.LogCaptureFixture
) -> None:
    datamodule = KShotMVTecAD(
        root=three_types, category="widget", k_shot=2, k_shot_seed=1, anomalous_shots=4, num_workers=0
    )
    with caplog.at_level("INFO"):
        datamodule.setup()
    assert all(Path(path).name in caplog.text for path in datamodule.anomalous_shot_paths or [])
    assert datamodule.state_dict() == {
        "k_shot": 2,
        "k_shot_seed": 1,
        "few_shot_paths": datamodule.few_shot_paths,
        "anomalous_shots": 4,
        "anomalous_shots_seed": 0,
        "train_on_anomalous_shots": True,
        "anomalous_shot_paths": datamodule.anomalous_shot_paths,
    }
    other = KShotMVTecAD(
        root=three_types, category="widget", k_shot=2, k_shot_seed=1, anomalous_shots=4, anomalous_shots_seed=9
    )
    other.setup()
    caplog.clear()
    with caplog.at_level("WARNING"):
        datamodule.load_state_dict(datamodule.state_dict())
        assert not caplog.text
        datamodule.load_state_dict(other.state_dict())
    assert "other anomalous shots" in caplog.text


@pytest.mark.parametrize("datamodule_class", [KShotMVTecAD, KShotMPDD, KShotFolder, KShotPcsnetDemo])
def test_the_cli_offers_both_options(datamodule_class: type) -> None:
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(datamodule_class, "data")
    offered = {action.dest.removeprefix("data.") for action in parser._actions if action.dest.startswith("data.")}
    parent = datamodule_class.__bases__[-1]
    expected = set(inspect.signature(parent.__init__).parameters) - {"self"}
    options = {"k_shot", "k_shot_seed", "anomalous_shots", "anomalous_shots_seed", "train_on_anomalous_shots"}
    assert expected | options <= offered


def test_taking_every_anomaly_warns_that_none_is_left_to_test(
    three_types: Path, caplog: pytest.LogCaptureFixture
) -> None:
    datamodule = AnomalousShotsMVTecAD(root=three_types, category="widget", anomalous_shots=12, num_workers=0)
    with caplog.at_level("WARNING"):
        datamodule.setup()
    assert "none is left to test" in caplog.text
    assert not _paths(datamodule.test_data, 1)


# One-class models refuse labelled anomalies.


def test_a_training_set_with_anomalies_is_refused_for_one_class_models(three_types: Path) -> None:
    datamodule = KShotMVTecAD(root=three_types, category="widget", k_shot=None, anomalous_shots=2, num_workers=0)
    datamodule.setup()
    with pytest.raises(ValueError, match=r"Pfm learns from normal images only.* 2 abnormal.*train_on_anomalous_shots="):
        check_normal_training_set(datamodule, "fit", "Pfm")
    check_normal_training_set(datamodule, "test", "Pfm")  # only fitting reads the training set
    check_normal_training_set(None, "fit", "Pfm")  # bare dataloaders: nothing to check

    baseline = KShotMVTecAD(
        root=three_types, category="widget", k_shot=None, anomalous_shots=2, train_on_anomalous_shots=False
    )
    baseline.setup()
    check_normal_training_set(baseline, "fit", "Pfm")


@pytest.mark.parametrize("model_class", [Pcsnet, Pfm])
def test_pcsnet_and_pfm_refuse_anomalies_when_fitting(three_types: Path, model_class: type) -> None:
    datamodule = KShotMVTecAD(root=three_types, category="widget", k_shot=None, anomalous_shots=2, num_workers=0)
    datamodule.setup()
    settings = TINY_MODEL if model_class is Pcsnet else TINY_PFM
    model = model_class(**settings)
    model._trainer = SimpleNamespace(datamodule=datamodule)
    with pytest.raises(ValueError, match=rf"{model_class.__name__} learns from normal images only"):
        model.setup("fit")
