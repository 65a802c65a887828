"""The model variants, built by name from a registry: ``build_model(config)`` is the entry point.

* ``Variant.UNIMODAL`` ("2d1d", one modality): leader stream -> TCN -> Linear -> outputs.
* ``Variant.LEADER_FOLLOWER`` (several modalities): every stream -> its TCN; leader-follower
  attentive fusion; Linear -> outputs.

The leader is the frame modality when present (face crops through the IR-50 backbone, then the
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
from configs import Config, Modality, ModelConfig, resolve_model_recipe
from model.freezing import ReleasableModel
from model.fusion import LeaderFollowerFusion
from model.ir50 import EMBEDDING_DIM, INPUT_LAYOUTS, IR50, embed_frames
from model.tcn import TemporalConvNet
from model.weights import load_backbone

logger = logging.getLogger(__name__)


class Variant(enum.StrEnum):
    """Model families; the modalities of a config choose one (``select_variant``)."""

    UNIMODAL = "unimodal"
    LEADER_FOLLOWER = "leader_follower"


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


def plan_modalities(names: Sequence[str]) -> ModalityPlan:
    """Leader = ``frame`` if listed, else the first name; the others follow in the listed order."""
    if not names:
        raise UserError("config key 'modality' needs at least one modality")
    if len(set(names)) != len(names):
        raise UserError(f"config key 'modality' lists a modality twice: {' '.join(names)}")
    try:
        modalities = [Modality(name) for name in names]
    except ValueError:
        valid = ", ".join(m.value for m in Modality)
        raise UserError(f"config key 'modality': unknown modality in {list(names)} (choose from {valid})") from None
    leader = Modality.FRAME if Modality.FRAME in modalities else modalities[0]
    return ModalityPlan(leader, tuple(m for m in modalities if m is not leader))


def select_variant(plan: ModalityPlan) -> Variant:
    return Variant.LEADER_FOLLOWER if plan.followers else Variant.UNIMODAL


ModelBuilder = Callable[[ModelConfig, ModalityPlan, "IR50 | None"], ReleasableModel]
VARIANT_BUILDERS: dict[Variant, ModelBuilder] = {}


def register(variant: Variant) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator: make ``builder`` the constructor of ``variant``."""

    def decorate(builder: ModelBuilder) -> ModelBuilder:
        VARIANT_BUILDERS[variant] = builder
        return builder

    return decorate


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


@register(Variant.UNIMODAL)
class UnimodalModel(StreamModel):
    """The "2d1d" baseline: leader stream -> TCN -> Linear, per frame."""

    def __init__(self, config: ModelConfig, plan: ModalityPlan, backbone: IR50 | None) -> None:
        super().__init__(config, plan, backbone)
        self.head = nn.Linear(config.cnn1d_channels[-1], config.output_dim)

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:  # -> (B, T, output_dim)
        (leader,) = self.encode(inputs)
        return self.head(leader)


@register(Variant.LEADER_FOLLOWER)
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


def _check(config: ModelConfig, plan: ModalityPlan) -> None:
    try:
        FollowerMode(config.follower_mode)
    except ValueError:
        choices = ", ".join(m.value for m in FollowerMode)
        raise UserError(f"config key 'follower_mode' must be one of {choices}, got '{config.follower_mode}'") from None
    if not config.cnn1d_channels or not config.aural_channels:
        raise UserError("config keys 'cnn1d_channels' and 'aural_channels' need at least one width")
    if plan.leader is Modality.FRAME:
        if config.crop_size not in INPUT_LAYOUTS:
            sides = " or ".join(map(str, sorted(INPUT_LAYOUTS)))
            raise UserError(f"config key 'crop_size' must be {sides} for the IR-50 backbone, got {config.crop_size}")
        if config.cnn1d_embedding_dim != EMBEDDING_DIM:
            raise UserError(
                f"config key 'cnn1d_embedding_dim' must be {EMBEDDING_DIM} with the frame modality "
                f"(the IR-50 embedding width), got {config.cnn1d_embedding_dim}"
            )


def build_model(config: Config | ModelConfig) -> ReleasableModel:
    """Build the model a config describes, with its backbone weights loaded and fully frozen.

    Args:
        config: the whole config or its model section.

    Returns:
        A ``UnimodalModel`` or ``LeaderFollowerModel``; ``model(inputs)`` -> (B, T, output_dim).

    Raises:
        UserError: an invalid model section, or backbone weights that are missing or do not fit.
    """
    model_config = config.model if isinstance(config, Config) else config
    plan = plan_modalities(model_config.modality)
    _check(model_config, plan)
    backbone = None
    if plan.leader is Modality.FRAME:
        backbone = load_backbone(
            model_config.backbone_checkpoint or None,
            model_config.backbone_mode,
            allow_random=model_config.random_backbone,
            input_size=model_config.crop_size,
        )
    return assemble_model(model_config, backbone)


def assemble_model(config: Config | ModelConfig, backbone: IR50 | None) -> ReleasableModel:
    """Build the model of ``config`` around a given backbone (None when no frame modality is used).

    ``build_model`` loads the backbone and calls this; tests and tools that already hold a
    backbone call it directly. The backbone is used as is (not copied) and gets fully frozen.
    """
    if isinstance(config, Config):
        model_config = resolve_model_recipe(config.model, config.train.recipe)
    else:  # a model section alone: keys left to the recipe follow the default (authors) recipe
        model_config = resolve_model_recipe(config)
    plan = plan_modalities(model_config.modality)
    _check(model_config, plan)
    if (backbone is not None) != (plan.leader is Modality.FRAME):
        raise ValueError(f"a backbone is needed exactly when 'frame' leads; modalities {model_config.modality}")
    if backbone is not None and backbone.input_size != model_config.crop_size:
        raise ValueError(f"backbone expects {backbone.input_size}px faces, config crop_size is {model_config.crop_size}")
    variant = select_variant(plan)
    model = VARIANT_BUILDERS[variant](model_config, plan, backbone)
    logger.info(
        "model: %s, leader %s, followers %s, %.1f M parameters",
        variant.value, plan.leader.value, [m.value for m in plan.followers] or "none",
        sum(p.numel() for p in model.parameters()) / 1e6,
    )
    return model
