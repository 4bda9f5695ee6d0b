"""Aligned object categories of the demo data (plate, pcb): determinism, exact masks, alignment, errors."""

import cv2
import numpy as np
import pytest

from pcsnet_anomalib.data import demo_objects
from pcsnet_anomalib.data.demo_objects import CATEGORIES, defect_image, normal_image
from pcsnet_anomalib.data.drawing import changed_mask

SIZE = 96
CASES = [(category, defect) for category, defects in CATEGORIES.items() for defect in defects]


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng([seed, 7])


def test_categories_and_defects() -> None:
    assert CATEGORIES == {
        "plate": ("missing", "extra", "misplaced", "bent", "faint"),
        "pcb": ("missing", "rotated", "extra", "cut", "discolour"),
    }


@pytest.mark.parametrize("category", CATEGORIES)
def test_normal_images_are_deterministic(category: str) -> None:
    first = normal_image(_rng(0), category, SIZE)
    assert first.shape == (SIZE, SIZE, 3)
    assert first.dtype == np.uint8
    np.testing.assert_array_equal(first, normal_image(_rng(0), category, SIZE))
    assert not np.array_equal(first, normal_image(_rng(1), category, SIZE))


@pytest.mark.parametrize(("category", "defect"), CASES)
def test_defect_masks_are_exactly_the_changed_pixels(category: str, defect: str) -> None:
    """The defect is drawn after the normal scene; the mask is where the image differs from that scene."""
    least = max(12, 0.0004 * SIZE**2)
    masks = []
    for seed in range(3):
        image, mask = defect_image(_rng(seed), category, defect, SIZE)
        assert image.shape == (SIZE, SIZE, 3)
        assert image.dtype == np.uint8
        assert mask.shape == (SIZE, SIZE)
        assert mask.dtype == np.uint8
        assert set(np.unique(mask)) == {0, 255}
        np.testing.assert_array_equal(mask, changed_mask(normal_image(_rng(seed), category, SIZE), image))
        assert least <= np.count_nonzero(mask) <= 0.2 * SIZE**2, "defects are non-empty and local"
        masks.append(mask)
    assert not all(np.array_equal(masks[0], other) for other in masks[1:]), "defects vary between draws"
    again_image, again_mask = defect_image(_rng(2), category, defect, SIZE)
    np.testing.assert_array_equal(again_image, image)
    np.testing.assert_array_equal(again_mask, mask)


@pytest.mark.parametrize("category", CATEGORIES)
def test_normal_images_are_aligned(category: str) -> None:
    """Normal images differ by a small pose jitter only: the object stays put (up to ~2 px at 256 px)."""
    grey = [cv2.cvtColor(normal_image(_rng(seed), category, SIZE), cv2.COLOR_RGB2GRAY) for seed in range(6)]
    for other in grey[1:]:
        (dx, dy), _ = cv2.phaseCorrelate(grey[0].astype(np.float32), other.astype(np.float32))
        assert np.hypot(dx, dy) < 4 * 2 * SIZE / 256, "at most +-2 px (at 256 px) per image and axis"
    # The foreground (the plate; the dark chip bodies of the board) covers the same pixels in every image.
    blurred = [cv2.GaussianBlur(image, (0, 0), 1.0) for image in grey]
    foreground = [image > 100 if category == "plate" else image < 50 for image in blurred]
    for other in foreground[1:]:
        assert (foreground[0] & other).sum() / (foreground[0] | other).sum() > 0.8
    shifted = np.roll(foreground[0], SIZE // 12, axis=1)
    assert (foreground[0] & shifted).sum() / (foreground[0] | shifted).sum() < 0.8, "the check can fail"


@pytest.mark.parametrize(("category", "defect"), [("plate", "faint"), ("pcb", "discolour")])
def test_subtle_defects_are_subtle(category: str, defect: str) -> None:
    """A faint defect changes brightness by ~10-20 grey levels; a discolouration changes hue, not luminance."""
    luma = np.array([0.299, 0.587, 0.114])
    for seed in range(3):
        image, mask = defect_image(_rng(seed), category, defect, SIZE)
        normal = normal_image(_rng(seed), category, SIZE)
        changed = mask > 0
        colour = np.abs(image.astype(float) - normal)[changed].max(axis=1)
        brightness = np.abs((image.astype(float) - normal) @ luma)[changed]
        if defect == "faint":
            assert 5 <= colour.max() <= 30
        else:
            assert colour.max() >= 40
            assert np.percentile(brightness, 90) < 20


@pytest.mark.parametrize(("category", "defect"), CASES)
def test_small_images(category: str, defect: str) -> None:
    image, mask = defect_image(_rng(0), category, defect, 64)
    assert image.shape == (64, 64, 3)
    assert np.count_nonzero(mask) >= 12


def test_unknown_names_raise() -> None:
    with pytest.raises(ValueError, match=r"'bolt'.*\['plate', 'pcb'\]"):
        normal_image(_rng(0), "bolt", SIZE)
    with pytest.raises(ValueError, match=r"'bolt'.*\['plate', 'pcb'\]"):
        defect_image(_rng(0), "bolt", "missing", SIZE)
    with pytest.raises(ValueError, match=r"'cut'.*'plate'.*'missing', 'extra', 'misplaced', 'bent', 'faint'"):
        defect_image(_rng(0), "plate", "cut", SIZE)


def test_defect_that_changes_nothing_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    """After 50 draws that change too few pixels the error names the category, defect and size."""
    monkeypatch.setitem(demo_objects._KINDS["pcb"].defects, "cut", lambda _rng, layout: layout)
    with pytest.raises(RuntimeError, match=r"'cut'.*'pcb'.*size 96"):
        defect_image(_rng(0), "pcb", "cut", SIZE)
