"""CAN, the channel attention network of the authors' ABAW5 system (SPEC-ABAW5 §3).

sucv/ABAW3 ``models/model.py`` ``CAN`` and ``AttentionFusion``: the streams of ``model.abaw5``
(TCN + BatchNorm per modality), each projected per step to 128 values, p_m = Linear(C_m -> 128);
c = [p_1; ...; p_M] (128 M); a softmax over the 128 M features of Linear(c) gates c, g = a * c; then
y = tanh(fc2(leaky_relu_0.01(BatchNorm1d(fc1(g))))). The authors also build a 1x1 ``conv_c``
that no forward uses: it is kept (frozen) so that their state dicts load strictly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from configs import Modality, ModelConfig
from model.abaw5 import Abaw5Model, TemporalSettings
from model.ir50 import IR50
from vggish.network import VGGish


def _can_channels() -> dict[str, tuple[int, ...]]:
    # sucv/ABAW3 configs.py "tcn_settings"
    return {"frame": (256, 256, 128, 128, 128), "logmel": (128, 128, 64, 64, 64), "egemaps_functionals": (64, 64, 32, 32)}


@dataclass(frozen=True)
class CanSettings:
    """CAN's constants (sucv/ABAW3 ``configs.py`` and ``models/model.py``)."""

    temporal: TemporalSettings = field(default_factory=lambda: TemporalSettings(_can_channels(), 5, 0.2))
    projection_dim: int = 128  # AttentionFusion(num_out_feats=128)
    leaky_slope: float = 0.01  # F.leaky_relu's default


class ChannelAttentionFusion(nn.Module):
    """[(B, T, C_m)] -> (B, T, M * d): per-step projections, gated by a softmax over all M * d features.

    Args:
        input_dims: width of each stream, in fusion order.
        projection_dim: d, each stream's projected width (128).
    """

    def __init__(self, input_dims: Sequence[int], projection_dim: int = 128) -> None:
        super().__init__()
        self.out_dim = projection_dim * len(input_dims)
        self.projections = nn.ModuleList(nn.Linear(dim, projection_dim) for dim in input_dims)
        self.gate = nn.Linear(self.out_dim, self.out_dim)

    def forward(self, streams: Sequence[torch.Tensor], return_attention: bool = False
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The gated features (B, T, M * d), and the gate a (B, T, M * d) (sums to 1 per step) when asked."""
        concatenated = torch.cat([layer(x) for layer, x in zip(self.projections, streams, strict=True)], dim=-1)
        weights = torch.softmax(self.gate(concatenated), dim=-1)
        gated = weights * concatenated
        return (gated, weights) if return_attention else gated


class CanHead(nn.Module):
    """fc1 -> BatchNorm1d over (B, C, T) -> leaky ReLU -> fc2 -> tanh, per step."""

    def __init__(self, width: int, output_dim: int, leaky_slope: float = 0.01) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, width)
        self.norm = nn.BatchNorm1d(width)
        self.fc2 = nn.Linear(width, output_dim)
        self.leaky_slope = leaky_slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, C) -> (B, T, output_dim)
        x = self.norm(self.fc1(x).transpose(1, 2)).transpose(1, 2)
        return torch.tanh(self.fc2(F.leaky_relu(x, self.leaky_slope)))


class CAN(Abaw5Model):
    """Channel attention network: ``model(inputs)`` -> (B, T, output_dim) in (-1, 1).

    Args:
        config: the model section.
        modalities: the streams, in fusion order.
        backbone: the IR-50 when ``frame`` is read.
        audio_backbone: VGGish when ``logmel`` is read.
        settings: CAN's constants (tests set the dropout to 0).
    """

    def __init__(self, config: ModelConfig, modalities: tuple[Modality, ...], backbone: IR50 | None,
                 audio_backbone: VGGish | None, settings: CanSettings | None = None) -> None:
        settings = settings or CanSettings()
        super().__init__(config, modalities, backbone, audio_backbone, settings.temporal)
        self.fusion = ChannelAttentionFusion(self.stream_widths(), settings.projection_dim)
        # the authors' conv_c = Conv1d(128 M, 128, 1): built, never used; frozen here (see module doc)
        self.unused_conv = nn.Conv1d(self.fusion.out_dim, settings.projection_dim, 1).requires_grad_(False)
        self.head = CanHead(self.fusion.out_dim, self.output_dim, settings.leaky_slope)

    def forward_with_attention(self, inputs: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Outputs (B, T, output_dim) and the fusion gate (B, T, M * 128)."""
        gated, weights = self.fusion(self.encode(inputs), return_attention=True)
        return self.head(gated), weights

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:  # -> (B, T, output_dim)
        return self.forward_with_attention(inputs)[0]
