"""Each PCSNet loss term behaves as the paper describes."""

import pytest
import torch

from pcsnet_anomalib.models.pcsnet.loss import (
    PcsnetLoss,
    anomalous_separation_loss,
    disparity_classification_loss,
    normal_compactness_loss,
    official_anomalous_separation_loss,
)
from pcsnet_anomalib.models.pcsnet.torch_model import PcsnetTrainingOutput

NU = 1e-3


def test_normal_term_is_zero_inside_the_radius_and_grows_outside() -> None:
    radius = torch.tensor([0.5])
    inside = torch.full((2, 16, 3), 0.2)  # 0.2 < r^2 = 0.25
    assert normal_compactness_loss(inside, radius, NU) == 0
    outside = torch.full((2, 16, 3), 0.45)
    assert normal_compactness_loss(outside, radius, NU) == pytest.approx((0.45 - 0.25) / NU)


def test_anomalous_term_repels_only_masked_positions_inside_the_margin() -> None:
    radius = torch.tensor([0.0])
    nearest = torch.full((1, 4, 3), 0.01)  # well inside (r + 0.2)^2 = 0.04
    nearest[0, 1] = 1.0  # far away: no penalty
    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    loss = anomalous_separation_loss(nearest, mask, radius, alpha=0.2, nu=NU)
    assert loss == pytest.approx((0.04 - 0.01) / 2 / NU, rel=1e-5)
    assert anomalous_separation_loss(nearest, torch.zeros(1, 4), radius, 0.2, NU) == 0
    moved = nearest.clone()
    moved[0, 2:] = 0.0  # unmasked positions do not matter
    assert anomalous_separation_loss(moved, mask, radius, 0.2, NU) == loss


def test_official_anomalous_term_takes_minima_along_the_grid_width() -> None:
    """Reproduces the official code: masked-out positions become 0 and dominate the 'nearest'."""
    distances = torch.full((1, 4, 4), 1.0)  # 2x2 grid, 4 prototypes, all far
    mask = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])
    loss = official_anomalous_separation_loss(distances, mask, (2, 2), torch.tensor([0.0]), 0.2, NU, n_nearest=2)
    # each (prototype, row) keeps [1.0, 0.0] -> relu(0.04 - 1) = 0 and relu(0.04 - 0) = 0.04
    assert loss == pytest.approx(0.02 / NU)
    paper = anomalous_separation_loss(
        distances.topk(2, largest=False).values, mask.flatten(1), torch.tensor([0.0]), 0.2, NU
    )
    assert paper == 0  # the paper's term: far features are not penalised


def test_disparity_term_ranks_anomalous_images_above_normal_ones() -> None:
    low = torch.full((1, 64, 3), 0.1)
    high = torch.full((1, 64, 3), 2.0)
    target = torch.tensor([False, True])
    right = disparity_classification_loss(torch.cat([low, high]), target, top_k=50)
    wrong = disparity_classification_loss(torch.cat([high, low]), target, top_k=50)
    assert right < wrong
    assert right == pytest.approx(-torch.log_softmax(torch.tensor([0.1, 2.0]), 0)[1].item(), rel=1e-5)
    scores = torch.cat([low, low]).requires_grad_()
    disparity_classification_loss(scores, target, top_k=50).backward()
    assert scores.grad[1].sum() < 0 < scores.grad[0].sum()  # descent raises the anomalous image's score


def test_disparity_score_uses_the_largest_distances_only() -> None:
    nearest = torch.zeros(2, 100, 1)
    nearest[1, :5] = 10.0  # a small, strong anomaly
    loss_top5 = disparity_classification_loss(nearest, torch.tensor([False, True]), top_k=5)
    loss_all = disparity_classification_loss(nearest, torch.tensor([False, True]), top_k=100)
    assert loss_top5 < loss_all


def test_total_uses_the_paper_weights() -> None:
    outputs = PcsnetTrainingOutput(
        normal_nearest=torch.full((2, 4, 3), 0.5),
        anomalous_nearest=torch.full((2, 4, 3), 0.01),
        anomalous_distances=None,
        mixed_nearest=torch.rand(2, 4, 3),
        segmentation=torch.rand(2, 1, 8, 8),
        grid_size=(2, 2),
    )
    mask = torch.ones(2, 1, 8, 8)
    terms = PcsnetLoss()(outputs, torch.tensor([0.0]), mask, torch.tensor([True, False]))
    expected = terms["normal"] + terms["anomalous"] + 50 * terms["pdc"] + 40 * terms["segmentation"]
    assert torch.allclose(terms["loss"], expected)
    mixed_mask = mask * torch.tensor([1.0, 0.0]).view(-1, 1, 1, 1)
    assert torch.allclose(terms["segmentation"], torch.nn.functional.mse_loss(outputs.segmentation, mixed_mask))


def test_official_switch_requires_the_full_distances() -> None:
    outputs = PcsnetTrainingOutput(
        torch.ones(1, 4, 3), torch.ones(1, 4, 3), None, torch.ones(1, 4, 3), torch.zeros(1, 1, 4, 4), (2, 2)
    )
    with pytest.raises(ValueError, match="keep_anomalous_distances"):
        PcsnetLoss(official_anomalous_term=True)(
            outputs, torch.tensor([0.0]), torch.ones(1, 1, 4, 4), torch.tensor([True])
        )
