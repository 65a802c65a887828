"""VGGish as the audio backbone of the ABAW5 models: weights, and log-mel patches -> embeddings.

The network is ``vggish.network.VGGish`` (the layout of the authors' ``vggish.pth``). LFAN and CAN
embed every (96, 64) log-mel patch of a batch inside the model, as the authors' ``AudioBackbone``
does (sucv/ABAW3 ``models/backbone.py``), and fine-tune its fully connected layers; its
convolutions never train (``model.freezing``).

Memory: 3,600 patches a batch (12 windows x 300 frames) through the convolutions hold gigabytes
of activations. VGGish has no BatchNorm and no dropout, so a patch's embedding never depends on
the other patches: ``embed_patches`` runs the frozen layers in chunks of ``chunk_size`` patches
without autograd (exact, and no activation is kept for backward), then the trainable layers on all
patches in one pass. Without autograd (evaluation) every layer runs in chunks.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from base.errors import UserError
from vggish.network import VGGish

logger = logging.getLogger(__name__)

EMBEDDING_DIM = 128
PATCH_SHAPE = (96, 64)  # (10 ms frames, mel bands) of one VGGish example

MISSING_AUDIO_WEIGHTS_HELP = (
    "no VGGish weights were given: LFAN and CAN fine-tune VGGish on log-mel patches starting from the "
    "authors' 'vggish.pth' (the folder linked under 'Model state dict' in the sucv/ABAW3 README) or the "
    "AudioSet 'vggish_model.ckpt'; pass --audio-backbone-checkpoint FILE, or --random-backbone to start "
    "both backbones from random weights"
)


def load_audio_backbone(path: str | Path | None, allow_random: bool = False) -> VGGish:
    """VGGish with the weights of ``path`` (``vggish.pth`` or a slim ``vggish_model.ckpt``), in eval mode.

    Raises:
        UserError: no file and ``allow_random`` is false, or the file is not VGGish's weights.
    """
    network = VGGish().eval()
    if not path:
        if not allow_random:
            raise UserError(MISSING_AUDIO_WEIGHTS_HELP)
        logger.warning("audio backbone: random VGGish weights (no checkpoint given)")
        return network
    from vggish import torch_weights  # reads the file formats; imports TensorFlow only for a slim checkpoint

    if torch_weights.is_torch_checkpoint(path):
        arrays = torch_weights.read_torch_checkpoint(path)
    else:
        arrays = torch_weights.slim_to_torch(torch_weights.read_slim_checkpoint(path))
    network.load_state_dict({key: torch.from_numpy(value) for key, value in arrays.items()}, strict=True)
    logger.info("audio backbone: VGGish weights from %s", path)
    return network


def _chain(network: VGGish) -> list[nn.Module]:
    """VGGish as a chain of pieces: the convolutions, then each fully connected layer and ReLU."""
    return [network.features, _NhwcFlatten(), *network.embeddings]


class _NhwcFlatten(nn.Module):
    """(N, 512, 6, 4) -> (N, 12288) in TensorFlow's (6, 4, 512) order, as ``VGGish.forward`` flattens."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 2, 3, 1).flatten(1)


def _run_frozen(piece: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A piece without autograd; ReLUs in place (nothing is kept for backward)."""
    layers = piece if isinstance(piece, nn.Sequential) else [piece]
    for layer in layers:
        x = torch.relu_(x) if isinstance(layer, nn.ReLU) else layer(x)
    return x


def embed_patches(network: VGGish, patches: torch.Tensor, chunk_size: int,
                  valid: torch.Tensor | None = None) -> torch.Tensor:
    """Embed every log-mel patch of a batch of windows.

    Args:
        network: VGGish.
        patches: (B, T, 96, 64) log-mel patches, one per frame.
        chunk_size: patches per pass of the layers that run without autograd (exact, see module doc).
        valid: optional (B, T) bool, False on the zero padding of short windows: padded patches skip
            the network and get zero embeddings (as ``model.ir50.embed_frames`` does for frames).

    Returns:
        (B, T, 128) embeddings (the pre-activation of VGGish's last layer).
    """
    n_windows, n_steps = patches.shape[:2]
    flat = patches.reshape(n_windows * n_steps, *PATCH_SHAPE).unsqueeze(1)  # (B*T, 1, 96, 64), frame-major
    keep = None
    if valid is not None:
        kept = torch.nonzero(valid.reshape(-1).cpu(), as_tuple=True)[0]
        if 1 <= len(kept) < len(flat):
            keep = kept.to(flat.device, non_blocking=True)
            flat = flat.index_select(0, keep)  # (N_valid, 1, 96, 64)
    chain = _chain(network)
    n_frozen = len(chain)
    if torch.is_grad_enabled():
        n_frozen = next((i for i, piece in enumerate(chain) if any(p.requires_grad for p in piece.parameters())),
                        len(chain))
    with torch.no_grad():
        n_chunks = max(1, -(-flat.shape[0] // max(1, chunk_size)))
        chunks = []
        for chunk in torch.tensor_split(flat, n_chunks):
            for piece in chain[:n_frozen]:
                chunk = _run_frozen(piece, chunk)
            chunks.append(chunk)
        x = torch.cat(chunks)
    for piece in chain[n_frozen:]:
        x = piece(x)
    if keep is not None:
        x = x.new_zeros(n_windows * n_steps, x.shape[-1]).index_copy(0, keep, x)
    return x.reshape(n_windows, n_steps, -1)  # (B, T, 128)
