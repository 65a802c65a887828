"""Leader-follower attentive fusion across modalities, one time step at a time (SPEC §4).

Every modality's TCN output is projected to a key, a query and a value of width ``d`` (32). At
each step the M modalities attend to each other: scores (M x M) are ``key_i . query_j / sqrt(d)``,
softmax over j (the authors' arrangement: the key of the row modality meets every query; it is
ordinary attention with the names of the two projections swapped). The attended values plus the
values are layer-normalised over (M, d), flattened to M*d and appended to the leader's own TCN
output, so the leader (the visual stream) always reaches the head directly.

``quirk=True`` reproduces the authors' defect: their code overwrote each follower's TCN output
with its key before computing the follower's query and value, so these were ``Wq(Wk(x))`` and
``Wv(Wk(x))``. In that mode the follower query/value layers read d-wide keys.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def attend_across_modalities(
    keys: torch.Tensor, queries: torch.Tensor, values: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled dot-product attention over the modality axis.

    Args:
        keys, queries, values: (..., M, d).

    Returns:
        attended values (..., M, d) and attention weights (..., M, M) whose rows sum to 1.
    """
    scores = keys @ queries.transpose(-1, -2) / math.sqrt(keys.shape[-1])  # (..., M, M)
    weights = torch.softmax(scores, dim=-1)
    return weights @ values, weights


class LeaderFollowerFusion(nn.Module):
    """Fuse a leader stream with follower streams: (B, T, C_lead), [(B, T, C_f)] -> (B, T, C_lead + M*d).

    Args:
        leader_dim: width of the leader's TCN output (128).
        follower_dims: width of each follower's TCN output (32 each).
        fusion_dim: key/query/value width d (32).
        quirk: compute follower queries/values from their keys, as the authors' code did.
    """

    def __init__(
        self, leader_dim: int, follower_dims: tuple[int, ...], fusion_dim: int = 32, quirk: bool = False
    ) -> None:
        super().__init__()
        if not follower_dims:
            raise ValueError("leader-follower fusion needs at least one follower")
        self.quirk = quirk
        self.fusion_dim = fusion_dim
        input_dims = (leader_dim, *follower_dims)
        # In quirk mode a follower's query/value layers read its key, not its TCN output.
        query_value_dims = (leader_dim, *((fusion_dim,) * len(follower_dims) if quirk else follower_dims))
        self.keys = nn.ModuleList(nn.Linear(dim, fusion_dim) for dim in input_dims)
        self.queries = nn.ModuleList(nn.Linear(dim, fusion_dim) for dim in query_value_dims)
        self.values = nn.ModuleList(nn.Linear(dim, fusion_dim) for dim in query_value_dims)
        self.norm = nn.LayerNorm([len(input_dims), fusion_dim])
        self.out_dim = leader_dim + len(input_dims) * fusion_dim

    @property
    def n_modalities(self) -> int:
        return len(self.keys)

    def forward(
        self, leader: torch.Tensor, followers: list[torch.Tensor], return_attention: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Fuse the streams.

        Args:
            leader: (B, T, C_lead) leader TCN output.
            followers: one (B, T, C_f) TCN output per follower, in construction order.
            return_attention: also return the (B, T, M, M) attention weights (rows sum to 1).

        Returns:
            (B, T, C_lead + M*d) features, and the weights when asked.
        """
        streams = [leader, *followers]
        keys, queries, values = [], [], []
        for index, stream in enumerate(streams):
            key = self.keys[index](stream)  # (B, T, d)
            source = key if (self.quirk and index > 0) else stream
            keys.append(key)
            queries.append(self.queries[index](source))
            values.append(self.values[index](source))
        key_stack = torch.stack(keys, dim=-2)  # (B, T, M, d)
        value_stack = torch.stack(values, dim=-2)  # (B, T, M, d)
        attended, weights = attend_across_modalities(key_stack, torch.stack(queries, dim=-2), value_stack)
        fused = self.norm(attended + value_stack).flatten(start_dim=-2)  # (B, T, M*d)
        features = torch.cat([leader, fused], dim=-1)  # (B, T, C_lead + M*d)
        return (features, weights) if return_attention else features
