"""Shared fixtures: small generated datasets in MVTec AD layout and tiny model settings."""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

# Settings for a small, randomly initialised model that trains in seconds on a CPU.
TINY_MODEL = {"backbone": "resnet18", "pre_trained": False, "prior_channels": 64, "blur_sigma": 1.0}
TINY_IMAGE_SIZE = 64


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """Noisy vertical stripes with a random phase (float, HxW): structured, like a woven or machined surface."""
    columns = np.arange(size)[None, :]
    stripes = 128 + 50 * np.sin(2 * np.pi * columns / 8 + rng.uniform(0, 2 * np.pi))
    return np.broadcast_to(stripes, (size, size)) + rng.normal(0, 4, (size, size))


def _to_rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(np.clip(grey, 0, 255).astype(np.uint8)[..., None], 3, axis=2)


def _add_defect(rng: np.random.Generator, grey: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Brighten an elliptical region (a stain); return the RGB image and its exact 0/255 mask."""
    size = grey.shape[0]
    yy, xx = np.mgrid[:size, :size]
    cy, cx = rng.integers(size // 5, 4 * size // 5, 2)
    ry, rx = rng.integers(size // 10, size // 6, 2)
    region = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
    normal, defective = _to_rgb(grey), _to_rgb(grey + 40 * region)
    changed = np.any(defective != normal, axis=2)
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
    """Write ``<root>/<category>/{train/good,test/good,test/stain,ground_truth/stain}`` and return ``root``."""
    rng = np.random.default_rng(seed)
    base = root / category
    for folder in ("train/good", "test/good", "test/stain", "ground_truth/stain"):
        (base / folder).mkdir(parents=True, exist_ok=True)
    for index in range(n_train):
        Image.fromarray(_to_rgb(_texture(rng, size))).save(base / "train/good" / f"{index:03d}.png")
    for index in range(n_test_good):
        Image.fromarray(_to_rgb(_texture(rng, size))).save(base / "test/good" / f"{index:03d}.png")
    for index in range(n_test_defect):
        image, mask = _add_defect(rng, _texture(rng, size))
        Image.fromarray(image).save(base / "test/stain" / f"{index:03d}.png")
        Image.fromarray(mask).save(base / "ground_truth/stain" / f"{index:03d}_mask.png")
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


def state_differences(expected: dict[str, Any], actual: dict[str, Any]) -> list[str]:
    """Names of the entries of two state dicts that differ: tensors bit for bit, extra states (dicts) by value."""

    def same(a: Any, b: Any) -> bool:
        if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
            return a.shape == b.shape and torch.equal(a, b)
        if isinstance(a, dict) and isinstance(b, dict):
            return a.keys() == b.keys() and all(same(a[key], b[key]) for key in a)
        return a == b

    names = sorted(expected.keys() | actual.keys())
    missing = (expected.keys() ^ actual.keys()) & set(names)
    return [name for name in names if name in missing or not same(expected[name], actual[name])]
