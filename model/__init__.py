"""The 2d1d model and the leader-follower attentive fusion (SPEC §4).

Public API:
    build_model(config) -> model            model(inputs: dict[str, Tensor]) -> (B, T, output_dim)
    load_backbone(path, mode, allow_random) the IR-50 with the authors' or our weights
    save_authors_checkpoint(backbone, path) write weights in the authors' key layout
    model.release_groups(k), model.n_released, model.release_group_names, model.trainable_parameters()
"""

from model.freezing import RELEASE_GROUPS, ReleasableModel
from model.fusion import LeaderFollowerFusion
from model.ir50 import IR50, BackboneMode, embed_frames
from model.tcn import TemporalConvNet
from model.variants import (
    LeaderFollowerModel,
    UnimodalModel,
    Variant,
    assemble_model,
    build_model,
    plan_modalities,
    select_variant,
)
from model.weights import load_backbone, save_authors_checkpoint

__all__ = [
    "IR50",
    "RELEASE_GROUPS",
    "BackboneMode",
    "LeaderFollowerFusion",
    "LeaderFollowerModel",
    "ReleasableModel",
    "TemporalConvNet",
    "UnimodalModel",
    "Variant",
    "assemble_model",
    "build_model",
    "embed_frames",
    "load_backbone",
    "plan_modalities",
    "save_authors_checkpoint",
    "select_variant",
]
