"""Temporal convolutional network: causal, dilated, weight-normalised 1-D convolutions (SPEC §4).

Level ``i`` of the network is one ``TemporalBlock`` with dilation ``2**i`` (1, 2, 4, 8 for four
levels): two weight-normalised Conv1d layers of kernel ``k``, each followed by LeakyReLU and
dropout, plus a residual (a 1x1 convolution when the width changes). Causal means the output at
step t sees inputs at steps <= t only: each convolution is padded by ``(k - 1) * d`` on the left,
which gives the same outputs as the usual "pad both sides, then chomp the right end".

Dropout differs between the authors' two generations: their ABAW2 TCN dropped whole channels
(``Dropout2d`` on (N, C, T), here ``Dropout1d``), their ABAW5 TCN (sucv/ABAW3
``models/temporal_convolutional_model.py``) drops single values (``nn.Dropout``): ``TcnDropout``.
Both have the same modules at the same indices, so state dicts do not depend on it.
"""

from __future__ import annotations

import enum
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm


class TcnDropout(enum.StrEnum):
    """What a TCN's dropout zeroes: whole channels over time (ABAW2) or single values (ABAW5)."""

    CHANNEL = "channel"
    ELEMENT = "element"


def _dropout(kind: TcnDropout | str, rate: float) -> nn.Module:
    return nn.Dropout1d(rate) if TcnDropout(kind) is TcnDropout.CHANNEL else nn.Dropout(rate)


def causal_padding(kernel_size: int, dilation: int) -> int:
    """Steps of left padding that keep a dilated convolution causal and the length unchanged."""
    return (kernel_size - 1) * dilation


class CausalConv1d(nn.Module):
    """Weight-normalised dilated Conv1d padded on the left only: (N, C_in, T) -> (N, C_out, T)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int) -> None:
        super().__init__()
        self.left_padding = causal_padding(kernel_size, dilation)
        self.conv = weight_norm(nn.Conv1d(in_channels, out_channels, kernel_size, dilation=dilation))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C_in, T)
        return self.conv(F.pad(x, (self.left_padding, 0)))  # (N, C_out, T)


class TemporalBlock(nn.Module):
    """Two causal convolutions with LeakyReLU and dropout, and a residual connection."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, dilation: int, dropout: float,
        dropout_kind: TcnDropout | str = TcnDropout.CHANNEL,
    ) -> None:
        super().__init__()
        # Dropout1d zeroes whole channels over time: what the authors' ABAW2 Dropout2d on (N, C, T)
        # tensors did in the PyTorch releases they used; their ABAW5 TCN uses nn.Dropout.
        self.net = nn.Sequential(
            CausalConv1d(in_channels, out_channels, kernel_size, dilation),
            nn.LeakyReLU(),
            _dropout(dropout_kind, dropout),
            CausalConv1d(out_channels, out_channels, kernel_size, dilation),
            nn.LeakyReLU(),
            _dropout(dropout_kind, dropout),
        )
        self.residual: nn.Module = nn.Identity()
        if in_channels != out_channels:
            self.residual = nn.Conv1d(in_channels, out_channels, 1)
            nn.init.xavier_uniform_(self.residual.weight, gain=math.sqrt(2.0))
        self.activation = nn.LeakyReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C_in, T) -> (N, C_out, T)
        return self.activation(self.net(x) + self.residual(x))


class TemporalConvNet(nn.Module):
    """Stack of temporal blocks with dilations 1, 2, 4, ...; the API is time-major (B, T, C).

    Args:
        in_channels: width of one input step.
        channels: output width of each level, e.g. (128, 128, 128, 128).
        kernel_size: convolution kernel (5 in the paper).
        dropout: dropout rate after each convolution (0.1 in the paper).
        dropout_kind: ``channel`` (ABAW2, the default) or ``element`` (ABAW5), see ``TcnDropout``.
    """

    def __init__(
        self, in_channels: int, channels: tuple[int, ...], kernel_size: int = 5, dropout: float = 0.1,
        dropout_kind: TcnDropout | str = TcnDropout.CHANNEL,
    ) -> None:
        super().__init__()
        if not channels:
            raise ValueError("a TCN needs at least one level")
        widths = (in_channels, *channels)
        self.blocks = nn.Sequential(
            *(
                TemporalBlock(widths[level], widths[level + 1], kernel_size, 2**level, dropout, dropout_kind)
                for level in range(len(channels))
            )
        )
        self.out_channels = channels[-1]

    @property
    def receptive_field(self) -> int:
        """Steps of input that one output step sees (two convolutions per level)."""
        kernel = self.blocks[0].net[0].conv.kernel_size[0]
        return 1 + 2 * (kernel - 1) * sum(2**level for level in range(len(self.blocks)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, C_in) -> (B, T, C_out)
        return self.blocks(x.transpose(1, 2)).transpose(1, 2)
