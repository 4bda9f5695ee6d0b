"""Offline demo dataset: MVTec AD layout, exact masks, determinism, safe caching and the datamodule."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from anomalib.data import MVTecAD
from PIL import Image

from pcsnet_anomalib.data import DEFECT_TYPES, DEMO_CATEGORIES, PcsnetDemo, demo_dataset_root, generate_demo_dataset
from pcsnet_anomalib.data import demo as demo_module
from pcsnet_anomalib.data.demo import demo_categories
from pcsnet_anomalib.data.drawing import image_rng

SMALL = {"image_size": 96, "n_train": 3, "n_test_good": 2, "n_test_defect_per_type": 2}


@pytest.fixture(scope="module")
def cached_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default demo dataset, generated once for this module."""
    return demo_dataset_root(tmp_path_factory.mktemp("cache") / "demo")


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("category", DEMO_CATEGORIES)
def test_mvtecad_loads_layout(cached_root: Path, category: str) -> None:
    datamodule = MVTecAD(root=cached_root, category=category, num_workers=0, eval_batch_size=64, seed=0)
    datamodule.setup()
    assert len(datamodule.train_data) == 24
    test = datamodule.test_data.samples
    assert len(test) == 12 + 6 * len(DEFECT_TYPES)
    assert sorted(test.label.unique()) == sorted(["good", *DEFECT_TYPES])
    for batch in datamodule.test_dataloader():
        assert batch.image.shape[1:] == (3, 256, 256)
        for label, mask in zip(batch.gt_label, batch.gt_mask, strict=True):
            assert bool(mask.any()) == bool(label), "defect masks must be non-empty, good masks empty"


def test_masks_are_exactly_the_changed_pixels(cached_root: Path) -> None:
    """Rebuild each defect image's normal crop and compare: the mask is 255 exactly where pixels differ."""
    registry = demo_categories(1)
    for category in DEMO_CATEGORIES:
        for defect in DEFECT_TYPES:
            for index in range(6):
                image = np.asarray(Image.open(cached_root / category / "test" / defect / f"{index:03d}.png"))
                mask = np.asarray(
                    Image.open(cached_root / category / "ground_truth" / defect / f"{index:03d}_mask.png")
                )
                assert image.shape == (256, 256, 3)
                assert mask.dtype == np.uint8
                assert set(np.unique(mask)) == {0, 255}
                base = registry[category].normal(image_rng(0, category, defect, index), size=256)
                np.testing.assert_array_equal((image != base).any(axis=2), mask == 255)


# Pixels of the default version-1 dataset (paths and decoded arrays, so independent of the PNG encoder), as the
# generator of release 0.4.0 wrote them: the committed result tables were computed on exactly these images.
VERSION_1_PIXELS_SHA256 = "34c3c1f9d5070e3e6d4549564a2d80aa366a676122d280e48327f5b562aeba15"


def test_version_1_images_are_unchanged(cached_root: Path) -> None:
    digest = hashlib.sha256()
    for path in sorted(cached_root.rglob("*.png")):
        digest.update(str(path.relative_to(cached_root)).encode())
        digest.update(np.ascontiguousarray(np.asarray(Image.open(path))).tobytes())
    assert digest.hexdigest() == VERSION_1_PIXELS_SHA256, "version 1 must stay reproducible: add a new version"


def test_generation_is_deterministic(tmp_path: Path) -> None:
    first = generate_demo_dataset(tmp_path / "a", categories=("grass",), seed=3, **SMALL)
    second = generate_demo_dataset(tmp_path / "b", categories=("grass",), seed=3, **SMALL)
    other_seed = generate_demo_dataset(tmp_path / "c", categories=("grass",), seed=4, **SMALL)
    assert _files(first) == _files(second)
    assert _files(first).keys() == _files(other_seed).keys()
    assert _files(first) != _files(other_seed)
    manifest = json.loads((first / demo_module.MANIFEST_NAME).read_text())
    assert manifest["file_count"] == 3 + 2 + 2 * 2 * len(DEFECT_TYPES)


def test_generate_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="brick"):
        generate_demo_dataset(tmp_path / "x", categories=("carpet",))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="non-empty"):
        generate_demo_dataset(tmp_path / "full", **SMALL)


def test_cache_is_reused(cached_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*_args: object, **_kwargs: object) -> Path:
        msg = "a complete cache must not be regenerated"
        raise AssertionError(msg)

    monkeypatch.setattr(demo_module, "generate_demo_dataset", fail)
    assert demo_dataset_root(cached_root) == cached_root


def test_env_var_root_and_repair(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "env_cache"
    monkeypatch.setenv(demo_module.ROOT_ENV_VAR, str(cache))
    target = cache / "demo_v1"
    assert demo_dataset_root() == target
    original = _files(target)
    (target / "brick" / "test" / "hole" / "000.png").unlink()  # damaged cache of ours: regenerated
    assert demo_dataset_root() == target
    assert _files(target) == original
    assert sorted(p.name for p in cache.iterdir()) == ["demo_v1"], "no staging folders left behind"


def test_refuses_to_overwrite_foreign_folder(tmp_path: Path) -> None:
    target = tmp_path / "my_data"
    target.mkdir()
    (target / "important.txt").write_text("do not delete")
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        demo_dataset_root(target)
    assert sorted(p.name for p in target.iterdir()) == ["important.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my_data"]


def test_empty_folder_is_filled(tmp_path: Path) -> None:
    target = tmp_path / "empty"
    target.mkdir()
    assert (demo_dataset_root(target) / demo_module.MANIFEST_NAME).is_file()


def test_datamodule_splits_are_disjoint(cached_root: Path) -> None:
    datamodule = PcsnetDemo(root=cached_root, category="gravel")
    datamodule.setup()
    train = set(datamodule.train_data.samples.image_path)
    val = set(datamodule.val_data.samples.image_path)
    test = set(datamodule.test_data.samples.image_path)
    assert not train & val
    assert not train & test
    assert not val & test
    assert len(train) == 24
    assert len(val) + len(test) == 12 + 6 * len(DEFECT_TYPES)
    for split in (datamodule.val_data, datamodule.test_data):
        assert set(split.samples.label_index) == {0, 1}, "both halves hold normal and anomalous images"
    batch = next(iter(datamodule.train_dataloader()))
    assert batch.image.shape == torch.Size([2, 3, 256, 256])


def test_datamodule_split_is_seeded(cached_root: Path) -> None:
    def val_paths(seed: int) -> set[str]:
        datamodule = PcsnetDemo(root=cached_root, category="brick", seed=seed)
        datamodule.setup()
        return set(datamodule.val_data.samples.image_path)

    assert val_paths(0) == val_paths(0)
    assert val_paths(0) != val_paths(1)


def test_datamodule_generates_on_demand(tmp_path: Path) -> None:
    datamodule = PcsnetDemo(root=tmp_path / "fresh", category="grass")
    datamodule.prepare_data()
    assert (tmp_path / "fresh" / "grass" / "train" / "good" / "000.png").is_file()


def test_datamodule_rejects_unknown_category(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"'brick', 'grass', 'gravel'"):
        PcsnetDemo(root=tmp_path, category="bottle")
