"""Gradual release of the backbone (SPEC §5): named groups, unfrozen one after another.

The backbone starts frozen. The recipe releases, in order: the output layer, the last three
bottlenecks (stage 4, body units 21-23), then the last three bottlenecks of stage 3 (units
18-20). Everything else in the backbone stays frozen; the temporal and fusion parts always train.
The authors select groups by parameter index (their ``base/parameter_control.py``): for ``ir_se``
their third slice holds only the last two units of stage 3 (18 parameters of 9 per unit), which
``release_groups="authors"`` reproduces; ``three_units`` releases three as for ``ir``.

The ABAW5 models (LFAN, CAN; SPEC-ABAW5 §3) release the visual and the audio backbone together,
three times (their ``base/parameter_control.py`` slices both at each release): the IR-50 groups
above (``ir``: their slices are those three units) beside VGGish's fully connected layers from the
last to the first (``embeddings.4``, ``.2``, ``.0``). VGGish's convolutions never train.
``abaw5_release_groups`` names them relative to the model (``backbone.*``, ``audio_backbone.*``).

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
    """A named set of backbone submodules released together (names relative to the backbone for the
    first generation's groups, to the model for ``abaw5_release_groups``)."""

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

VISUAL_BACKBONE = "backbone"  # attribute of the IR-50 in every model
AUDIO_BACKBONE = "audio_backbone"  # attribute of VGGish in the ABAW5 models
AUDIO_RELEASE_LAYERS = ("embeddings.4", "embeddings.2", "embeddings.0")  # VGGish fc2, fc1_2, fc1_1


def abaw5_release_groups(visual_groups: tuple[ReleaseGroup, ...] | None, audio: bool) -> tuple[ReleaseGroup, ...]:
    """The three ABAW5 groups; module names relative to the model.

    Args:
        visual_groups: the IR-50's groups (``release_groups_for``), or None without a visual backbone.
        audio: whether the model holds VGGish.
    """
    groups = []
    for index, audio_layer in enumerate(AUDIO_RELEASE_LAYERS):
        names, modules = [], []
        if visual_groups is not None:
            names.append(visual_groups[index].name.removeprefix("backbone."))
            modules += [f"{VISUAL_BACKBONE}.{name}" for name in visual_groups[index].module_names]
        if audio:
            names.append(audio_layer)
            modules.append(f"{AUDIO_BACKBONE}.{audio_layer}")
        if modules:
            groups.append(ReleaseGroup("+".join(names), tuple(modules)))
    return tuple(groups)


def release_groups_for(backbone_mode: str, style: str = "three_units") -> tuple[ReleaseGroup, ...]:
    """The release groups of a backbone: ``style`` ``authors`` or ``three_units`` (see module doc)."""
    if style not in ("authors", "three_units"):
        raise ValueError(f"release group style must be authors or three_units, got {style!r}")
    return AUTHORS_IR_SE_GROUPS if style == "authors" and str(backbone_mode) == "ir_se" else RELEASE_GROUPS


def frozen_pieces(backbone: IR50) -> list[nn.Module]:
    """Pieces of the backbone chain without any trainable parameter."""
    return [piece for piece in backbone.pieces() if not any(p.requires_grad for p in piece.parameters())]


class ReleasableModel(nn.Module):
    """Base of every model: holds ``backbone`` (an ``IR50`` or None) and manages the release.

    Models without a frame modality have no backbone and no groups: ``release_groups(0)`` is the
    only valid call and nothing changes. Models with more than one backbone (LFAN, CAN) call
    ``set_release_plan`` with groups whose module names are relative to the model.

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
        groups = release_groups_for(backbone.mode, release_style) if backbone is not None else ()
        self.set_release_plan(groups, frozen=("backbone",) if backbone is not None else (), prefix="backbone.")

    def set_release_plan(self, groups: tuple[ReleaseGroup, ...], frozen: tuple[str, ...], prefix: str = "") -> None:
        """Freeze the submodules named ``frozen``; ``groups`` (names after ``prefix``) release parts of them.

        Resets the release to 0 groups.
        """
        self._groups = groups
        self._frozen_roots = frozen
        self._group_prefix = prefix
        self._n_released = 0
        self._apply_release(0)

    def _apply_release(self, n_released: int) -> None:
        """Freeze every frozen root, then make the first ``n_released`` groups trainable."""
        if not 0 <= n_released <= len(self._groups):
            raise ValueError(f"n_released must be in 0..{len(self._groups)}, got {n_released}")
        for root in self._frozen_roots:
            self.get_submodule(root).requires_grad_(False)
        for group in self._groups[:n_released]:
            for name in group.module_names:
                self.get_submodule(self._group_prefix + name).requires_grad_(True)

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
        self._apply_release(n_released)
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
