"""Threshold choice of ThresholdCalibration: the two operating points and the argument checks."""

import itertools

import pytest
import torch

from pcsnet_anomalib.callbacks.calibration import (
    ThresholdCalibration,
    f1_optimal_threshold,
    false_rejection_threshold,
)


def _f1(threshold: float, scores: torch.Tensor, labels: torch.Tensor, anomaly_weight: float = 1.0) -> float:
    called = scores > threshold
    true_positives = float((called & labels).sum()) * anomaly_weight
    false_positives = float((called & ~labels).sum())
    return 2 * true_positives / (true_positives + false_positives + float(labels.sum()) * anomaly_weight)


def test_separated_classes_get_a_threshold_midway_in_the_gap() -> None:
    scores = torch.tensor([0.1, 0.3, 0.2, 0.9, 0.7, 1.5])
    labels = torch.tensor([0, 0, 0, 1, 1, 1]).bool()
    threshold = f1_optimal_threshold(scores, labels)
    assert threshold == pytest.approx(0.5)
    assert torch.equal(scores > threshold, labels)


@pytest.mark.parametrize("balanced", [False, True])
def test_the_threshold_maximises_f1_over_every_possible_cut(balanced: bool) -> None:
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        labels = torch.rand(30, generator=generator) < 0.7
        labels[:2] = torch.tensor([True, False])
        scores = torch.randn(30, generator=generator) + 1.2 * labels  # overlapping classes
        scores[5] = scores[6]  # a tie that no threshold can split
        weight = float((~labels).sum() / labels.sum()) if balanced else 1.0
        threshold = f1_optimal_threshold(scores, labels, balanced=balanced)
        candidates = [float(scores.min()) - 1, *scores.tolist()]
        best = max(_f1(value, scores, labels, weight) for value in candidates)
        assert _f1(threshold, scores, labels, weight) == pytest.approx(best)


def test_balancing_stops_many_pseudo_anomalies_from_outvoting_the_normal_images() -> None:
    """Four normal scores against 16 overlapping anomalies: plain F1 calls everything anomalous."""
    normal = torch.tensor([1.0, 2.0, 3.0, 4.0])
    anomalous = torch.tensor([0.5, 1.5, 2.5, 3.5] + [5.0] * 12)
    scores = torch.cat([normal, anomalous])
    labels = torch.arange(20) >= 4
    assert f1_optimal_threshold(scores, labels) < normal.min()
    balanced = f1_optimal_threshold(scores, labels, balanced=True)
    assert normal.max() < balanced < 5.0


@pytest.mark.parametrize(
    ("scores", "labels", "message"),
    [
        ([0.1, 0.2], [0, 0], "needs normal and anomalous"),
        ([0.1, 0.2], [1, 1], "needs normal and anomalous"),
        ([0.1, float("nan")], [0, 1], "NaN"),
        ([0.1, 0.2, 0.3], [0, 1], "differ in size"),
    ],
)
def test_f1_threshold_refuses_unusable_scores(scores: list[float], labels: list[int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        f1_optimal_threshold(torch.tensor(scores), torch.tensor(labels))


def test_false_rejection_threshold_rejects_at_most_the_target_rate() -> None:
    generator = torch.Generator().manual_seed(1)
    for count, rate in itertools.product([1, 3, 8, 50, 200], [0.0, 0.01, 0.05, 0.1, 0.5]):
        scores = torch.randn(count, generator=generator)
        threshold = false_rejection_threshold(scores, rate)
        allowed = int(rate * count + 1e-9)
        assert int((scores > threshold).sum()) <= allowed
        # the lowest such threshold: one step lower rejects more than the rate allows
        lower = scores[scores < threshold]
        if lower.numel():
            assert int((scores > lower.max()).sum()) > allowed


def test_a_rate_finer_than_the_normal_images_allow_takes_the_highest_normal_score() -> None:
    scores = torch.tensor([0.3, 0.9, 0.5, 0.7])
    assert false_rejection_threshold(scores, 0.01) == pytest.approx(0.9)
    assert false_rejection_threshold(scores, 0.25) == pytest.approx(0.7)


@pytest.mark.parametrize("rate", [-0.1, 1.0])
def test_false_rejection_rate_outside_zero_one_is_refused(rate: float) -> None:
    with pytest.raises(ValueError, match=r"in \[0, 1\)"):
        false_rejection_threshold(torch.tensor([0.1, 0.2]), rate)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"operating_point": "youden"}, "operating_point must be one of 'f1', 'false_rejection_rate'"),
        ({"false_rejection_rate": 1.5}, "false_rejection_rate must be in"),
        ({"folds": 1}, "folds must be at least 2"),
        ({"anomalies_per_image": 0}, "anomalies_per_image must be at least 1"),
        ({"pseudo_anomalies": "cutpaste"}, "pseudo_anomalies must be one of"),
    ],
)
def test_bad_calibration_arguments_fail_at_construction(arguments: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ThresholdCalibration(**arguments)  # type: ignore[arg-type]
