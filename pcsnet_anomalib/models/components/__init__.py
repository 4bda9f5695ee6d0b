"""Building blocks shared by the models of this package."""

from .coord_conv import AddCoords, CoordConv2d
from .prototype_memory import PrototypeMemory

__all__ = ["AddCoords", "CoordConv2d", "PrototypeMemory"]
