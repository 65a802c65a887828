"""What LFAN and CAN share (SPEC-ABAW5 §3): two backbones inside the model, a TCN + BatchNorm per modality.

* ``frame`` (B, T, 3, 40, 40) -> IR-50 (``backbone``) -> (B, T, 512); all B x T frames in one pass
  while BatchNorm layers use batch statistics (``model.ir50.embed_frames``).
* ``logmel`` (B, T, 96, 64) -> VGGish (``audio_backbone``) -> (B, T, 128)
  (``model.audio_backbone.embed_patches``). The authors' reader gives (B, 64, T, 96) and their
  model permutes it to (B, T, 96, 64) before ``view(B * T, 96, 64)``: the same patches.
* ``egemaps_functionals`` (B, T, 88), z-scored by the reader.

Each stream then goes through its TCN (widths per model and modality, kernel 5, ``nn.Dropout``:
``TcnDropout.ELEMENT``) and a ``BatchNorm1d`` over (B, C, T). The authors' visual wrapper also
holds an 8-class FER head (``logits``) that no forward uses; it is kept frozen as
``visual_logits`` so that their state dicts load strictly (and the parameter counts match).

Release: three groups, visual and audio together (``model.freezing.abaw5_release_groups``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from configs import Modality, ModelConfig
from model.audio_backbone import EMBEDDING_DIM as AUDIO_EMBEDDING_DIM
from model.audio_backbone import embed_patches
from model.freezing import ReleasableModel, abaw5_release_groups, release_groups_for
from model.ir50 import EMBEDDING_DIM as VISUAL_EMBEDDING_DIM
from model.ir50 import IR50, embed_frames
from model.tcn import TcnDropout, TemporalConvNet
from vggish.network import VGGish

ABAW5_MODALITIES = (Modality.FRAME, Modality.LOGMEL, Modality.EGEMAPS_FUNCTIONALS)  # the authors' default order
AUTHORS_FER_CLASSES = 8  # outputs of the unused head of their visual backbone


def stream_input_dim(modality: Modality) -> int:
    """Width of a modality's stream at the TCN input (after its backbone, if any)."""
    if modality is Modality.FRAME:
        return VISUAL_EMBEDDING_DIM
    if modality is Modality.LOGMEL:
        return AUDIO_EMBEDDING_DIM
    return modality.feature_dim


@dataclass(frozen=True)
class TemporalSettings:
    """The TCNs of an ABAW5 model (the authors' constants, sucv/ABAW3 ``configs.py``).

    Attributes:
        channels: TCN widths per modality name.
        kernel_size: TCN kernel (their ``-tcn_kernel_size`` 5).
        dropout: TCN dropout (LFAN 0.1, CAN 0.2).
    """

    channels: Mapping[str, tuple[int, ...]]
    kernel_size: int = 5
    dropout: float = 0.1


class Abaw5Model(ReleasableModel):
    """Backbones and per-modality TCN + BatchNorm of LFAN and CAN; subclasses add fusion and head.

    Args:
        config: the model section (``backbone_chunk_size``, ``audio_chunk_size``, ``frozen_batchnorm``,
            ``release_groups``, ``output_dim`` are read).
        modalities: the streams, in the order the fusion stacks them (the first leads LFAN).
        backbone: the IR-50 when ``frame`` is read, else None.
        audio_backbone: VGGish when ``logmel`` is read, else None.
        temporal: TCN widths, kernel and dropout.
    """

    def __init__(self, config: ModelConfig, modalities: tuple[Modality, ...], backbone: IR50 | None,
                 audio_backbone: VGGish | None, temporal: TemporalSettings) -> None:
        super().__init__(backbone, frozen_batchnorm=config.frozen_batchnorm or "train")
        self.stream_modalities = modalities
        self.output_dim = config.output_dim
        self.backbone_chunk_size = config.backbone_chunk_size
        self.audio_chunk_size = config.audio_chunk_size
        if backbone is not None:
            self.visual_logits = nn.Linear(VISUAL_EMBEDDING_DIM, AUTHORS_FER_CLASSES)  # unused, frozen
        self.audio_backbone = audio_backbone
        self.tcns = nn.ModuleDict({
            m.value: TemporalConvNet(stream_input_dim(m), tuple(temporal.channels[m.value]), temporal.kernel_size,
                                     temporal.dropout, TcnDropout.ELEMENT)
            for m in modalities
        })
        self.tcn_norms = nn.ModuleDict({m.value: nn.BatchNorm1d(temporal.channels[m.value][-1]) for m in modalities})
        visual, audio = backbone is not None, audio_backbone is not None
        visual_groups = release_groups_for(backbone.mode, config.release_groups or "authors") if visual else None
        groups = abaw5_release_groups(visual_groups, audio)
        frozen = tuple(name for name, present in (("backbone", visual), ("visual_logits", visual),
                                                  ("audio_backbone", audio)) if present)
        self.set_release_plan(groups, frozen=frozen)

    @property
    def modalities(self) -> tuple[str, ...]:
        """Input keys the model reads, in fusion order."""
        return tuple(m.value for m in self.stream_modalities)

    def stream_widths(self) -> tuple[int, ...]:
        """Width of each encoded stream (its TCN's last level), in fusion order."""
        return tuple(self.tcns[m].out_channels for m in self.modalities)

    def encode(self, inputs: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
        """TCN + BatchNorm output of every stream, in fusion order: [(B, T, C_m), ...].

        An optional ``inputs["mask"]`` (B, T) bool marks the real (unpadded) frames; padded frames and
        patches skip the backbones (zero embeddings). The BatchNorm layers after the TCNs still see
        every step of the batch.
        """
        missing = [name for name in self.modalities if name not in inputs]
        if missing:
            raise KeyError(f"model inputs lack modalities {missing} (it reads {list(self.modalities)})")
        valid = inputs.get("mask")
        streams = []
        for modality in self.stream_modalities:
            x = inputs[modality.value]
            if modality is Modality.FRAME:
                x = embed_frames(self.backbone, x, self.backbone_chunk_size, valid=valid)  # (B, T, 512)
            elif modality is Modality.LOGMEL:
                x = embed_patches(self.audio_backbone, x, self.audio_chunk_size, valid=valid)  # (B, T, 128)
            x = self.tcns[modality.value](x).transpose(1, 2)  # (B, C, T)
            streams.append(self.tcn_norms[modality.value](x).transpose(1, 2))  # (B, T, C)
        return streams

