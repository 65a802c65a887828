"""LFAN's fusion: multi-head attention across modalities, one time step at a time (SPEC-ABAW5 §3).

The authors' ``MultimodalTransformerEncoder`` (sucv/ABAW3 ``models/transformer.py``). At step t
every modality m is projected, u_m = W_m x_m + b_m (C_m -> 3 * d, d = 32 the modal width). Head h
of H (2) reads u_m[3s*h : 3s*(h+1)] = [q | k | v], each of width s = d / H (16). Per head the M
modalities attend to each other, softmax over the key modality j:

    A_h[i, j] = softmax_j(q_i . k_j / sqrt(s)),    z_{i,h} = sum_j A_h[i, j] v_{j,h} + v_{i,h}

(the value residual), flattened head-major, z[M*s*h + s*i + e], then o = W_o z + b_o (M*d -> M*d)
and f = LayerNorm(Dropout(o)), without a residual around W_o. Projection weights start xavier-
uniform and biases zero, as theirs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


def attend_per_head(queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled dot-product attention over the modality axis, plus the value residual.

    Args:
        queries, keys, values: (..., M, s), one row per modality.

    Returns:
        ``A V + V`` (..., M, s) and the weights A (..., M, M), softmax over the key (last) axis.
    """
    scores = queries @ keys.transpose(-1, -2) / math.sqrt(queries.shape[-1])  # (..., M, M)
    weights = torch.softmax(scores, dim=-1)
    return weights @ values + values, weights


class CrossModalAttention(nn.Module):
    """Fuse M streams per step: [(B, T, C_m)] -> (B, T, M * modal_dim).

    Args:
        input_dims: width of each modality's stream, in fusion order.
        modal_dim: d, the width each modality contributes (32); its q, k and v are split over heads.
        num_heads: H (2).
        dropout: rate of the dropout before the LayerNorm (0.1).
    """

    def __init__(self, input_dims: Sequence[int], modal_dim: int = 32, num_heads: int = 2,
                 dropout: float = 0.1) -> None:
        super().__init__()
        if modal_dim % num_heads:
            raise ValueError(f"modal_dim {modal_dim} is not a multiple of num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = modal_dim // num_heads
        self.out_dim = modal_dim * len(input_dims)
        self.qkv = nn.ModuleList(nn.Linear(dim, 3 * modal_dim) for dim in input_dims)
        self.out = nn.Linear(self.out_dim, self.out_dim)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(self.out_dim)
        for layer in (*self.qkv, self.out):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, streams: Sequence[torch.Tensor], return_attention: bool = False
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Fuse the streams (one (B, T, C_m) tensor per modality, in construction order).

        Returns:
            (B, T, M * modal_dim), and the (B, T, H, M, M) weights when asked.
        """
        n_windows, n_steps = streams[0].shape[:2]
        # (B, T, H, M, 3s): modality m's projection split into per-head [q | k | v]
        qkv = torch.stack([layer(x).reshape(n_windows, n_steps, self.num_heads, 3 * self.head_dim)
                           for layer, x in zip(self.qkv, streams, strict=True)], dim=-2)
        queries, keys, values = qkv.chunk(3, dim=-1)  # (B, T, H, M, s) each
        attended, weights = attend_per_head(queries, keys, values)  # (B, T, H, M, s), (B, T, H, M, M)
        fused = attended.reshape(n_windows, n_steps, self.out_dim)  # head-major: z[M*s*h + s*i + e]
        fused = self.norm(self.dropout(self.out(fused)))
        return (fused, weights) if return_attention else fused
