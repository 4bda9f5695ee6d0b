"""Rotation-sensitive demo categories: determinism, exact masks, fixed orientation of normal images, errors."""

import cv2
import numpy as np
import pytest

from pcsnet_anomalib.data import demo_oriented
from pcsnet_anomalib.data.demo_oriented import CATEGORIES, defect_image, normal_image
from pcsnet_anomalib.data.drawing import changed_mask

SIZE = 96
CASES = [(category, defect) for category, defects in CATEGORIES.items() for defect in defects]


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng([seed, 7])


def _gray(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float64).mean(axis=2)


def _stripe_angle(image: np.ndarray, where: np.ndarray | None = None) -> float:
    """Dominant thread direction in degrees, counter-clockwise from the x axis, in [0, 180): structure tensor."""
    gray = _gray(image)
    gx = cv2.Sobel(gray, cv2.CV_64F, 1, 0, ksize=3)
    gy = cv2.Sobel(gray, cv2.CV_64F, 0, 1, ksize=3)
    weight = np.ones_like(gray) if where is None else where.astype(np.float64)
    weight[:2], weight[-2:], weight[:, :2], weight[:, -2:] = 0, 0, 0, 0
    jxx, jyy, jxy = (weight * gx * gx).sum(), (weight * gy * gy).sum(), (weight * gx * gy).sum()
    gradient = 0.5 * np.degrees(np.arctan2(2 * jxy, jxx - jyy))  # image axes, y down
    return float((90.0 - gradient) % 180.0)


def _angle_gap(a: float, b: float) -> float:
    """Difference of two undirected angles in degrees, in [0, 90]."""
    gap = abs(a - b) % 180.0
    return min(gap, 180.0 - gap)


def _screw_axis(image: np.ndarray) -> float:
    """Principal axis of the part (pixels far from the background level), degrees counter-clockwise."""
    gray = _gray(image)
    part = (np.abs(gray - np.median(gray)) > 30).astype(np.uint8)
    moments = cv2.moments(part, binaryImage=True)
    return float(-0.5 * np.degrees(np.arctan2(2 * moments["mu11"], moments["mu20"] - moments["mu02"])))


def test_categories_have_four_defects_each() -> None:
    assert set(CATEGORIES) == {"stripes", "screw"}
    assert CATEGORIES["stripes"] == ("rotated", "shifted", "thin", "colour")
    assert CATEGORIES["screw"] == ("rotated", "thread", "tip", "scratch")


@pytest.mark.parametrize("category", CATEGORIES)
def test_normal_images_are_deterministic(category: str) -> None:
    first = normal_image(_rng(3), category, SIZE)
    assert first.shape == (SIZE, SIZE, 3)
    assert first.dtype == np.uint8
    np.testing.assert_array_equal(first, normal_image(_rng(3), category, SIZE))
    assert not np.array_equal(first, normal_image(_rng(4), category, SIZE))


@pytest.mark.parametrize(("category", "defect"), CASES)
def test_defects_are_deterministic(category: str, defect: str) -> None:
    image, mask = defect_image(_rng(5), category, defect, SIZE)
    again, again_mask = defect_image(_rng(5), category, defect, SIZE)
    np.testing.assert_array_equal(image, again)
    np.testing.assert_array_equal(mask, again_mask)
    other, other_mask = defect_image(_rng(6), category, defect, SIZE)
    assert not np.array_equal(image, other)
    assert not np.array_equal(mask, other_mask), "defects must vary in position or size between draws"


@pytest.mark.parametrize(("category", "defect"), CASES)
@pytest.mark.parametrize("size", [SIZE, 64])
def test_mask_is_exactly_the_change_from_the_normal_image(category: str, defect: str, size: int) -> None:
    """defect_image first draws what normal_image draws, then changes exactly the masked pixels."""
    for seed in range(3):
        image, mask = defect_image(_rng(seed), category, defect, size)
        normal = normal_image(_rng(seed), category, size)
        assert image.shape == (size, size, 3)
        assert image.dtype == np.uint8
        assert mask.shape == (size, size)
        assert mask.dtype == np.uint8
        assert set(np.unique(mask)) == {0, 255}
        np.testing.assert_array_equal(mask, changed_mask(normal, image))
        assert (mask > 0).sum() >= max(12, 0.0004 * size * size)
        assert (mask == 0).mean() > 0.8, "a defect changes a small part of the image"


def test_normal_stripes_keep_their_orientation_and_rotated_patches_do_not() -> None:
    angles = [_stripe_angle(normal_image(_rng(seed), "stripes", SIZE)) for seed in range(8)]
    assert max(angles) - min(angles) < 2.0
    reference = float(np.mean(angles))
    assert _angle_gap(reference, 30.0) < 4.0
    for seed in range(4):
        image, mask = defect_image(_rng(seed), "stripes", "rotated", SIZE)
        inside = cv2.erode(mask, np.ones((3, 3), np.uint8)) > 0
        assert _angle_gap(_stripe_angle(image, inside), reference) > 10.0
        assert _angle_gap(_stripe_angle(image, ~(mask > 0)), reference) < 2.0


def test_normal_screws_are_aligned_and_rotated_screws_are_not() -> None:
    axes = [_screw_axis(normal_image(_rng(seed), "screw", SIZE)) for seed in range(8)]
    assert max(axes) - min(axes) < 3.0
    assert all(abs(axis) < 3.0 for axis in axes)
    for seed in range(4):
        image, _ = defect_image(_rng(seed), "screw", "rotated", SIZE)
        assert abs(_screw_axis(image) - float(np.mean(axes))) > 4.0


@pytest.mark.parametrize(("category", "defect"), [("stripes", "thin"), ("screw", "scratch")])
def test_subtle_defects_are_faint(category: str, defect: str) -> None:
    for seed in range(3):
        image, mask = defect_image(_rng(seed), category, defect, SIZE)
        normal = normal_image(_rng(seed), category, SIZE)
        change = np.abs(_gray(image) - _gray(normal))[mask > 0]
        assert 1.0 <= change.mean() <= 20.0
        assert change.max() <= 30.0


def test_colour_defect_changes_hue_not_luminance() -> None:
    weights = np.array([0.299, 0.587, 0.114])
    for seed in range(3):
        image, mask = defect_image(_rng(seed), "stripes", "colour", SIZE)
        normal = normal_image(_rng(seed), "stripes", SIZE)
        inside = mask > 0
        difference = image.astype(np.float64)[inside] - normal.astype(np.float64)[inside]
        luminance = np.abs(difference @ weights).mean()
        colour = np.abs(difference).max(axis=1).mean()
        assert luminance < 3.0
        assert colour > 4.0 * luminance


def test_unknown_names_raise_value_error_naming_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="stripes"):
        normal_image(_rng(0), "grid", SIZE)
    with pytest.raises(ValueError, match="screw"):
        defect_image(_rng(0), "grid", "rotated", SIZE)
    with pytest.raises(ValueError, match="thread"):
        defect_image(_rng(0), "screw", "colour", SIZE)


def test_defect_that_changes_too_little_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_change(rng, scene, clean):
        return clean, np.zeros(clean.shape[:2], bool)

    monkeypatch.setitem(demo_oriented._DEFECTS["stripes"], "thin", no_change)
    with pytest.raises(RuntimeError, match=r"'thin'.*'stripes'.*64"):
        defect_image(_rng(0), "stripes", "thin", 64)
