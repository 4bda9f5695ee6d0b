"""Per-dataset patch-exchange presets: the schema (:class:`PatchExchangeConfig`) and the YAML tables in ``presets/``.

Each dataset file has ``defaults`` (fields shared by its categories) and ``categories`` (per-category overrides);
``default.yaml`` has only ``defaults`` and serves categories without an official table entry.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import yaml


@dataclass(frozen=True)
class PatchExchangeConfig:
    """Parameters of one patch-exchange preset (fractions refer to image height and width; brightness to 0-255)."""

    width_bounds: tuple[tuple[float, float], tuple[float, float]] = ((0.03, 0.4), (0.03, 0.4))
    num_patches: int = 1
    gamma_params: tuple[float, float, float] | None = (2.0, 0.05, 0.03)
    min_object_pct: float = 0.25
    min_overlap_pct: float = 0.25
    background: tuple[float, float] | None = None
    same_image: bool = True
    max_attempts: int = 200
    rotation_sensitive: bool = False

    def __post_init__(self) -> None:
        """Normalise sequences to tuples (YAML and CLIs give lists) and reject invalid values with a clear message."""
        object.__setattr__(self, "width_bounds", self._checked_width_bounds())
        for name in ("num_patches", "max_attempts"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                msg = f"{name} must be an integer >= 1, got {value!r}"
                raise ValueError(msg)
        if self.gamma_params is not None:
            object.__setattr__(self, "gamma_params", self._checked_gamma())
        for name in ("min_object_pct", "min_overlap_pct"):
            value = float(getattr(self, name))
            if not 0.0 <= value <= 1.0:
                msg = f"{name} must be a fraction in [0, 1], got {value}"
                raise ValueError(msg)
            object.__setattr__(self, name, value)
        if self.background is not None:
            object.__setattr__(self, "background", self._checked_background())
        for name in ("same_image", "rotation_sensitive"):
            if not isinstance(getattr(self, name), bool):
                msg = f"{name} must be true or false, got {getattr(self, name)!r}"
                raise ValueError(msg)  # noqa: TRY004  (every malformed preset is a ValueError)

    def _checked_width_bounds(self) -> tuple[tuple[float, float], tuple[float, float]]:
        try:
            bounds = tuple((float(lo), float(hi)) for lo, hi in self.width_bounds)
        except (TypeError, ValueError) as err:
            msg = f"width_bounds must be ((min_h, max_h), (min_w, max_w)) of floats, got {self.width_bounds!r}"
            raise ValueError(msg) from err
        if len(bounds) != 2:
            msg = f"width_bounds needs exactly two (min, max) pairs (height, width), got {bounds!r}"
            raise ValueError(msg)
        for axis, (lo, hi) in zip(("height", "width"), bounds, strict=True):
            if not (0.0 < lo <= 0.5 and 0.0 < hi <= 0.5):
                msg = f"width_bounds for {axis} must lie in (0, 0.5] (half-width fraction), got {(lo, hi)}"
                raise ValueError(msg)
            if lo > hi:
                msg = f"width_bounds for {axis} has min {lo} > max {hi}; swap them"
                raise ValueError(msg)
        return bounds[0], bounds[1]

    def _checked_gamma(self) -> tuple[float, float, float]:
        assert self.gamma_params is not None
        gamma = tuple(float(v) for v in self.gamma_params)
        if len(gamma) != 3:
            msg = f"gamma_params must be (shape, scale, lower offset) or None, got {self.gamma_params!r}"
            raise ValueError(msg)
        shape, scale, lower = gamma
        if shape <= 0 or scale <= 0 or lower < 0:
            msg = f"gamma_params needs shape > 0, scale > 0, lower offset >= 0, got {gamma}"
            raise ValueError(msg)
        return shape, scale, lower

    def _checked_background(self) -> tuple[float, float]:
        assert self.background is not None
        background = tuple(float(v) for v in self.background)
        if len(background) != 2:
            msg = f"background must be (brightness, threshold) or None, got {self.background!r}"
            raise ValueError(msg)
        brightness, threshold = background
        if not 0.0 <= brightness <= 255.0 or threshold < 0.0:
            msg = f"background needs brightness in [0, 255] and threshold >= 0 (0-255 units), got {background}"
            raise ValueError(msg)
        return brightness, threshold


DEFAULT_PRESET = "default"
"""Preset of any dataset or category without an official table entry."""
PRESET_FOLDER = "presets"
_FIELDS = frozenset(field.name for field in dataclasses.fields(PatchExchangeConfig))

# anomalib datamodule class name -> preset dataset (BTAD is called BTech in anomalib; MVTec is the pre-2.0 name).
_DATAMODULE_DATASETS = {
    "MVTecAD": "mvtec_ad",
    "MVTec": "mvtec_ad",
    "MPDD": "mpdd",
    "BTech": "btad",
    "BTAD": "btad",
    "MVTec3D": "mvtec_3d",
}


def _check_fields(entry: Any, where: str) -> dict[str, Any]:
    """Return ``entry`` as a dict after checking it is a mapping of known config fields."""
    if not isinstance(entry, dict):
        msg = f"{where} must be a mapping of PatchExchangeConfig fields, got {entry!r}"
        raise ValueError(msg)  # noqa: TRY004  (every malformed preset is a ValueError)
    unknown = sorted(set(entry) - _FIELDS)
    if unknown:
        msg = f"{where} has unknown fields {unknown}; valid fields: {sorted(_FIELDS)}"
        raise ValueError(msg)
    return entry


@cache
def _read(dataset: str) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Parse ``presets/<dataset>.yaml`` into (defaults, categories), checking its layout."""
    path = resources.files(__package__) / PRESET_FOLDER / f"{dataset}.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    where = f"preset file {dataset}.yaml"
    if not isinstance(data, dict) or "defaults" not in data:
        msg = f"{where} must be a mapping with a 'defaults' key"
        raise ValueError(msg)
    extra = sorted(set(data) - {"defaults", "categories"})
    if extra:
        msg = f"{where} has unknown top-level keys {extra}; allowed: 'defaults', 'categories'"
        raise ValueError(msg)
    defaults = _check_fields(data["defaults"], f"{where}: defaults")
    categories = data.get("categories") or {}
    if not isinstance(categories, dict):
        msg = f"{where}: 'categories' must be a mapping of category name to fields"
        raise ValueError(msg)  # noqa: TRY004  (every malformed preset is a ValueError)
    checked = {str(name): _check_fields(entry, f"{where}: category {name!r}") for name, entry in categories.items()}
    return defaults, checked


def _datasets() -> list[str]:
    """Names of the dataset preset files (without the ``default`` fallback)."""
    names = (entry.name for entry in (resources.files(__package__) / PRESET_FOLDER).iterdir())
    return sorted(name[: -len(".yaml")] for name in names if name.endswith(".yaml") and name != "default.yaml")


def available_presets() -> list[str]:
    """All preset names: ``"default"`` and every ``"<dataset>/<category>"``."""
    return [DEFAULT_PRESET] + [f"{dataset}/{category}" for dataset in _datasets() for category in _read(dataset)[1]]


def load_preset(name: str) -> PatchExchangeConfig:
    """Build the validated config of preset ``name`` (``"default"`` or ``"<dataset>/<category>"``)."""
    if name == DEFAULT_PRESET:
        return PatchExchangeConfig(**_read(DEFAULT_PRESET)[0])
    datasets = _datasets()
    dataset, sep, category = name.partition("/")
    if not sep or not category:
        msg = (
            f"Preset name {name!r} must be 'default' or '<dataset>/<category>' (e.g. 'mvtec_ad/bottle'); "
            f"datasets: {datasets}"
        )
        raise ValueError(msg)
    if dataset not in datasets:
        msg = (
            f"Unknown preset dataset {dataset!r} in {name!r}; use one of {datasets} or 'default' "
            "(or add presets/<dataset>.yaml)"
        )
        raise ValueError(msg)
    defaults, categories = _read(dataset)
    if category not in categories:
        msg = (
            f"Unknown category {category!r} for preset dataset {dataset!r}; valid categories: {sorted(categories)}. "
            "Use 'default' for other categories."
        )
        raise ValueError(msg)
    try:
        return PatchExchangeConfig(**{**defaults, **categories[category]})
    except ValueError as err:
        msg = f"Invalid preset {name!r} in {dataset}.yaml: {err}"
        raise ValueError(msg) from err


def preset_for_datamodule(datamodule: object) -> str | None:
    """Preset name for an anomalib datamodule (by class name and ``category``), or None when there is none."""
    dataset = next(
        (
            _DATAMODULE_DATASETS[cls.__name__]
            for cls in type(datamodule).__mro__
            if cls.__name__ in _DATAMODULE_DATASETS
        ),
        None,
    )
    category = getattr(datamodule, "category", None)
    if dataset is None or category is None:
        return None
    name = f"{dataset}/{category}"
    return name if str(category) in _read(dataset)[1] else None
