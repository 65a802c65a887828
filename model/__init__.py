"""The models: 2d1d with leader-follower attentive fusion (ABAW2, SPEC §4), LFAN and CAN (ABAW5,
SPEC-ABAW5 §3).

Public API:
    build_model(config) -> model            model(inputs: dict[str, Tensor]) -> (B, T, output_dim)
    load_backbone(path, mode, allow_random) the IR-50 with the authors' or our weights
    load_audio_backbone(path, allow_random) VGGish (lfan/can) with the authors' vggish.pth
    load_authors_state_dict(model, path)    an LFAN/CAN saved by the authors' ABAW5 trainer
    save_authors_checkpoint(backbone, path) write weights in the authors' key layout
    model.modalities (input keys), model.release_groups(k), model.n_released, model.release_group_names,
    model.trainable_parameters()
"""

from model.abaw5 import ABAW5_MODALITIES, Abaw5Model
from model.attention_fusion import CrossModalAttention
from model.audio_backbone import embed_patches, load_audio_backbone
from model.can import CAN, ChannelAttentionFusion
from model.freezing import RELEASE_GROUPS, ReleasableModel, abaw5_release_groups
from model.fusion import LeaderFollowerFusion
from model.ir50 import IR50, BackboneMode, embed_frames
from model.lfan import LFAN
from model.tcn import TemporalConvNet
from model.variants import (
    Backbones,
    LeaderFollowerModel,
    UnimodalModel,
    Variant,
    assemble_model,
    blank_backbones,
    build_model,
    plan_modalities,
    select_variant,
)
from model.weights import load_authors_state_dict, load_backbone, save_authors_checkpoint

__all__ = [
    "ABAW5_MODALITIES",
    "CAN",
    "IR50",
    "LFAN",
    "RELEASE_GROUPS",
    "Abaw5Model",
    "BackboneMode",
    "Backbones",
    "ChannelAttentionFusion",
    "CrossModalAttention",
    "LeaderFollowerFusion",
    "LeaderFollowerModel",
    "ReleasableModel",
    "TemporalConvNet",
    "UnimodalModel",
    "Variant",
    "abaw5_release_groups",
    "assemble_model",
    "blank_backbones",
    "build_model",
    "embed_frames",
    "embed_patches",
    "load_audio_backbone",
    "load_authors_state_dict",
    "load_backbone",
    "plan_modalities",
    "save_authors_checkpoint",
    "select_variant",
]
