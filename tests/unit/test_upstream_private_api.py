"""The private anomalib and timm names that pcsnet_anomalib._upstream uses, and what it relies on them doing.

A failure here after an anomalib or timm upgrade names the upstream change; fix ``_upstream`` (or find the
public API that now serves) before the benchmark's validation AUROC or its offline backbone weights break.
"""

import dataclasses
import inspect
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
import timm
import torch
from anomalib.data import InferenceBatch
from anomalib.metrics import AUROC
from anomalib.metrics.auroc import _AUROC
from anomalib.metrics.base import AnomalibMetric
from anomalib.post_processing import PostProcessor
from timm.models import PretrainedCfg, _registry
from torchmetrics.classification import BinaryROC

from pcsnet_anomalib._upstream import RawScoreROC, register_pretrained_tag, set_post_processor_thresholds

ARCH, BASE_TAG, TAG = "test_resnet", "r160_in1k", "pcsnet_upstream_test"  # timm's tiny test network
NAME = f"{ARCH}.{TAG}"


# --- anomalib.metrics.auroc._AUROC, subclassed by RawScoreROC ---


def test_anomalib_auroc_is_still_the_metric_wrapper_over_the_private_computation() -> None:
    """RawScoreAUROC copies this layout: ``AnomalibMetric`` (batch -> tensors), then the tensor-level class."""
    assert AUROC.__bases__ == (AnomalibMetric, _AUROC)
    assert issubclass(_AUROC, BinaryROC)
    assert "compute" in vars(_AUROC)
    assert list(inspect.signature(_AUROC.update).parameters) == ["self", "preds", "target"]


def _two_updates(metric: BinaryROC) -> float:
    # Positives 1.5, 0.9 against negatives 1.2, 0.1: 3 of 4 pairs in order, but only the first update leaves [0, 1].
    metric.update(torch.tensor([1.2, 1.5]), torch.tensor([0, 1]))
    metric.update(torch.tensor([0.9, 0.1]), torch.tensor([1, 0]))
    return float(metric.compute())


def test_private_auroc_still_squashes_each_update_on_its_own() -> None:
    """The reason RawScoreROC exists: torchmetrics' sigmoid per update (1.2 -> 0.77 < 0.9) reorders batches."""
    assert _two_updates(_AUROC()) == pytest.approx(1.0)


def test_raw_score_roc_ranks_scores_across_updates() -> None:
    assert _two_updates(RawScoreROC()) == pytest.approx(0.75)


def test_raw_score_roc_computes_like_anomalibs_auroc_on_unit_scores() -> None:
    """Pixel maps ``(B, 1, H, W)`` in [0, 1] over two updates: the same value as anomalib's own computation."""
    generator = torch.Generator().manual_seed(0)
    raw, reference = RawScoreROC(), _AUROC()
    for _ in range(2):
        maps = torch.rand(2, 1, 8, 8, generator=generator)
        masks = (torch.rand(2, 1, 8, 8, generator=generator) < maps).int()
        raw.update(maps, masks)
        reference.update(maps, masks)
    assert float(raw.compute()) == pytest.approx(float(reference.compute()), abs=1e-6)


# --- timm.models._registry, written by register_pretrained_tag ---


@pytest.fixture
def clean_registry() -> Iterator[None]:
    yield
    _registry._model_pretrained_cfgs.pop(NAME, None)
    _registry._model_has_pretrained.discard(NAME)
    if NAME in _registry._model_with_tags[ARCH]:
        _registry._model_with_tags[ARCH].remove(NAME)


def test_timm_registry_tables_still_hold_what_register_model_puts_there() -> None:
    """The three tables register_pretrained_tag writes, filled by timm's own ``register_model`` the same way."""
    base = f"{ARCH}.{BASE_TAG}"
    assert isinstance(_registry._model_pretrained_cfgs, dict)
    assert isinstance(_registry._model_pretrained_cfgs[base], PretrainedCfg)
    assert isinstance(_registry._model_has_pretrained, set)
    assert base in _registry._model_has_pretrained
    assert isinstance(_registry._model_with_tags, defaultdict)
    assert _registry._model_with_tags.default_factory is list
    assert base in _registry._model_with_tags[ARCH]


@pytest.mark.usefixtures("clean_registry")
def test_registered_tag_resolves_and_loads_its_local_file(tmp_path: Path) -> None:
    torch.manual_seed(0)
    weights = timm.create_model(ARCH, pretrained=False).state_dict()
    path = tmp_path / f"{NAME}.pth"
    torch.save(weights, path)
    base = timm.models.get_pretrained_cfg(f"{ARCH}.{BASE_TAG}")
    cfg = dataclasses.replace(base, file=str(path), hf_hub_id=None, url=None, tag=TAG)

    assert register_pretrained_tag(ARCH, TAG, cfg) == NAME
    assert register_pretrained_tag(ARCH, TAG, cfg) == NAME  # idempotent
    assert _registry._model_with_tags[ARCH].count(NAME) == 1

    resolved = timm.models.get_pretrained_cfg(NAME)
    assert resolved is not None
    assert resolved.file == str(path)
    assert resolved.input_size == base.input_size
    assert timm.models.is_model_pretrained(NAME)
    assert NAME in timm.list_pretrained(f"{ARCH}.*")
    untrained = timm.create_model(NAME, pretrained=False)
    assert untrained.pretrained_cfg["tag"] == TAG
    loaded = timm.create_model(NAME, pretrained=True)  # from the file: nothing is downloaded
    for key, tensor in loaded.state_dict().items():
        torch.testing.assert_close(tensor, weights[key])


def test_unknown_architecture_is_refused() -> None:
    cfg = PretrainedCfg(file="unused.pth", tag=TAG)
    with pytest.raises(ValueError, match="not a timm architecture"):
        register_pretrained_tag("no_such_architecture", TAG, cfg)


# --- anomalib.post_processing.PostProcessor's threshold buffers, written by set_post_processor_thresholds ---


def test_post_processor_keeps_its_thresholds_and_ranges_in_these_buffers() -> None:
    buffers = dict(PostProcessor().named_buffers(recurse=False))
    assert {"_image_threshold", "_pixel_threshold", "image_min", "image_max", "pixel_min", "pixel_max"} <= set(buffers)


def test_written_thresholds_label_raw_scores_above_them_and_travel_in_the_state_dict() -> None:
    post_processor = PostProcessor()
    set_post_processor_thresholds(
        post_processor, image_threshold=2.0, pixel_threshold=1.5, image_range=(1.0, 4.0), pixel_range=(0.0, 3.0)
    )
    scores = torch.tensor([1.0, 1.99, 2.01, 3.5])
    maps = torch.tensor([1.4, 1.6, 0.1, 2.9]).reshape(4, 1, 1, 1)
    output = post_processor(InferenceBatch(pred_score=scores, anomaly_map=maps))
    assert output.pred_label.tolist() == [False, False, True, True]
    assert output.pred_mask.flatten().tolist() == [False, True, False, True]
    assert float(output.pred_score[1]) < 0.5 < float(output.pred_score[2])  # the threshold normalises to 0.5
    restored = PostProcessor()
    restored.load_state_dict(post_processor.state_dict())
    assert float(restored.image_threshold) == 2.0
    assert float(restored.pixel_threshold) == 1.5
