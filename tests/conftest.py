"""Shared fixtures: small generated datasets in MVTec AD layout and tiny model settings."""

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# Settings for a small, randomly initialised model that trains in seconds on a CPU.
TINY_MODEL = {"backbone": "resnet18", "pre_trained": False, "prior_channels": 64, "blur_sigma": 1.0}
TINY_IMAGE_SIZE = 64


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth, low-contrast grey texture (uint8, HxWx3)."""
    coarse = rng.normal(128, 12, (size // 8, size // 8))
    smooth = np.array(Image.fromarray(coarse.astype(np.float32)).resize((size, size), Image.BICUBIC))
    fine = rng.normal(0, 3, (size, size))
    grey = np.clip(smooth + fine, 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


def _add_defect(rng: np.random.Generator, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Paint a dark or bright elliptical blob; return the image and its exact 0/255 mask."""
    size = image.shape[0]
    yy, xx = np.mgrid[:size, :size]
    cy, cx = rng.integers(size // 5, 4 * size // 5, 2)
    ry, rx = rng.integers(size // 12, size // 6, 2)
    mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
    value = 20 if rng.random() < 0.5 else 235
    defective = image.copy()
    defective[mask] = value
    changed = np.any(defective != image, axis=2)
    return defective, (changed * 255).astype(np.uint8)


def write_mvtec_dataset(
    root: Path,
    category: str = "widget",
    n_train: int = 10,
    n_test_good: int = 6,
    n_test_defect: int = 6,
    size: int = TINY_IMAGE_SIZE,
    seed: int = 0,
) -> Path:
    """Write ``<root>/<category>/{train/good,test/good,test/blob,ground_truth/blob}`` and return ``root``."""
    rng = np.random.default_rng(seed)
    base = root / category
    for folder in ("train/good", "test/good", "test/blob", "ground_truth/blob"):
        (base / folder).mkdir(parents=True, exist_ok=True)
    for index in range(n_train):
        Image.fromarray(_texture(rng, size)).save(base / "train/good" / f"{index:03d}.png")
    for index in range(n_test_good):
        Image.fromarray(_texture(rng, size)).save(base / "test/good" / f"{index:03d}.png")
    for index in range(n_test_defect):
        image, mask = _add_defect(rng, _texture(rng, size))
        Image.fromarray(image).save(base / "test/blob" / f"{index:03d}.png")
        Image.fromarray(mask).save(base / "ground_truth/blob" / f"{index:03d}_mask.png")
    return root


@pytest.fixture(scope="session")
def mvtec_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small generated dataset with one category, ``widget``."""
    return write_mvtec_dataset(tmp_path_factory.mktemp("mvtec"))


@pytest.fixture
def make_mvtec(tmp_path: Path) -> Callable[..., Path]:
    """Factory for datasets with other sizes or seeds."""

    def make(**kwargs: object) -> Path:
        return write_mvtec_dataset(tmp_path / "data", **kwargs)  # type: ignore[arg-type]

    return make
