"""PRN's multi-scale prototypes: k-means centroids of whole feature maps of the normal training images.

Per level, each image's feature map ``(c, h, w)`` is one vector of ``c*h*w`` values; ``K = max(1,
floor(ratio * N))`` centroids of the N normal training images' vectors are the prototypes (U: sklearn's k-means++
with ``random_state=0``, ratio 0.1; ``max(1, .)`` because U fails for N < 10). At every forward each image is
matched to its nearest prototype by Euclidean distance, per level independently.

The k-means here is torch (anomalib ships none that fits: its ``KMeans`` draws initial centres with replacement
from torch's global RNG and stops after 10 iterations), with k-means++ seeding from a seeded ``torch.Generator``
and ``n_init`` restarts, like sklearn's defaults. The prototypes are :class:`PrototypeMemory` buffers: sized at
training time, saved in the state dict, constants of the exported graph; the matching uses one matrix product
(``|P|^2 - 2 f.P``) instead of U's B x K copies of the maps.
"""

from collections.abc import Sequence

import torch
from torch import nn

from pcsnet_anomalib.models.components import PrototypeMemory, stream_seed

KMEANS_RESTARTS = 10
KMEANS_MAX_ITER = 300


def number_of_prototypes(num_images: int, ratio: float) -> int:
    """``K = max(1, floor(ratio * N))``; ``ValueError`` for no images or a ratio outside (0, 1]."""
    if num_images < 1:
        msg = "No normal training images to fit Prn's prototypes on: the training set needs normal images."
        raise ValueError(msg)
    if not 0.0 < ratio <= 1.0:
        msg = f"prototype_ratio must be in (0, 1], got {ratio}."
        raise ValueError(msg)
    return max(1, int(ratio * num_images))


def _squared_distances(points: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    return (points.pow(2).sum(1, keepdim=True) - 2 * points @ centres.T + centres.pow(2).sum(1)[None, :]).clamp_min(0.0)


def _kmeans_plus_plus(points: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeding: each next centre drawn with probability proportional to its squared distance."""
    first = int(torch.randint(points.shape[0], (1,), generator=generator))
    centres = [points[first]]
    nearest = _squared_distances(points, points[first : first + 1])[:, 0]
    for _ in range(1, count):
        weights = nearest.cpu().double()
        index = (
            int(torch.multinomial(weights, 1, generator=generator))
            if weights.sum() > 0
            else int(torch.randint(points.shape[0], (1,), generator=generator))
        )
        centres.append(points[index])
        nearest = torch.minimum(nearest, _squared_distances(points, points[index : index + 1])[:, 0])
    return torch.stack(centres)


def kmeans(points: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    """Centroids ``(count, D)`` of ``points (N, D)``: Lloyd's algorithm from k-means++ seeds, best of 10 restarts.

    An empty cluster keeps its centre. The same points, count and seed always give the same centroids.
    """
    generator = torch.Generator().manual_seed(stream_seed(seed, 0))
    points = points.float()
    best, best_inertia = points[:count], float("inf")
    for _ in range(KMEANS_RESTARTS if count > 1 else 1):
        centres = _kmeans_plus_plus(points, count, generator)
        labels = None
        for _ in range(KMEANS_MAX_ITER):
            new_labels = _squared_distances(points, centres).argmin(dim=1)
            if labels is not None and torch.equal(new_labels, labels):
                break
            labels = new_labels
            sums = torch.zeros_like(centres).index_add_(0, labels, points)
            counts = torch.bincount(labels, minlength=count).to(points.dtype)[:, None]
            centres = torch.where(counts > 0, sums / counts.clamp_min(1.0), centres)
        inertia = float(_squared_distances(points, centres).min(dim=1).values.sum())
        if inertia < best_inertia:
            best, best_inertia = centres, inertia
    return best


class MultiScalePrototypes(nn.Module):
    """One :class:`PrototypeMemory` of whole-map prototypes per level; forward returns each image's nearest."""

    def __init__(self, num_levels: int) -> None:
        super().__init__()
        self.memories = nn.ModuleList(PrototypeMemory() for _ in range(num_levels))

    @property
    def is_fitted(self) -> bool:
        """Whether every level has prototypes (fitted, or loaded from a checkpoint)."""
        return all(memory.is_initialized for memory in self.memories)

    def fit(self, features: Sequence[torch.Tensor], ratio: float, seed: int) -> None:
        """Fit each level's prototypes on ``features`` (one ``(N, c_l, h_l, w_l)`` tensor per level, normal images)."""
        count = number_of_prototypes(features[0].shape[0], ratio)
        for level, (memory, level_features) in enumerate(zip(self.memories, features, strict=True)):
            centroids = kmeans(level_features.flatten(1), count, stream_seed(seed, level))
            memory.set_vectors(centroids.to(level_features.dtype))

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Each image's nearest prototype at each level (the shape of ``features``)."""
        nearest = []
        for memory, level in zip(self.memories, features, strict=True):
            index = memory.nearest_indices(level.flatten(1)[:, :, None, None])[:, 0]
            nearest.append(memory.prototypes.index_select(0, index).view(level.shape))
        return nearest
