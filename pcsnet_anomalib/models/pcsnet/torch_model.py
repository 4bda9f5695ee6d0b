"""PyTorch model of PCSNet: frozen backbone, prototypical feature adaptation (PFA), context-aware segmentation (CAS).

Paper: Jiang et al., "Prototypical Learning Guided Context-Aware Segmentation Network for
Few-Shot Anomaly Detection" (IEEE TNNLS 2024). Official code: github.com/yuxin-jiang/PCSNet.

Sizes are derived, not hard-coded: the feature grid is the input size divided by
``grid_stride`` (224 / 3.5 = 64 in the paper), the CAS width is half of the backbone's summed
channels (896 for WideResNet-50-2) and the pyramid bins scale with the grid (60, 30, 15, 8
cells at a 64 grid).
"""

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812
from anomalib.data import InferenceBatch
from torch import nn

from pcsnet_anomalib.backbones import build_feature_extractor, input_normalization
from pcsnet_anomalib.models.components import CoordConv2d, PrototypeMemory, RandomSubset, SeededDropout2d

from .anomaly_map import AnomalyMapGenerator
from .synthesis import PatchExchange
from .synthesis_presets import PatchExchangeConfig

# The paper's pyramid for a 64-cell grid; other grids scale these proportionally.
REFERENCE_GRID = 64
REFERENCE_PYRAMID_BINS = (60, 30, 15, 8)
CAS_DROPOUT = 0.1  # before the final 1x1 classifier, as in PFENet / the official code


class RandomStream:
    """Stream numbers of the model's random draws: each module that draws gets its own stream of ``seed``."""

    SYNTHESIS = 0
    MIXING = 1
    DROPOUT = 2


@dataclass
class PcsnetTrainingOutput:
    """What the losses need from one training step (three views of a batch).

    Distances are to the prototypes, sorted ascending along the last axis.
    """

    normal_nearest: torch.Tensor  # (B, HW, n_nearest) for the normal images
    anomalous_nearest: torch.Tensor  # (B, HW, n_nearest) for their pseudo-anomalous copies
    anomalous_distances: torch.Tensor | None  # (B, HW, N) all distances, only for the official anomalous term
    mixed_nearest: torch.Tensor  # (B, HW, n_nearest) for the mixed batch
    segmentation: torch.Tensor  # (B, 1, H, W) CAS output for the mixed batch, at input resolution
    grid_size: tuple[int, int]
    anomaly_mask: torch.Tensor | None = None  # (B, 1, H, W) pixels the synthesis changed (training forward only)
    mixed_is_anomalous: torch.Tensor | None = None  # (B,) which mixed images are pseudo-anomalous (idem)


def _channel_reducer(channels: int) -> nn.Sequential:
    """conv1x1-BN-ReLU, conv1x1-BN-ReLU, conv1x1 halving the channels (rotation-sensitive categories)."""
    half = channels // 2
    return nn.Sequential(
        nn.Conv2d(channels, half, 1, bias=False),
        nn.BatchNorm2d(half),
        nn.ReLU(),
        nn.Conv2d(half, half, 1, bias=False),
        nn.BatchNorm2d(half),
        nn.ReLU(),
        nn.Conv2d(half, half, 1, bias=False),
    )


class Descriptor(nn.Module):
    """PFA descriptor: per level 3x3 average pooling and a 1x1 CoordConv, resized to one grid and concatenated."""

    def __init__(self, in_channels: Sequence[int], reduce_channels: bool = False) -> None:
        super().__init__()
        level_channels = [c // 2 for c in in_channels] if reduce_channels else list(in_channels)
        self.reducers = nn.ModuleList([_channel_reducer(c) for c in in_channels]) if reduce_channels else None
        self.coord_convs = nn.ModuleList([CoordConv2d(c, c, kernel_size=1) for c in level_channels])
        self.out_channels = sum(level_channels)

    @property
    def is_batch_dependent(self) -> bool:
        """Whether an image's descriptor depends on the rest of its batch (BatchNorm in training mode)."""
        return self.reducers is not None and self.training

    def forward(self, features: Sequence[torch.Tensor], grid_size: tuple[int, int]) -> torch.Tensor:
        """Return the descriptor ``(B, C, *grid_size)`` of backbone ``features``."""
        levels = []
        for index, feature in enumerate(features):
            level = self.reducers[index](feature) if self.reducers is not None else feature
            pooled = F.avg_pool2d(level, kernel_size=3, stride=1, padding=1)
            adapted = self.coord_convs[index](pooled)
            levels.append(F.interpolate(adapted, size=grid_size, mode="bilinear", align_corners=False))
        return torch.cat(levels, dim=1)


class ContextAwareSegmentation(nn.Module):
    """CAS: PFENet's feature-enrichment module over guide features and a prototype-distance prior.

    The per-scale auxiliary classifiers of the official code feed no loss and are not built.
    """

    def __init__(
        self,
        channels: int,
        prior_channels: int,
        num_scales: int = len(REFERENCE_PYRAMID_BINS),
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.merge = nn.ModuleList(
            [
                nn.Sequential(nn.Conv2d(channels + prior_channels, channels, 1, bias=False), nn.ReLU(inplace=True))
                for _ in range(num_scales)
            ],
        )
        self.refine = nn.ModuleList([self._double_conv(channels) for _ in range(num_scales)])
        self.link = nn.ModuleList(
            [
                nn.Sequential(nn.Conv2d(2 * channels, channels, 1, bias=False), nn.ReLU(inplace=True))
                for _ in range(num_scales - 1)
            ],
        )
        self.fuse = nn.Sequential(nn.Conv2d(channels * num_scales, channels, 1, bias=False), nn.ReLU(inplace=True))
        self.fuse_refine = self._double_conv(channels)
        self.classifier = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.ReLU(inplace=True),
            SeededDropout2d(p=CAS_DROPOUT, seed=seed, stream=RandomStream.DROPOUT),
            nn.Conv2d(channels, 1, 1),
        )

    @staticmethod
    def _double_conv(channels: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.ReLU(inplace=True),
        )

    def forward(
        self,
        guide: torch.Tensor,
        prior: torch.Tensor,
        bins: Sequence[tuple[int, int]],
    ) -> torch.Tensor:
        """Segment: ``guide (B, C, H, W)`` and ``prior (B, P, H, W)`` to raw anomaly scores ``(B, 1, H, W)``."""
        grid_size = guide.shape[-2:]
        scale_features: list[torch.Tensor] = []
        previous: torch.Tensor | None = None
        for index, bin_size in enumerate(bins):
            guide_bin = F.adaptive_avg_pool2d(guide, bin_size)
            prior_bin = F.interpolate(prior, size=bin_size, mode="bilinear", align_corners=True)
            merged = self.merge[index](torch.cat([guide_bin, prior_bin], dim=1))
            if previous is not None:
                previous_bin = F.interpolate(previous, size=bin_size, mode="bilinear", align_corners=True)
                merged = self.link[index - 1](torch.cat([merged, previous_bin], dim=1)) + merged
            merged = self.refine[index](merged) + merged
            previous = F.interpolate(merged, size=grid_size, mode="bilinear", align_corners=True)
            scale_features.append(previous)
        fused = self.fuse(torch.cat(scale_features, dim=1))
        fused = self.fuse_refine(fused) + fused
        return self.classifier(fused)


class PcsnetModel(nn.Module):
    """PCSNet: frozen timm backbone, PFA descriptor with prototypes, and CAS.

    Input: images in ``[0, 1]`` (normalised inside with the backbone's own mean and std, so
    that pseudo-anomaly synthesis can work on natural brightness values).
    In eval mode ``forward`` returns an :class:`InferenceBatch` with ``pred_score`` (max of the
    map) and ``anomaly_map`` at input resolution.

    Args:
        backbone: timm model name; ``wide_resnet50_2.tv_in1k`` are the paper's torchvision weights.
        layers: backbone levels used (three levels at strides 4, 8, 16 in the paper).
        pre_trained: load the backbone's pretrained weights through timm (downloads if not cached).
        backbone_weights: a local checkpoint file (or ``"package:efficientnet_lite0"``) to load
            instead; nothing is downloaded.
        reduce_channels: the channel-halving descriptor stack the paper uses for
            rotation-sensitive categories; ``None`` takes it from ``synthesis_preset`` (False without one).
        grid_stride: input pixels per feature-grid cell (3.5 gives the paper's 64 grid at 224).
        cas_channels: CAS width; ``None`` = half of the backbone's summed channels (896 for WRN-50-2).
        prior_channels: number of smallest prototype distances given to CAS as a prior (200).
        n_nearest: nearest prototypes used by the losses (3).
        blur_sigma: Gaussian blur of the anomaly map at inference (4).
        synthesis_preset: pseudo-anomaly preset (name or config) of the training forward; ``None`` until
            :meth:`PatchExchange.use_preset` is called on ``synthesizer`` (the Lightning model does it once the
            datamodule is known).
        seed: the initial weights, the pseudo-anomalies, the batch mixing and the CAS dropout follow from it
            alone, not from torch's global RNG (each draws from a generator of its own, saved in ``state_dict``).
        keep_anomalous_distances: return all prototype distances of the pseudo-anomalous images in training
            (needed by the official anomalous loss term only).
    """

    def __init__(
        self,
        backbone: str = "wide_resnet50_2.tv_in1k",
        layers: Sequence[str] = ("layer1", "layer2", "layer3"),
        pre_trained: bool = True,
        backbone_weights: str | None = None,
        reduce_channels: bool | None = None,
        grid_stride: float = 3.5,
        cas_channels: int | None = None,
        prior_channels: int = 200,
        n_nearest: int = 3,
        blur_sigma: float = 4.0,
        synthesis_preset: str | PatchExchangeConfig | None = None,
        seed: int = 0,
        keep_anomalous_distances: bool = False,
    ) -> None:
        super().__init__()
        if grid_stride <= 0:
            msg = f"grid_stride must be positive, got {grid_stride}."
            raise ValueError(msg)
        self.synthesizer = PatchExchange(synthesis_preset, seed=seed, stream=RandomStream.SYNTHESIS)
        if reduce_channels is None:
            reduce_channels = self.synthesizer.config is not None and self.synthesizer.config.rotation_sensitive
        with torch.random.fork_rng(devices=[]):  # initial weights from ``seed``; the caller's RNG is left as it was
            torch.manual_seed(seed)
            self.feature_extractor = build_feature_extractor(backbone, layers, pre_trained, backbone_weights)
            self.descriptor = Descriptor(self.feature_extractor.out_dims, reduce_channels=reduce_channels)
            self.memory = PrototypeMemory()
            self.radius = nn.Parameter(torch.full((1,), 1e-5))
            self.cas_channels = cas_channels or sum(self.feature_extractor.out_dims) // 2
            if not 0 < self.cas_channels <= self.descriptor.out_channels:
                msg = (
                    f"cas_channels must be in [1, {self.descriptor.out_channels}] for this backbone, "
                    f"got {cas_channels}."
                )
                raise ValueError(msg)
            self.cas = ContextAwareSegmentation(self.cas_channels, prior_channels, seed=seed)
        self.mixer = RandomSubset(seed=seed, fraction=0.5, stream=RandomStream.MIXING)
        self.keep_anomalous_distances = keep_anomalous_distances
        self.prior_channels = prior_channels
        self.n_nearest = n_nearest
        self.grid_stride = grid_stride
        self.anomaly_map_generator = AnomalyMapGenerator(sigma=blur_sigma)
        mean, std = input_normalization(self.feature_extractor)
        self.register_buffer("input_mean", mean, persistent=False)
        self.register_buffer("input_std", std, persistent=False)
        # Channels-last (NHWC) convolution weights and activations: on CPU, oneDNN's convolutions are faster
        # in this layout and bilinear resizing of many channels converts to it internally anyway (README, "Speed").
        self.to(memory_format=torch.channels_last)

    def train(self, mode: bool = True) -> "PcsnetModel":
        """Switch modes; the backbone stays frozen in eval mode."""
        super().train(mode)
        self.feature_extractor.eval()
        return self

    def grid_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """Feature-grid size for an input of ``image_size`` (64 x 64 at 224 x 224 with stride 3.5)."""
        return (max(1, round(image_size[0] / self.grid_stride)), max(1, round(image_size[1] / self.grid_stride)))

    def pyramid_bins(self, grid_size: tuple[int, int]) -> list[tuple[int, int]]:
        """CAS pooling sizes: the paper's (60, 30, 15, 8) at a 64 grid, scaled to ``grid_size``."""
        return [
            (max(1, round(b * grid_size[0] / REFERENCE_GRID)), max(1, round(b * grid_size[1] / REFERENCE_GRID)))
            for b in REFERENCE_PYRAMID_BINS
        ]

    def extract_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Frozen backbone features of ``images`` in ``[0, 1]`` (channels-last)."""
        with torch.no_grad():
            normalised = ((images - self.input_mean) / self.input_std).contiguous(memory_format=torch.channels_last)
            features = self.feature_extractor(normalised)
        return list(features.values())

    def describe(self, images: torch.Tensor) -> torch.Tensor:
        """PFA descriptor ``(B, C, gh, gw)`` of ``images``."""
        return self.descriptor(self.extract_features(images), self.grid_size(images.shape[-2:]))

    def initialize_prototypes(self, descriptor_sum: torch.Tensor, count: int) -> None:
        """Set the prototypes to the mean descriptor, given its sum ``(C, gh, gw)`` over ``count`` images."""
        if count < 1:
            msg = "Cannot initialise prototypes from zero training images."
            raise ValueError(msg)
        num_positions = descriptor_sum.shape[-2] * descriptor_sum.shape[-1]
        if num_positions < self.prior_channels:
            msg = (
                f"The feature grid {tuple(descriptor_sum.shape[-2:])} has {num_positions} positions, fewer than "
                f"prior_channels={self.prior_channels}: use larger images (at least "
                f"{int(self.grid_stride * self.prior_channels**0.5) + 1} px a side) or a smaller prior_channels."
            )
            raise ValueError(msg)
        self.memory.set_prototypes(descriptor_sum / count)

    def _check_input(self, images: torch.Tensor) -> None:
        if images.ndim != 4 or images.shape[1] != self.input_mean.shape[1]:
            msg = f"Expected images of shape (B, {self.input_mean.shape[1]}, H, W), got {tuple(images.shape)}."
            raise ValueError(msg)
        self.anomaly_map_generator.check_size(images.shape[-2:])
        grid = self.grid_size(images.shape[-2:])
        if self.memory.is_initialized and grid[0] * grid[1] != self.memory.num_prototypes:
            msg = (
                f"Input size {tuple(images.shape[-2:])} gives a {grid} feature grid, but the prototypes were built "
                f"for {self.memory.num_prototypes} positions: feed images of the size used in training."
            )
            raise ValueError(msg)

    def _nearest(self, descriptor: torch.Tensor, count: int) -> torch.Tensor:
        """The ``count`` smallest prototype distances per position, ascending: ``(B, HW, count)``."""
        return self.memory.nearest(descriptor, count)

    def _nearest_and_distances(
        self, descriptor: torch.Tensor, count: int, keep_distances: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:meth:`_nearest`, and all distances ``(B, HW, N)`` when ``keep_distances``, from one distance matrix."""
        if not keep_distances:
            return self._nearest(descriptor, count), None
        distances = self.memory.distances(descriptor)
        return torch.topk(distances, count, dim=-1, largest=False).values, distances

    def _segment(self, descriptor: torch.Tensor, prior_distances: torch.Tensor) -> torch.Tensor:
        """CAS scores at grid resolution from a descriptor and its sorted smallest distances."""
        grid_size = descriptor.shape[-2:]
        prior = (
            prior_distances[..., : self.prior_channels]
            .transpose(1, 2)
            .reshape(descriptor.shape[0], self.prior_channels, *grid_size)
        )
        return self.cas(descriptor[:, : self.cas_channels], prior, self.pyramid_bins(tuple(grid_size)))

    def forward(self, images: torch.Tensor) -> InferenceBatch | PcsnetTrainingOutput:
        """Score ``images (B, 3, H, W)`` in ``[0, 1]``: anomaly map at input size and its maximum.

        In training mode, return instead the :class:`PcsnetTrainingOutput` of the batch: the synthesizer makes
        pseudo-anomalous copies of ``images``, the mixer picks half of the batch for the mixed view
        (:meth:`training_outputs`).
        """
        if self.training:
            anomalous, anomaly_mask = self.synthesizer(images)
            mixed_is_anomalous = self.mixer(images.shape[0], images.device)
            outputs = self.training_outputs(images, anomalous, mixed_is_anomalous, self.keep_anomalous_distances)
            return dataclasses.replace(outputs, anomaly_mask=anomaly_mask, mixed_is_anomalous=mixed_is_anomalous)
        self._check_input(images)
        descriptor = self.describe(images)
        nearest = self._nearest(descriptor, max(self.prior_channels, self.n_nearest))
        scores = self._segment(descriptor, nearest)
        anomaly_map = self.anomaly_map_generator(scores, images.shape[-2:])
        return InferenceBatch(pred_score=anomaly_map.amax(dim=(-3, -2, -1)), anomaly_map=anomaly_map)

    def training_outputs(
        self,
        images: torch.Tensor,
        anomalous: torch.Tensor,
        mixed_is_anomalous: torch.Tensor,
        keep_anomalous_distances: bool = False,
    ) -> PcsnetTrainingOutput:
        """Run the three views of a training batch.

        The mixed view takes image ``b`` from ``anomalous`` where ``mixed_is_anomalous[b]`` and
        from ``images`` elsewhere. The frozen backbone runs once on ``images`` and ``anomalous``
        together; the mixed view reuses those features (the backbone is per-image). When the
        descriptor is per-image too (no BatchNorm in training mode), the mixed view's
        descriptor and distances are reused as well; the results are the same either way.
        """
        self._check_input(images)
        batch = images.shape[0]
        grid_size = self.grid_size(images.shape[-2:])
        features = self.extract_features(torch.cat([images, anomalous]))
        normal_features = [f[:batch] for f in features]
        anomalous_features = [f[batch:] for f in features]
        select = mixed_is_anomalous.view(-1, 1, 1, 1)
        n_sorted = max(self.prior_channels, self.n_nearest)

        if self.descriptor.is_batch_dependent:
            normal_descriptor = self.descriptor(normal_features, grid_size)
            anomalous_descriptor = self.descriptor(anomalous_features, grid_size)
            mixed_features = [
                torch.where(select, a, n) for n, a in zip(normal_features, anomalous_features, strict=True)
            ]
            mixed_descriptor = self.descriptor(mixed_features, grid_size)
            normal_nearest = self._nearest(normal_descriptor, self.n_nearest)
            anomalous_nearest, anomalous_distances = self._nearest_and_distances(
                anomalous_descriptor, self.n_nearest, keep_anomalous_distances
            )
            mixed_sorted = self._nearest(mixed_descriptor, n_sorted)
        else:
            both = self.descriptor(features, grid_size)
            both_sorted, distances = self._nearest_and_distances(both, n_sorted, keep_anomalous_distances)
            normal_nearest = both_sorted[:batch, :, : self.n_nearest]
            anomalous_nearest = both_sorted[batch:, :, : self.n_nearest]
            anomalous_distances = distances[batch:] if distances is not None else None
            mixed_descriptor = torch.where(select, both[batch:], both[:batch])
            mixed_sorted = torch.where(select.view(-1, 1, 1), both_sorted[batch:], both_sorted[:batch])

        scores = self._segment(mixed_descriptor, mixed_sorted)
        segmentation = F.interpolate(scores, size=images.shape[-2:], mode="bilinear", align_corners=True)
        return PcsnetTrainingOutput(
            normal_nearest=normal_nearest,
            anomalous_nearest=anomalous_nearest,
            anomalous_distances=anomalous_distances,
            mixed_nearest=mixed_sorted[..., : self.n_nearest],
            segmentation=segmentation,
            grid_size=grid_size,
        )
