"""Texture categories of the demo data: crops of photographs bundled with scikit-image, and defects drawn on them.

Normal images are random crops (with flips and a small brightness jitter) of a photograph of ``skimage.data``.
Defects: ``scratch`` (thin bright or dark strokes), ``stain`` (smooth-edged blob with a brightness and colour
shift), ``hole`` (dark shaded ellipse), ``foreign`` (an irregular patch of another texture) and, from demo data
version 2, two subtle ones: ``thin`` (a one-pixel stroke of low contrast) and ``tint`` (a colour change at the
same luminance, invisible in a greyscale view). Every mask is 255 exactly where the defect changed pixels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cache

import cv2
import numpy as np

from pcsnet_anomalib.data.drawing import smooth_noise

VERSION_1_DEFECTS = ("scratch", "stain", "hole", "foreign")
SUBTLE_DEFECTS = ("thin", "tint")
_MAX_SHAPE_TRIES = 50

Defect = Callable[[np.random.Generator, np.ndarray, Sequence[str]], tuple[np.ndarray, np.ndarray]]


@cache
def photo(name: str) -> np.ndarray:
    """Return a bundled scikit-image photograph as a float32 array (H x W, or H x W x 3 for colour ones)."""
    from skimage import data as skdata

    return getattr(skdata, name)().astype(np.float32)


def normal_crop(rng: np.random.Generator, source: np.ndarray, size: int) -> np.ndarray:
    """Random crop of ``source`` resized to ``size`` with random flips and brightness jitter, as RGB uint8."""
    side = min(size, *source.shape[:2])
    top = int(rng.integers(0, source.shape[0] - side + 1))
    left = int(rng.integers(0, source.shape[1] - side + 1))
    crop = source[top : top + side, left : left + side]
    if side != size:
        crop = cv2.resize(crop, (size, size), interpolation=cv2.INTER_LINEAR)
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    if rng.random() < 0.5:
        crop = crop[::-1, :]
    crop = crop * rng.uniform(0.93, 1.07) + rng.uniform(-6.0, 6.0)
    pixels = np.clip(np.rint(crop), 0, 255).astype(np.uint8)
    return pixels if pixels.ndim == 3 else np.repeat(pixels[:, :, None], 3, axis=2)


def _blob(
    rng: np.random.Generator, size: int, radius: float, irregularity: float, edge: float
) -> tuple[np.ndarray, np.ndarray]:
    """Irregular ellipse: return ``(strength, centre_offset)``.

    ``strength`` is in [0, 1], 0 outside and ramping up over the relative width ``edge`` inside the boundary;
    ``centre_offset`` holds each pixel's (y, x) offset from the centre divided by ``radius`` (for shading).
    """
    margin = radius * 1.3
    cy, cx = rng.uniform(margin, size - margin, 2)
    ry, rx = radius * rng.uniform(0.7, 1.3, 2)
    angle = rng.uniform(0.0, np.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    dy, dx = yy - cy, xx - cx
    cos, sin = np.cos(angle), np.sin(angle)
    u, v = (dx * cos + dy * sin) / rx, (-dx * sin + dy * cos) / ry
    field = np.sqrt(u * u + v * v) + irregularity * smooth_noise(rng, size, 6)
    strength = np.clip((1.0 - field) / edge, 0.0, 1.0)
    return strength, np.stack([dy / radius, dx / radius])


def _random_walk(
    rng: np.random.Generator, size: int, segments: tuple[int, int], turn: float, step: tuple[float, float]
) -> np.ndarray:
    """Vertices (x, y) of a bending stroke, kept 2 px inside the image.

    It starts in the central 70 % and takes ``segments`` (low, high exclusive) steps of ``step`` (fractions of
    ``size``), each turning by up to ``turn`` radians.
    """
    point = rng.uniform(0.15 * size, 0.85 * size, 2)
    heading = rng.uniform(0.0, 2 * np.pi)
    points = [point]
    for _ in range(int(rng.integers(*segments))):
        heading += rng.uniform(-turn, turn)
        point = np.clip(point + size * rng.uniform(*step) * np.array([np.cos(heading), np.sin(heading)]), 2, size - 3)
        points.append(point)
    return np.array(points)


def _scratch(rng: np.random.Generator, image: np.ndarray, _others: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Thin bright or dark polyline strokes; return (alpha, target colour image)."""
    size = image.shape[0]
    canvas = np.zeros((size, size), np.uint8)
    thickness = max(1, round(size / 256 * rng.uniform(1.5, 3.0)))
    for _ in range(int(rng.integers(1, 3))):
        points = _random_walk(rng, size, segments=(3, 7), turn=0.5, step=(0.05, 0.11))
        pts = np.rint(points * 16).astype(np.int32)  # 4 bits of sub-pixel precision
        cv2.polylines(canvas, [pts], False, 255, thickness, cv2.LINE_AA, shift=4)
    coverage = canvas.astype(np.float32) / 255.0
    alpha = np.where(coverage > 0.2, coverage, 0.0) * rng.uniform(0.75, 0.95)
    level = rng.uniform(225.0, 255.0) if rng.random() < 0.5 else rng.uniform(5.0, 30.0)
    target = level + 8.0 * smooth_noise(rng, size, 32)
    return alpha, np.repeat(target[:, :, None], 3, axis=2)


def _stain(rng: np.random.Generator, image: np.ndarray, _others: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Smooth-edged blob that darkens or brightens and tints the texture underneath."""
    size = image.shape[0]
    strength, _ = _blob(rng, size, size * rng.uniform(0.07, 0.14), irregularity=0.3, edge=0.45)
    alpha = np.where(strength > 0.08, strength, 0.0) * rng.uniform(0.75, 0.95)
    gain = rng.uniform(0.55, 0.75) if rng.random() < 0.7 else rng.uniform(1.25, 1.4)
    tints = ((1.0, 0.85, 0.65), (0.8, 1.0, 0.75), (0.75, 0.85, 1.0))
    tint = np.asarray(tints[int(rng.integers(len(tints)))], np.float32)
    tint = 1.0 + rng.uniform(0.4, 0.9) * (tint - 1.0)
    base = image.astype(np.float32)
    target = base.mean() + (base - base.mean()) * 0.8  # stains flatten the texture a little
    return alpha, target * gain * tint


def _hole(rng: np.random.Generator, image: np.ndarray, _others: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Dark, roughly elliptical cavity, shaded as if lit from one side, with faint texture inside."""
    size = image.shape[0]
    strength, offset = _blob(rng, size, size * rng.uniform(0.045, 0.09), irregularity=0.12, edge=0.25)
    alpha = np.where(strength > 0.1, 0.6 + 0.4 * strength, 0.0)
    light = rng.uniform(0.0, 2 * np.pi)
    lit = offset[0] * np.sin(light) + offset[1] * np.cos(light)  # inner wall facing the light is brighter
    base = image[:, :, 0].astype(np.float32)
    depth = rng.uniform(18.0, 40.0)
    target = depth * (1.6 - 0.8 * strength) + 22.0 * np.clip(lit, -1.0, 1.0) + 0.15 * (base - base.mean())
    return alpha, np.repeat(np.clip(target, 0, 255)[:, :, None], 3, axis=2)


def _foreign(rng: np.random.Generator, image: np.ndarray, others: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Irregular patch of one of the ``others`` textures at another scale, roughly brightness-matched to the surface."""
    size = image.shape[0]
    strength, _ = _blob(rng, size, size * rng.uniform(0.09, 0.15), irregularity=0.35, edge=0.08)
    alpha = np.where(strength > 0.1, strength, 0.0)
    zoom = rng.uniform(0.5, 0.8) if rng.random() < 0.5 else rng.uniform(1.3, 1.8)
    other = cv2.resize(photo(others[int(rng.integers(len(others)))]), None, fx=zoom, fy=zoom)
    patch = normal_crop(rng, other, size).astype(np.float32)
    inside = alpha > 0
    local = image.astype(np.float32)[inside]
    patch_inside = patch[inside]
    scale = local.std() / max(float(patch_inside.std()), 1e-3) * rng.uniform(0.8, 1.3)
    shift = rng.choice([-1.0, 1.0]) * rng.uniform(8.0, 20.0)
    target = (patch - patch_inside.mean()) * scale + local.mean() + shift
    return alpha, target


def _thin(rng: np.random.Generator, image: np.ndarray, _others: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Subtle: a one-pixel polyline a little brighter or darker than the surface under it (12-20 grey levels)."""
    size = image.shape[0]
    canvas = np.zeros((size, size), np.uint8)
    points = _random_walk(rng, size, segments=(3, 6), turn=0.3, step=(0.06, 0.12))
    cv2.polylines(canvas, [np.rint(points).astype(np.int32)], False, 255, 1, cv2.LINE_8)
    alpha = (canvas > 0).astype(np.float32)
    shift = rng.choice([-1.0, 1.0]) * rng.uniform(12.0, 20.0)
    return alpha, image.astype(np.float32) + shift


def _tint(rng: np.random.Generator, image: np.ndarray, _others: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Subtle, colour only: a smooth blob whose chroma shifts while its luminance (ITU-R BT.601) stays the same."""
    size = image.shape[0]
    strength, _ = _blob(rng, size, size * rng.uniform(0.08, 0.14), irregularity=0.3, edge=0.5)
    alpha = np.where(strength > 0.1, strength, 0.0)
    luminance = np.array([0.299, 0.587, 0.114], np.float32)
    direction = rng.normal(size=3).astype(np.float32)
    direction -= luminance * (direction @ luminance) / (luminance @ luminance)  # no luminance component
    direction /= max(float(np.linalg.norm(direction)), 1e-6)
    return alpha, image.astype(np.float32) + rng.uniform(14.0, 24.0) * direction


_DEFECTS: dict[str, Defect] = {
    "scratch": _scratch,
    "stain": _stain,
    "hole": _hole,
    "foreign": _foreign,
    "thin": _thin,
    "tint": _tint,
}
_MIN_AREA = {
    "scratch": 0.0015,
    "stain": 0.006,
    "hole": 0.004,
    "foreign": 0.012,
    "thin": 0.0008,
    "tint": 0.008,
}  # fraction of the image


def apply_defect(
    rng: np.random.Generator, image: np.ndarray, defect: str, others: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``defect`` onto ``image``; return the defective image and its exact 0/255 mask.

    ``others`` names the photographs a ``foreign`` patch may come from.
    """
    if defect not in _DEFECTS:
        msg = f"Unknown texture defect {defect!r}; valid defects are {sorted(_DEFECTS)}."
        raise ValueError(msg)
    size = image.shape[0]
    for _ in range(_MAX_SHAPE_TRIES):
        alpha, target = _DEFECTS[defect](rng, image, others)
        region = alpha > 0
        if region.mean() >= _MIN_AREA[defect]:
            break
    else:
        msg = f"Could not draw a {defect!r} defect of sufficient size on a {size}x{size} image."
        raise RuntimeError(msg)
    blended = image * (1.0 - alpha[:, :, None]) + target * alpha[:, :, None]
    out = np.where(region[:, :, None], np.clip(np.rint(blended), 0, 255), image).astype(np.uint8)
    # Where rounding left a pixel of the region unchanged, nudge it by one grey level, so that the mask is both
    # the drawn region and exactly the set of changed pixels.
    unchanged = region & ~(out != image).any(axis=2)
    out[unchanged] = np.where(image[unchanged] < 255, image[unchanged] + 1, image[unchanged] - 1)
    return out, region.astype(np.uint8) * 255


def normal_image(rng: np.random.Generator, source: str, size: int) -> np.ndarray:
    """A normal image of the texture photographed in ``source`` (a ``skimage.data`` name)."""
    return normal_crop(rng, photo(source), size)


def defect_image(
    rng: np.random.Generator, source: str, defect: str, size: int, others: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """``normal_image`` (same draws) with ``defect`` drawn on it; returns the image and its exact mask."""
    return apply_defect(rng, normal_image(rng, source, size), defect, others)
