"""The IR-50 face backbone (ArcFace ResNet-50 "IR" / "IR-SE"), laid out so the authors' weights load as-is.

Module names follow the ArcFace layout that ``res50_ir_0.887.pth`` was saved from (SPEC §4):
``input_layer.{0,1,2}``, ``body.{0..23}.{shortcut_layer,res_layer}.*`` and ``output_layer.{0,3,4}``.
For 40x40 faces (the paper) the first stage keeps the resolution (stride 1), so four stages give a
5x5 map and the output layer is ``Linear(512*5*5, 512)``; for 112x112 faces the original ArcFace
strides (2 in every stage) give 7x7 and ``Linear(512*7*7, 512)``. Weights never encode the strides.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

EMBEDDING_DIM = 512
SE_REDUCTION = 16
DROPOUT = 0.4


class BackboneMode(enum.StrEnum):
    """Residual unit of the backbone: plain improved-residual or with squeeze-excitation."""

    IR = "ir"
    IR_SE = "ir_se"


@dataclass(frozen=True)
class Stage:
    """One stage of the body: ``n_units`` bottlenecks, the first changes width and stride."""

    in_channels: int
    depth: int
    n_units: int


# ResNet-50 IR: 3 + 4 + 14 + 3 = 24 bottleneck units, indexed body.0 .. body.23.
IR50_STAGES = (Stage(64, 64, 3), Stage(64, 128, 4), Stage(128, 256, 14), Stage(256, 512, 3))


@dataclass(frozen=True)
class InputLayout:
    """How a face side maps through the body: stride of the first stage and the final map side."""

    first_stage_stride: int
    output_side: int


# Face side (pixels) -> layout. 40: the authors' model (first stage stride 1); 112: original ArcFace.
INPUT_LAYOUTS = {40: InputLayout(first_stage_stride=1, output_side=5), 112: InputLayout(2, 7)}


def stage_unit_indices(stage: int, stages: tuple[Stage, ...] = IR50_STAGES) -> range:
    """Body indices of the units of ``stage`` (0-based), e.g. stage 3 of IR-50 -> range(21, 24)."""
    start = sum(s.n_units for s in stages[:stage])
    return range(start, start + stages[stage].n_units)


class SEModule(nn.Module):
    """Squeeze-excitation: channel gates from a global average, two 1x1 convolutions."""

    def __init__(self, channels: int, reduction: int = SE_REDUCTION) -> None:
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, channels // reduction, kernel_size=1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(channels // reduction, channels, kernel_size=1, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W)
        gate = self.sigmoid(self.fc2(self.relu(self.fc1(self.avg_pool(x)))))  # (N, C, 1, 1)
        return x * gate


class Subsample(nn.Module):
    """Every ``stride``-th row and column: what ``MaxPool2d(1, stride)`` computes, without its indices.

    The authors' shortcut was a 1x1 max-pool, which dispatches to ``max_pool2d_with_indices`` and
    writes an int64 index per output value at every forward; the strided view gives bit-identical
    values. Neither holds parameters, so the state-dict keys are the same.
    """

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) -> (N, C, ceil(H/s), ceil(W/s))
        return x if self.stride == 1 else x[:, :, :: self.stride, :: self.stride]

    def extra_repr(self) -> str:
        return f"stride={self.stride}"


class BottleneckIR(nn.Module):
    """Improved residual unit: BN-Conv3x3-PReLU-Conv3x3(stride)-BN [-SE], plus a shortcut."""

    def __init__(self, in_channels: int, depth: int, stride: int, squeeze_excite: bool) -> None:
        super().__init__()
        if in_channels == depth:
            self.shortcut_layer: nn.Module = Subsample(stride)  # the authors' MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channels, depth, 1, stride, bias=False), nn.BatchNorm2d(depth)
            )
        layers: list[nn.Module] = [
            nn.BatchNorm2d(in_channels),
            nn.Conv2d(in_channels, depth, 3, 1, 1, bias=False),
            nn.PReLU(depth),
            nn.Conv2d(depth, depth, 3, stride, 1, bias=False),
            nn.BatchNorm2d(depth),
        ]
        if squeeze_excite:
            layers.append(SEModule(depth))
        self.res_layer = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C_in, H, W) -> (N, depth, H/s, W/s)
        return self.res_layer(x) + self.shortcut_layer(x)


class IR50(nn.Module):
    """ArcFace ResNet-50 IR backbone: face crops (N, 3, S, S) -> L2-normalised (N, 512) embeddings.

    Args:
        mode: ``"ir"`` or ``"ir_se"`` (squeeze-excitation in every unit).
        input_size: face side in pixels, a key of ``INPUT_LAYOUTS`` (40 or 112).
    """

    def __init__(self, mode: BackboneMode | str = BackboneMode.IR, input_size: int = 40) -> None:
        super().__init__()
        self.mode = BackboneMode(mode)
        if input_size not in INPUT_LAYOUTS:
            raise ValueError(f"IR-50 supports face sides {sorted(INPUT_LAYOUTS)}, got {input_size}")
        self.input_size = input_size
        layout = INPUT_LAYOUTS[input_size]
        squeeze_excite = self.mode is BackboneMode.IR_SE

        self.input_layer = nn.Sequential(
            nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64)
        )
        units: list[nn.Module] = []
        for stage_index, stage in enumerate(IR50_STAGES):
            first_stride = layout.first_stage_stride if stage_index == 0 else 2
            for unit_index in range(stage.n_units):
                in_channels = stage.in_channels if unit_index == 0 else stage.depth
                stride = first_stride if unit_index == 0 else 1
                units.append(BottleneckIR(in_channels, stage.depth, stride, squeeze_excite))
        self.body = nn.Sequential(*units)
        last_depth = IR50_STAGES[-1].depth
        self.output_layer = nn.Sequential(
            nn.BatchNorm2d(last_depth),
            nn.Dropout(DROPOUT),
            nn.Flatten(),  # logical (C, H, W) order, also for channels_last tensors
            nn.Linear(last_depth * layout.output_side**2, EMBEDDING_DIM),
            nn.BatchNorm1d(EMBEDDING_DIM),
        )

    def pieces(self) -> list[nn.Module]:
        """The backbone as a chain: input layer, the 24 body units, output layer."""
        return [self.input_layer, *self.body, self.output_layer]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, 3, S, S) -> (N, 512)
        x = self.output_layer(self.body(self.input_layer(x)))
        return F.normalize(x, dim=1)

    def embed(self, x: torch.Tensor) -> torch.Tensor:  # (N, 3, S, S) -> (N, 512)
        """Same values as ``forward``, but the frozen head of the chain runs without autograd.

        Every piece before the first one holding a trainable parameter is evaluated under
        ``torch.no_grad()``: parameter gradients are unchanged, and a mostly frozen backbone keeps
        no activations for backward (the paper's recipe trains only its last layers).
        """
        chain = self.pieces()
        n_frozen = 0
        for piece in chain:
            if any(p.requires_grad for p in piece.parameters()):
                break
            n_frozen += 1
        with torch.no_grad():
            for piece in chain[:n_frozen]:
                x = piece(x)
        for piece in chain[n_frozen:]:
            x = piece(x)
        return F.normalize(x, dim=1)


def batchnorm_training(module: nn.Module) -> bool:
    """Whether any BatchNorm layer of ``module`` normalises with batch statistics (training mode)."""
    return any(m.training for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))


def embed_frames(backbone: IR50, frames: torch.Tensor, chunk_size: int,
                 valid: torch.Tensor | None = None) -> torch.Tensor:
    """Embed every frame of a batch of clips.

    Args:
        backbone: the face backbone.
        frames: (B, T, 3, S, S) normalised face crops.
        chunk_size: frames per pass, used only where chunking is exact: when no BatchNorm layer of
            the backbone is in training mode. Otherwise all frames go through in one pass, as in the
            authors' model (chunks would change the batch statistics). Chunks are near-equal.
        valid: optional (B, T) bool, False on the zero padding of short clips (best on the host: the
            indices are taken there, without a device sync). Padded frames skip the backbone (about
            6 GFLOPs a frame at 40x40) and get zero embeddings; the padding is at the end of a window
            and the TCNs are causal, so valid outputs are unchanged, and a BatchNorm in training mode
            never sees padding in its batch statistics.

    Returns:
        (B, T, 512) L2-normalised embeddings (zeros where ``valid`` is False).
    """
    n_clips, n_steps = frames.shape[:2]
    flat = frames.reshape(n_clips * n_steps, *frames.shape[2:])  # (B*T, 3, S, S)
    keep = None  # (N_valid,) indices of the valid frames, on the frames' device
    if valid is not None:
        kept = torch.nonzero(valid.reshape(-1).cpu(), as_tuple=True)[0]  # (N_valid,) on the host
        if 2 <= len(kept) < len(flat):
            keep = kept.to(flat.device, non_blocking=True)
            flat = flat.index_select(0, keep)  # (N_valid, 3, S, S)
    if backbone.input_layer[0].weight.is_contiguous(memory_format=torch.channels_last):
        flat = flat.contiguous(memory_format=torch.channels_last)
    n_chunks = 1 if batchnorm_training(backbone) else max(1, -(-flat.shape[0] // max(1, chunk_size)))
    embeddings = torch.cat([backbone.embed(chunk) for chunk in torch.tensor_split(flat, n_chunks)])
    if keep is not None:
        scattered = embeddings.new_zeros(n_clips * n_steps, embeddings.shape[-1])
        embeddings = scattered.index_copy(0, keep, embeddings)
    return embeddings.reshape(n_clips, n_steps, -1)  # (B, T, 512)
