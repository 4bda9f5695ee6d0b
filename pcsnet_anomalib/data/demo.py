"""Offline demo dataset in MVTec AD layout, generated from photographs bundled with scikit-image and drawings.

Two versions, both deterministic byte for byte for a seed (``version`` argument; committed tables name theirs):

- **Version 1** (the default): three texture categories, ``brick``, ``grass`` and ``gravel``, with four defect
  types each (``scratch``, ``stain``, ``hole``, ``foreign``; :mod:`pcsnet_anomalib.data.demo_textures`).
- **Version 2**: nine categories of three kinds, made to separate models: five textures (the three above plus
  ``moon`` and the colour ``immunohistochemistry``) with two subtle defect types added (``thin``, a one-pixel
  low-contrast stroke, and ``tint``, colour only); two aligned objects drawn the same way in every image,
  ``plate`` and ``pcb``, with structural defects (:mod:`pcsnet_anomalib.data.demo_objects`); and two
  rotation-sensitive categories, ``stripes`` and ``screw``, where a rotated part is the defect
  (:mod:`pcsnet_anomalib.data.demo_oriented`).

Every ground-truth mask is 255 exactly where the defect changed pixels and 0 elsewhere.

``PcsnetDemo`` is an anomalib ``MVTecAD`` datamodule over a cached copy, so the CLI can train and test
without downloads: ``anomalib train --data pcsnet_anomalib.data.PcsnetDemo --data.category brick ...``
(``--data.version 2 --data.category screw`` for version 2).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache, partial
from pathlib import Path
from types import ModuleType

import numpy as np
from anomalib.data import MVTecAD
from anomalib.data.utils import TestSplitMode, ValSplitMode
from PIL import Image
from torchvision.transforms.v2 import Transform

from pcsnet_anomalib.data import demo_textures as textures
from pcsnet_anomalib.data.drawing import image_rng
from pcsnet_anomalib.data.resumable import ResumableTrainLoaderMixin

logger = logging.getLogger(__name__)

VERSION_1_TEXTURES = ("brick", "grass", "gravel")
VERSION_2_TEXTURES = (*VERSION_1_TEXTURES, "moon", "immunohistochemistry")
DEMO_CATEGORIES = VERSION_1_TEXTURES  # version 1, the default
DEFECT_TYPES = textures.VERSION_1_DEFECTS  # version 1, the default
DEMO_VERSIONS = (1, 2)
DEMO_VERSION = 1  # the default version
DEMO_SEED = 0
MANIFEST_NAME = "pcsnet_demo_manifest.json"
ROOT_ENV_VAR = "PCSNET_DEMO_ROOT"
_DEFAULT_CACHE = Path("~/.cache/pcsnet_anomalib")
_CACHE_SIZES = {"image_size": 256, "n_train": 24, "n_test_good": 12, "n_test_defect_per_type": 6}


@dataclass(frozen=True)
class DemoCategory:
    """One category of a demo data version: its kind, defect types and how its images are drawn.

    ``normal(rng, size)`` draws a normal image; ``defect(rng, defect, size)`` first makes exactly the draws of
    ``normal`` and then alters that image, returning it with its mask (255 exactly where pixels changed).
    """

    name: str
    kind: str  # "texture", "object" (aligned) or "oriented" (rotation-sensitive)
    defects: tuple[str, ...]
    normal: Callable[[np.random.Generator, int], np.ndarray]
    defect: Callable[[np.random.Generator, str, int], tuple[np.ndarray, np.ndarray]]


def _texture(name: str, defects: tuple[str, ...], family: tuple[str, ...]) -> DemoCategory:
    """A texture category; ``foreign`` defects take patches of the other textures of ``family``."""
    others = tuple(other for other in family if other != name)
    return DemoCategory(
        name=name,
        kind="texture",
        defects=defects,
        normal=partial(textures.normal_image, source=name),
        defect=lambda rng, defect, size: textures.defect_image(rng, name, defect, size, others),
    )


def _drawn(module: ModuleType, name: str, kind: str) -> DemoCategory:
    """A procedurally drawn category of ``module`` (``demo_objects`` or ``demo_oriented``)."""
    return DemoCategory(
        name=name,
        kind=kind,
        defects=tuple(module.CATEGORIES[name]),
        normal=partial(module.normal_image, category=name),
        defect=partial(module.defect_image, category=name),
    )


@cache
def demo_categories(version: int = DEMO_VERSION) -> dict[str, DemoCategory]:
    """The categories of demo data ``version`` by name (1: three textures; 2: textures, objects, oriented parts)."""
    if version == 1:
        return {name: _texture(name, textures.VERSION_1_DEFECTS, VERSION_1_TEXTURES) for name in VERSION_1_TEXTURES}
    if version == 2:
        from pcsnet_anomalib.data import demo_objects, demo_oriented  # version 2 only

        defects = textures.VERSION_1_DEFECTS + textures.SUBTLE_DEFECTS
        categories = [_texture(name, defects, VERSION_2_TEXTURES) for name in VERSION_2_TEXTURES]
        categories += [_drawn(demo_objects, name, "object") for name in demo_objects.CATEGORIES]
        categories += [_drawn(demo_oriented, name, "oriented") for name in demo_oriented.CATEGORIES]
        return {category.name: category for category in categories}
    msg = f"Unknown demo data version {version!r}; valid versions are {list(DEMO_VERSIONS)}."
    raise ValueError(msg)


def _save_png(array: np.ndarray, path: Path) -> None:
    """Write a PNG (PIL writes no timestamps, so files are byte-identical across runs)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG", compress_level=3)


def _generation_settings(
    version: int,
    categories: Sequence[str],
    seed: int,
    image_size: int,
    n_train: int,
    n_test_good: int,
    n_test_defect_per_type: int,
) -> dict[str, object]:
    """Settings recorded in the manifest; a cached dataset is reused only if they match.

    Version 1 records one list of defect types (as it always has, so existing caches stay valid); later versions
    record each category's.
    """
    registry = demo_categories(version)
    defect_types: object = (
        list(DEFECT_TYPES) if version == 1 else {name: list(registry[name].defects) for name in categories}
    )
    return {
        "generator": "pcsnet_anomalib.data.demo",
        "version": version,
        "categories": list(categories),
        "defect_types": defect_types,
        "seed": seed,
        "image_size": image_size,
        "n_train": n_train,
        "n_test_good": n_test_good,
        "n_test_defect_per_type": n_test_defect_per_type,
    }


def generate_demo_dataset(
    root: Path,
    categories: Sequence[str] | None = None,
    seed: int = DEMO_SEED,
    image_size: int = 256,
    n_train: int = 24,
    n_test_good: int = 12,
    n_test_defect_per_type: int = 6,
    version: int = DEMO_VERSION,
) -> Path:
    """Write demo data ``version`` in MVTec AD layout into ``root`` (which must be absent or empty) and return it.

    Layout per category: ``train/good/*.png``, ``test/good/*.png``, ``test/<defect>/*.png`` and
    ``ground_truth/<defect>/<stem>_mask.png``; ``root/pcsnet_demo_manifest.json`` is written last.
    ``categories=None`` writes every category of the version.

    Raises:
        ValueError: unknown version or category, or invalid sizes.
        FileExistsError: ``root`` exists and is not empty.
    """
    root = Path(root)
    registry = demo_categories(version)
    categories = list(registry) if categories is None else list(categories)
    unknown = [name for name in categories if name not in registry]
    if unknown or not categories:
        msg = f"Unknown demo categories {unknown} for version {version}; valid categories are {list(registry)}."
        raise ValueError(msg)
    if image_size < 32 or min(n_train, n_test_good, n_test_defect_per_type) < 1:
        msg = "image_size must be >= 32 and every image count >= 1."
        raise ValueError(msg)
    if root.exists() and any(root.iterdir()):
        msg = f"Refusing to write the demo dataset into non-empty folder {root}."
        raise FileExistsError(msg)

    file_count = 0
    for name in categories:
        category, folder = registry[name], root / name
        for split, count in (("train", n_train), ("test", n_test_good)):
            for index in range(count):
                image = category.normal(image_rng(seed, name, split, index), size=image_size)
                _save_png(image, folder / split / "good" / f"{index:03d}.png")
                file_count += 1
        for defect in category.defects:
            for index in range(n_test_defect_per_type):
                image, mask = category.defect(image_rng(seed, name, defect, index), defect=defect, size=image_size)
                _save_png(image, folder / "test" / defect / f"{index:03d}.png")
                _save_png(mask, folder / "ground_truth" / defect / f"{index:03d}_mask.png")
                file_count += 2
    settings = _generation_settings(version, categories, seed, image_size, n_train, n_test_good, n_test_defect_per_type)
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


def _is_complete(root: Path, manifest: dict[str, object], version: int) -> bool:
    """True if ``manifest`` matches the default settings of ``version`` and all its files are present."""
    categories = list(demo_categories(version))
    expected = _generation_settings(version, categories, DEMO_SEED, **_CACHE_SIZES)
    if any(manifest.get(key) != value for key, value in expected.items()):
        return False
    found = sum(1 for category in categories for _ in (root / category).rglob("*.png"))
    return found == manifest.get("file_count")


def resolve_demo_root(root: str | Path | None = None, version: int = DEMO_VERSION) -> Path:
    """Return the demo folder: ``root``, else ``<cache>/demo_v<version>``.

    ``<cache>`` is ``$PCSNET_DEMO_ROOT`` if set, else ``~/.cache/pcsnet_anomalib``.
    """
    if root is None:
        cache_folder = os.environ.get(ROOT_ENV_VAR) or _DEFAULT_CACHE
        root = Path(cache_folder).expanduser() / f"demo_v{version}"
    return Path(root).expanduser().absolute()


def demo_dataset_root(root: str | Path | None = None, version: int = DEMO_VERSION) -> Path:
    """Return the cached demo dataset folder of ``version`` (see ``resolve_demo_root``), generating it on first use.

    Generation goes to a temporary sibling folder that is renamed into place only when complete, so an
    interrupted run never leaves a half-written dataset behind. A folder with our manifest of the same version
    whose files or settings do not match is ours and is replaced; a non-empty folder without our manifest, or
    with the manifest of another version, is never touched.

    Raises:
        ValueError: unknown version.
        FileExistsError: the folder is non-empty and was not created by this generator for this version.
    """
    demo_categories(version)  # unknown versions fail here, before any folder is made
    target = resolve_demo_root(root, version)
    manifest = _read_manifest(target)
    if manifest is not None and _is_complete(target, manifest, version):
        return target
    if manifest is None and target.exists() and (not target.is_dir() or any(target.iterdir())):
        msg = (
            f"{target} exists and is not a PCSNet demo dataset (no {MANIFEST_NAME}); refusing to overwrite it. "
            f"Pass another root or set ${ROOT_ENV_VAR}."
        )
        raise FileExistsError(msg)
    if manifest and manifest.get("version") != version:
        msg = (
            f"{target} holds demo data version {manifest.get('version')}, not version {version}; refusing to "
            "replace it. Pass another root (the default is one folder per version)."
        )
        raise FileExistsError(msg)

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        logger.info("Generating the PCSNet demo dataset (version %d) in %s (one-off, seconds).", version, target)
        generate_demo_dataset(staging, None, DEMO_SEED, **_CACHE_SIZES, version=version)
        _move_into_place(staging, target, replace_ours=manifest is not None, version=version)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return target


def _move_into_place(staging: Path, target: Path, replace_ours: bool, version: int) -> None:
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
        if manifest is None or not _is_complete(target, manifest, version):
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
        root: dataset folder; ``None`` uses ``<cache>/demo_v<version>``, ``<cache>`` being ``$PCSNET_DEMO_ROOT``
            or ``~/.cache/pcsnet_anomalib``.
        category: a category of the version: version 1 ``"brick"``, ``"grass"``, ``"gravel"``; version 2 also
            ``"moon"``, ``"immunohistochemistry"``, ``"plate"``, ``"pcb"``, ``"stripes"``, ``"screw"``.
        version: demo data version (1 or 2; see the module docstring).
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
        version: int = DEMO_VERSION,
    ) -> None:
        categories = demo_categories(version)
        if category not in categories:
            msg = f"Unknown demo category {category!r} for version {version}; valid categories are {list(categories)}."
            raise ValueError(msg)
        self.version = version
        super().__init__(
            root=resolve_demo_root(root, version),
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
        demo_dataset_root(self.root, self.version)

    def _setup(self, _stage: str | None = None) -> None:
        """Ensure the data exists (``setup`` may be called without ``prepare_data``), then load it."""
        demo_dataset_root(self.root, self.version)
        super()._setup(_stage)
