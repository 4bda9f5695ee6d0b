"""Building blocks shared by the models of this package."""

from .checks import (
    ArchitectureCheckpointMixin,
    IncompatibleCheckpointError,
    NonFiniteLossError,
    check_finite_loss,
    shape_differences,
)
from .coord_conv import AddCoords, CoordConv2d
from .prototype_memory import PrototypeMemory
from .seeded import RandomSubset, SeededDropout2d, SeededModule, stream_seed

__all__ = [
    "AddCoords",
    "ArchitectureCheckpointMixin",
    "CoordConv2d",
    "IncompatibleCheckpointError",
    "NonFiniteLossError",
    "PrototypeMemory",
    "RandomSubset",
    "SeededDropout2d",
    "SeededModule",
    "check_finite_loss",
    "shape_differences",
    "stream_seed",
]
