"""Per-dataset patch-exchange presets, kept as YAML data in ``presets/`` (one file per dataset).

Each dataset file has ``defaults`` (fields shared by its categories) and ``categories`` (per-category overrides);
``default.yaml`` has only ``defaults`` and serves categories without an official table entry.
"""

from __future__ import annotations

import dataclasses
from functools import cache
from importlib import resources
from typing import Any

import yaml

from pcsnet_anomalib.synthesis.patch_exchange import PatchExchangeConfig

DEFAULT_PRESET = "default"
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
        raise ValueError(f"{where} must be a mapping of PatchExchangeConfig fields, got {entry!r}")
    unknown = sorted(set(entry) - _FIELDS)
    if unknown:
        raise ValueError(f"{where} has unknown fields {unknown}; valid fields: {sorted(_FIELDS)}")
    return entry


@cache
def _read(dataset: str) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Parse ``presets/<dataset>.yaml`` into (defaults, categories), checking its layout."""
    path = resources.files(__package__) / "presets" / f"{dataset}.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    where = f"preset file {dataset}.yaml"
    if not isinstance(data, dict) or "defaults" not in data:
        raise ValueError(f"{where} must be a mapping with a 'defaults' key")
    extra = sorted(set(data) - {"defaults", "categories"})
    if extra:
        raise ValueError(f"{where} has unknown top-level keys {extra}; allowed: 'defaults', 'categories'")
    defaults = _check_fields(data["defaults"], f"{where}: defaults")
    categories = data.get("categories") or {}
    if not isinstance(categories, dict):
        raise ValueError(f"{where}: 'categories' must be a mapping of category name to fields")
    checked = {str(name): _check_fields(entry, f"{where}: category {name!r}") for name, entry in categories.items()}
    return defaults, checked


def _datasets() -> list[str]:
    """Names of the dataset preset files (without the ``default`` fallback)."""
    names = (entry.name for entry in (resources.files(__package__) / "presets").iterdir())
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
        raise ValueError(
            f"Preset name {name!r} must be 'default' or '<dataset>/<category>' (e.g. 'mvtec_ad/bottle'); "
            f"datasets: {datasets}"
        )
    if dataset not in datasets:
        raise ValueError(
            f"Unknown preset dataset {dataset!r} in {name!r}; use one of {datasets} or 'default' "
            "(or add presets/<dataset>.yaml)"
        )
    defaults, categories = _read(dataset)
    if category not in categories:
        raise ValueError(
            f"Unknown category {category!r} for preset dataset {dataset!r}; valid categories: {sorted(categories)}. "
            "Use 'default' for other categories."
        )
    try:
        return PatchExchangeConfig(**{**defaults, **categories[category]})
    except ValueError as err:
        raise ValueError(f"Invalid preset {name!r} in {dataset}.yaml: {err}") from err


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
