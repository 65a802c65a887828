"""BatchNorm running statistics recomputed from data ("precise BatchNorm") before training starts.

A backbone with random weights (``--random-backbone``: the demo, or no res50_ir_0.887.pth) has
running statistics of 0 and 1, which describe nothing. Under the authors' recipe its frozen
BatchNorm layers normalise training batches with the batches' own statistics but evaluation frames
with those running statistics, so a random backbone trains on one input and is evaluated on another.
``precise_batchnorm`` replaces the running statistics by the average of the statistics of a few
training batches (what a pretrained backbone's statistics are: those of its data). The recipe is not
changed by it; with the authors' pretrained backbone it is not needed (``batchnorm_warmup_batches`` 0).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from model.ir50 import embed_frames


def batchnorm_layers(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def precise_batchnorm(backbone: nn.Module, frame_batches: Iterable[tuple[torch.Tensor, torch.Tensor | None]]) -> int:
    """Set every BatchNorm running mean/variance of ``backbone`` to the average over ``frame_batches``.

    Args:
        backbone: the IR-50.
        frame_batches: ``(frames, valid)`` pairs: (B, T, 3, S, S) normalised crops and an optional
            (B, T) mask of the real frames (padding is left out).

    Returns:
        The number of batches used. Weights, and the layers' train/eval modes, are unchanged.
    """
    layers = batchnorm_layers(backbone)
    modes = {m: m.training for m in backbone.modules()}
    momenta = {layer: layer.momentum for layer in layers}
    n_batches = 0
    try:
        backbone.train()
        for layer in layers:
            layer.reset_running_stats()
            layer.momentum = None  # cumulative average over the batches
        for frames, valid in frame_batches:
            embed_frames(backbone, frames, chunk_size=frames.shape[0] * frames.shape[1], valid=valid)
            n_batches += 1
    finally:
        for layer, momentum in momenta.items():
            layer.momentum = momentum
        for module, training in modes.items():
            module.training = training
    return n_batches
