"""Drawing helpers shared by the demo data generators: seeded per-image generators, smooth noise, exact masks."""

from __future__ import annotations

import zlib

import cv2
import numpy as np


def image_rng(seed: int, category: str, part: str, index: int) -> np.random.Generator:
    """Independent generator per image, stable across processes (no reliance on Python's salted ``hash``)."""
    return np.random.default_rng([seed, zlib.crc32(category.encode()), zlib.crc32(part.encode()), index])


def smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Return smooth noise in about [-1, 1]: a ``cells`` x ``cells`` random grid upsampled bicubically."""
    grid = rng.uniform(-1.0, 1.0, (cells, cells)).astype(np.float32)
    return cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)


def changed_mask(normal: np.ndarray, defective: np.ndarray) -> np.ndarray:
    """The exact ground truth of a defect: 255 where any channel of ``defective`` differs from ``normal``, else 0."""
    if normal.shape != defective.shape:
        msg = f"Normal and defective images differ in shape: {normal.shape} vs {defective.shape}."
        raise ValueError(msg)
    changed = normal != defective
    if changed.ndim == 3:
        changed = changed.any(axis=2)
    return changed.astype(np.uint8) * 255
