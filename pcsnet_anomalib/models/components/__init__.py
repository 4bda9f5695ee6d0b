"""Building blocks shared by the models of this package."""

from .coord_conv import AddCoords, CoordConv2d
from .prototype_memory import PrototypeMemory
from .seeded import RandomSubset, SeededDropout2d, SeededModule, stream_seed

__all__ = [
    "AddCoords",
    "CoordConv2d",
    "PrototypeMemory",
    "RandomSubset",
    "SeededDropout2d",
    "SeededModule",
    "stream_seed",
]
