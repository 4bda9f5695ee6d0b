"""Every use of a private anomalib or timm name, in this one module.

pcsnet-anomalib needs three things that neither library exports:

- :class:`RawScoreROC`: anomalib's AUROC computation without torchmetrics' per-update sigmoid, for validation
  scores that are not normalised to [0, 1] (the k-shot benchmark's ``RawScoreAUROC``). It subclasses
  ``anomalib.metrics.auroc._AUROC``.
- :func:`register_pretrained_tag`: a new weight tag (``architecture.tag``) for an existing timm architecture, so
  that anomalib's built-in models, which call ``timm.create_model(backbone, pretrained=True)`` with a name only,
  load local weights (the benchmark's offline EfficientNet-Lite0). It writes into ``timm.models._registry``.
- :func:`set_post_processor_thresholds`: thresholds from somewhere other than anomalib's validation (the
  pseudo-anomaly calibration), written into ``PostProcessor``'s private threshold buffers.

Each carries the reason no public API serves. ``tests/unit/test_upstream_private_api.py`` checks the private
names and what this module relies on them doing, so an upstream change fails that test by name instead of
breaking a benchmark run. Import this module lazily from code that ``import pcsnet_anomalib`` runs, so that
such a change never breaks importing the model.
"""

from __future__ import annotations

import torch
from anomalib.metrics import BinaryPrecisionRecallCurve

# Private: anomalib's public ``AUROC`` is ``AnomalibMetric`` (batch -> tensors) followed by ``_AUROC`` (the tensor
# computation); the sigmoid to skip is applied in the tensor-level ``update``, so replacing it needs a class that
# sits where ``_AUROC`` sits in that order, i.e. a subclass of ``_AUROC``. Re-implementing ``_AUROC`` on
# torchmetrics' public ``BinaryROC`` would let validation AUROC drift from anomalib's test AUROC.
from anomalib.metrics.auroc import _AUROC
from anomalib.post_processing import PostProcessor

# Private: timm's only public registration is ``register_model``, which registers an architecture *function*
# with the configs of its module; it cannot add a weight tag to an existing architecture without replacing its
# entry point. ``create_model(..., pretrained_cfg_overlay=...)`` would need anomalib's models to pass it.
from timm.models import PretrainedCfg, _registry, is_model


class RawScoreROC(_AUROC):
    """anomalib's AUROC computation (``_AUROC``), fed with every score as it is.

    ``_AUROC.update`` goes through torchmetrics' ``BinaryROC.update``, which takes an update whose scores leave
    [0, 1] for logits and applies a sigmoid to that update only (torchmetrics#1526), so that batches with and
    without such a score are ranked on different scales. anomalib's own ``BinaryPrecisionRecallCurve.update``
    stores the scores unchanged in the same states; ``compute`` stays ``_AUROC``'s.
    """

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """Store ``preds`` and ``target`` unchanged (flattened), without the per-update sigmoid."""
        BinaryPrecisionRecallCurve.update(self, preds, target)


def register_pretrained_tag(architecture: str, tag: str, pretrained_cfg: PretrainedCfg) -> str:
    """Register ``architecture.tag`` in timm's registry with ``pretrained_cfg``; return that name. Idempotent.

    Afterwards ``timm.create_model("architecture.tag", pretrained=True)`` builds ``architecture`` and loads the
    weights ``pretrained_cfg`` points at (e.g. its ``file``), and ``timm.models.get_pretrained_cfg``,
    ``is_model_pretrained`` and ``list_pretrained`` know the name: the three tables timm's ``register_model``
    fills for the tags of its own architectures.

    Raises:
        ValueError: ``architecture`` is not a timm architecture.
    """
    if not is_model(architecture):
        msg = f"{architecture!r} is not a timm architecture; cannot add the weight tag {tag!r}."
        raise ValueError(msg)
    name = f"{architecture}.{tag}"
    # The three private tables (see the import's comment): config by name, names with weights, names by architecture.
    _registry._model_pretrained_cfgs[name] = pretrained_cfg  # noqa: SLF001
    _registry._model_has_pretrained.add(name)  # noqa: SLF001
    tags = _registry._model_with_tags[architecture]  # noqa: SLF001
    if name not in tags:
        tags.append(name)
    return name


def set_post_processor_thresholds(
    post_processor: PostProcessor,
    image_threshold: float,
    pixel_threshold: float,
    image_range: tuple[float, float],
    pixel_range: tuple[float, float],
) -> None:
    """Write thresholds and score ranges (raw score units) into anomalib's ``PostProcessor`` buffers.

    Afterwards ``post_processor`` labels ``score > image_threshold`` anomalous (at its default sensitivity 0.5) and
    normalises scores with the ranges, exactly as after its own validation; the buffers are part of the model's
    ``state_dict``, hence of checkpoints and exports. The threshold buffers are private (``_image_threshold``,
    ``_pixel_threshold``): ``PostProcessor`` only sets them from its ``F1AdaptiveThreshold`` metrics on validation
    batches, and has no setter.
    """
    values = {
        "_image_threshold": image_threshold,
        "_pixel_threshold": pixel_threshold,
        "image_min": image_range[0],
        "image_max": image_range[1],
        "pixel_min": pixel_range[0],
        "pixel_max": pixel_range[1],
    }
    buffers = dict(post_processor.named_buffers(recurse=False))
    missing = sorted(set(values) - set(buffers))
    if missing:
        msg = f"anomalib's PostProcessor no longer has the buffers {missing}: pcsnet_anomalib._upstream needs updating."
        raise RuntimeError(msg)
    for name, value in values.items():
        buffers[name].fill_(value)
