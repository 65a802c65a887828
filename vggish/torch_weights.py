"""VGGish weights in PyTorch layout (``vggish.pth``): check them, map them onto the slim graph, and back.

The authors' later repository (sucv/ABAW3, ``models/backbone.py``) ships the AudioSet VGGish as a
PyTorch state dict, ``vggish.pth``, laid out like the widely used ``torchvggish`` port:

- ``features.{0,3,6,8,11,13}.{weight,bias}``: the six 3x3 convolutions, ``Conv2d`` weights
  (out, in, kh, kw); in the ``nn.Sequential`` each is followed by a ReLU, and conv1, conv2, conv3_2
  and conv4_2 by a 2x2 max-pool, hence the gaps in the indices;
- ``embeddings.{0,2,4}.{weight,bias}``: fc1_1, fc1_2 and fc2, ``Linear`` weights (out, in); a ReLU
  follows the first two. The authors commented out the ReLU after the last one (torchvggish keeps
  it), so their embedding is the pre-activation of fc2: the slim graph's ``vggish/embedding``.

Before the first ``Linear`` that network transposes its (N, 512, 6, 4) map to (N, 6, 4, 512) and
flattens it, the NHWC order of TensorFlow's flatten, so fc1_1's 12288 inputs are in the same order
in both files: kernels only change axes, (kh, kw, in, out) <-> (out, in, kh, kw), and ``Linear``
weights are the transposed slim weights. No bias changes.

``torch`` is imported inside functions only, and never by a process that must stay free of it; it
is safe beside TensorFlow (load the weights first, then build the graph, as ``VggishExtractor`` does).
"""

from __future__ import annotations

import logging
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from base.errors import UserError
from vggish import params
from vggish.slim_checkpoint import read_slim_checkpoint
from vggish.slim_model import variable_shapes

logger = logging.getLogger(__name__)

TORCH_SUFFIXES = (".pth", ".pt")
CONV_PERMUTATION = (3, 2, 0, 1)  # slim (kh, kw, in, out) -> torch (out, in, kh, kw)
CONV_INVERSE_PERMUTATION = (2, 3, 1, 0)  # torch (out, in, kh, kw) -> slim (kh, kw, in, out)
# A prefix every key shares is dropped: nn.DataParallel, the authors' AudioBackbone wrapper.
WRAPPER_PREFIXES = ("module.", "backbone.")
# torchvggish's PCA postprocessor, saved beside the network by its full model: not network weights.
IGNORED_PREFIXES = ("pproc.",)
NESTED_KEYS = ("state_dict", "model")  # {"state_dict": {...}} as training scripts save it
# What torch.load(weights_only=True) says of an object it refuses, e.g. a whole pickled nn.Module.
_UNSUPPORTED_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")
_PICKLE_PROTOCOL_2 = b"\x80"  # first byte of a legacy (pre-zip) torch.save file
_N_LISTED = 3  # keys quoted in an error message


# ----------------------------------------------------------------------------- the name mapping


def torch_names() -> dict[str, str]:
    """Slim variable name -> state-dict key, e.g. ``vggish/conv2/weights`` -> ``features.3.weight``."""
    names: dict[str, str] = {}
    index = 0  # position in the nn.Sequential ``features``
    for scope, _ in params.CONV_LAYERS:
        names[f"{params.SCOPE}/{scope}/weights"] = f"features.{index}.weight"
        names[f"{params.SCOPE}/{scope}/biases"] = f"features.{index}.bias"
        index += 2  # Conv2d, ReLU
        if scope in params.POOL_AFTER:
            index += 1  # MaxPool2d
    linear = (*params.FC_LAYERS, (params.EMBEDDING_SCOPE, params.EMBEDDING_SIZE))
    for position, (scope, _) in enumerate(linear):  # Linear, ReLU pairs in ``embeddings``
        names[f"{params.SCOPE}/{scope}/weights"] = f"embeddings.{2 * position}.weight"
        names[f"{params.SCOPE}/{scope}/biases"] = f"embeddings.{2 * position}.bias"
    return names


def torch_shapes() -> dict[str, tuple[int, ...]]:
    """State-dict key -> shape of every tensor of ``vggish.pth``."""
    names, shapes = torch_names(), {}
    for name, shape in variable_shapes().items():
        if len(shape) == 4:
            shape = tuple(shape[axis] for axis in CONV_PERMUTATION)
        elif len(shape) == 2:
            shape = shape[::-1]
        shapes[names[name]] = shape
    return shapes


def _to_torch_layout(value: np.ndarray) -> np.ndarray:
    if value.ndim == 4:
        return np.ascontiguousarray(np.transpose(value, CONV_PERMUTATION))
    return np.ascontiguousarray(value.T) if value.ndim == 2 else np.array(value)


def _to_slim_layout(value: np.ndarray) -> np.ndarray:
    if value.ndim == 4:
        return np.ascontiguousarray(np.transpose(value, CONV_INVERSE_PERMUTATION))
    return np.ascontiguousarray(value.T) if value.ndim == 2 else np.array(value)


def slim_to_torch(variables: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Slim variables (names and shapes of ``vggish_model.ckpt``) -> the ``vggish.pth`` state dict."""
    names = torch_names()
    return {names[name]: _to_torch_layout(np.asarray(variables[name], dtype=np.float32)) for name in names}


def torch_to_slim(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A checked ``vggish.pth`` state dict -> slim variables ready to assign to the graph."""
    return {name: _to_slim_layout(np.asarray(state[key], dtype=np.float32)) for name, key in torch_names().items()}


# ----------------------------------------------------------------------------- reading vggish.pth


def is_torch_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` names PyTorch weights: a ``.pth`` / ``.pt`` name, or a torch.save file's bytes.

    TensorFlow checkpoints start with a table block (first byte 0), never with a zip header or a
    pickle protocol byte.
    """
    path = Path(path)
    if path.suffix.lower() in TORCH_SUFFIXES:
        return True
    if not path.is_file():
        return False
    with open(path, "rb") as handle:
        head = handle.read(4)
    return head == b"PK\x03\x04" or head[:1] == _PICKLE_PROTOCOL_2


def _state_dict(loaded: object, path: Path) -> dict[str, np.ndarray]:
    """The tensors of a loaded file, as float32 numpy arrays under their bare keys."""
    import torch

    if isinstance(loaded, Mapping):
        for key in NESTED_KEYS:
            if isinstance(loaded.get(key), Mapping):
                loaded = loaded[key]
                break
    if not isinstance(loaded, Mapping):
        raise UserError(
            f"VGGish weights {path} hold a {type(loaded).__name__}, not a state dict; save the model's "
            f"state_dict() (or {params.TORCH_WEIGHTS_HINT})"
        )
    tensors = {str(k): v for k, v in loaded.items() if isinstance(v, torch.Tensor)}
    for prefix in WRAPPER_PREFIXES:
        if tensors and all(key.startswith(prefix) for key in tensors):
            tensors = {key[len(prefix):]: value for key, value in tensors.items()}
    ignored = [key for key in tensors if key.startswith(IGNORED_PREFIXES)]
    if ignored:
        logger.info("VGGish weights %s: ignoring %s (PCA postprocessor, not network weights)", path,
                    ", ".join(ignored))
    state = {}
    for key, value in tensors.items():
        if key in ignored:
            continue
        if not value.is_floating_point():
            raise UserError(f"VGGish weights {path} store {key} as {value.dtype}, not as floating point numbers")
        state[key] = value.detach().to(torch.float32).numpy()
    return state


def _show(items: list[str]) -> str:
    shown = ", ".join(items[:_N_LISTED])
    return f"{len(items)} ({shown}{', ...' if len(items) > _N_LISTED else ''})"


def check_torch_state_dict(state: Mapping[str, np.ndarray], path: str | Path) -> None:
    """Raise one ``UserError`` naming every missing or unexpected key and every wrong shape."""
    expected = torch_shapes()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    wrong = [
        f"{key} {tuple(state[key].shape)} vs {shape}"
        for key, shape in expected.items()
        if key in state and tuple(state[key].shape) != shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {_show(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_show(unexpected)}")
    if wrong:
        problems.append(f"shapes differ (file vs VGGish) for {_show(wrong)}")
    if problems:
        raise UserError(
            f"VGGish weights {path} do not fit the PyTorch VGGish layout (features.N Conv2d, "
            f"embeddings.0/2/4 Linear): {'; '.join(problems)}; {params.TORCH_WEIGHTS_HINT}"
        )


def read_torch_checkpoint(path: str | Path) -> dict[str, np.ndarray]:
    """Read and check ``vggish.pth`` (``torch.load(weights_only=True)``): key -> float32 array.

    Raises:
        UserError: the file is missing, unreadable, or not the VGGish state dict.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise UserError(f"VGGish weights {path} not found; {params.TORCH_WEIGHTS_HINT}")
    try:
        # The zip format is mapped, not read: checking the keys costs no 288 MB read.
        loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as exc:  # noqa: BLE001 - any failure here means the file is not usable
        pickled = _UNSUPPORTED_GLOBAL.search(str(exc))
        if pickled:
            raise UserError(
                f"VGGish weights {path} hold a pickled {pickled.group(1)}, not only tensors: save the "
                f"model's state_dict() instead (torch.load(weights_only=True) reads nothing else)"
            ) from None
        raise UserError(
            f"VGGish weights {path} could not be read as a PyTorch state dict: it is truncated or not a "
            f"torch.save file ({type(exc).__name__}); {params.TORCH_WEIGHTS_HINT}"
        ) from None
    state = _state_dict(loaded, path)
    check_torch_state_dict(state, path)
    return state


def check_torch_checkpoint(path: str | Path) -> str:
    """Check ``vggish.pth`` and return its path (see ``read_torch_checkpoint``)."""
    read_torch_checkpoint(path)
    return str(path)


def load_slim_variables(path: str | Path) -> dict[str, np.ndarray]:
    """``vggish.pth`` -> slim variable name -> float32 array in the slim graph's layout."""
    return torch_to_slim(read_torch_checkpoint(path))


# ----------------------------------------------------------------------------- writing vggish.pth


def write_torch_checkpoint(variables: Mapping[str, np.ndarray], path: str | Path) -> Path:
    """Save slim variables as a ``vggish.pth`` state dict (the layout the authors load).

    Args:
        variables: slim variable name -> array (e.g. from ``vggish.slim_checkpoint.read_slim_checkpoint``).
        path: the ``.pth`` file to write.
    """
    import torch

    state = {key: torch.from_numpy(value) for key, value in slim_to_torch(variables).items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    logger.info("wrote VGGish weights in PyTorch layout to %s", path)
    return path


def convert_slim_checkpoint(checkpoint: str | Path, pth: str | Path) -> Path:
    """``vggish_model.ckpt`` -> ``vggish.pth`` with the same weights (imports torch, not TensorFlow)."""
    return write_torch_checkpoint(read_slim_checkpoint(checkpoint), pth)


# ----------------------------------------------------------------------------- either file


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Either weight file as the ``vggish.pth`` state dict: key -> float32 array (torch layout).

    ``vggish.pth`` is read and checked as ``read_torch_checkpoint`` does (imports torch); a TensorFlow
    checkpoint (``vggish_model.ckpt``, V1 or V2) is read without TensorFlow and mapped by
    ``slim_to_torch``.

    Raises:
        UserError: the file is missing, unreadable, or not the VGGish weights.
    """
    if is_torch_checkpoint(path):
        return read_torch_checkpoint(path)
    return slim_to_torch(read_slim_checkpoint(path))
