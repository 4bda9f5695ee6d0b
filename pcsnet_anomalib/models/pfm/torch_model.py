"""PyTorch model of PFM/PEFM: two frozen backbones and a bidirectional feature mapping per level.

Papers: Wan et al., "Unsupervised Image Anomaly Detection and Segmentation Based on Pre-trained Feature
Mapping" (IEEE TII 2022; the multi-hierarchical bidirectional variant MB-PFM), and Wan et al., "Position
Encoding Enhanced Feature Mapping for Image Anomaly Detection" (IEEE CASE 2022, PEFM). Authors' code:
github.com/smiler96/PFM-and-PEFM-for-Image-Anomaly-Detection-and-Segmentation.

A source backbone (ResNet34 in the papers) and a target backbone (ResNet50) give per-position L2-normalised
features at strides 4, 8 and 16. At each level a network of 1x1 convolutions maps source -> target and
target -> source through one shared bottleneck layer; it is trained on normal images only, and the anomaly
map is the squared mapping error of both directions. PEFM adds a fixed 2-D sine/cosine position encoding to
both mapping inputs. Channel widths come from the backbones: any pair of timm CNNs whose levels have equal
strides works.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812
from anomalib.data import InferenceBatch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from pcsnet_anomalib.backbones import build_feature_extractor, input_normalization

from .anomaly_map import AnomalyMapGenerator, level_error_map

POSITION_ENCODING_BASE = 1e4  # the code's base; the PEFM paper's Eq. (2) prints 1000


def position_encoding_2d(
    channels: int,
    height: int,
    width: int,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Fixed 2-D sine/cosine position encoding ``(channels, height, width)`` (PEFM, as in CFLOW-AD).

    The first half of the channels encodes the column index, the second half the row index; within each half,
    channel ``2m`` is ``sin(pos * 10000^(-4m/channels))`` and ``2m + 1`` the cosine. Positions are integer indices
    on the feature grid, not normalised; every position's vector has L2 norm ``sqrt(channels / 2)``.

    Raises:
        ValueError: ``channels`` is not a multiple of 4.
    """
    if channels % 4 != 0:
        msg = (
            f"The sine/cosine position encoding needs a multiple of 4 channels, got {channels}: use backbone "
            "levels whose widths are multiples of 4, or position_encoding=False."
        )
        raise ValueError(msg)
    half = channels // 2
    # The authors' arithmetic, in float32, so that both encodings agree bit for bit.
    frequencies = torch.exp(torch.arange(0.0, half, 2, device=device) * -(math.log(POSITION_ENCODING_BASE) / half))

    def encode(length: int) -> torch.Tensor:
        angles = frequencies[:, None] * torch.arange(0.0, length, device=device)[None, :]  # (half / 2, length)
        return torch.stack([angles.sin(), angles.cos()], dim=1).reshape(half, length)  # sin, cos interleaved

    columns = encode(width)[:, None, :].expand(half, height, width)
    rows = encode(height)[:, :, None].expand(half, height, width)
    return torch.cat([columns, rows], dim=0)


def _conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, 1), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]


def _tracing() -> bool:
    """Whether the forward is being traced or compiled (export): caches would become stale graph constants."""
    return torch.jit.is_tracing() or torch.compiler.is_compiling()


# One 1x1 convolution of a stack with its BatchNorm folded in: weight, bias, and whether a ReLU follows.
FoldedLayer = tuple[torch.Tensor, torch.Tensor | None, bool]


def _fold_stack(stack: nn.Sequential) -> list[FoldedLayer]:
    """``stack``'s conv(-BN)(-ReLU) layers as convolutions with the eval-mode BatchNorm folded into their weights.

    BN in eval mode is an affine map per channel that composes with the preceding 1x1 convolution into one
    (torch's ``fuse_conv_bn_weights``). One pass over each activation fewer; the same values up to float rounding.
    """
    layers: list[FoldedLayer] = []
    for index, module in enumerate(stack):
        if isinstance(module, nn.Conv2d):
            layers.append((module.weight, module.bias, False))
        elif isinstance(module, nn.BatchNorm2d):
            weight, bias, _ = layers[-1]
            folded = fuse_conv_bn_weights(
                weight, bias, module.running_mean, module.running_var, module.eps, module.weight, module.bias
            )
            layers[-1] = (*folded, False)
        elif isinstance(module, nn.ReLU):
            layers[-1] = (*layers[-1][:2], True)
        else:  # pragma: no cover - the stacks are built above
            msg = f"Cannot fold {type(module).__name__} (layer {index} of a mapping stack)."
            raise TypeError(msg)
    return layers


def _run_folded(features: torch.Tensor, layers: list[FoldedLayer]) -> torch.Tensor:
    for weight, bias, relu in layers:
        features = F.conv2d(features, weight, bias)
        if relu:
            features = F.relu_(features)
    return features


class FeatureMapping(nn.Module):
    """One level's bidirectional mapping (the papers' "small" network, Table I of both).

    ``source_encoder``/``target_encoder``: 1x1 conv-BN-ReLU to ``in/2 + latent``, then to ``2 latent``;
    ``shared``: one plain 1x1 conv ``2 latent -> latent`` used by both directions; decoders: conv-BN-ReLU to
    ``2 latent``, to ``out/2 + latent``, then a plain 1x1 conv to the other backbone's width. Parameters are
    registered in the authors' order (encoder1, shared_coder, decoder1, encoder2, decoder2).

    In eval mode without gradients, the stacks run with their BatchNorms folded into the convolutions
    (:func:`_fold_stack`); the folded weights are cached until a parameter or statistic changes (optimizer step,
    ``load_state_dict``, ``to``), and training, gradient-enabled and traced/exported forwards use the modules
    themselves. The position encodings are cached per shape, device and dtype. Neither cache is in the state dict.

    Args:
        source_channels: width of the source backbone at this level.
        target_channels: width of the target backbone at this level.
        latent_dim: bottleneck width ``c``.
        position_encoding: add the fixed position encoding to both inputs (PEFM).
    """

    def __init__(self, source_channels: int, target_channels: int, latent_dim: int, position_encoding: bool) -> None:
        super().__init__()
        if position_encoding:  # fail at construction, not at the first image
            for channels in (source_channels, target_channels):
                position_encoding_2d(channels, 1, 1)
        source_hidden, target_hidden = source_channels // 2 + latent_dim, target_channels // 2 + latent_dim
        self.position_encoding = position_encoding
        self.source_encoder = nn.Sequential(
            *_conv_bn_relu(source_channels, source_hidden), *_conv_bn_relu(source_hidden, 2 * latent_dim)
        )
        self.shared = nn.Conv2d(2 * latent_dim, latent_dim, 1)
        self.target_decoder = nn.Sequential(
            *_conv_bn_relu(latent_dim, 2 * latent_dim),
            *_conv_bn_relu(2 * latent_dim, target_hidden),
            nn.Conv2d(target_hidden, target_channels, 1),
        )
        self.target_encoder = nn.Sequential(
            *_conv_bn_relu(target_channels, target_hidden), *_conv_bn_relu(target_hidden, 2 * latent_dim)
        )
        self.source_decoder = nn.Sequential(
            *_conv_bn_relu(latent_dim, 2 * latent_dim),
            *_conv_bn_relu(2 * latent_dim, source_hidden),
            nn.Conv2d(source_hidden, source_channels, 1),
        )
        self._encodings: dict[tuple, torch.Tensor] = {}
        self._folded: tuple[tuple, dict[str, list[FoldedLayer]]] | None = None

    def _encoded_input(self, features: torch.Tensor) -> torch.Tensor:
        if not self.position_encoding:
            return features
        key = (*features.shape[1:], features.device, features.dtype)
        encoding = self._encodings.get(key)
        if encoding is None:
            encoding = position_encoding_2d(*key[:3], features.device).to(features.dtype)
            if not _tracing():
                self._encodings[key] = encoding
        return features + encoding

    def _folded_stacks(self) -> dict[str, list[FoldedLayer]]:
        """The four stacks and the shared layer, BatchNorm folded, recomputed when any tensor of the module changed.

        The key holds each parameter's and buffer's storage and version counter: in-place updates (optimizer
        steps, ``load_state_dict``) bump the version, ``to``/``half`` replace the storage.
        """
        tensors = (*self.parameters(), *self.buffers())
        key = tuple((tensor.data_ptr(), tensor._version) for tensor in tensors)  # noqa: SLF001 (autograd's counter)
        if self._folded is None or self._folded[0] != key:
            with torch.no_grad():
                stacks = {
                    name: _fold_stack(getattr(self, name))
                    for name in ("source_encoder", "target_decoder", "target_encoder", "source_decoder")
                }
                stacks["shared"] = [(self.shared.weight, self.shared.bias, False)]
            self._folded = (key, stacks)
        return self._folded[1]

    def forward(self, source: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Map ``source`` to the target space and ``target`` to the source space.

        Returns:
            ``(source_mapped, target_mapped)``: the target features mapped to the source space and the source
            features mapped to the target space (the authors' ``(xs_hat, xt_hat)`` order).
        """
        source, target = self._encoded_input(source), self._encoded_input(target)
        if self.training or torch.is_grad_enabled() or _tracing():
            target_mapped = self.target_decoder(self.shared(self.source_encoder(source)))
            source_mapped = self.source_decoder(self.shared(self.target_encoder(target)))
            return source_mapped, target_mapped
        stacks = self._folded_stacks()
        target_mapped = _run_folded(source, stacks["source_encoder"] + stacks["shared"] + stacks["target_decoder"])
        source_mapped = _run_folded(target, stacks["target_encoder"] + stacks["shared"] + stacks["source_decoder"])
        return source_mapped, target_mapped


@dataclass
class PfmTrainingOutput:
    """Per level (lists ordered like ``layers``): normalised backbone features and their mappings."""

    source_features: list[torch.Tensor]
    target_features: list[torch.Tensor]
    source_mapped: list[torch.Tensor]  # target features mapped to the source space
    target_mapped: list[torch.Tensor]  # source features mapped to the target space


class PfmModel(nn.Module):
    """Frozen source and target backbones, one :class:`FeatureMapping` per level.

    Input: images in ``[0, 1]``; each backbone normalises them with its own training statistics.
    Training mode returns :class:`PfmTrainingOutput`; eval mode an ``InferenceBatch`` whose anomaly map is the
    mean over levels of the upsampled per-level error maps and whose score is the map's maximum.

    Weights and activations use the channels-last (NHWC) layout: every mapping layer is a 1x1 convolution, which
    in that layout is one matrix product over positions, without the layout conversions oneDNN makes for NCHW.

    Args:
        source_backbone: timm name of the source network (ResNet34 with torchvision's weights in the papers).
        target_backbone: timm name of the target network (ResNet50 with torchvision's weights).
        layers: the levels, by name, in both backbones (the same strides in both).
        latent_dims: bottleneck width per level.
        position_encoding: PEFM's fixed position encoding on the mapping inputs.
        pre_trained: load pretrained backbone weights through timm (hub or its cache).
        source_weights, target_weights: local weight files or packaged weights (``"package:efficientnet_lite0"``,
            ...) for each backbone; load offline and take precedence over ``pre_trained``.
        seed: seeds the mapping networks' initial weights, and random backbones' (torch's global RNG is left as it
            was).

    Raises:
        ValueError: ``latent_dims`` does not have one entry per layer, the backbones' levels have different
            strides, or a width is not a multiple of 4 with ``position_encoding``.
    """

    def __init__(
        self,
        source_backbone: str = "resnet34.tv_in1k",
        target_backbone: str = "resnet50.tv_in1k",
        layers: Sequence[str] = ("layer1", "layer2", "layer3"),
        latent_dims: Sequence[int] = (200, 400, 900),
        position_encoding: bool = False,
        pre_trained: bool = True,
        source_weights: str | None = None,
        target_weights: str | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        layers, latent_dims = list(layers), [int(dim) for dim in latent_dims]
        if len(latent_dims) != len(layers) or min(latent_dims, default=0) < 1:
            msg = f"latent_dims {latent_dims} must give one positive width per layer of {layers}."
            raise ValueError(msg)
        with torch.random.fork_rng(devices=[]):  # timm initialises the backbones (randomly, then loads weights)
            torch.manual_seed(seed)  # random backbones follow ``seed``; the caller's RNG is left as it was
            self.source_extractor = build_feature_extractor(source_backbone, layers, pre_trained, source_weights)
            self.target_extractor = build_feature_extractor(target_backbone, layers, pre_trained, target_weights)
        source_strides, target_strides = self.source_extractor.reductions, self.target_extractor.reductions
        if list(source_strides) != list(target_strides):
            msg = (
                f"Layers {layers} have strides {list(source_strides)} in {source_backbone} but "
                f"{list(target_strides)} in {target_backbone}: choose layers with equal strides in both backbones."
            )
            raise ValueError(msg)
        self.strides = list(source_strides)
        with torch.random.fork_rng(devices=[]):  # initial weights from ``seed``; the caller's RNG is left as it was
            torch.manual_seed(seed)
            self.mappings = nn.ModuleList(
                FeatureMapping(source, target, latent, position_encoding)
                for source, target, latent in zip(
                    self.source_extractor.out_dims, self.target_extractor.out_dims, latent_dims, strict=True
                )
            )
        self.anomaly_map_generator = AnomalyMapGenerator()
        for prefix, extractor in (("source", self.source_extractor), ("target", self.target_extractor)):
            mean, std = input_normalization(extractor)
            self.register_buffer(f"{prefix}_mean", mean, persistent=False)
            self.register_buffer(f"{prefix}_std", std, persistent=False)
        self.to(memory_format=torch.channels_last)

    def train(self, mode: bool = True) -> "PfmModel":
        """Switch modes; the backbones stay frozen in eval mode (fixed BatchNorm statistics)."""
        super().train(mode)
        self.source_extractor.eval()
        self.target_extractor.eval()
        return self

    def extract_features(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Source and target features of ``images`` in ``[0, 1]``, L2-normalised over channels at each position."""
        self._check_input(images)
        images = images.contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            source = self.source_extractor((images - self.source_mean) / self.source_std)
            target = self.target_extractor((images - self.target_mean) / self.target_std)
        return (
            [F.normalize(features, dim=1) for features in source.values()],
            [F.normalize(features, dim=1) for features in target.values()],
        )

    def _check_input(self, images: torch.Tensor) -> None:
        if images.ndim != 4 or images.shape[1] != self.source_mean.shape[1]:
            msg = f"Expected images of shape (B, {self.source_mean.shape[1]}, H, W), got {tuple(images.shape)}."
            raise ValueError(msg)
        if min(images.shape[-2:]) < max(self.strides):
            msg = (
                f"Images of {tuple(images.shape[-2:])} px are smaller than the deepest level's stride "
                f"({max(self.strides)}): use images of at least {max(self.strides)} px a side."
            )
            raise ValueError(msg)

    def forward(self, images: torch.Tensor) -> PfmTrainingOutput | InferenceBatch:
        """Training: features and mappings per level. Eval: anomaly map ``(B, 1, H, W)`` and score ``(B,)``."""
        source, target = self.extract_features(images)
        mapped = [mapping(s, t) for mapping, s, t in zip(self.mappings, source, target, strict=True)]
        if self.training:
            return PfmTrainingOutput(
                source_features=source,
                target_features=target,
                source_mapped=[source_mapped for source_mapped, _ in mapped],
                target_mapped=[target_mapped for _, target_mapped in mapped],
            )
        level_maps = [
            level_error_map(t, target_mapped, s, source_mapped)
            for s, t, (source_mapped, target_mapped) in zip(source, target, mapped, strict=True)
        ]
        anomaly_map = self.anomaly_map_generator(level_maps, images.shape[-2:])
        return InferenceBatch(pred_score=anomaly_map.amax(dim=(-3, -2, -1)), anomaly_map=anomaly_map)
