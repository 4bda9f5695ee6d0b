"""Property tests of the anomaly-map post-processing: the map generator and anomalib's normalisation of its scores."""

import pytest
import torch
from anomalib.data import InferenceBatch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pcsnet_anomalib import Pcsnet
from pcsnet_anomalib.models.pcsnet.anomaly_map import AnomalyMapGenerator
from tests.conftest import TINY_MODEL

FINITE = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, width=32)


@pytest.mark.parametrize(("sigma", "min_size"), [(4.0, 17), (1.0, 5), (0.0, 1)])
def test_the_smallest_map_the_blur_takes_works_and_a_smaller_one_is_refused(sigma: float, min_size: int) -> None:
    generator = AnomalyMapGenerator(sigma=sigma)
    assert generator.min_size == min_size
    generator.check_size((min_size, 40))
    assert generator(torch.rand(1, 1, 3, 3), (min_size, 40)).shape == (1, 1, min_size, 40)
    if min_size > 1:
        with pytest.raises(ValueError, match=rf"too small for the anomaly-map blur .*at least {min_size} px"):
            generator.check_size((40, min_size - 1))


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    grid=st.tuples(st.integers(1, 9), st.integers(1, 9)),
    image_size=st.tuples(st.integers(17, 48), st.integers(17, 48)),  # the sigma-4 blur takes 17 px and more
    sigma=st.sampled_from([0.0, 0.5, 1.0, 4.0]),
    data=st.data(),
)
def test_map_is_finite_sized_and_a_convex_mix_of_the_scores(
    grid: tuple[int, int], image_size: tuple[int, int], sigma: float, data: st.DataObject
) -> None:
    batch = data.draw(st.integers(1, 3))
    scores = torch.from_numpy(data.draw(arrays("float32", (batch, 1, *grid), elements=FINITE)))
    generator = AnomalyMapGenerator(sigma=sigma)
    anomaly_map = generator(scores, image_size)

    assert anomaly_map.shape == (batch, 1, *image_size)
    assert torch.isfinite(anomaly_map).all()
    tolerance = 1e-4 * (1 + scores.abs().amax())
    # Bilinear resizing and a normalised blur average scores, so the map stays within each image's score range.
    assert (anomaly_map.amax(dim=(1, 2, 3)) <= scores.amax(dim=(1, 2, 3)) + tolerance).all()
    assert (anomaly_map.amin(dim=(1, 2, 3)) >= scores.amin(dim=(1, 2, 3)) - tolerance).all()
    shift = data.draw(st.floats(-100, 100, allow_nan=False))
    assert torch.allclose(generator(scores + shift, image_size), anomaly_map + shift, atol=float(tolerance) + 1e-3)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(
    raw=st.lists(st.floats(-50, 50, allow_nan=False, width=32), min_size=2, max_size=12),
    low=st.floats(-20, 20, allow_nan=False, width=32),
    spread=st.floats(0, 30, allow_nan=False, width=32),
    threshold_at=st.floats(0, 1),
)
def test_normalised_pred_score_is_monotone_in_the_map_maximum(
    raw: list[float], low: float, spread: float, threshold_at: float
) -> None:
    """Pcsnet's pred_score is the map's maximum; its post-processor must keep the order of those maxima."""
    post_processor = Pcsnet(**TINY_MODEL).post_processor
    post_processor.image_min.fill_(low)
    post_processor.image_max.fill_(low + spread)
    post_processor._image_threshold.fill_(low + threshold_at * spread)
    post_processor.pixel_min.fill_(low)
    post_processor.pixel_max.fill_(low + spread)
    post_processor._pixel_threshold.fill_(low + threshold_at * spread)

    maxima = torch.tensor(sorted(raw))
    anomaly_map = torch.zeros(len(raw), 1, 4, 4)
    anomaly_map[:, 0, 1, 2] = maxima  # the hot pixel; everything else stays below it
    anomaly_map = torch.minimum(anomaly_map, maxima.view(-1, 1, 1, 1))
    output = post_processor(InferenceBatch(pred_score=anomaly_map.amax(dim=(1, 2, 3)), anomaly_map=anomaly_map))

    scores = output.pred_score
    assert torch.isfinite(scores).all()
    assert ((scores >= 0) & (scores <= 1)).all()
    assert (scores[1:] >= scores[:-1]).all(), f"not monotone: raw {maxima.tolist()} -> {scores.tolist()}"
    assert output.anomaly_map.shape == anomaly_map.shape
    assert torch.isfinite(output.anomaly_map).all()
