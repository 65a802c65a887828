"""LFAN, the leader-follower attention network of the authors' ABAW5 system (SPEC-ABAW5 §3).

sucv/ABAW3 ``models/model.py`` ``LFAN``: the streams of ``model.abaw5`` (TCN + BatchNorm per
modality), the 2-head attention across modalities per step (``model.attention_fusion``), and per
frame y = tanh(Linear([x_leader; f])): the leader's (first modality's) stream next to the fused
one, 128 + 96 = 224 -> output_dim with the default modalities.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from configs import Modality, ModelConfig
from model.abaw5 import Abaw5Model, TemporalSettings
from model.attention_fusion import CrossModalAttention
from model.ir50 import IR50
from vggish.network import VGGish


def _lfan_channels() -> dict[str, tuple[int, ...]]:
    # sucv/ABAW3 configs.py "tcn" "channels": video 512//2, 512//2, 512//4, 512//4; logmel 128//2 ... 128//4
    return {"frame": (256, 256, 128, 128), "logmel": (64, 64, 32, 32), "egemaps_functionals": (32, 32, 32, 32)}


@dataclass(frozen=True)
class LfanSettings:
    """LFAN's constants (sucv/ABAW3 ``configs.py``, ``main.py`` and ``models/model.py``)."""

    temporal: TemporalSettings = field(default_factory=lambda: TemporalSettings(_lfan_channels(), 5, 0.1))
    modal_dim: int = 32  # -modal_dim: each modality's share of the fused vector
    num_heads: int = 2  # -num_heads
    fusion_dropout: float = 0.1  # MultimodalTransformerEncoder(dropout=0.1)


class LFAN(Abaw5Model):
    """Leader-follower attention network: ``model(inputs)`` -> (B, T, output_dim) in (-1, 1).

    Args:
        config: the model section.
        modalities: the streams; the first leads.
        backbone: the IR-50 when ``frame`` is read.
        audio_backbone: VGGish when ``logmel`` is read.
        settings: LFAN's constants (tests set dropouts to 0).
    """

    def __init__(self, config: ModelConfig, modalities: tuple[Modality, ...], backbone: IR50 | None,
                 audio_backbone: VGGish | None, settings: LfanSettings | None = None) -> None:
        settings = settings or LfanSettings()
        super().__init__(config, modalities, backbone, audio_backbone, settings.temporal)
        widths = self.stream_widths()
        self.fusion = CrossModalAttention(widths, settings.modal_dim, settings.num_heads, settings.fusion_dropout)
        self.head = nn.Linear(widths[0] + self.fusion.out_dim, self.output_dim)

    def forward_with_attention(self, inputs: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Outputs (B, T, output_dim) and fusion weights (B, T, H, M, M), modalities in ``modalities`` order."""
        streams = self.encode(inputs)
        fused, weights = self.fusion(streams, return_attention=True)  # (B, T, M * modal_dim)
        features = torch.cat([streams[0], fused], dim=-1)  # (B, T, C_leader + M * modal_dim)
        return torch.tanh(self.head(features)), weights

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:  # -> (B, T, output_dim)
        return self.forward_with_attention(inputs)[0]
