"""Gradual release of the backbone (SPEC §5): named groups, unfrozen one after another.

The backbone starts frozen. The recipe releases, in order: the output layer, the last three
bottlenecks (stage 4, body units 21-23), then the last three bottlenecks of stage 3 (units
18-20). Everything else in the backbone stays frozen; the temporal and fusion parts always train.

Frozen backbone parts are kept in eval mode even when the model trains, so their BatchNorm
running statistics stay those of the pretrained weights (the authors let them drift) and the
output layer's dropout is off until that layer trains.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from model.ir50 import IR50, stage_unit_indices


@dataclass(frozen=True)
class ReleaseGroup:
    """A named set of backbone submodules (names relative to the backbone) released together."""

    name: str
    module_names: tuple[str, ...]


def _body_units(indices: range) -> tuple[str, ...]:
    return tuple(f"body.{index}" for index in indices)


RELEASE_GROUPS = (
    ReleaseGroup("backbone.output_layer", ("output_layer",)),
    ReleaseGroup("stage4", _body_units(stage_unit_indices(3))),
    ReleaseGroup("stage3_last3", _body_units(stage_unit_indices(2)[-3:])),
)


def apply_release(backbone: IR50, n_released: int) -> None:
    """Freeze the whole backbone, then make the first ``n_released`` groups trainable."""
    if not 0 <= n_released <= len(RELEASE_GROUPS):
        raise ValueError(f"n_released must be in 0..{len(RELEASE_GROUPS)}, got {n_released}")
    backbone.requires_grad_(False)
    for group in RELEASE_GROUPS[:n_released]:
        for name in group.module_names:
            backbone.get_submodule(name).requires_grad_(True)


def frozen_pieces(backbone: IR50) -> list[nn.Module]:
    """Pieces of the backbone chain without any trainable parameter."""
    return [piece for piece in backbone.pieces() if not any(p.requires_grad for p in piece.parameters())]


class ReleasableModel(nn.Module):
    """Base of every model: holds ``backbone`` (an ``IR50`` or None) and manages its release.

    Models without a frame modality have no backbone and no groups: ``release_groups(0)`` is the
    only valid call and nothing changes.
    """

    backbone: IR50 | None

    def __init__(self, backbone: IR50 | None) -> None:
        super().__init__()
        self.backbone = backbone
        self._n_released = 0
        if backbone is not None:
            apply_release(backbone, 0)

    @property
    def release_group_names(self) -> tuple[str, ...]:
        """Names of the groups this model can release, in release order."""
        return tuple(g.name for g in RELEASE_GROUPS) if self.backbone is not None else ()

    @property
    def n_released(self) -> int:
        """Number of groups released so far (0 = backbone fully frozen)."""
        return self._n_released

    def release_groups(self, n_released: int) -> None:
        """Make exactly the first ``n_released`` groups trainable (0..len(release_group_names))."""
        if not 0 <= n_released <= len(self.release_group_names):
            raise ValueError(
                f"this model has {len(self.release_group_names)} release groups, "
                f"cannot release {n_released}"
            )
        if self.backbone is not None:
            apply_release(self.backbone, n_released)
        self._n_released = n_released
        self.train(self.training)  # re-apply eval mode to what is frozen now

    def train(self, mode: bool = True) -> ReleasableModel:
        """Set train/eval mode; frozen backbone parts stay in eval mode."""
        super().train(mode)
        if mode and self.backbone is not None:
            for piece in frozen_pieces(self.backbone):
                piece.eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters that currently receive gradients (what the optimiser should get)."""
        return [p for p in self.parameters() if p.requires_grad]
