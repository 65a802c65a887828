"""Backbone weights: one loader for the authors' file, bare state dicts and our checkpoints.

Accepted files (all read with ``torch.load(..., weights_only=True)``):

* the authors' ``res50_ir_0.887.pth``: the state dict of their ``VisualBackbone`` wrapper, keys
  ``backbone.*`` plus an 8-class ``logits.*`` head (the head is ignored);
* a bare backbone state dict: keys ``input_layer.*``, ``body.N.*``, ``output_layer.*``;
* a checkpoint of this project: ``{"model": <model state dict>, ...}``, whose ``backbone.*``
  entries are the backbone (every model keeps it under the attribute ``backbone``).

Keys must match exactly; anything else is a ``UserError`` naming the missing, unexpected or
mis-shaped keys.

``load_authors_state_dict`` reads a whole ABAW5 model saved by the authors' trainer
(``model_state_dict<ccc>.pth`` of sucv/ABAW3, backbones included) into our LFAN or CAN, renaming
keys with ``AUTHORS_KEY_RULES``, the one table of their module names against ours.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from base.errors import UserError
from model.ir50 import EMBEDDING_DIM, IR50, BackboneMode

logger = logging.getLogger(__name__)

AUTHORS_PREFIX = "backbone."
AUTHORS_HEAD_PREFIX = "logits."
WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # nn.DataParallel, torch.compile
N_KEYS_SHOWN = 3

# Answering their issue #7 (the dead link of ABAW2's README), the authors pointed to their later
# repository sucv/ABAW3, whose README links this folder ("Model state dict") with res50_ir_0.887.pth
# and vggish.pth (also in vggish/params.py, which must not import this torch module).
AUTHORS_WEIGHTS_URL = "https://drive.google.com/drive/folders/1yh0vVY-AlwVCDxdAUy_c6e9fVbXUSnF5"

MISSING_WEIGHTS_HELP = (
    "no backbone weights were given: the paper's model starts from the authors' IR-50 "
    "'res50_ir_0.887.pth'; its ABAW2 link is dead (their GitHub issue #7), the file is in the folder "
    f"linked under 'Model state dict' in the sucv/ABAW3 README ({AUTHORS_WEIGHTS_URL}); pass "
    "--backbone-checkpoint FILE (that file, a bare IR-50 state dict or a checkpoint of this project), "
    "or --random-backbone to train from random backbone weights (much worse results on real data)"
)


def load_backbone(
    path: str | Path | None,
    mode: BackboneMode | str = BackboneMode.IR,
    allow_random: bool = False,
    input_size: int = 40,
) -> IR50:
    """Build an IR-50 backbone and load its weights from ``path``.

    Args:
        path: a weights file (see the module docstring), or None / "" for no file.
        mode: ``"ir"`` or ``"ir_se"``; must match the file.
        allow_random: with no file, return random weights instead of raising.
        input_size: face side in pixels (40 for the paper's model, 112 for ArcFace's).

    Returns:
        The backbone, in eval mode.

    Raises:
        UserError: no file and ``allow_random`` is false; the file is missing, unreadable or holds
            weights of another architecture or mode.
    """
    backbone = IR50(mode, input_size=input_size).eval()
    if not path:
        if not allow_random:
            raise UserError(MISSING_WEIGHTS_HELP)
        logger.warning("backbone: random %s weights (no checkpoint given)", backbone.mode.value)
        return backbone
    path = Path(path)
    loaded = read_weights_file(path, "backbone checkpoint")
    state = backbone_state_dict(loaded, path)
    check_state_dict(backbone, state, path)
    backbone.load_state_dict(_with_default_counters(backbone, state), strict=True)
    logger.info("backbone: %s weights from %s", backbone.mode.value, path)
    return backbone


def backbone_state_dict(loaded: object, path: Path | str = "<memory>") -> dict[str, torch.Tensor]:
    """The bare backbone state dict inside any accepted file content (see the module docstring)."""
    if not isinstance(loaded, Mapping):
        raise UserError(f"backbone checkpoint {path} holds a {type(loaded).__name__}, not a state dict")
    if isinstance(loaded.get("model"), Mapping):  # a checkpoint of this project
        state = _strip(_unwrap(loaded["model"]), AUTHORS_PREFIX)
        if not state:
            raise UserError(
                f"checkpoint {path} holds a model without a backbone (no 'backbone.*' keys): "
                "it was trained without the frame modality"
            )
        return state
    state = _unwrap(loaded)
    if any(key.startswith(AUTHORS_PREFIX) for key in state):  # the authors' wrapper: drop its head
        others = {k: v for k, v in state.items() if not k.startswith((AUTHORS_PREFIX, AUTHORS_HEAD_PREFIX))}
        return {**_strip(state, AUTHORS_PREFIX), **others}  # anything else is reported as unexpected
    return state


def _unwrap(state: Mapping[str, object]) -> dict[str, torch.Tensor]:
    """Tensor entries, without a prefix that every key shares (nn.DataParallel, torch.compile)."""
    tensors = {key: value for key, value in state.items() if isinstance(value, torch.Tensor)}
    for prefix in WRAPPER_PREFIXES:
        if tensors and all(key.startswith(prefix) for key in tensors):
            tensors = _strip(tensors, prefix)
    return tensors


def _strip(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}


def _is_counter(key: str) -> bool:
    # Files saved before PyTorch 0.4.1 have no BatchNorm batch counters; they carry no weights.
    return key.endswith("num_batches_tracked")


def _with_default_counters(backbone: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    expected = backbone.state_dict()
    return {**{k: v for k, v in expected.items() if _is_counter(k)}, **state}


def read_weights_file(path: Path, what: str) -> object:
    """``torch.load(path, weights_only=True)`` on the CPU; a missing or unreadable file is one
    ``UserError`` line that calls the file ``what``."""
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure here means the file is not usable
        raise UserError(
            f"{what} {path} could not be read: it is truncated or not a PyTorch weights file "
            f"({type(exc).__name__})"
        ) from None


def _show(keys: list[str]) -> str:
    shown = ", ".join(keys[:N_KEYS_SHOWN])
    return f"{len(keys)} ({shown}{', ...' if len(keys) > N_KEYS_SHOWN else ''})"


def check_state_dict(backbone: IR50, state: Mapping[str, torch.Tensor], path: Path | str) -> None:
    """Raise a ``UserError`` unless ``state`` fits ``backbone`` key for key and shape for shape."""
    expected = backbone.state_dict()
    missing = [k for k in expected if k not in state and not _is_counter(k)]
    unexpected = [k for k in state if k not in expected]
    mode = backbone.mode.value
    if missing or unexpected:
        problems = []
        if missing:
            problems.append(f"missing keys {_show(missing)}")
        if unexpected:
            problems.append(f"unexpected keys {_show(unexpected)}")
        hint = _mode_hint(backbone, state)
        raise UserError(
            f"backbone checkpoint {path} does not fit the IR-50 '{mode}' backbone: "
            f"{'; '.join(problems)}{hint}"
        )
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if mismatched:
        raise UserError(
            f"backbone checkpoint {path} does not fit the IR-50 '{mode}' backbone for "
            f"{backbone.input_size}x{backbone.input_size} faces: shapes differ (file vs model) for "
            f"{_show(mismatched)}; check --crop-size and --backbone-mode"
        )


def _mode_hint(backbone: IR50, state: Mapping[str, torch.Tensor]) -> str:
    has_se = any(".fc1." in key for key in state)
    looks_like_ir50 = any(key.startswith("body.23.") for key in state)
    if not looks_like_ir50:
        return ""
    if has_se and backbone.mode is BackboneMode.IR:
        return "; the file looks like an 'ir_se' backbone: pass --backbone-mode ir_se"
    if not has_se and backbone.mode is BackboneMode.IR_SE:
        return "; the file looks like an 'ir' backbone: pass --backbone-mode ir"
    return ""


def save_authors_checkpoint(backbone: IR50, path: str | Path, n_classes: int = 8) -> Path:
    """Write ``backbone`` in the authors' key layout (``backbone.*`` plus a ``logits`` head).

    The head is a freshly initialised ``Linear(512, n_classes)``; the loader ignores it.
    """
    head = nn.Linear(EMBEDDING_DIM, n_classes)
    state = {f"{AUTHORS_PREFIX}{k}": v for k, v in backbone.state_dict().items()}
    state.update({f"{AUTHORS_HEAD_PREFIX}{k}": v for k, v in head.state_dict().items()})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


# ----------------------------------------------------------------------------- the authors' ABAW5 models

# Our modality names -> theirs (sucv/ABAW3 main.py -modality video logmel egemaps).
AUTHORS_MODALITY = {"frame": "video", "logmel": "logmel", "egemaps_functionals": "egemaps"}

# Our state-dict key (a full match) -> the authors' keys of the same tensor, the first one read, the
# others aliases they also save. ``{m}`` is a modality (ModuleDict key), ``{k}`` a modality by its
# position in the model's order; both written with the authors' modality names. Their TCN blocks
# (models/temporal_convolutional_model.py) hold each convolution twice, as conv1/conv2 and as
# net.0/net.4, with torch.nn.utils.weight_norm's weight_g/weight_v; ours use the parametrization
# (original0 = g, original1 = v).
_TCN = r"tcns\.(?P<m>\w+)\.blocks\.(?P<i>\d+)\."
_THEIR_TCN = "temporal.{m}.network.{i}."
AUTHORS_KEY_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    # both models: backbones (models/backbone.py VisualBackbone, AudioBackbone), TCNs, BatchNorms
    (r"backbone\.(?P<rest>.+)", ("spatial.visual.backbone.{rest}",)),
    (r"visual_logits\.(?P<rest>.+)", ("spatial.visual.logits.{rest}",)),
    (r"audio_backbone\.(?P<rest>.+)", ("spatial.audio.backbone.{rest}",)),
    (_TCN + r"net\.0\.conv\.parametrizations\.weight\.original0", (_THEIR_TCN + "conv1.weight_g", _THEIR_TCN + "net.0.weight_g")),
    (_TCN + r"net\.0\.conv\.parametrizations\.weight\.original1", (_THEIR_TCN + "conv1.weight_v", _THEIR_TCN + "net.0.weight_v")),
    (_TCN + r"net\.0\.conv\.bias", (_THEIR_TCN + "conv1.bias", _THEIR_TCN + "net.0.bias")),
    (_TCN + r"net\.3\.conv\.parametrizations\.weight\.original0", (_THEIR_TCN + "conv2.weight_g", _THEIR_TCN + "net.4.weight_g")),
    (_TCN + r"net\.3\.conv\.parametrizations\.weight\.original1", (_THEIR_TCN + "conv2.weight_v", _THEIR_TCN + "net.4.weight_v")),
    (_TCN + r"net\.3\.conv\.bias", (_THEIR_TCN + "conv2.bias", _THEIR_TCN + "net.4.bias")),
    (_TCN + r"residual\.(?P<rest>.+)", (_THEIR_TCN + "downsample.{rest}",)),
    (r"tcn_norms\.(?P<m>\w+)\.(?P<rest>.+)", ("bn.{m}.{rest}",)),
    # LFAN (models/model.py LFAN, models/transformer.py MultimodalTransformerEncoder)
    (r"fusion\.qkv\.(?P<k>\d+)\.(?P<rest>.+)", ("fusion.layers.self_attn.qkv_proj.{k}.{rest}",)),
    (r"fusion\.out\.(?P<rest>.+)", ("fusion.layers.self_attn.o_proj.{rest}",)),
    (r"fusion\.norm\.(?P<rest>.+)", ("fusion.layers.norm1.{rest}",)),
    (r"head\.(?P<rest>weight|bias)", ("regressor.{rest}",)),
    # CAN (models/model.py CAN, AttentionFusion)
    (r"fusion\.projections\.(?P<i>\d+)\.(?P<rest>.+)", ("fuse.attn.{i}.{rest}",)),
    (r"fusion\.gate\.(?P<rest>.+)", ("fuse.weights.{rest}",)),
    (r"unused_conv\.(?P<rest>.+)", ("conv_c.{rest}",)),
    (r"head\.fc1\.(?P<rest>.+)", ("fc1.{rest}",)),
    (r"head\.norm\.(?P<rest>.+)", ("bn1.{rest}",)),
    (r"head\.fc2\.(?P<rest>.+)", ("fc2.{rest}",)),
)
_COMPILED_RULES = tuple((re.compile(pattern), templates) for pattern, templates in AUTHORS_KEY_RULES)


def authors_keys(model: nn.Module) -> dict[str, tuple[str, ...]]:
    """Each key of ``model.state_dict()`` -> the authors' keys of the same tensor (first: the one read).

    Args:
        model: an LFAN or CAN (``model.modalities`` gives the order of ``{k}``).
    """
    modalities = tuple(getattr(model, "modalities", ()))
    mapping = {}
    for key in model.state_dict():
        for pattern, templates in _COMPILED_RULES:
            match = pattern.fullmatch(key)
            if match:
                fields = match.groupdict()
                if "m" in fields:
                    fields["m"] = AUTHORS_MODALITY[fields["m"]]
                if "k" in fields:
                    fields["k"] = AUTHORS_MODALITY[modalities[int(fields["k"])]]
                mapping[key] = tuple(template.format(**fields) for template in templates)
                break
        else:
            raise ValueError(f"no rule of AUTHORS_KEY_RULES names our state-dict key {key!r}")
    return mapping


def load_authors_state_dict(model: nn.Module, path: str | Path) -> None:
    """Load a state dict saved by the authors' ABAW5 trainer (``model_state_dict<ccc>.pth``) into ``model``.

    Every tensor of ``model`` is replaced (backbones, TCNs, fusion, head, BatchNorm statistics); the
    file must hold exactly the authors' keys of this model (their aliases included), in the same
    shapes. BatchNorm batch counters may be absent (files of PyTorch < 0.4.1).

    Args:
        model: an ``LFAN`` or ``CAN`` built for the file's modalities (``model.build_model``; with
            ``random_backbone`` no weight file is read to build it).
        path: the file.

    Raises:
        UserError: the file is missing or unreadable, or its keys or shapes do not fit ``model``.
    """
    from model.abaw5 import Abaw5Model  # the ABAW5 models import this module's neighbours, not it

    if not isinstance(model, Abaw5Model):
        raise UserError(f"the authors' ABAW5 state dicts fit --model-name lfan or can, not a {type(model).__name__}")
    path = Path(path)
    loaded = read_weights_file(path, "authors' state dict")
    if not isinstance(loaded, Mapping):
        raise UserError(f"authors' state dict {path} holds a {type(loaded).__name__}, not a state dict")
    state = _unwrap(loaded)
    mapping = authors_keys(model)
    ours = model.state_dict()
    expected = {theirs: key for key, names in mapping.items() for theirs in names}
    missing = [k for k in expected if k not in state and not _is_counter(k)]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{names[0]} {tuple(state[names[0]].shape)} vs {tuple(ours[key].shape)}"
        for key, names in mapping.items()
        if names[0] in state and tuple(state[names[0]].shape) != tuple(ours[key].shape)
    ]
    name = f"{type(model).__name__} reading {' '.join(model.modalities)}"
    if missing or unexpected or mismatched:
        problems = []
        if missing:
            problems.append(f"missing keys {_show(missing)}")
        if unexpected:
            problems.append(f"unexpected keys {_show(unexpected)}")
        if mismatched:
            problems.append(f"shapes differ (file vs model) for {_show(mismatched)}")
        raise UserError(f"authors' state dict {path} does not fit this {name}: {'; '.join(problems)}"
                        f"{_authors_hint(model, state)}")
    model.load_state_dict({key: state.get(names[0], ours[key]) for key, names in mapping.items()}, strict=True)
    logger.info("%s: the authors' weights from %s", name, path)


def _authors_hint(model: nn.Module, state: Mapping[str, torch.Tensor]) -> str:
    """What a mismatch most likely means: another model, other modalities or another number of outputs."""
    kind = "CAN" if any(k.startswith("fuse.") for k in state) else "LFAN" if any(
        k.startswith("fusion.layers.") for k in state) else None
    if kind and kind != type(model).__name__:
        return f"; the file looks like a {kind} state dict: pass --model-name {kind.lower()}"
    theirs = {key.split(".")[1] for key in state if key.startswith("temporal.")}
    wanted = {AUTHORS_MODALITY[m] for m in model.modalities}
    if theirs and theirs != wanted:
        to_ours = {v: k for k, v in AUTHORS_MODALITY.items()}
        listed = " ".join(to_ours.get(m, m) for m in sorted(theirs))
        return f"; the file's TCNs are for the modalities {listed}: pass --modality with them"
    return ""
