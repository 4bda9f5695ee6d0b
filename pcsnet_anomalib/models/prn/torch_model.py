"""PyTorch model of PRN: frozen backbone, multi-scale prototypes and residuals, MSF, MSA, decoder.

Paper: Zhang, Wu, Wang, Chen, Jiang, "Prototypical Residual Networks for Anomaly Detection and Localization"
(CVPR 2023). The authors released no code; the layer-level details follow the only public implementation
(xcyao00/PRNet, "U" in ``PRN.md``), with the deviations listed in this folder's README.

Tensor flow at a 256 x 256 input with ResNet-18 (``PRN.md`` §2): backbone levels 1-4 (64x64x64 ... 512x8x8);
for levels 1-3 the nearest whole-map prototype ``p_l`` and the residual ``(f_l - p_l)^2``; features and residuals
fused by two MSF blocks, concatenated, refined by three multi-size self-attention blocks per level, fused by a
third MSF block and decoded U-Net style with level 4 as the bottleneck into one logit per input pixel.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812
from anomalib.data import InferenceBatch
from torch import nn

from pcsnet_anomalib.backbones import build_feature_extractor, input_normalization

from .anomaly_map import AnomalyMapGenerator
from .prototypes import MultiScalePrototypes

SIZE_MULTIPLE = 128
"""Input sides must be multiples of this: level 3 (stride 16) is cut into 8 x 8 patches by the attention."""
PATCH_DIVISORS = (1, 2, 4, 8)
"""MSA patch grids per level: patches of side H, H/2, H/4, H/8 (1, 4, 16, 64 tokens)."""


def check_input_size(input_size: int) -> None:
    """Raise ``ValueError`` unless ``input_size`` is a positive multiple of :data:`SIZE_MULTIPLE`."""
    if isinstance(input_size, bool) or not isinstance(input_size, int) or input_size <= 0:
        msg = f"input_size must be a positive int (the side of the square input), got {input_size!r}."
        raise ValueError(msg)
    if input_size % SIZE_MULTIPLE != 0:
        lower = max(SIZE_MULTIPLE, input_size // SIZE_MULTIPLE * SIZE_MULTIPLE)
        msg = (
            f"Prn needs square inputs whose side is a multiple of {SIZE_MULTIPLE} (its attention cuts the stride-16 "
            f"feature map into 8 x 8 patches), got {input_size}: use e.g. {lower} or {lower + SIZE_MULTIPLE}."
        )
        raise ValueError(msg)


def _upsample(features: torch.Tensor, factor: int) -> torch.Tensor:
    return F.interpolate(features, scale_factor=factor, mode="bilinear", align_corners=True)


def _down_conv(in_channels: int, out_channels: int, stride: int) -> nn.Conv2d:
    """Grouped strided convolution of the MSF block (kernel 3 for stride 2, 5 for stride 4).

    U groups by the input width (``groups=c_in``), which needs ``c_out`` divisible by ``c_in`` (true for ResNets,
    whose widths double); ``gcd(c_in, c_out)`` groups is the same for those and also works for other widths.
    """
    kernel = 2 * stride - 1
    return nn.Conv2d(
        in_channels,
        out_channels,
        kernel,
        stride=stride,
        padding=kernel // 2,
        groups=math.gcd(in_channels, out_channels),
    )


class MultiScaleFusion(nn.Module):
    """MSF: each of three levels (strides 4, 8, 16) receives the other two, resampled to it (``PRN.md`` §3.4).

    Up: bilinear upsampling (``align_corners=True``), then a 1x1 convolution; down: a grouped strided convolution.
    No normalisation, no activation.
    """

    def __init__(self, channels: Sequence[int]) -> None:
        super().__init__()
        c1, c2, c3 = channels
        self.up_2_to_1 = nn.Conv2d(c2, c1, 1)
        self.up_3_to_1 = nn.Conv2d(c3, c1, 1)
        self.down_1_to_2 = _down_conv(c1, c2, 2)
        self.up_3_to_2 = nn.Conv2d(c3, c2, 1)
        self.down_1_to_3 = _down_conv(c1, c3, 4)
        self.down_2_to_3 = _down_conv(c2, c3, 2)

    def forward(self, levels: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Fuse ``levels`` ``[x1, x2, x3]``; each output has its input's shape."""
        x1, x2, x3 = levels
        return [
            x1 + self.up_2_to_1(_upsample(x2, 2)) + self.up_3_to_1(_upsample(x3, 4)),
            x2 + self.down_1_to_2(x1) + self.up_3_to_2(_upsample(x3, 2)),
            x3 + self.down_1_to_3(x1) + self.down_2_to_3(x2),
        ]


class ResidualBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus a 1x1 convolution shortcut, summed, ReLU (MSA's output projection)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Return ``relu(body(x) + shortcut(x))``."""
        return F.relu(self.body(features) + self.shortcut(features))


class PatchAttention(nn.Module):
    """Self-attention among the ``divisor x divisor`` non-overlapping patches of a square map (one MSA size).

    Tokens are whole patches flattened in (channel, row, column) order, ``D = C * side^2`` values each. Queries,
    keys and values are per-dimension affine maps (U's depthwise ``Conv1d(D, D, 1, groups=D)``, here elementwise
    parameters: the same maths, and exportable), initialised like that convolution, U(-1, 1). Logits are scaled by
    ``1 / D`` (U's choice, not ``1 / sqrt(D)``). No positional encoding, normalisation or MLP.
    """

    def __init__(self, channels: int, size: int, divisor: int) -> None:
        super().__init__()
        self.channels, self.divisor, self.side = channels, divisor, size // divisor
        dim = channels * self.side * self.side
        self.weight = nn.Parameter(torch.empty(3, dim).uniform_(-1.0, 1.0))  # query, key, value
        self.bias = nn.Parameter(torch.empty(3, dim).uniform_(-1.0, 1.0))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Attend among the patches of ``features (B, C, H, W)``; the output has the same shape."""
        batch, divisor, side = features.shape[0], self.divisor, self.side
        tokens = (
            features.reshape(batch, self.channels, divisor, side, divisor, side)
            .permute(0, 2, 4, 1, 3, 5)
            .reshape(batch, divisor * divisor, -1)
        )
        query, key, value = (tokens * self.weight[i] + self.bias[i] for i in range(3))
        attention = torch.softmax(query @ key.transpose(1, 2) / tokens.shape[-1], dim=-1)
        mixed = (attention @ value).reshape(batch, divisor, divisor, self.channels, side, side)
        return mixed.permute(0, 3, 1, 4, 2, 5).reshape(features.shape)


class MultiSizeSelfAttention(nn.Module):
    """One MSA block: patch attention at each of :data:`PATCH_DIVISORS`, concatenated, a residual block to ``C``."""

    def __init__(self, channels: int, size: int) -> None:
        super().__init__()
        self.attentions = nn.ModuleList(PatchAttention(channels, size, divisor) for divisor in PATCH_DIVISORS)
        self.project = ResidualBlock(len(PATCH_DIVISORS) * channels, channels)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Return the block's output, the shape of ``features``."""
        return self.project(torch.cat([attention(features) for attention in self.attentions], dim=1))


def _conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU()]


class Decoder(nn.Module):
    """U-Net decoder: the level-4 bottleneck up through the fused levels 3, 2, 1 to one logit per input pixel.

    Each step upsamples x2 (x4 for the last), convolves (conv3x3-BN-ReLU) to the next level's width, concatenates
    that level's fused map (``2 c_l`` channels) and applies two conv3x3-BN-ReLU (``PRN.md`` §3.6).
    """

    def __init__(self, channels: Sequence[int]) -> None:
        super().__init__()
        c1, c2, c3, c4 = channels
        self.up = nn.ModuleList(
            nn.Sequential(*_conv_bn_relu(c_in, c_out)) for c_in, c_out in ((c4, c3), (c3, c2), (c2, c1), (c1, c1))
        )
        self.merge = nn.ModuleList(nn.Sequential(*_conv_bn_relu(3 * c, c), *_conv_bn_relu(c, c)) for c in (c3, c2, c1))
        self.head = nn.Conv2d(c1, 1, 3, padding=1)

    def forward(self, bottleneck: torch.Tensor, fused: Sequence[torch.Tensor]) -> torch.Tensor:
        """Decode ``bottleneck`` (level 4) with ``fused`` ``[G1, G2, G3]`` into logits ``(B, 1, 16 h1, 16 w1)``."""
        features = bottleneck
        for up, merge, skip in zip(self.up[:-1], self.merge, reversed(fused), strict=True):
            features = merge(torch.cat([skip, up(_upsample(features, 2))], dim=1))
        return self.head(self.up[-1](_upsample(features, 4)))


@dataclass
class PrnFeatures:
    """Backbone features of levels 1-3, their nearest prototypes' residuals, and level 4 (the bottleneck)."""

    features: list[torch.Tensor]
    residuals: list[torch.Tensor]
    bottleneck: torch.Tensor


class PrnModel(nn.Module):
    """PRN's network. Input: images in ``[0, 1]`` of ``input_size`` x ``input_size``, normalised inside.

    Training mode returns the anomaly logits ``(B, 1, S, S)``; eval mode an ``InferenceBatch`` with the sigmoid map
    and the mean of its ``topk_fraction`` highest values as the score. Prototypes must be fitted first
    (:meth:`fit_prototypes`, done by ``Prn`` before training, or loaded with a checkpoint).

    Args:
        backbone: timm name of a CNN with four levels at strides 4, 8, 16, 32 (``layers``).
        layers: the four levels; the first three get prototypes, the fourth is the decoder's bottleneck.
        pre_trained: load pretrained backbone weights through timm (hub or its cache).
        backbone_weights: a local weight file or packaged weights (``"package:efficientnet_lite0"``); loads
            offline and takes precedence over ``pre_trained``.
        input_size: side of the square input, a multiple of 128: the attention's parameters are sized by it.
        msa_layers: MSA blocks per level.
        share_fusion: one MSF block for features and residuals (U) instead of two (the paper's Fig. 3).
        topk_fraction: fraction of the map's pixels averaged into the image score (100 of 65,536 in U).
        seed: seeds the initial weights (and a random backbone's); torch's global RNG is left as it was.

    Raises:
        ValueError: ``input_size`` not a multiple of 128, not four layers, or levels that are not at strides
            4, 8, 16, 32.
    """

    def __init__(
        self,
        backbone: str = "resnet18.tv_in1k",
        layers: Sequence[str] = ("layer1", "layer2", "layer3", "layer4"),
        pre_trained: bool = True,
        backbone_weights: str | None = None,
        input_size: int = 256,
        msa_layers: int = 3,
        share_fusion: bool = False,
        topk_fraction: float = 100 / 65536,
        seed: int = 0,
    ) -> None:
        super().__init__()
        check_input_size(input_size)
        if len(layers) != 4:
            msg = f"Prn needs four backbone levels (three with prototypes, one bottleneck), got {list(layers)}."
            raise ValueError(msg)
        self.input_size = input_size
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.feature_extractor = build_feature_extractor(backbone, list(layers), pre_trained, backbone_weights)
            strides = list(self.feature_extractor.reductions)
            if strides != [4, 8, 16, 32]:
                msg = f"Layers {list(layers)} of {backbone} have strides {strides}; Prn needs strides 4, 8, 16, 32."
                raise ValueError(msg)
            channels = list(self.feature_extractor.out_dims)
            sizes = [input_size // stride for stride in strides[:3]]
            self.prototypes = MultiScalePrototypes(len(sizes))
            self.fuse_features = MultiScaleFusion(channels[:3])
            self.fuse_residuals = self.fuse_features if share_fusion else MultiScaleFusion(channels[:3])
            self.attention = nn.ModuleList(
                nn.Sequential(*(MultiSizeSelfAttention(2 * c, size) for _ in range(msa_layers)))
                for c, size in zip(channels[:3], sizes, strict=True)
            )
            self.fuse_attended = MultiScaleFusion([2 * c for c in channels[:3]])
            self.decoder = Decoder(channels)
        self.anomaly_map_generator = AnomalyMapGenerator(topk_fraction)
        mean, std = input_normalization(self.feature_extractor)
        self.register_buffer("input_mean", mean, persistent=False)
        self.register_buffer("input_std", std, persistent=False)

    def train(self, mode: bool = True) -> "PrnModel":
        """Switch modes; the backbone stays in eval mode (U's train-mode BatchNorm drifted from the prototypes)."""
        super().train(mode)
        self.feature_extractor.eval()
        return self

    def check_input(self, images: torch.Tensor) -> None:
        """Raise ``ValueError`` unless ``images`` is ``(B, 3, S, S)`` with ``S`` the model's ``input_size``."""
        expected = (3, self.input_size, self.input_size)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            msg = (
                f"Prn was built for images of shape (B, {', '.join(map(str, expected))}), got {tuple(images.shape)}: "
                f"resize inputs to {self.input_size} x {self.input_size} (Prn.configure_pre_processor) or build Prn "
                "with another input_size (square, a multiple of 128)."
            )
            raise ValueError(msg)

    @torch.no_grad()
    def backbone_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The frozen backbone's four levels for ``images`` in ``[0, 1]``."""
        self.check_input(images)
        return list(self.feature_extractor((images - self.input_mean) / self.input_std).values())

    def fit_prototypes(self, features: Sequence[torch.Tensor], ratio: float, seed: int) -> None:
        """k-means prototypes of levels 1-3 from normal training images' ``features`` (``MultiScalePrototypes``)."""
        self.prototypes.fit(features, ratio, seed)

    def prototype_features(self, images: torch.Tensor) -> PrnFeatures:
        """Backbone features, residuals to the nearest prototypes (levels 1-3) and the bottleneck."""
        *features, bottleneck = self.backbone_features(images)
        residuals = [
            (level - prototype).pow(2) for level, prototype in zip(features, self.prototypes(features), strict=True)
        ]
        return PrnFeatures(features=features, residuals=residuals, bottleneck=bottleneck)

    def forward(self, images: torch.Tensor) -> torch.Tensor | InferenceBatch:
        """Training: logits ``(B, 1, S, S)``. Eval: ``InferenceBatch(pred_score (B,), anomaly_map (B, 1, S, S))``."""
        inputs = self.prototype_features(images)
        joined = [
            torch.cat([feature, residual], dim=1)
            for feature, residual in zip(
                self.fuse_features(inputs.features), self.fuse_residuals(inputs.residuals), strict=True
            )
        ]
        attended = [stack(level) for stack, level in zip(self.attention, joined, strict=True)]
        logits = self.decoder(inputs.bottleneck, self.fuse_attended(attended))
        if self.training:
            return logits
        anomaly_map, score = self.anomaly_map_generator(logits)
        return InferenceBatch(pred_score=score, anomaly_map=anomaly_map)
