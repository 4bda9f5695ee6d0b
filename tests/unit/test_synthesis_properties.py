"""Property tests: for any image size and content the synthesis mask marks exactly the changed pixels."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pcsnet_anomalib.models.pcsnet import PatchExchange, PatchExchangeConfig, load_preset

CONFIGS = [
    PatchExchangeConfig(),
    PatchExchangeConfig(gamma_params=None, num_patches=3, same_image=False),
    load_preset("mvtec_ad/bottle"),
    load_preset("mvtec_ad/hazelnut"),
    load_preset("mvtec_ad/metal_nut"),
    load_preset("mpdd/bracket_white"),
]


def make_images(kind: str, seed: int, shape: tuple[int, int, int, int], dtype: torch.dtype) -> torch.Tensor:
    """Images in [0, 1] of a given kind: noise, a constant, few levels, or an object on a bright background."""
    rng = np.random.default_rng(seed)
    batch, channels, height, width = shape
    if kind == "noise":
        array = rng.random(shape)
    elif kind == "constant":
        array = np.full(shape, rng.random())
    elif kind == "levels":
        array = rng.integers(0, 3, size=shape) / 2.0
    else:  # object on background
        array = np.full(shape, 200.0 / 255.0)
        y0, x0 = rng.integers(0, height // 2), rng.integers(0, width // 2)
        y1, x1 = rng.integers(y0 + 1, height + 1), rng.integers(x0 + 1, width + 1)
        array[:, :, y0:y1, x0:x1] = rng.random((batch, channels, y1 - y0, x1 - x0)) * 0.4
    return torch.from_numpy(array).to(dtype)


@settings(max_examples=30, deadline=None, derandomize=True)
@given(
    height=st.integers(8, 48),
    width=st.integers(8, 48),
    batch=st.integers(1, 3),
    channels=st.sampled_from([1, 3]),
    kind=st.sampled_from(["noise", "constant", "levels", "object"]),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    config_index=st.integers(0, len(CONFIGS) - 1),
    seed=st.integers(0, 2**31 - 1),
)
def test_mask_marks_exactly_changed_pixels(
    height: int,
    width: int,
    batch: int,
    channels: int,
    kind: str,
    dtype: torch.dtype,
    config_index: int,
    seed: int,
):
    images = make_images(kind, seed, (batch, channels, height, width), dtype)
    original = images.clone()
    synth = PatchExchange(CONFIGS[config_index], seed=seed)
    augmented, mask = synth(images)

    assert torch.equal(images, original)
    assert augmented.shape == images.shape
    assert augmented.dtype == dtype
    assert mask.shape == (batch, 1, height, width)
    assert mask.dtype == dtype
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(mask[:, 0].bool(), (augmented != images).any(dim=1))
    assert augmented.min() >= 0.0
    assert augmented.max() <= 1.0
    assert set(augmented.unique().tolist()) <= set(images.unique().tolist()), "synthesis invented pixel values"
    assert 0 <= synth.failed_patches <= synth.total_patches
    assert batch <= synth.total_patches <= batch * CONFIGS[config_index].num_patches
