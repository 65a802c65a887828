"""Gradual release of the backbone (SPEC §5): named groups, unfrozen one after another.

The backbone starts frozen. The recipe releases, in order: the output layer, the last three
bottlenecks (stage 4, body units 21-23), then the last three bottlenecks of stage 3 (units
18-20). Everything else in the backbone stays frozen; the temporal and fusion parts always train.
The authors select groups by parameter index (their ``base/parameter_control.py``): for ``ir_se``
their third slice holds only the last two units of stage 3 (18 parameters of 9 per unit), which
``release_groups="authors"`` reproduces; ``three_units`` releases three as for ``ir``.

``frozen_batchnorm`` says what frozen backbone parts do while the model trains: ``train`` (the
authors: ``model.train()`` on the whole model, so frozen BatchNorm layers normalise with batch
statistics and update their running statistics, and the frozen output layer's dropout is on) or
``eval`` (frozen parts stay in eval mode and keep the pretrained statistics).
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
AUTHORS_IR_SE_GROUPS = (
    *RELEASE_GROUPS[:2],
    ReleaseGroup("stage3_last2", _body_units(stage_unit_indices(2)[-2:])),
)
FROZEN_BATCHNORM_MODES = ("train", "eval")


def release_groups_for(backbone_mode: str, style: str = "three_units") -> tuple[ReleaseGroup, ...]:
    """The release groups of a backbone: ``style`` ``authors`` or ``three_units`` (see module doc)."""
    if style not in ("authors", "three_units"):
        raise ValueError(f"release group style must be authors or three_units, got {style!r}")
    return AUTHORS_IR_SE_GROUPS if style == "authors" and str(backbone_mode) == "ir_se" else RELEASE_GROUPS


def apply_release(backbone: IR50, n_released: int, groups: tuple[ReleaseGroup, ...] = RELEASE_GROUPS) -> None:
    """Freeze the whole backbone, then make the first ``n_released`` of ``groups`` trainable."""
    if not 0 <= n_released <= len(groups):
        raise ValueError(f"n_released must be in 0..{len(groups)}, got {n_released}")
    backbone.requires_grad_(False)
    for group in groups[:n_released]:
        for name in group.module_names:
            backbone.get_submodule(name).requires_grad_(True)


def frozen_pieces(backbone: IR50) -> list[nn.Module]:
    """Pieces of the backbone chain without any trainable parameter."""
    return [piece for piece in backbone.pieces() if not any(p.requires_grad for p in piece.parameters())]


class ReleasableModel(nn.Module):
    """Base of every model: holds ``backbone`` (an ``IR50`` or None) and manages its release.

    Models without a frame modality have no backbone and no groups: ``release_groups(0)`` is the
    only valid call and nothing changes.

    Args:
        backbone: the IR-50, or None.
        frozen_batchnorm: ``train`` or ``eval``: the mode of frozen backbone parts in ``train()``.
        release_style: ``authors`` or ``three_units`` (``release_groups_for``).
    """

    backbone: IR50 | None

    def __init__(self, backbone: IR50 | None, frozen_batchnorm: str = "eval",
                 release_style: str = "three_units") -> None:
        super().__init__()
        if frozen_batchnorm not in FROZEN_BATCHNORM_MODES:
            raise ValueError(f"frozen_batchnorm must be train or eval, got {frozen_batchnorm!r}")
        self.backbone = backbone
        self.frozen_batchnorm = frozen_batchnorm
        self._groups = release_groups_for(backbone.mode, release_style) if backbone is not None else ()
        self._n_released = 0
        if backbone is not None:
            apply_release(backbone, 0, self._groups)

    @property
    def groups(self) -> tuple[ReleaseGroup, ...]:
        """The groups this model can release, in release order."""
        return self._groups

    @property
    def release_group_names(self) -> tuple[str, ...]:
        """Names of the groups this model can release, in release order."""
        return tuple(g.name for g in self._groups)

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
            apply_release(self.backbone, n_released, self._groups)
        self._n_released = n_released
        self.train(self.training)  # re-apply eval mode to what is frozen now

    def train(self, mode: bool = True) -> ReleasableModel:
        """Set train/eval mode; with ``frozen_batchnorm='eval'`` frozen backbone parts stay in eval mode."""
        super().train(mode)
        if mode and self.backbone is not None and self.frozen_batchnorm == "eval":
            for piece in frozen_pieces(self.backbone):
                piece.eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters that currently receive gradients (what the optimiser should get)."""
        return [p for p in self.parameters() if p.requires_grad]
