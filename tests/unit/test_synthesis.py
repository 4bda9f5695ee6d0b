"""Unit tests of the patch-exchange pseudo-anomaly synthesis and its presets."""

from __future__ import annotations

import dataclasses
import time

import cv2
import numpy as np
import pytest
import torch

from pcsnet_anomalib.models.pcsnet import (
    PatchExchange,
    PatchExchangeConfig,
    available_presets,
    load_preset,
    object_mask,
    preset_for_datamodule,
)

BACKGROUND = 200.0 / 255.0  # bottle-like bright background


def coordinate_image(height: int, width: int, scale: float = 1.0) -> torch.Tensor:
    """(3, H, W) image whose channels encode (y, x, 0) so the origin of every pixel can be decoded."""
    ys = torch.arange(height, dtype=torch.float32)[:, None].expand(height, width) / height
    xs = torch.arange(width, dtype=torch.float32)[None, :].expand(height, width) / width
    return torch.stack([ys, xs, torch.zeros_like(ys)]) * scale


def decode(values: torch.Tensor, height: int, width: int, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of ``coordinate_image`` for (3, N) pixel values."""
    return (values[0] / scale * height).round().long(), (values[1] / scale * width).round().long()


def object_on_background(height: int, width: int, box: tuple[int, int, int, int]) -> torch.Tensor:
    """(3, H, W) image: uniform bright background, dark coordinate-coded object in ``box`` = (y0, y1, x0, x1)."""
    image = torch.full((3, height, width), BACKGROUND)
    y0, y1, x0, x1 = box
    image[:, y0:y1, x0:x1] = coordinate_image(height, width, scale=0.4)[:, y0:y1, x0:x1]
    return image


def assert_exact_mask(images: torch.Tensor, augmented: torch.Tensor, mask: torch.Tensor) -> None:
    assert mask.shape == (images.shape[0], 1, *images.shape[-2:])
    assert mask.dtype == images.dtype
    assert mask.device == images.device
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(mask[:, 0].bool(), (augmented != images).any(dim=1))


CONFIGS = {
    "default": PatchExchangeConfig(),
    "bottle": load_preset("mvtec_ad/bottle"),
    "hazelnut_multi": load_preset("mvtec_ad/hazelnut"),
    "uniform_width_other_image": PatchExchangeConfig(gamma_params=None, same_image=False, num_patches=3),
}


@pytest.mark.parametrize("config_name", sorted(CONFIGS))
@pytest.mark.parametrize(("batch", "channels", "height", "width"), [(2, 3, 32, 32), (3, 1, 24, 40), (1, 3, 57, 19)])
def test_mask_is_exactly_the_changed_pixels(config_name: str, batch: int, channels: int, height: int, width: int):
    changed_total = 0
    for seed in range(5):
        images = torch.rand(batch, channels, height, width, generator=torch.Generator().manual_seed(seed))
        original = images.clone()
        augmented, mask = PatchExchange(CONFIGS[config_name], seed=seed)(images)
        assert torch.equal(images, original), "input was modified in place"
        assert augmented.shape == images.shape
        assert augmented.dtype == images.dtype
        assert_exact_mask(images, augmented, mask)
        assert augmented.min() >= 0.0
        assert augmented.max() <= 1.0
        changed_total += int(mask.sum())
    assert changed_total > 0, "synthesis never changed anything"


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64])
def test_dtype_preserved(dtype: torch.dtype):
    images = torch.rand(2, 3, 32, 32).to(dtype)
    augmented, mask = PatchExchange(load_preset("mvtec_ad/bottle"), seed=1)(images)
    assert augmented.dtype == dtype
    assert_exact_mask(images, augmented, mask)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_on_cuda_device():
    images = torch.rand(2, 3, 64, 64, device="cuda")
    augmented, mask = PatchExchange(load_preset("mvtec_ad/bottle"), seed=0)(images)
    assert augmented.device == images.device
    assert_exact_mask(images, augmented, mask)


def test_single_patch_is_a_shifted_copy_within_width_bounds():
    height, width = 48, 64
    config = PatchExchangeConfig(width_bounds=((0.05, 0.2), (0.1, 0.3)))
    images = coordinate_image(height, width)[None]
    for seed in range(20):
        augmented, mask = PatchExchange(config, seed=seed)(images)
        ys, xs = torch.nonzero(mask[0, 0], as_tuple=True)
        if ys.numel() == 0:
            continue  # destination happened to equal the source box
        src_y, src_x = decode(augmented[0][:, ys, xs], height, width)
        assert len(set((src_y - ys).tolist())) == 1, "pasted pixels do not share one vertical shift"
        assert len(set((src_x - xs).tolist())) == 1, "pasted pixels do not share one horizontal shift"
        assert int(ys.max() - ys.min()) + 1 <= 2 * round(0.2 * height)
        assert int(xs.max() - xs.min()) + 1 <= 2 * round(0.3 * width)


def test_other_image_source_uses_previous_image_in_batch():
    batch, height, width = 3, 32, 32
    images = coordinate_image(height, width)[None].repeat(batch, 1, 1, 1)
    images[:, 2] = torch.arange(1, batch + 1, dtype=torch.float32)[:, None, None] / 4  # image id in channel 2
    augmented, mask = PatchExchange(PatchExchangeConfig(same_image=False), seed=3)(images)
    assert_exact_mask(images, augmented, mask)
    for dest in range(batch):
        changed = mask[dest, 0].bool()
        assert changed.any()
        expected_id = images[(dest - 1) % batch, 2, 0, 0]
        assert torch.all(augmented[dest, 2][changed] == expected_id)


def test_other_image_source_falls_back_to_same_image_for_batch_of_one():
    images = coordinate_image(32, 32)[None]
    images[:, 2] = 0.5
    augmented, mask = PatchExchange(PatchExchangeConfig(same_image=False), seed=0)(images)
    assert mask.sum() > 0
    assert torch.all(augmented[0, 2] == 0.5)


def test_same_seed_same_output_and_different_seed_different_output():
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    config = load_preset("mvtec_ad/hazelnut")
    first, first_mask = PatchExchange(config, seed=7)(images)
    second, second_mask = PatchExchange(config, seed=7)(images)
    assert torch.equal(first, second)
    assert torch.equal(first_mask, second_mask)
    others = [PatchExchange(config, seed=seed)(images)[0] for seed in (8, 9, 10)]
    assert any(not torch.equal(first, other) for other in others)
    continued = PatchExchange(config, seed=7)
    continued(images)
    expected_next = continued(images)[0]
    resumed = PatchExchange(seed=123)  # another seed and no preset: the state dict brings both
    resumed.load_state_dict(PatchExchange(config, seed=7).state_dict())
    assert resumed.config == config
    assert torch.equal(resumed(images)[0], first)
    assert torch.equal(resumed(images)[0], expected_next)


def test_state_dict_continues_the_stream_and_the_counters():
    """A checkpoint taken mid-stream resumes the same pseudo-anomalies: no random state is kept elsewhere."""
    images = torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(1))
    synth = PatchExchange("mvtec_ad/bottle", seed=4)
    synth(images)
    state = synth.state_dict()
    later = [synth(images)[0] for _ in range(2)]
    resumed = PatchExchange(seed=0)
    resumed.load_state_dict(state)
    assert resumed.preset_name == "mvtec_ad/bottle"
    assert resumed.total_patches == 2
    assert all(torch.equal(resumed(images)[0], expected) for expected in later)


def test_global_rng_does_not_change_the_output():
    images = torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(2))
    outputs = []
    for global_seed in (0, 1):
        torch.manual_seed(global_seed)
        np.random.seed(global_seed)  # noqa: NPY002  (the legacy global numpy RNG must not matter either)
        outputs.append(PatchExchange("default", seed=3)(images)[0])
    assert torch.equal(outputs[0], outputs[1])


def test_without_a_preset_synthesis_says_what_to_do():
    with pytest.raises(RuntimeError, match="no preset yet: call use_preset"):
        PatchExchange()(torch.rand(1, 3, 32, 32))


def test_background_skipping_changes_only_object_pixels():
    height, width = 64, 64
    images = torch.stack(
        [object_on_background(height, width, (10, 50, 14, 40)), object_on_background(height, width, (5, 30, 30, 60))]
    )
    obj = object_mask(images, (200.0, 60.0))
    config = PatchExchangeConfig(background=(200.0, 60.0), min_object_pct=0.7, num_patches=3)
    synth = PatchExchange(config, seed=0)
    changed_total = 0
    for _ in range(10):
        augmented, mask = synth(images)
        assert_exact_mask(images, augmented, mask)
        for b in range(images.shape[0]):
            ys, xs = torch.nonzero(mask[b, 0], as_tuple=True)
            changed_total += ys.numel()
            values = augmented[b][:, ys, xs]
            pasted_object = (values != BACKGROUND).any(dim=0)
            src_y, src_x = decode(values, height, width, scale=0.4)
            src_is_object = pasted_object & obj[b, src_y.clamp(0, height - 1), src_x.clamp(0, width - 1)]
            assert torch.all(obj[b, ys, xs] | src_is_object), "a pixel outside both object masks changed"
    assert changed_total > 0
    assert synth.failed_patches < synth.total_patches


def test_all_background_image_is_left_unchanged_and_counted_as_failed():
    images = torch.full((2, 3, 64, 64), BACKGROUND)
    synth = PatchExchange(load_preset("mvtec_ad/bottle"), seed=0)
    start = time.perf_counter()
    augmented, mask = synth(images)
    assert time.perf_counter() - start < 5.0
    assert torch.equal(augmented, images)
    assert mask.sum() == 0
    assert synth.total_patches == 2
    assert synth.failed_patches == 2
    synth(images)
    assert synth.failed_patches == 4, "failed_patches must be cumulative"


def test_object_too_thin_for_min_object_pct_fails():
    # Half-widths >= 13 px give boxes >= 26 px wide; an 8 px wide full-height stripe fills at most 8/26 < 70% of one,
    # although boxes often contain some object and a destination overlapping it exists.
    images = object_on_background(64, 64, (0, 64, 28, 36))[None]
    config = PatchExchangeConfig(width_bounds=((0.2, 0.4), (0.2, 0.4)), background=(200.0, 60.0), min_object_pct=0.7)
    synth = PatchExchange(config, seed=0)
    for _ in range(5):
        augmented, _ = synth(images)
        assert torch.equal(augmented, images)
    assert synth.failed_patches == synth.total_patches == 5
    relaxed = PatchExchange(dataclasses.replace(config, min_object_pct=0.1), seed=0)
    assert any(relaxed(images)[1].sum() > 0 for _ in range(5)), "the stripe should be usable with a lower threshold"


def test_destination_without_object_overlap_fails():
    # Image 0 has no object: as destination (source = image 1) no overlap is possible; as source nothing qualifies.
    images = torch.stack([torch.full((3, 64, 64), BACKGROUND), object_on_background(64, 64, (8, 56, 8, 56))])
    config = PatchExchangeConfig(background=(200.0, 60.0), min_object_pct=0.5, min_overlap_pct=0.0, same_image=False)
    synth = PatchExchange(config, seed=0)
    augmented, mask = synth(images)
    assert torch.equal(augmented, images)
    assert mask.sum() == 0
    assert synth.failed_patches == 2


def test_num_patches_first_always_others_by_coin_flip():
    synth = PatchExchange(PatchExchangeConfig(num_patches=3), seed=0)
    images = torch.rand(4, 3, 32, 32)
    for _ in range(25):
        synth(images)
    assert synth.failed_patches == 0
    per_image = synth.total_patches / 100
    assert 1.0 < per_image < 3.0
    assert abs(per_image - 2.0) < 0.3  # expectation 1 + 0.5 + 0.5


def test_object_mask_matches_opencv_threshold_and_median():
    rng = np.random.default_rng(0)
    low = torch.from_numpy(rng.random((2, 3, 5, 6), dtype=np.float32))
    images = torch.nn.functional.interpolate(low, size=(40, 50), mode="bilinear")  # blobs, some touching borders
    images = (images + torch.from_numpy(rng.normal(0.0, 0.08, images.shape).astype(np.float32))).clamp(0, 1)
    for background in ((200.0, 60.0), (128.0, 25.0)):
        ours = object_mask(images, background).numpy()
        for b in range(images.shape[0]):
            brightness = images[b].mean(dim=0).numpy() * 255.0
            raw = (np.abs(brightness - background[0]) > background[1]).astype(np.uint8)
            reference = cv2.medianBlur(raw, 7).astype(bool)
            assert 0.2 < raw.mean() < 0.8
            assert (raw.astype(bool) != reference).any(), "test image has no grain for the median to remove"
            np.testing.assert_array_equal(ours[b], reference)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"width_bounds": ((0.0, 0.4), (0.03, 0.4))}, r"\(0, 0.5\]"),
        ({"width_bounds": ((0.03, 0.6), (0.03, 0.4))}, r"\(0, 0.5\]"),
        ({"width_bounds": ((0.3, 0.1), (0.03, 0.4))}, "min 0.3 > max 0.1"),
        ({"width_bounds": ((0.03, 0.4),)}, "two"),
        ({"num_patches": 0}, "num_patches"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"gamma_params": (2.0, -1.0, 0.0)}, "gamma_params"),
        ({"min_object_pct": 1.5}, "min_object_pct"),
        ({"min_overlap_pct": -0.1}, "min_overlap_pct"),
        ({"background": (300.0, 60.0)}, "background"),
        ({"background": (200.0,)}, "background"),
        ({"same_image": "yes"}, "same_image"),
    ],
)
def test_config_rejects_invalid_values(changes: dict, message: str):
    with pytest.raises(ValueError, match=message):
        PatchExchangeConfig(**changes)


def test_config_normalises_lists_to_tuples():
    config = PatchExchangeConfig(width_bounds=[[0.1, 0.2], [0.1, 0.3]], gamma_params=[2, 0.05, 0.03], background=[1, 2])
    assert config.width_bounds == ((0.1, 0.2), (0.1, 0.3))
    assert config.gamma_params == (2.0, 0.05, 0.03)
    assert config.background == (1.0, 2.0)
    hash(config)


def test_rejects_non_batch_input():
    with pytest.raises(ValueError, match="B, C, H, W"):
        PatchExchange("default")(torch.rand(3, 32, 32))
    with pytest.raises(ValueError, match="float"):
        PatchExchange("default")(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))


def test_every_preset_loads_and_validates():
    names = available_presets()
    assert "default" in names
    datasets = {name.split("/")[0] for name in names if "/" in name}
    assert datasets == {"mvtec_ad", "mpdd", "btad", "mvtec_3d"}
    assert sum(name.startswith("mvtec_ad/") for name in names) == 15
    assert sum(name.startswith("mpdd/") for name in names) == 6
    assert sum(name.startswith("btad/") for name in names) == 3
    assert sum(name.startswith("mvtec_3d/") for name in names) == 10
    for name in names:
        assert isinstance(load_preset(name), PatchExchangeConfig)


def test_default_preset_matches_config_defaults():
    assert load_preset("default") == PatchExchangeConfig()


def test_presets_follow_official_tables():
    bottle = load_preset("mvtec_ad/bottle")
    assert bottle.background == (200.0, 60.0)
    assert bottle.min_object_pct == 0.7
    assert bottle.gamma_params == (2.0, 0.05, 0.03)
    assert bottle.same_image
    assert load_preset("mvtec_ad/hazelnut").width_bounds == ((0.01, 0.05), (0.01, 0.1))
    assert load_preset("mvtec_ad/metal_nut").background == (20.0, 20.0)
    assert load_preset("mvtec_ad/carpet").background is None
    assert load_preset("mpdd/bracket_white").background == (130.0, 60.0)
    assert load_preset("btad/01").num_patches == 3
    assert load_preset("btad/03").num_patches == 1
    assert load_preset("mvtec_3d/potato").width_bounds == ((0.01, 0.05), (0.01, 0.05))
    rotation = {name for name in available_presets() if load_preset(name).rotation_sensitive}
    assert rotation == {"mvtec_ad/grid", "mvtec_ad/screw", "mpdd/bracket_black", "mpdd/bracket_brown", "mpdd/tubes"}


def test_unknown_dataset_names_the_valid_datasets():
    with pytest.raises(ValueError, match="mvtec_ad") as info:
        load_preset("visa/candle")
    assert "mpdd" in str(info.value)
    assert "btad" in str(info.value)


def test_unknown_category_names_the_valid_categories():
    with pytest.raises(ValueError, match="bottle") as info:
        load_preset("mvtec_ad/candle")
    assert "zipper" in str(info.value)
    assert "default" in str(info.value)


@pytest.mark.parametrize("name", ["mvtec_ad", "mvtec_ad/", "bottle"])
def test_malformed_preset_name(name: str):
    with pytest.raises(ValueError, match="<dataset>/<category>"):
        load_preset(name)


def test_loaded_presets_are_independent_values():
    first = load_preset("mvtec_ad/bottle")
    assert dataclasses.replace(first, num_patches=5).num_patches == 5
    assert load_preset("mvtec_ad/bottle").num_patches == 1


def test_preset_for_fake_datamodule():
    fake_class = type("MVTecAD", (), {})
    fake = fake_class()
    fake.category = "screw"
    name = preset_for_datamodule(fake)
    assert name == "mvtec_ad/screw"
    assert load_preset(name).rotation_sensitive


def test_preset_for_anomalib_datamodules():
    from anomalib.data import MPDD, Folder, MVTec3D, MVTecAD
    from anomalib.data.datamodules.image.btech import BTech

    assert preset_for_datamodule(MVTecAD(root="/nonexistent", category="bottle")) == "mvtec_ad/bottle"
    assert preset_for_datamodule(MPDD(root="/nonexistent", category="tubes")) == "mpdd/tubes"
    assert preset_for_datamodule(BTech(root="/nonexistent", category="02")) == "btad/02"
    assert preset_for_datamodule(MVTec3D(root="/nonexistent", category="bagel")) == "mvtec_3d/bagel"
    assert preset_for_datamodule(Folder(name="x", root="/nonexistent", normal_dir="good")) is None


def test_preset_for_unknown_class_or_category_is_none():
    unknown_class = type("Visa", (), {"category": "candle"})()
    assert preset_for_datamodule(unknown_class) is None
    unknown_category = type("MVTecAD", (), {"category": "candle"})()
    assert preset_for_datamodule(unknown_category) is None
    no_category = type("MPDD", (), {})()
    assert preset_for_datamodule(no_category) is None
