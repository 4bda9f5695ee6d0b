"""PFM/PEFM torch model against golden values derived from the spec (§3, §4, §5, §6, §15), not from the authors' code.

The position encoding's values and norm, the mapping networks' widths and parameter counts, the anomaly map's
formula, upsampling, fusion and score, the one-Adam / three-Adams equivalence, and where the position encoding
goes (inputs only, not the state dict, not the loss targets).
"""

import copy
import inspect
import math
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from pcsnet_anomalib.models.pfm import (
    AnomalyMapGenerator,
    FeatureMapping,
    Pefm,
    Pfm,
    PfmLoss,
    PfmModel,
    PfmTrainingOutput,
    level_error_map,
    position_encoding_2d,
)

TINY = {"source_backbone": "resnet18", "target_backbone": "resnet34", "pre_trained": False}


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Tiny tensors: one intra-op thread, so that a busy shared machine does not stall them (60 s for 0.3 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# (1) Position encoding, spec §4.


def test_position_encoding_golden_values_d8() -> None:
    pe = position_encoding_2d(8, 2, 2)  # D' = 4: channels 0-3 encode the column w, 4-7 the row h
    assert pe.shape == (8, 2, 2)
    for h in (0, 1):
        assert pe[0, h, 1].item() == pytest.approx(math.sin(1.0), abs=1e-7)
        assert pe[1, h, 1].item() == pytest.approx(math.cos(1.0), abs=1e-7)
        assert pe[2, h, 1].item() == pytest.approx(math.sin(10000**-0.5), abs=1e-7)
        assert pe[3, h, 1].item() == pytest.approx(math.cos(10000**-0.5), abs=1e-7)
    for w in (0, 1):
        assert pe[4, 1, w].item() == pytest.approx(math.sin(1.0), abs=1e-7)
        assert pe[6, 1, w].item() == pytest.approx(math.sin(10000**-0.5), abs=1e-7)
    # position 0: sin 0 = 0, cos 0 = 1 in both halves
    assert pe[:, 0, 0].tolist() == [0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0]


def test_position_encoding_follows_the_formula_on_a_non_square_grid() -> None:
    depth, height, width = 16, 3, 7
    pe = position_encoding_2d(depth, height, width).double()
    half = depth // 2
    expected = torch.empty(depth, height, width, dtype=torch.float64)
    for m in range(half // 2):
        frequency = 10000 ** (-4 * m / depth)
        for h in range(height):
            for w in range(width):
                expected[2 * m, h, w] = math.sin(w * frequency)  # first half: column index, unscaled
                expected[2 * m + 1, h, w] = math.cos(w * frequency)
                expected[half + 2 * m, h, w] = math.sin(h * frequency)  # second half: row index
                expected[half + 2 * m + 1, h, w] = math.cos(h * frequency)
    torch.testing.assert_close(pe, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("depth", [4, 64, 256])
def test_position_encoding_norm_is_sqrt_of_half_the_channels(depth: int) -> None:
    norms = position_encoding_2d(depth, 5, 9).norm(dim=0)
    torch.testing.assert_close(norms, torch.full((5, 9), math.sqrt(depth / 2)), rtol=1e-5, atol=0)


@pytest.mark.parametrize("depth", [2, 6, 10])
def test_position_encoding_needs_a_multiple_of_4_channels(depth: int) -> None:
    with pytest.raises(ValueError, match="multiple of 4"):
        position_encoding_2d(depth, 2, 2)
    with pytest.raises(ValueError, match="multiple of 4"):
        FeatureMapping(depth, 8, 4, position_encoding=True)
    FeatureMapping(depth, 8, 4, position_encoding=False)  # without the encoding any width is fine


# (2) Widths and parameter counts, spec §3.1 (ResNet34 -> ResNet50 widths).


@pytest.mark.parametrize(
    ("source", "target", "latent", "parameters"),
    [(64, 256, 200, 894_312), (128, 512, 400, 3_559_888), (256, 1024, 800, 14_204_832), (256, 1024, 900, 17_100_532)],
)
def test_parameter_count_per_level(source: int, target: int, latent: int, parameters: int) -> None:
    mapping = FeatureMapping(source, target, latent, position_encoding=False)
    assert sum(p.numel() for p in mapping.parameters()) == parameters


def _conv_widths(stack: nn.Module) -> list[tuple[int, int]]:
    return [(m.in_channels, m.out_channels) for m in stack.modules() if isinstance(m, nn.Conv2d)]


def test_channel_widths_of_the_level_3_mb_pfm_network() -> None:
    mapping = FeatureMapping(256, 1024, 900, position_encoding=False)  # spec §3.1's table, level 3
    assert _conv_widths(mapping.source_encoder) == [(256, 1028), (1028, 1800)]
    assert _conv_widths(mapping.shared) == [(1800, 900)]
    assert _conv_widths(mapping.target_decoder) == [(900, 1800), (1800, 1412), (1412, 1024)]
    assert _conv_widths(mapping.target_encoder) == [(1024, 1412), (1412, 1800)]
    assert _conv_widths(mapping.source_decoder) == [(900, 1800), (1800, 1028), (1028, 256)]
    # the shared layer and the decoders' last convs are plain: no BatchNorm or ReLU after them
    assert isinstance(mapping.shared, nn.Conv2d)
    assert isinstance(mapping.target_decoder[-1], nn.Conv2d)
    assert isinstance(mapping.source_decoder[-1], nn.Conv2d)
    batch_norms = [m for m in mapping.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(batch_norms) == 8  # two per encoder and decoder


def test_mapping_returns_target_mapped_to_source_first() -> None:
    mapping = FeatureMapping(8, 16, 4, position_encoding=False).eval()
    source_mapped, target_mapped = mapping(torch.randn(1, 8, 2, 2), torch.randn(1, 16, 2, 2))
    assert source_mapped.shape == (1, 8, 2, 2)  # T -> S, the authors' (xs_hat, xt_hat) order
    assert target_mapped.shape == (1, 16, 2, 2)


# (3) Anomaly map, spec §6.


def test_level_map_is_half_the_sum_of_both_directions_channel_sums() -> None:
    target = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1).expand(1, 3, 1, 2)
    target_mapped = torch.tensor([[0.0, 0.0], [0.0, 2.0], [0.0, 0.0]]).view(1, 3, 1, 2)  # e_T^2 sums: 1, 5
    source = torch.tensor([0.0, 1.0]).view(1, 2, 1, 1).expand(1, 2, 1, 2)
    source_mapped = torch.tensor([[3.0, 0.0], [1.0, 1.0]]).view(1, 2, 1, 2)  # e_S^2 sums: 9, 0
    level_map = level_error_map(target, target_mapped, source, source_mapped)
    assert level_map.shape == (1, 1, 1, 2)
    assert level_map.flatten().tolist() == [5.0, 2.5]  # (1 + 9) / 2, (5 + 0) / 2: a sum over channels, not a mean


def test_upsampling_is_bilinear_without_aligned_corners_and_levels_are_averaged() -> None:
    generator = AnomalyMapGenerator()
    # a 1x2 map [0, 1] to width 4, align_corners=False: samples at x = -0.25 (clamped), 0.25, 0.75, 1.25 (clamped)
    ramp = generator([torch.tensor([[[[0.0, 1.0]]]])], (1, 4))
    assert ramp.flatten().tolist() == [0.0, 0.25, 0.75, 1.0]  # align_corners=True would give thirds
    levels = [torch.full((2, 1, 4, 4), 1.0), torch.full((2, 1, 2, 2), 2.0), torch.full((2, 1, 1, 1), 6.0)]
    fused = generator(levels, (8, 8))
    assert fused.shape == (2, 1, 8, 8)
    torch.testing.assert_close(fused, torch.full((2, 1, 8, 8), 3.0))  # mean of 1, 2, 6: no product, no blur


def test_eval_forward_assembles_the_maps_and_takes_the_maximum_as_score() -> None:
    model = PfmModel(**TINY, latent_dims=(8, 8, 8), seed=0).eval()
    for mapping in model.mappings:  # non-trivial BatchNorm statistics
        for module in mapping.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
    images = torch.rand(2, 3, 48, 64)
    with torch.no_grad():
        output = model(images)
        source, target = model.extract_features(images)
        upsampled = []
        for mapping, s, t in zip(model.mappings, source, target, strict=True):
            s_hat, t_hat = mapping(s, t)
            level = ((s - s_hat) ** 2).sum(1, keepdim=True) / 2 + ((t - t_hat) ** 2).sum(1, keepdim=True) / 2
            upsampled.append(F.interpolate(level, size=(48, 64), mode="bilinear", align_corners=False))
    expected = sum(upsampled) / 3
    assert output.anomaly_map.shape == (2, 1, 48, 64)
    torch.testing.assert_close(output.anomaly_map, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(output.pred_score, output.anomaly_map.amax(dim=(1, 2, 3)), rtol=0, atol=0)
    assert output.anomaly_map.min() >= 0


# (4) One Adam with a group per level = three Adams, one per level (spec §5).


def _unit_features(batch: int, widths: list[int], size: int, generator: torch.Generator) -> list[torch.Tensor]:
    return [F.normalize(torch.randn(batch, width, size, size, generator=generator), dim=1) for width in widths]


def test_single_adam_with_groups_equals_three_adams() -> None:
    rates = (3e-3, 3e-4, 3e-4)
    pfm = Pfm(**TINY, latent_dims=(4, 8, 8), learning_rates=rates, evaluator=False, visualizer=False)
    ours = pfm.model.mappings
    theirs = copy.deepcopy(ours)
    optimizer = pfm.configure_optimizers()
    assert [group["lr"] for group in optimizer.param_groups] == list(rates)
    assert all(group["weight_decay"] == 1e-5 for group in optimizer.param_groups)
    their_optimizers = [
        torch.optim.Adam(m.parameters(), lr=r, weight_decay=1e-5) for m, r in zip(theirs, rates, strict=True)
    ]
    generator = torch.Generator().manual_seed(0)
    source_widths, target_widths = pfm.model.source_extractor.out_dims, pfm.model.target_extractor.out_dims
    initial = copy.deepcopy(ours.state_dict())
    ours.train()
    theirs.train()
    for _ in range(3):
        source = _unit_features(2, source_widths, 4, generator)
        target = _unit_features(2, target_widths, 4, generator)
        mapped = [mapping(s, t) for mapping, s, t in zip(ours, source, target, strict=True)]
        outputs = PfmTrainingOutput(source, target, [m[0] for m in mapped], [m[1] for m in mapped])
        optimizer.zero_grad()
        PfmLoss()(outputs)["loss"].backward()
        optimizer.step()
        for mapping, level_optimizer, s, t in zip(theirs, their_optimizers, source, target, strict=True):
            s_hat, t_hat = mapping(s, t)
            loss = ((s - s_hat) ** 2).mean() + ((t - t_hat) ** 2).mean()
            level_optimizer.zero_grad()
            loss.backward()
            level_optimizer.step()
    for name, value in ours.state_dict().items():
        torch.testing.assert_close(value, theirs.state_dict()[name], rtol=1e-6, atol=1e-8, msg=name)
    moved = [name for name, value in ours.state_dict().items() if not torch.equal(value, initial[name])]
    assert any(name.startswith("0.") for name in moved)  # every level trained
    assert any(name.startswith("2.") for name in moved)


def test_level_1_learning_rate_reaches_level_1_only() -> None:
    # A single learning rate for all groups would not reproduce MB-PFM's 3e-3 at level 1.
    generator = torch.Generator().manual_seed(0)
    updates = {}
    for rates in ((3e-3, 3e-4, 3e-4), (3e-4, 3e-4, 3e-4)):
        pfm = Pfm(**TINY, latent_dims=(4, 4, 4), learning_rates=rates, evaluator=False, visualizer=False, seed=1)
        before = [{k: p.detach().clone() for k, p in m.named_parameters()} for m in pfm.model.mappings]
        optimizer = pfm.configure_optimizers()
        source = _unit_features(2, pfm.model.source_extractor.out_dims, 4, generator.manual_seed(0))
        target = _unit_features(2, pfm.model.target_extractor.out_dims, 4, generator.manual_seed(1))
        mapped = [m.train()(s, t) for m, s, t in zip(pfm.model.mappings, source, target, strict=True)]
        PfmLoss()(PfmTrainingOutput(source, target, [m[0] for m in mapped], [m[1] for m in mapped]))["loss"].backward()
        optimizer.step()
        updates[rates[0]] = [
            max((p - b[k]).abs().max().item() for k, p in m.named_parameters())
            for m, b in zip(pfm.model.mappings, before, strict=True)
        ]
    # Adam's first step moves each parameter by about its learning rate
    assert updates[3e-3][0] == pytest.approx(3e-3, rel=0.05)
    assert updates[3e-4][0] == pytest.approx(3e-4, rel=0.05)
    assert updates[3e-3][1:] == pytest.approx(updates[3e-4][1:], rel=1e-6)


def test_presets_are_the_authors_settings() -> None:
    pfm, pefm = inspect.signature(Pfm).parameters, inspect.signature(Pefm).parameters
    assert tuple(pfm["latent_dims"].default) == (200, 400, 900)
    assert tuple(pfm["learning_rates"].default) == (3e-3, 3e-4, 3e-4)
    assert pfm["position_encoding"].default is False
    assert tuple(pefm["latent_dims"].default) == (200, 400, 800)
    assert tuple(pefm["learning_rates"].default) == (3e-4, 3e-4, 3e-4)
    assert pefm["position_encoding"].default is True
    assert pfm["weight_decay"].default == pefm["weight_decay"].default == 1e-5


# (5) Where the position encoding goes; seeds; argument checks.


def test_position_encoding_is_not_in_the_state_dict() -> None:
    with_pe = FeatureMapping(8, 16, 4, position_encoding=True)
    without = FeatureMapping(8, 16, 4, position_encoding=False)
    with_pe.eval()(torch.randn(1, 8, 3, 3), torch.randn(1, 16, 3, 3))  # a forward may cache it: still not state
    assert list(with_pe.state_dict()) == list(without.state_dict())


def test_position_encoding_is_added_to_both_inputs() -> None:
    with_pe = FeatureMapping(8, 16, 4, position_encoding=True).eval()
    without = FeatureMapping(8, 16, 4, position_encoding=False).eval()
    without.load_state_dict(with_pe.state_dict())
    source, target = torch.randn(2, 8, 3, 5), torch.randn(2, 16, 3, 5)
    with torch.no_grad():
        expected = without(source + position_encoding_2d(8, 3, 5), target + position_encoding_2d(16, 3, 5))
        for got, want in zip(with_pe(source, target), expected, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_position_encoding_is_not_added_to_the_loss_targets() -> None:
    model = PfmModel(**TINY, latent_dims=(4, 4, 4), position_encoding=True).train()
    images = torch.rand(2, 3, 32, 32)
    outputs = model(images)
    source, target = model.extract_features(images)
    for mine, plain in zip(outputs.source_features + outputs.target_features, source + target, strict=True):
        assert torch.equal(mine, plain)  # the targets are the normalised features themselves
        torch.testing.assert_close(mine.norm(dim=1), torch.ones_like(mine[:, 0]), rtol=1e-5, atol=1e-5)


def test_seed_gives_identical_weights_and_leaves_the_global_rng_alone() -> None:
    state = torch.get_rng_state()
    first = PfmModel(**TINY, latent_dims=(4, 4, 4), seed=3).state_dict()
    assert torch.equal(torch.get_rng_state(), state)
    second = PfmModel(**TINY, latent_dims=(4, 4, 4), seed=3).state_dict()
    other = PfmModel(**TINY, latent_dims=(4, 4, 4), seed=4).state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first if k.startswith("mappings."))


def test_backbones_with_different_strides_are_refused() -> None:
    # blocks.0 / blocks.1 are at strides 2 / 4 in EfficientNet-Lite0 but 4 / 8 in MobileNetV3-Small
    with pytest.raises(ValueError, match=r"strides \[2, 4\] .* but \[4, 8\]"):
        PfmModel("tf_efficientnet_lite0", "mobilenetv3_small_050", ("blocks.0", "blocks.1"), (4, 4), pre_trained=False)


@pytest.mark.parametrize("latent_dims", [(4, 4), (4, 4, 4, 4), (4, 0, 4)])
def test_latent_dims_need_one_positive_width_per_layer(latent_dims: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="latent_dims"):
        PfmModel(**TINY, latent_dims=latent_dims)
