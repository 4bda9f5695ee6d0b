"""Offline demo dataset in MVTec AD layout, built from texture photographs bundled with scikit-image.

Normal images are random crops (with flips and a small brightness jitter) of the ``brick``, ``grass`` and
``gravel`` photographs of ``skimage.data``. Test defects are drawn onto such crops: ``scratch`` (thin bright or
dark strokes), ``stain`` (smooth-edged blob with a brightness and colour shift), ``hole`` (dark shaded
ellipse) and ``foreign`` (an irregular patch of another texture). Every ground-truth mask is 255 exactly where
the defect changed pixels and 0 elsewhere. Output is deterministic for a seed, byte for byte.

``PcsnetDemo`` is an anomalib ``MVTecAD`` datamodule over a cached copy, so the CLI can train and test
without downloads: ``anomalib train --data pcsnet_anomalib.data.PcsnetDemo --data.category brick ...``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import zlib
from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path

import cv2
import numpy as np
from anomalib.data import MVTecAD
from anomalib.data.utils import TestSplitMode, ValSplitMode
from PIL import Image
from torchvision.transforms.v2 import Transform

from pcsnet_anomalib.data.resumable import ResumableTrainLoaderMixin

logger = logging.getLogger(__name__)

DEMO_CATEGORIES = ("brick", "grass", "gravel")
DEFECT_TYPES = ("scratch", "stain", "hole", "foreign")
DEMO_VERSION = 1
DEMO_SEED = 0
MANIFEST_NAME = "pcsnet_demo_manifest.json"
ROOT_ENV_VAR = "PCSNET_DEMO_ROOT"
_DEFAULT_CACHE = Path("~/.cache/pcsnet_anomalib/demo_v1")
_MAX_SHAPE_TRIES = 50
_CACHE_SIZES = {"image_size": 256, "n_train": 24, "n_test_good": 12, "n_test_defect_per_type": 6}

Defect = Callable[[np.random.Generator, np.ndarray, str], tuple[np.ndarray, np.ndarray]]


@cache
def _photo(name: str) -> np.ndarray:
    """Return a bundled scikit-image texture photograph as a float32 grayscale array."""
    from skimage import data as skdata

    return getattr(skdata, name)().astype(np.float32)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Return smooth noise in about [-1, 1]: a ``cells`` x ``cells`` random grid upsampled bicubically."""
    grid = rng.uniform(-1.0, 1.0, (cells, cells)).astype(np.float32)
    return cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)


def _normal_crop(rng: np.random.Generator, photo: np.ndarray, size: int) -> np.ndarray:
    """Random crop of ``photo`` resized to ``size`` with random flips and brightness jitter, as RGB uint8."""
    side = min(size, *photo.shape)
    top = int(rng.integers(0, photo.shape[0] - side + 1))
    left = int(rng.integers(0, photo.shape[1] - side + 1))
    crop = photo[top : top + side, left : left + side]
    if side != size:
        crop = cv2.resize(crop, (size, size), interpolation=cv2.INTER_LINEAR)
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    if rng.random() < 0.5:
        crop = crop[::-1, :]
    crop = crop * rng.uniform(0.93, 1.07) + rng.uniform(-6.0, 6.0)
    gray = np.clip(np.rint(crop), 0, 255).astype(np.uint8)
    return np.repeat(gray[:, :, None], 3, axis=2)


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
    field = np.sqrt(u * u + v * v) + irregularity * _smooth_noise(rng, size, 6)
    strength = np.clip((1.0 - field) / edge, 0.0, 1.0)
    return strength, np.stack([dy / radius, dx / radius])


def _scratch(rng: np.random.Generator, image: np.ndarray, _category: str) -> tuple[np.ndarray, np.ndarray]:
    """Thin bright or dark polyline strokes; return (alpha, target colour image)."""
    size = image.shape[0]
    canvas = np.zeros((size, size), np.uint8)
    thickness = max(1, round(size / 256 * rng.uniform(1.5, 3.0)))
    for _ in range(int(rng.integers(1, 3))):
        point = rng.uniform(0.15 * size, 0.85 * size, 2)
        heading = rng.uniform(0.0, 2 * np.pi)
        points = [point]
        for _ in range(int(rng.integers(3, 7))):
            heading += rng.uniform(-0.5, 0.5)
            point = np.clip(
                point + size * rng.uniform(0.05, 0.11) * np.array([np.cos(heading), np.sin(heading)]), 2, size - 3
            )
            points.append(point)
        pts = np.rint(np.array(points) * 16).astype(np.int32)  # 4 bits of sub-pixel precision
        cv2.polylines(canvas, [pts], False, 255, thickness, cv2.LINE_AA, shift=4)
    coverage = canvas.astype(np.float32) / 255.0
    alpha = np.where(coverage > 0.2, coverage, 0.0) * rng.uniform(0.75, 0.95)
    level = rng.uniform(225.0, 255.0) if rng.random() < 0.5 else rng.uniform(5.0, 30.0)
    target = level + 8.0 * _smooth_noise(rng, size, 32)
    return alpha, np.repeat(target[:, :, None], 3, axis=2)


def _stain(rng: np.random.Generator, image: np.ndarray, _category: str) -> tuple[np.ndarray, np.ndarray]:
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


def _hole(rng: np.random.Generator, image: np.ndarray, _category: str) -> tuple[np.ndarray, np.ndarray]:
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


def _foreign(rng: np.random.Generator, image: np.ndarray, category: str) -> tuple[np.ndarray, np.ndarray]:
    """Irregular patch of another texture at another scale, roughly brightness-matched to the surface around it."""
    size = image.shape[0]
    strength, _ = _blob(rng, size, size * rng.uniform(0.09, 0.15), irregularity=0.35, edge=0.08)
    alpha = np.where(strength > 0.1, strength, 0.0)
    others = [name for name in DEMO_CATEGORIES if name != category]
    zoom = rng.uniform(0.5, 0.8) if rng.random() < 0.5 else rng.uniform(1.3, 1.8)
    other = cv2.resize(_photo(others[int(rng.integers(len(others)))]), None, fx=zoom, fy=zoom)
    patch = _normal_crop(rng, other, size).astype(np.float32)
    inside = alpha > 0
    local = image.astype(np.float32)[inside]
    patch_inside = patch[inside]
    scale = local.std() / max(float(patch_inside.std()), 1e-3) * rng.uniform(0.8, 1.3)
    shift = rng.choice([-1.0, 1.0]) * rng.uniform(8.0, 20.0)
    target = (patch - patch_inside.mean()) * scale + local.mean() + shift
    return alpha, target


_DEFECTS: dict[str, Defect] = {"scratch": _scratch, "stain": _stain, "hole": _hole, "foreign": _foreign}
_MIN_AREA = {"scratch": 0.0015, "stain": 0.006, "hole": 0.004, "foreign": 0.012}  # fraction of the image


def _apply_defect(
    rng: np.random.Generator, image: np.ndarray, defect: str, category: str
) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``defect`` onto ``image``; return the defective image and its exact 0/255 mask."""
    size = image.shape[0]
    for _ in range(_MAX_SHAPE_TRIES):
        alpha, target = _DEFECTS[defect](rng, image, category)
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


def _rng(seed: int, category: str, part: str, index: int) -> np.random.Generator:
    """Independent generator per image, stable across processes (no reliance on Python's salted ``hash``)."""
    return np.random.default_rng([seed, zlib.crc32(category.encode()), zlib.crc32(part.encode()), index])


def _save_png(array: np.ndarray, path: Path) -> None:
    """Write a PNG (PIL writes no timestamps, so files are byte-identical across runs)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG", compress_level=3)


def _generation_settings(
    categories: Sequence[str], seed: int, image_size: int, n_train: int, n_test_good: int, n_test_defect_per_type: int
) -> dict[str, object]:
    """Settings recorded in the manifest; a cached dataset is reused only if they match."""
    return {
        "generator": "pcsnet_anomalib.data.demo",
        "version": DEMO_VERSION,
        "categories": list(categories),
        "defect_types": list(DEFECT_TYPES),
        "seed": seed,
        "image_size": image_size,
        "n_train": n_train,
        "n_test_good": n_test_good,
        "n_test_defect_per_type": n_test_defect_per_type,
    }


def generate_demo_dataset(
    root: Path,
    categories: Sequence[str] = DEMO_CATEGORIES,
    seed: int = DEMO_SEED,
    image_size: int = 256,
    n_train: int = 24,
    n_test_good: int = 12,
    n_test_defect_per_type: int = 6,
) -> Path:
    """Write the demo dataset in MVTec AD layout into ``root`` (which must be absent or empty) and return it.

    Layout per category: ``train/good/*.png``, ``test/good/*.png``, ``test/<defect>/*.png`` and
    ``ground_truth/<defect>/<stem>_mask.png``; ``root/pcsnet_demo_manifest.json`` is written last.

    Raises:
        ValueError: unknown category or invalid sizes.
        FileExistsError: ``root`` exists and is not empty.
    """
    root = Path(root)
    unknown = [name for name in categories if name not in DEMO_CATEGORIES]
    if unknown or not categories:
        msg = f"Unknown demo categories {unknown}; valid categories are {list(DEMO_CATEGORIES)}."
        raise ValueError(msg)
    if image_size < 32 or min(n_train, n_test_good, n_test_defect_per_type) < 1:
        msg = "image_size must be >= 32 and every image count >= 1."
        raise ValueError(msg)
    if root.exists() and any(root.iterdir()):
        msg = f"Refusing to write the demo dataset into non-empty folder {root}."
        raise FileExistsError(msg)

    file_count = 0
    for category in categories:
        photo = _photo(category)
        folder = root / category
        for split, count in (("train", n_train), ("test", n_test_good)):
            for index in range(count):
                _save_png(
                    _normal_crop(_rng(seed, category, split, index), photo, image_size),
                    folder / split / "good" / f"{index:03d}.png",
                )
                file_count += 1
        for defect in DEFECT_TYPES:
            for index in range(n_test_defect_per_type):
                rng = _rng(seed, category, defect, index)
                image, mask = _apply_defect(rng, _normal_crop(rng, photo, image_size), defect, category)
                _save_png(image, folder / "test" / defect / f"{index:03d}.png")
                _save_png(mask, folder / "ground_truth" / defect / f"{index:03d}_mask.png")
                file_count += 2
    settings = _generation_settings(categories, seed, image_size, n_train, n_test_good, n_test_defect_per_type)
    manifest = {**settings, "file_count": file_count}
    (root / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    logger.info("Wrote %d demo images and masks to %s.", file_count, root)
    return root


def _read_manifest(root: Path) -> dict[str, object] | None:
    """Return the parsed manifest, ``{}`` if it exists but is unreadable, or ``None`` if there is none."""
    path = root / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return manifest if isinstance(manifest, dict) else {}


def _is_complete(root: Path, manifest: dict[str, object]) -> bool:
    """True if ``manifest`` matches the default settings and all its files are present."""
    expected = _generation_settings(DEMO_CATEGORIES, DEMO_SEED, **_CACHE_SIZES)
    if any(manifest.get(key) != value for key, value in expected.items()):
        return False
    found = sum(1 for category in DEMO_CATEGORIES for _ in (root / category).rglob("*.png"))
    return found == manifest.get("file_count")


def resolve_demo_root(root: str | Path | None = None) -> Path:
    """Return the demo folder: ``root``, else ``$PCSNET_DEMO_ROOT``, else ``~/.cache/pcsnet_anomalib/demo_v1``."""
    if root is None:
        root = os.environ.get(ROOT_ENV_VAR) or _DEFAULT_CACHE
    return Path(root).expanduser().absolute()


def demo_dataset_root(root: str | Path | None = None) -> Path:
    """Return the cached default demo dataset folder (see ``resolve_demo_root``), generating it on first use.

    Generation goes to a temporary sibling folder that is renamed into place only when complete, so an
    interrupted run never leaves a half-written dataset behind. A folder with our manifest whose files or
    settings do not match is ours and is replaced; a non-empty folder without our manifest is never touched.

    Raises:
        FileExistsError: the folder is non-empty and was not created by this generator.
    """
    target = resolve_demo_root(root)
    manifest = _read_manifest(target)
    if manifest is not None and _is_complete(target, manifest):
        return target
    if manifest is None and target.exists() and (not target.is_dir() or any(target.iterdir())):
        msg = (
            f"{target} exists and is not a PCSNet demo dataset (no {MANIFEST_NAME}); refusing to overwrite it. "
            f"Pass another root or set ${ROOT_ENV_VAR}."
        )
        raise FileExistsError(msg)

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        logger.info("Generating the PCSNet demo dataset in %s (one-off, a few seconds).", target)
        generate_demo_dataset(staging, DEMO_CATEGORIES, DEMO_SEED, **_CACHE_SIZES)
        _move_into_place(staging, target, replace_ours=manifest is not None)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return target


def _move_into_place(staging: Path, target: Path, replace_ours: bool) -> None:
    """Rename ``staging`` to ``target``; an outdated dataset of ours is swapped out first, then deleted."""
    retired: Path | None = None
    try:
        if replace_ours:
            retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            target.rename(retired / "data")
        elif target.exists():
            target.rmdir()  # known to be empty
        staging.rename(target)
    except OSError:
        # Another process may have finished first: keep its copy if complete.
        manifest = _read_manifest(target)
        if manifest is None or not _is_complete(target, manifest):
            raise
    finally:
        if retired is not None:
            shutil.rmtree(retired)


class PcsnetDemo(ResumableTrainLoaderMixin, MVTecAD):
    """MVTec AD datamodule over the generated demo dataset (no download; generated on first use).

    The validation split is half of the test folder (``val_split_mode="from_test"``), chosen per label with
    ``seed``, so adaptive thresholds are picked on images disjoint from the reported test images. ``seed`` drives
    this split and the training order (resumable mid-epoch, :class:`ResumableTrainLoaderMixin`); the images
    themselves always come from the fixed demo seed.

    Args:
        root: dataset folder; ``None`` uses ``$PCSNET_DEMO_ROOT`` or ``~/.cache/pcsnet_anomalib/demo_v1``.
        category: one of ``"brick"``, ``"grass"``, ``"gravel"``.
        Other arguments are forwarded to ``anomalib.data.MVTecAD``.
    """

    def __init__(
        self,
        root: str | Path | None = None,
        category: str = "brick",
        train_batch_size: int = 2,
        eval_batch_size: int = 8,
        num_workers: int = 0,
        train_augmentations: Transform | None = None,
        val_augmentations: Transform | None = None,
        test_augmentations: Transform | None = None,
        augmentations: Transform | None = None,
        test_split_mode: TestSplitMode | str = TestSplitMode.FROM_DIR,
        test_split_ratio: float = 0.2,
        val_split_mode: ValSplitMode | str = ValSplitMode.FROM_TEST,
        val_split_ratio: float = 0.5,
        seed: int | None = 0,
    ) -> None:
        if category not in DEMO_CATEGORIES:
            msg = f"Unknown demo category {category!r}; valid categories are {list(DEMO_CATEGORIES)}."
            raise ValueError(msg)
        super().__init__(
            root=resolve_demo_root(root),
            category=category,
            train_batch_size=train_batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            train_augmentations=train_augmentations,
            val_augmentations=val_augmentations,
            test_augmentations=test_augmentations,
            augmentations=augmentations,
            test_split_mode=test_split_mode,
            test_split_ratio=test_split_ratio,
            val_split_mode=val_split_mode,
            val_split_ratio=val_split_ratio,
            seed=seed,
        )

    def prepare_data(self) -> None:
        """Generate the demo dataset if it is not cached yet (never downloads)."""
        demo_dataset_root(self.root)

    def _setup(self, _stage: str | None = None) -> None:
        """Ensure the data exists (``setup`` may be called without ``prepare_data``), then load it."""
        demo_dataset_root(self.root)
        super()._setup(_stage)
