"""CoordConv: a convolution that also sees where it is.

anomalib ships a ``CoordConv2d`` inside its CFA model, but it subclasses ``nn.Conv2d`` and
keeps a second, unused weight tensor of the parent class (dead parameters in every checkpoint
and optimizer state) and builds its coordinates in float32 on the CPU. This version holds one
convolution and creates the coordinate channels in the input's dtype on the input's device.
"""

import torch
from torch import nn


class AddCoords(nn.Module):
    """Append two channels with the row and column coordinate, each spanning ``[-1, 1]``.

    The row coordinate comes first, as in the CoordConv code PCSNet uses.
    """

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Return ``features`` with ``(row, column)`` coordinate channels appended."""
        batch, _, height, width = features.shape
        rows = torch.linspace(-1.0, 1.0, height, device=features.device, dtype=features.dtype)
        cols = torch.linspace(-1.0, 1.0, width, device=features.device, dtype=features.dtype)
        row_channel = rows.view(1, 1, height, 1).expand(batch, 1, height, width)
        col_channel = cols.view(1, 1, 1, width).expand(batch, 1, height, width)
        return torch.cat([features, row_channel, col_channel], dim=1)


class CoordConv2d(nn.Module):
    """A convolution over the features plus their two coordinate channels."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, bias: bool = True) -> None:
        super().__init__()
        self.add_coords = AddCoords()
        self.conv = nn.Conv2d(in_channels + 2, out_channels, kernel_size, padding=kernel_size // 2, bias=bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Convolve ``features`` with coordinates appended."""
        return self.conv(self.add_coords(features))
