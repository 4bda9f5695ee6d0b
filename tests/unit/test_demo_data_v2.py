"""Demo data version 2: every category and defect type, exact masks, determinism, and the version switch."""

import json
from pathlib import Path

import numpy as np
import pytest
from anomalib.data import MVTecAD
from PIL import Image

from pcsnet_anomalib.data import KShotPcsnetDemo, PcsnetDemo, demo_dataset_root, generate_demo_dataset
from pcsnet_anomalib.data import demo as demo_module
from pcsnet_anomalib.data.demo import demo_categories
from pcsnet_anomalib.data.drawing import image_rng

SMALL = {"image_size": 64, "n_train": 2, "n_test_good": 1, "n_test_defect_per_type": 2}
REGISTRY = demo_categories(2)


@pytest.fixture(scope="module")
def cached_v2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default version-2 dataset, generated once for this module."""
    return demo_dataset_root(tmp_path_factory.mktemp("cache") / "demo_v2", version=2)


def test_version_2_has_three_kinds_and_at_least_eight_categories() -> None:
    kinds = {category.kind for category in REGISTRY.values()}
    assert kinds == {"texture", "object", "oriented"}
    assert len(REGISTRY) >= 8
    assert set(demo_categories(1)) < set(REGISTRY), "version 2 keeps the version-1 textures"
    for category in REGISTRY.values():
        assert len(category.defects) >= 4, category.name


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_category_layout_and_exact_masks(cached_v2: Path, name: str) -> None:
    """Every defect image differs from its own normal draw exactly on its mask, and every mask is non-empty."""
    category = REGISTRY[name]
    datamodule = MVTecAD(root=cached_v2, category=name, num_workers=0, seed=0)
    datamodule.setup()
    assert len(datamodule.train_data) == 24
    assert sorted(datamodule.test_data.samples.label.unique()) == sorted(["good", *category.defects])
    for defect in category.defects:
        for index in range(6):
            image = np.asarray(Image.open(cached_v2 / name / "test" / defect / f"{index:03d}.png"))
            mask = np.asarray(Image.open(cached_v2 / name / "ground_truth" / defect / f"{index:03d}_mask.png"))
            assert image.shape == (256, 256, 3)
            assert set(np.unique(mask)) == {0, 255}, f"{name}/{defect}/{index}: empty or non-binary mask"
            base = category.normal(image_rng(0, name, defect, index), size=256)
            np.testing.assert_array_equal((image != base).any(axis=2), mask == 255, err_msg=f"{name}/{defect}")


def test_generation_is_deterministic_and_seeded(tmp_path: Path) -> None:
    def files(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.png"))}

    first = generate_demo_dataset(tmp_path / "a", seed=3, version=2, **SMALL)
    second = generate_demo_dataset(tmp_path / "b", seed=3, version=2, **SMALL)
    other = generate_demo_dataset(tmp_path / "c", seed=4, version=2, **SMALL)
    assert files(first) == files(second)
    assert files(first).keys() == files(other).keys()
    assert all(files(first)[key] != files(other)[key] for key in files(first) if "/train/" in key)
    manifest = json.loads((first / demo_module.MANIFEST_NAME).read_text())
    assert manifest["version"] == 2
    assert manifest["defect_types"] == {name: list(category.defects) for name, category in REGISTRY.items()}


def test_each_version_has_its_own_default_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(demo_module.ROOT_ENV_VAR, str(tmp_path))
    assert demo_module.resolve_demo_root(version=1) == tmp_path / "demo_v1"
    assert demo_module.resolve_demo_root(version=2) == tmp_path / "demo_v2"


def test_a_folder_of_another_version_is_not_replaced(tmp_path: Path) -> None:
    root = generate_demo_dataset(tmp_path / "v1", categories=("brick",), version=1, **SMALL)
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    with pytest.raises(FileExistsError, match="version 1, not version 2"):
        demo_dataset_root(root, version=2)
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before


def test_unknown_versions_and_categories_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"valid versions are \[1, 2\]"):
        demo_dataset_root(tmp_path / "x", version=3)
    assert not (tmp_path / "x").exists()
    with pytest.raises(ValueError, match="'screw'"):
        PcsnetDemo(root=tmp_path, category="bottle", version=2)
    with pytest.raises(ValueError, match="for version 1"):
        PcsnetDemo(root=tmp_path, category="screw")


def test_datamodules_read_version_2(cached_v2: Path) -> None:
    datamodule = KShotPcsnetDemo(root=cached_v2, category="screw", version=2, k_shot=2, k_shot_seed=1)
    datamodule.setup()
    assert len(datamodule.train_data) == 2
    test_labels = set(datamodule.test_data.samples.label)
    assert test_labels == {"good", *REGISTRY["screw"].defects}
