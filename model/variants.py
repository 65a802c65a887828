"""The model variants, built by name from a registry: ``build_model(config)`` is the entry point.

``model_name`` 2d1d (the first generation, ABAW2) picks a variant by the number of modalities:

* ``Variant.UNIMODAL`` (one modality): leader stream -> TCN -> Linear -> outputs.
* ``Variant.LEADER_FOLLOWER`` (several modalities): every stream -> its TCN; leader-follower
  attentive fusion; Linear -> outputs.

``model_name`` lfan and can are the second generation (ABAW5, ``model.lfan``, ``model.can``):
``Variant.LFAN`` and ``Variant.CAN``, modalities ``frame``, ``logmel``, ``egemaps_functionals``,
the first leading, with the IR-50 and VGGish inside the model.

For 2d1d the leader is the frame modality when present (face crops through the IR-50 backbone, then the
visual TCN 512 -> 128x4), otherwise the first modality listed (its features through a TCN of
``cnn1d_channels``). Every other modality is a follower with an aural TCN of ``aural_channels``.
All models keep the backbone as the attribute ``backbone`` (state-dict prefix ``backbone.``) and
the TCNs in ``tcns[<modality>]``.

Inputs are a dict: ``inputs["frame"]`` (B, T, 3, S, S) normalised as ``(x / 255 - 0.5) / 0.5``
by the caller, other modalities (B, T, D). The output is (B, T, output_dim).
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from base.errors import UserError
from configs import Config, Modality, ModelConfig, ModelName, resolve_model_recipe
from model.abaw5 import ABAW5_MODALITIES
from model.audio_backbone import load_audio_backbone
from model.can import CAN
from model.freezing import ReleasableModel
from model.fusion import LeaderFollowerFusion
from model.ir50 import EMBEDDING_DIM, INPUT_LAYOUTS, IR50, embed_frames
from model.lfan import LFAN
from model.tcn import TemporalConvNet
from model.weights import load_backbone
from vggish.network import VGGish

logger = logging.getLogger(__name__)


class Variant(enum.StrEnum):
    """Model families; the modalities of a config choose one (``select_variant``)."""

    UNIMODAL = "unimodal"
    LEADER_FOLLOWER = "leader_follower"
    LFAN = "lfan"
    CAN = "can"


SECOND_GENERATION = {ModelName.LFAN: Variant.LFAN, ModelName.CAN: Variant.CAN}


class FollowerMode(enum.StrEnum):
    """How non-leader modalities enter the model (only fusion followers exist so far)."""

    FUSION = "fusion"


@dataclass(frozen=True)
class ModalityPlan:
    """Which modality leads and which follow, in the order the fusion stacks them."""

    leader: Modality
    followers: tuple[Modality, ...]

    @property
    def all(self) -> tuple[Modality, ...]:
        return (self.leader, *self.followers)


def plan_modalities(names: Sequence[str], frame_leads: bool = True) -> ModalityPlan:
    """Leader = ``frame`` if listed (and ``frame_leads``), else the first name; the others follow in order."""
    if not names:
        raise UserError("config key 'modality' needs at least one modality")
    if len(set(names)) != len(names):
        raise UserError(f"config key 'modality' lists a modality twice: {' '.join(names)}")
    try:
        modalities = [Modality(name) for name in names]
    except ValueError:
        valid = ", ".join(m.value for m in Modality)
        raise UserError(f"config key 'modality': unknown modality in {list(names)} (choose from {valid})") from None
    leader = Modality.FRAME if frame_leads and Modality.FRAME in modalities else modalities[0]
    return ModalityPlan(leader, tuple(m for m in modalities if m is not leader))


def model_plan(config: ModelConfig) -> ModalityPlan:
    """The modality plan of a model section: 2d1d puts ``frame`` first, lfan/can keep the listed order."""
    return plan_modalities(config.modality, frame_leads=config.model_name == ModelName.TWO_D_ONE_D)


def select_variant(plan: ModalityPlan, model_name: str = ModelName.TWO_D_ONE_D.value) -> Variant:
    """The variant of a model name and modality plan."""
    if model_name in SECOND_GENERATION:
        return SECOND_GENERATION[ModelName(model_name)]
    return Variant.LEADER_FOLLOWER if plan.followers else Variant.UNIMODAL


@dataclass(frozen=True)
class Backbones:
    """The backbones a model holds: the IR-50 (``frame``) and VGGish (``logmel``, lfan/can only)."""

    visual: IR50 | None = None
    audio: VGGish | None = None


class StreamModel(ReleasableModel):
    """Shared part of every variant: the leader's encoder and one TCN per modality.

    Args:
        config: the model section of the config.
        plan: leader and followers.
        backbone: the IR-50 when the leader is ``frame``, else None.
    """

    def __init__(self, config: ModelConfig, plan: ModalityPlan, backbone: IR50 | None) -> None:
        super().__init__(backbone, frozen_batchnorm=config.frozen_batchnorm, release_style=config.release_groups)
        self.plan = plan
        self.backbone_chunk_size = config.backbone_chunk_size
        self.output_dim = config.output_dim
        tcns = {plan.leader.value: _tcn(_input_dim(plan.leader), config.cnn1d_channels, config)}
        for follower in plan.followers:
            tcns[follower.value] = _tcn(follower.feature_dim, config.aural_channels, config)
        self.tcns = nn.ModuleDict(tcns)

    @property
    def modalities(self) -> tuple[str, ...]:
        """Input keys the model reads, leader first."""
        return tuple(m.value for m in self.plan.all)

    def encode(self, inputs: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
        """TCN output of every stream, leader first: [(B, T, C_leader), (B, T, C_f), ...].

        An optional ``inputs["mask"]`` (B, T) bool marks the valid (unpadded) frames; padded frames
        skip the backbone.
        """
        missing = [name for name in self.modalities if name not in inputs]
        if missing:
            raise KeyError(f"model inputs lack modalities {missing} (it reads {list(self.modalities)})")
        outputs = []
        for modality in self.plan.all:
            features = inputs[modality.value]
            if modality is Modality.FRAME:
                features = embed_frames(self.backbone, features, self.backbone_chunk_size,
                                        valid=inputs.get("mask"))  # (B, T, 512)
            outputs.append(self.tcns[modality.value](features))  # (B, T, C)
        return outputs


def _input_dim(modality: Modality) -> int:
    return EMBEDDING_DIM if modality is Modality.FRAME else modality.feature_dim


def _tcn(in_channels: int, channels: tuple[int, ...], config: ModelConfig) -> TemporalConvNet:
    return TemporalConvNet(in_channels, channels, config.cnn1d_kernel_size, config.cnn1d_dropout)


class UnimodalModel(StreamModel):
    """The "2d1d" baseline: leader stream -> TCN -> Linear, per frame."""

    def __init__(self, config: ModelConfig, plan: ModalityPlan, backbone: IR50 | None) -> None:
        super().__init__(config, plan, backbone)
        self.head = nn.Linear(config.cnn1d_channels[-1], config.output_dim)

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:  # -> (B, T, output_dim)
        (leader,) = self.encode(inputs)
        return self.head(leader)


class LeaderFollowerModel(StreamModel):
    """Leader and followers through their TCNs, leader-follower attentive fusion, Linear per frame."""

    def __init__(self, config: ModelConfig, plan: ModalityPlan, backbone: IR50 | None) -> None:
        super().__init__(config, plan, backbone)
        follower_dims = (config.aural_channels[-1],) * len(plan.followers)
        self.fusion = LeaderFollowerFusion(
            config.cnn1d_channels[-1], follower_dims, config.fusion_dim, quirk=config.fusion_quirk
        )
        self.head = nn.Linear(self.fusion.out_dim, config.output_dim)

    def forward_with_attention(self, inputs: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Outputs (B, T, output_dim) and fusion weights (B, T, M, M), modalities in ``modalities`` order."""
        leader, *followers = self.encode(inputs)
        features, weights = self.fusion(leader, followers, return_attention=True)  # (B, T, C_lead + M*d)
        return self.head(features), weights

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:  # -> (B, T, output_dim)
        return self.forward_with_attention(inputs)[0]


ModelBuilder = Callable[[ModelConfig, ModalityPlan, Backbones], ReleasableModel]
VARIANT_BUILDERS: dict[Variant, ModelBuilder] = {
    Variant.UNIMODAL: lambda config, plan, backbones: UnimodalModel(config, plan, backbones.visual),
    Variant.LEADER_FOLLOWER: lambda config, plan, backbones: LeaderFollowerModel(config, plan, backbones.visual),
    Variant.LFAN: lambda config, plan, backbones: LFAN(config, plan.all, backbones.visual, backbones.audio),
    Variant.CAN: lambda config, plan, backbones: CAN(config, plan.all, backbones.visual, backbones.audio),
}


def _check(config: ModelConfig, plan: ModalityPlan) -> None:
    try:
        model_name = ModelName(config.model_name)
    except ValueError:
        names = ", ".join(name.value for name in ModelName)
        raise UserError(f"config key 'model_name' must be one of {names}, got '{config.model_name}'") from None
    if model_name is ModelName.TWO_D_ONE_D:
        _check_first_generation(config, plan)
    else:
        others = [m.value for m in plan.all if m not in ABAW5_MODALITIES]
        if others:
            raise UserError(
                f"--model-name {model_name.value} reads the modalities {', '.join(m.value for m in ABAW5_MODALITIES)} "
                f"(the authors' TCN widths exist for these), not {', '.join(others)}"
            )
    if Modality.FRAME in plan.all and config.crop_size not in INPUT_LAYOUTS:
        sides = " or ".join(map(str, sorted(INPUT_LAYOUTS)))
        raise UserError(f"config key 'crop_size' must be {sides} for the IR-50 backbone, got {config.crop_size}")


def _check_first_generation(config: ModelConfig, plan: ModalityPlan) -> None:
    second = [m.value for m in plan.all if m in (Modality.LOGMEL, Modality.EGEMAPS_FUNCTIONALS)]
    if second:
        raise UserError(f"modalities {', '.join(second)} are read by the ABAW5 models: pass --model-name lfan or can "
                        "(2d1d reads frame vggish mfcc egemaps flm fau)")
    try:
        FollowerMode(config.follower_mode)
    except ValueError:
        choices = ", ".join(m.value for m in FollowerMode)
        raise UserError(f"config key 'follower_mode' must be one of {choices}, got '{config.follower_mode}'") from None
    if not config.cnn1d_channels or not config.aural_channels:
        raise UserError("config keys 'cnn1d_channels' and 'aural_channels' need at least one width")
    if plan.leader is Modality.FRAME and config.cnn1d_embedding_dim != EMBEDDING_DIM:
        raise UserError(
            f"config key 'cnn1d_embedding_dim' must be {EMBEDDING_DIM} with the frame modality "
            f"(the IR-50 embedding width), got {config.cnn1d_embedding_dim}"
        )


def build_model(config: Config | ModelConfig) -> ReleasableModel:
    """Build the model a config describes, with its backbone weights loaded and fully frozen.

    Args:
        config: the whole config or its model section.

    Returns:
        A ``UnimodalModel``, ``LeaderFollowerModel``, ``LFAN`` or ``CAN``; ``model(inputs)`` -> (B, T, output_dim).

    Raises:
        UserError: an invalid model section, or backbone weights that are missing or do not fit.
    """
    model_config = config.model if isinstance(config, Config) else config
    plan = model_plan(model_config)
    _check(model_config, plan)
    backbone = audio_backbone = None
    if Modality.FRAME in plan.all:
        backbone = load_backbone(
            model_config.backbone_checkpoint or None,
            model_config.backbone_mode,
            allow_random=model_config.random_backbone,
            input_size=model_config.crop_size,
        )
    if Modality.LOGMEL in plan.all:
        audio_backbone = load_audio_backbone(model_config.audio_backbone_checkpoint or None,
                                             allow_random=model_config.random_backbone)
    return assemble_model(config, backbone, audio_backbone)


def blank_backbones(config: Config | ModelConfig) -> Backbones:
    """Randomly initialised backbones of the kinds a config needs (a state dict will fill them)."""
    model_config = config.model if isinstance(config, Config) else config
    plan = model_plan(model_config)
    visual = IR50(model_config.backbone_mode, input_size=model_config.crop_size).eval() \
        if Modality.FRAME in plan.all else None
    audio = VGGish().eval() if Modality.LOGMEL in plan.all else None
    return Backbones(visual, audio)


def assemble_model(config: Config | ModelConfig, backbone: IR50 | None,
                   audio_backbone: VGGish | None = None) -> ReleasableModel:
    """Build the model of ``config`` around given backbones (None where a modality does not need one).

    ``build_model`` loads the backbones and calls this; tests and tools that already hold backbones
    call it directly. The backbones are used as they are (not copied) and get fully frozen.
    """
    if isinstance(config, Config):
        model_config = resolve_model_recipe(config.model, config.train.recipe)
    else:  # a model section alone: keys left to the recipe follow the default (authors) recipe
        model_config = resolve_model_recipe(config)
    plan = model_plan(model_config)
    _check(model_config, plan)
    if (backbone is not None) != (Modality.FRAME in plan.all):
        raise ValueError(f"a backbone is needed exactly when 'frame' is read; modalities {model_config.modality}")
    if backbone is not None and backbone.input_size != model_config.crop_size:
        raise ValueError(f"backbone expects {backbone.input_size}px faces, config crop_size is {model_config.crop_size}")
    if (audio_backbone is not None) != (Modality.LOGMEL in plan.all):
        raise ValueError(f"an audio backbone is needed exactly when 'logmel' is read; modalities {model_config.modality}")
    variant = select_variant(plan, model_config.model_name)
    model = VARIANT_BUILDERS[variant](model_config, plan, Backbones(backbone, audio_backbone))
    logger.info(
        "model: %s, leader %s, followers %s, %.1f M parameters",
        variant.value, plan.leader.value, [m.value for m in plan.followers] or "none",
        sum(p.numel() for p in model.parameters()) / 1e6,
    )
    return model
