"""PRN's torch pieces: shapes through each block, prototypes, matching, residuals, loss values, clear errors."""

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from pcsnet_anomalib.models.prn import (
    AnomalyMapGenerator,
    Decoder,
    MultiScaleFusion,
    MultiSizeSelfAttention,
    PatchAttention,
    Prn,
    PrnLoss,
    PrnModel,
    focal_loss,
    kmeans,
    number_of_prototypes,
)

SIZE = 128
TINY = {"backbone": "test_resnet", "pre_trained": False, "input_size": SIZE}  # widths 32, 48, 192, 96


@pytest.fixture(scope="module")
def model() -> PrnModel:
    model = PrnModel(**TINY, msa_layers=1)
    features = model.backbone_features(torch.rand(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0)))
    model.fit_prototypes(features[:3], ratio=0.5, seed=0)
    return model


def test_fusion_keeps_each_level_shape() -> None:
    levels = [torch.rand(2, 64, 32, 32), torch.rand(2, 128, 16, 16), torch.rand(2, 256, 8, 8)]
    fused = MultiScaleFusion([64, 128, 256])(levels)
    assert [tuple(level.shape) for level in fused] == [tuple(level.shape) for level in levels]


def test_fusion_accepts_widths_that_do_not_double() -> None:
    levels = [torch.rand(1, 32, 32, 32), torch.rand(1, 48, 16, 16), torch.rand(1, 192, 8, 8)]
    assert [level.shape for level in MultiScaleFusion([32, 48, 192])(levels)] == [level.shape for level in levels]


@pytest.mark.parametrize("divisor", [1, 2, 4, 8])
def test_patch_attention_keeps_shape_and_mixes_only_within_tokens(divisor: int) -> None:
    attention = PatchAttention(channels=3, size=16, divisor=divisor)
    features = torch.rand(2, 3, 16, 16)
    output = attention(features)
    assert output.shape == features.shape
    if divisor == 1:  # one token: softmax is 1, the branch is the value map
        expected = features.flatten(1) * attention.weight[2] + attention.bias[2]
        torch.testing.assert_close(output.flatten(1), expected)


def test_patch_attention_matches_a_direct_computation() -> None:
    torch.manual_seed(0)
    attention = PatchAttention(channels=2, size=4, divisor=2)
    features = torch.rand(1, 2, 4, 4)
    tokens = torch.stack(
        [features[0, :, r * 2 : r * 2 + 2, c * 2 : c * 2 + 2].flatten() for r in range(2) for c in range(2)]
    )
    q, k, v = (tokens * attention.weight[i] + attention.bias[i] for i in range(3))
    mixed = torch.softmax(q @ k.T / tokens.shape[1], dim=-1) @ v
    expected = torch.zeros_like(features)
    for index, (r, c) in enumerate((r, c) for r in range(2) for c in range(2)):
        expected[0, :, r * 2 : r * 2 + 2, c * 2 : c * 2 + 2] = mixed[index].view(2, 2, 2)
    torch.testing.assert_close(attention(features), expected)


def test_multi_size_attention_and_decoder_shapes() -> None:
    block = MultiSizeSelfAttention(channels=8, size=16)
    assert block(torch.rand(2, 8, 16, 16)).shape == (2, 8, 16, 16)
    decoder = Decoder([4, 8, 16, 32])
    fused = [torch.rand(2, 8, 32, 32), torch.rand(2, 16, 16, 16), torch.rand(2, 32, 8, 8)]
    assert decoder(torch.rand(2, 32, 4, 4), fused).shape == (2, 1, 128, 128)


def test_model_shapes_in_training_and_eval(model: PrnModel) -> None:
    images = torch.rand(2, 3, SIZE, SIZE)
    features = model.prototype_features(images)
    assert [tuple(level.shape[1:]) for level in features.features] == [(32, 32, 32), (48, 16, 16), (192, 8, 8)]
    assert [level.shape for level in features.residuals] == [level.shape for level in features.features]
    assert features.bottleneck.shape == (2, 96, 4, 4)
    model.train()
    assert not model.feature_extractor.training  # the backbone stays in eval mode
    assert model(images).shape == (2, 1, SIZE, SIZE)
    model.eval()
    output = model(images)
    assert output.anomaly_map.shape == (2, 1, SIZE, SIZE)
    assert output.pred_score.shape == (2,)
    assert ((output.anomaly_map >= 0) & (output.anomaly_map <= 1)).all()


def test_matching_is_the_brute_force_nearest_prototype(model: PrnModel) -> None:
    images = torch.rand(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    features = model.backbone_features(images)[:3]
    nearest = model.prototypes(features)
    for level, memory, chosen in zip(features, model.prototypes.memories, nearest, strict=True):
        distances = torch.cdist(level.flatten(1).double(), memory.prototypes.double())
        expected = memory.prototypes[distances.argmin(dim=1)].view(level.shape)
        torch.testing.assert_close(chosen, expected)


def test_shared_fusion_is_one_block_for_features_and_residuals() -> None:
    separate, shared = PrnModel(**TINY, msa_layers=1), PrnModel(**TINY, msa_layers=1, share_fusion=True)
    assert shared.fuse_residuals is shared.fuse_features
    assert separate.fuse_residuals is not separate.fuse_features
    fusion_parameters = sum(parameter.numel() for parameter in separate.fuse_residuals.parameters())
    count = sum(parameter.numel() for parameter in separate.parameters())
    assert sum(parameter.numel() for parameter in shared.parameters()) == count - fusion_parameters


def test_residual_of_a_prototype_is_zero() -> None:
    model = PrnModel(**TINY, msa_layers=1)
    images = torch.rand(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    model.fit_prototypes(model.backbone_features(images)[:3], ratio=1.0, seed=0)  # K = N: every image is a centroid
    for residual in model.prototype_features(images).residuals:
        assert residual.abs().max() == 0


def test_number_of_prototypes_and_kmeans() -> None:
    assert number_of_prototypes(209, 0.1) == 20
    assert number_of_prototypes(5, 0.1) == 1  # U fails for N < 10
    points = torch.cat([torch.randn(10, 4) * 0.01, torch.randn(10, 4) * 0.01 + 5])
    centres = kmeans(points, 2, seed=0)
    assert sorted(centres[:, 0].round().tolist()) == [0.0, 5.0]
    torch.testing.assert_close(kmeans(points, 2, seed=0), centres)  # deterministic
    torch.testing.assert_close(kmeans(points, 1, seed=3), points.mean(0, keepdim=True))
    with pytest.raises(ValueError, match="normal training images"):
        number_of_prototypes(0, 0.1)


def test_prototypes_survive_a_state_dict_round_trip(model: PrnModel) -> None:
    other = PrnModel(**TINY, msa_layers=1)
    other.load_state_dict(model.state_dict())
    for saved, loaded in zip(model.prototypes.memories, other.prototypes.memories, strict=True):
        torch.testing.assert_close(saved.prototypes, loaded.prototypes)


def test_smooth_l1_is_half_the_squared_error_and_focal_matches_the_formula() -> None:
    logits = torch.tensor([[[[0.0, 2.0], [-1.0, 3.0]]]])
    masks = torch.tensor([[[[0.0, 1.0], [1.0, 0.0]]]])
    losses = PrnLoss()(logits, masks)
    s = torch.sigmoid(logits)
    torch.testing.assert_close(losses["l1"], 0.5 * F.mse_loss(s, masks))
    expected_terms = []
    for probability, target in zip(s.flatten().tolist(), masks.flatten().tolist(), strict=True):
        smoothed = min(max(target, 1e-5), 1 - 1e-5)
        p_t = smoothed * probability + (1 - smoothed) * (1 - probability) + 1e-5
        expected_terms.append(-0.5 * (1 - p_t) ** 4 * math.log(p_t))
    expected_focal = sum(expected_terms) / 4
    assert losses["focal"].item() == pytest.approx(expected_focal, rel=1e-5)
    assert losses["loss"].item() == pytest.approx(losses["l1"].item() + 5 * expected_focal, rel=1e-5)
    assert focal_loss(torch.ones(1), torch.ones(1), 0.5, 4.0).item() == pytest.approx(0.0, abs=1e-12)
    torch.testing.assert_close(PrnLoss(l1_kind="l1")(logits, masks)["l1"], (s - masks).abs().mean())


def test_score_is_the_mean_of_the_top_pixels() -> None:
    generator = AnomalyMapGenerator(topk_fraction=2 / 16)
    logits = torch.arange(16.0).view(1, 1, 4, 4)
    anomaly_map, score = generator(logits)
    torch.testing.assert_close(anomaly_map, torch.sigmoid(logits))
    torch.testing.assert_close(score, torch.sigmoid(torch.tensor([14.0, 15.0])).mean().view(1))
    assert generator.top_k(256, 256) == 8192
    assert AnomalyMapGenerator().top_k(256, 256) == 100


@pytest.mark.parametrize("size", [192, 100, 0])
def test_unsupported_input_sizes_are_refused_at_construction(size: int) -> None:
    with pytest.raises(ValueError, match=r"multiple of 128|positive int"):
        PrnModel(**{**TINY, "input_size": size})


def test_wrong_images_are_refused_with_the_expected_shape(model: PrnModel) -> None:
    with pytest.raises(ValueError, match=r"\(B, 3, 128, 128\)"):
        model(torch.rand(1, 3, 128, 256))  # not square
    with pytest.raises(ValueError, match="resize inputs to 128 x 128"):
        model(torch.rand(1, 3, 256, 256))


def test_prn_refuses_a_pre_processor_of_another_size() -> None:
    prn = Prn(**TINY, pre_processor=Prn.configure_pre_processor((256, 256)))
    with pytest.raises(ValueError, match="pre-processor makes 256 x 256"):
        prn.setup("fit")


def test_the_default_pre_processor_resizes_to_the_input_size() -> None:
    prn = Prn(**{**TINY, "input_size": 128})
    assert prn.pre_processor.transform(torch.rand(1, 3, 300, 200)).shape[-2:] == (128, 128)
    prn.setup("fit")  # the size check passes


def test_other_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="four backbone levels"):
        PrnModel(**TINY, layers=("layer1", "layer2", "layer3"))
    with pytest.raises(ValueError, match="l1_kind"):
        PrnLoss(l1_kind="l2")
    with pytest.raises(ValueError, match="prototype_ratio"):
        Prn(**TINY, prototype_ratio=0.0)


def test_resnet18_at_256_has_the_spec_shapes_at_every_stage() -> None:
    """``PRN.md`` §2: levels 64x64x64 ... 512x8x8, concatenations 128/256/512 channels, a 1 x 256 x 256 logit map."""
    model = PrnModel(backbone="resnet18", pre_trained=False, input_size=256, msa_layers=1)
    images = torch.rand(1, 3, 256, 256)
    model.fit_prototypes(model.backbone_features(images)[:3], ratio=1.0, seed=0)
    shapes: dict[str, list[tuple[int, ...]]] = {}

    def record(name: str) -> Callable[[torch.nn.Module, object, object], None]:
        def hook(_module: torch.nn.Module, _inputs: object, output: object) -> None:
            outputs = output if isinstance(output, list) else [output]
            shapes[name] = [tuple(tensor.shape[1:]) for tensor in outputs]

        return hook

    model.fuse_attended.register_forward_hook(record("fused"))
    for index, stack in enumerate(model.attention):
        stack.register_forward_hook(record(f"attention_{index}"))
    inputs = model.prototype_features(images)
    assert [tuple(level.shape[1:]) for level in inputs.features] == [(64, 64, 64), (128, 32, 32), (256, 16, 16)]
    assert tuple(inputs.bottleneck.shape[1:]) == (512, 8, 8)
    model.eval()
    assert model(images).anomaly_map.shape == (1, 1, 256, 256)
    assert [shapes[f"attention_{index}"][0] for index in range(3)] == [(128, 64, 64), (256, 32, 32), (512, 16, 16)]
    assert shapes["fused"] == [(128, 64, 64), (256, 32, 32), (512, 16, 16)]
