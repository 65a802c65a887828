"""VGGish as a torch network, in the layout of the authors' ``vggish.pth`` (SPEC-ABAW5 §3).

One module, two users: the audio backbone of the second-generation models (LFAN, CAN), which
fine-tune its fully connected layers on log-mel patches, and the ``torch`` engine of preprocessing,
which embeds the same patches the TensorFlow graph embeds.

Layout (sucv/ABAW3 ``models/backbone.py``, the torchvggish key names):

- ``features``: Conv3x3(1->64)-ReLU-MaxPool, Conv(64->128)-ReLU-MaxPool, Conv(128->256)-ReLU,
  Conv(256->256)-ReLU-MaxPool, Conv(256->512)-ReLU, Conv(512->512)-ReLU-MaxPool; the convolutions
  are modules 0, 3, 6, 8, 11, 13;
- ``embeddings``: Linear(12288->4096)-ReLU-Linear(4096->4096)-ReLU-Linear(4096->128) (modules 0, 2,
  4), no ReLU after the last one (the authors commented it out): the slim graph's
  ``vggish/embedding``.

Before the first Linear the (N, 512, 6, 4) map is flattened in (6, 4, 512) order, TensorFlow's NHWC
flatten, so ``vggish.torch_weights`` maps a slim checkpoint onto this network by changing axes only.
SAME padding of the slim graph is ``padding=1`` for the 3x3 convolutions; the 2x2 pools see even
sizes only (96x64 -> 6x4), where SAME and VALID agree.

``load_vggish`` builds the network with the weights of either file a user has: the authors'
``vggish.pth`` or the AudioSet release's ``vggish_model.ckpt`` (read without TensorFlow).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from vggish import params, torch_weights

FEATURE_MAP_HW = (6, 4)  # (PATCH_FRAMES, N_MEL_BANDS) after four 2x2 pools
FLAT_SIZE = params.CONV_LAYERS[-1][1] * FEATURE_MAP_HW[0] * FEATURE_MAP_HW[1]  # 12288


def _features() -> nn.Sequential:
    layers: list[nn.Module] = []
    channels = 1
    for scope, width in params.CONV_LAYERS:
        layers += [nn.Conv2d(channels, width, params.CONV_KERNEL, padding=params.CONV_KERNEL // 2), nn.ReLU()]
        if scope in params.POOL_AFTER:
            layers.append(nn.MaxPool2d(params.POOL_KERNEL, params.POOL_KERNEL))
        channels = width
    return nn.Sequential(*layers)


def _embeddings() -> nn.Sequential:
    layers: list[nn.Module] = []
    width_in = FLAT_SIZE
    for _, width in params.FC_LAYERS:
        layers += [nn.Linear(width_in, width), nn.ReLU()]
        width_in = width
    layers.append(nn.Linear(width_in, params.EMBEDDING_SIZE))
    return nn.Sequential(*layers)


class VGGish(nn.Module):
    """Log-mel patches (N, 96, 64) -> raw (pre-PCA) embeddings (N, 128).

    Example::

        net = load_vggish("vggish.pth")  # or the release's vggish_model.ckpt
        embeddings = net(patches)  # (N, 128)
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = _features()
        self.embeddings = _embeddings()

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        x = patches.unsqueeze(1)  # (N, 1, 96, 64)
        x = self.features(x)  # (N, 512, 6, 4)
        x = x.permute(0, 2, 3, 1).flatten(1)  # (N, 6 * 4 * 512), TensorFlow's NHWC order
        return self.embeddings(x)  # (N, 128)


def load_vggish(path: str | Path, device: str | torch.device = "cpu") -> VGGish:
    """A ``VGGish`` holding the weights of ``path``, on ``device``, in eval mode.

    Args:
        path: the authors' ``vggish.pth`` (``features.N`` / ``embeddings.N`` keys; a ``module.`` or
            ``backbone.`` prefix and a ``state_dict`` wrapper are accepted), or the AudioSet release's
            ``vggish_model.ckpt`` (V1 file, V2 prefix, or a folder holding it), read without TensorFlow
            and mapped onto this layout.
        device: a torch device (``cpu``, ``cuda``, ``cuda:1``).

    Returns:
        The network in eval mode; its parameters still require gradients (a backbone may fine-tune).

    Raises:
        UserError: the file is missing or unreadable, or a key or shape is missing, unexpected or
            wrong (one line naming them).
    """
    state = torch_weights.read_state_dict(path)  # checked: every key, every shape
    with torch.device("meta"):  # no random initialisation and no second copy of the 288 MB
        network = VGGish()
    network.load_state_dict({key: torch.from_numpy(value) for key, value in state.items()}, strict=True, assign=True)
    return network.to(device).eval()
