"""A fixed memory of per-position prototypes and distances to it.

PCSNet (like CFA) keeps one prototype per feature-grid position: the mean descriptor of the
k training images at that position. Distances from every position of a query to every
prototype are Euclidean, computed as ``sqrt(|f|^2 + |c|^2 - 2 f.c)``. The squared norms of the
prototypes never change after initialisation, so they are stored instead of recomputed. The
nearest prototypes of a query are found on ``|c|^2 - 2 f.c`` (same order: ``|f|^2`` is constant
along a row), so ``|f|^2``, the floor and the square root are applied to the selected few only.
"""

import torch
from anomalib.models.components import DynamicBufferMixin

# Floor for squared distances before the square root: keeps rounding below zero and the
# gradient of sqrt at zero finite (identical images give distances of exactly zero).
_MIN_SQUARED_DISTANCE = 1e-12


class PrototypeMemory(DynamicBufferMixin):
    """Per-position prototypes ``(N, C)`` with their squared norms; sizes are set at initialisation."""

    prototypes: torch.Tensor
    prototype_sq_norms: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("prototypes", torch.empty(0))
        self.register_buffer("prototype_sq_norms", torch.empty(0))

    @property
    def is_initialized(self) -> bool:
        """Whether prototypes were set (by :meth:`set_prototypes` or a loaded checkpoint)."""
        return self.prototypes.numel() > 0

    @property
    def num_prototypes(self) -> int:
        """Number of prototypes ``N`` (grid positions of the training descriptors)."""
        return self.prototypes.shape[0] if self.is_initialized else 0

    def set_prototypes(self, mean_descriptor: torch.Tensor) -> None:
        """Store the per-position mean descriptor ``(C, H, W)`` as ``H*W`` prototypes."""
        self.set_vectors(mean_descriptor.flatten(1).transpose(0, 1))

    def set_vectors(self, prototypes: torch.Tensor) -> None:
        """Store ``prototypes (N, C)`` as they are (e.g. k-means centroids of whole flattened feature maps)."""
        prototypes = prototypes.detach().contiguous()
        self.prototypes = prototypes
        self.prototype_sq_norms = prototypes.pow(2).sum(dim=1)

    def distances(self, descriptor: torch.Tensor) -> torch.Tensor:
        """Euclidean distances ``(B, H*W, N)`` from each position of ``descriptor (B, C, H, W)`` to all prototypes."""
        query_sq_norms, partial = self._partial_squared_distances(descriptor)
        return _to_distances(partial + query_sq_norms)

    def nearest(self, descriptor: torch.Tensor, count: int) -> torch.Tensor:
        """The ``count`` smallest distances ``(B, H*W, count)`` per position of ``descriptor``, ascending."""
        query_sq_norms, partial = self._partial_squared_distances(descriptor)
        smallest = torch.topk(partial, count, dim=-1, largest=False).values
        return _to_distances(smallest + query_sq_norms)

    def nearest_indices(self, descriptor: torch.Tensor) -> torch.Tensor:
        """Index ``(B, H*W)`` of the nearest prototype of each position of ``descriptor``."""
        _, partial = self._partial_squared_distances(descriptor)
        return partial.argmin(dim=-1)

    def _partial_squared_distances(self, descriptor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``|f|^2`` ``(B, HW, 1)`` of the queries of ``descriptor`` and ``|c|^2 - 2 f.c`` ``(B, HW, N)``."""
        if not self.is_initialized:
            msg = "Prototypes are not initialised: train the model (or load a trained checkpoint) before inference."
            raise RuntimeError(msg)
        queries = descriptor.flatten(2).transpose(1, 2)  # (B, HW, C); contiguous for a channels-last descriptor
        partial = torch.baddbmm(
            self.prototype_sq_norms.expand(queries.shape[0], 1, -1),
            queries,
            self.prototypes.t().expand(queries.shape[0], -1, -1),
            alpha=-2.0,
        )
        return queries.pow(2).sum(dim=2, keepdim=True), partial


def _to_distances(squared: torch.Tensor) -> torch.Tensor:
    return squared.clamp_min(_MIN_SQUARED_DISTANCE).sqrt()
