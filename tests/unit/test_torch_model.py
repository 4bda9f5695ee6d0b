"""Shapes, derived sizes and gradient flow of the PCSNet torch model."""

import pytest
import torch

from pcsnet_anomalib.models.components import AddCoords, PrototypeMemory
from pcsnet_anomalib.models.pcsnet import PcsnetLoss, PcsnetModel


def _initialised_model(size: tuple[int, int], **kwargs: object) -> tuple[PcsnetModel, torch.Tensor]:
    torch.manual_seed(0)
    model = PcsnetModel(backbone="resnet18", pre_trained=False, **kwargs)  # type: ignore[arg-type]
    images = torch.rand(2, 3, *size)
    descriptor = model.describe(images)
    model.initialize_prototypes(descriptor.sum(dim=0), images.shape[0])
    return model, images


@pytest.mark.parametrize(("size", "grid"), [((224, 224), (64, 64)), ((128, 160), (37, 46)), ((96, 96), (27, 27))])
def test_shapes_follow_the_input_size(size: tuple[int, int], grid: tuple[int, int]) -> None:
    model, images = _initialised_model(size)
    descriptor = model.describe(images)
    assert descriptor.shape == (2, 64 + 128 + 256, *grid)
    assert model.memory.prototypes.shape == (grid[0] * grid[1], 448)
    model.eval()
    with torch.no_grad():
        output = model(images)
    assert output.anomaly_map.shape == (2, 1, *size)
    assert output.pred_score.shape == (2,)
    assert torch.allclose(output.pred_score, output.anomaly_map.amax(dim=(1, 2, 3)))


def test_paper_sizes_are_the_defaults_for_wide_resnet() -> None:
    model = PcsnetModel(backbone="wide_resnet50_2", pre_trained=False)
    assert model.descriptor.out_channels == 1792
    assert model.cas_channels == 896
    assert model.grid_size((224, 224)) == (64, 64)
    assert model.pyramid_bins((64, 64)) == [(60, 60), (30, 30), (15, 15), (8, 8)]
    reduced = PcsnetModel(backbone="wide_resnet50_2", pre_trained=False, reduce_channels=True)
    assert reduced.descriptor.out_channels == 896
    assert reduced.cas_channels == 896


def test_rotation_sensitive_descriptor_halves_channels() -> None:
    model, images = _initialised_model((96, 96), reduce_channels=True)
    assert model.describe(images).shape[1] == 224


def test_coordinates_span_minus_one_to_one_rows_first() -> None:
    out = AddCoords()(torch.zeros(1, 2, 3, 5))
    assert out.shape == (1, 4, 3, 5)
    assert torch.equal(out[0, 2, :, 0], torch.tensor([-1.0, 0.0, 1.0]))
    assert torch.equal(out[0, 3, 0], torch.linspace(-1, 1, 5))


def test_prototypes_are_the_mean_descriptor_and_distances_are_euclidean() -> None:
    memory = PrototypeMemory()
    descriptors = torch.randn(3, 4, 2, 2, dtype=torch.float64)
    memory.set_prototypes(descriptors.mean(dim=0))
    query = torch.randn(1, 4, 2, 2, dtype=torch.float64)
    expected = torch.cdist(query.flatten(2).transpose(1, 2), memory.prototypes.unsqueeze(0))
    assert torch.allclose(memory.distances(query), expected, atol=1e-6)
    assert torch.allclose(memory.prototypes[1], descriptors.mean(dim=0)[:, 0, 1])


def test_identical_inputs_give_finite_distances_and_gradients() -> None:
    memory = PrototypeMemory()
    descriptor = torch.ones(1, 8, 3, 3, requires_grad=True)
    memory.set_prototypes(descriptor[0].detach())
    distances = memory.distances(descriptor)
    distances.sum().backward()
    assert torch.isfinite(distances).all()
    assert torch.isfinite(descriptor.grad).all()


def test_gradients_reach_pfa_and_cas_but_not_the_backbone() -> None:
    model, images = _initialised_model((96, 96))
    model.train()
    anomalous = images.clone()
    anomalous[:, :, 20:50, 20:50] = 1.0
    mask = torch.zeros(2, 1, 96, 96)
    mask[:, :, 20:50, 20:50] = 1.0
    mixed = torch.tensor([True, False])
    outputs = model.training_outputs(images, anomalous, mixed)
    losses = PcsnetLoss()(outputs, model.radius, mask, mixed)
    losses["loss"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.cas.parameters())
    assert all(p.grad is not None for p in model.descriptor.parameters())
    assert model.radius.grad is not None
    assert all(not p.requires_grad and p.grad is None for p in model.feature_extractor.parameters())


@pytest.mark.parametrize("reduce_channels", [False, True])
def test_training_views_match_separate_computation(reduce_channels: bool) -> None:
    """The shared backbone pass and reused mixed view give what three separate passes give."""
    model, images = _initialised_model((96, 96), reduce_channels=reduce_channels)
    model.train()
    anomalous = torch.rand_like(images)
    mixed = torch.tensor([False, True])
    dropout_state = model.cas.classifier[2].get_extra_state()  # the CAS dropout draws from its own generator
    outputs = model.training_outputs(images, anomalous, mixed)
    mixed_images = torch.where(mixed.view(-1, 1, 1, 1), anomalous, images)
    model.cas.classifier[2].set_extra_state(dropout_state)
    descriptor = model.describe(mixed_images)
    nearest = torch.topk(model.memory.distances(descriptor), 200, dim=-1, largest=False).values
    grid_scores = model._segment(descriptor, nearest)
    expected = torch.nn.functional.interpolate(grid_scores, size=(96, 96), mode="bilinear", align_corners=True)
    assert torch.allclose(outputs.mixed_nearest, nearest[..., :3], atol=1e-4)
    assert torch.allclose(outputs.segmentation, expected, atol=1e-4)


def test_wrong_input_size_after_training_is_a_clear_error() -> None:
    model, _ = _initialised_model((96, 96))
    model.eval()
    with pytest.raises(ValueError, match="size used in training"):
        model(torch.rand(1, 3, 128, 128))
    with pytest.raises(ValueError, match=r"Expected images of shape"):
        model(torch.rand(1, 1, 96, 96))


def test_too_small_grid_for_the_prior_is_a_clear_error() -> None:
    model = PcsnetModel(backbone="resnet18", pre_trained=False)
    with pytest.raises(ValueError, match="prior_channels"):
        model.initialize_prototypes(model.describe(torch.rand(1, 3, 32, 32)).sum(0), 1)


def test_uninitialised_model_refuses_inference() -> None:
    model = PcsnetModel(backbone="resnet18", pre_trained=False).eval()
    with pytest.raises(RuntimeError, match="not initialised"):
        model(torch.rand(1, 3, 96, 96))
