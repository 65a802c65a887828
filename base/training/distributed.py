"""Multi-GPU (or multi-process CPU) training with ``torchrun`` and DistributedDataParallel.

``torchrun --nproc_per_node N main.py ...`` starts N processes with ``RANK``, ``LOCAL_RANK`` and
``WORLD_SIZE`` in their environment. Then:

* every process joins one process group (NCCL on CUDA, each on GPU ``LOCAL_RANK``; gloo on the CPU);
* the training windows of an epoch are shuffled with the same seeded permutation on every rank,
  padded to a multiple of the world size and dealt out (``shard_indices``), so every rank runs the
  same number of steps; DDP averages the gradients;
* the evaluation windows are dealt out without padding; each rank predicts its share and the
  per-window outputs are gathered on every rank (``gather_window_pieces``) before the overlap
  averaging and the CCC, so every rank computes the same partition metrics and takes the same
  decisions (best epoch, learning rate, early stopping, backbone release);
* BatchNorm statistics are per rank, as DDP keeps them (rank 0's are broadcast before each
  forward); after each training epoch every rank takes rank 0's (``broadcast_buffers``);
* random streams are per rank: rank r seeds dropout and the crop/flip generator with ``seed + r``
  (``base.training.checkpointing.rank_seed``), the initial weights are rank 0's (``broadcast_weights``),
  and the checkpoint holds every rank's random states (``all_gather_objects``), so that a resumed
  run continues exactly on every rank;
* only rank 0 writes files, logs at INFO level and shows progress bars (``rank_config``);
* the ranks leave the process group together, and a rank that fails makes the others stop in
  seconds, each with one error line (``base.training.rank_exit``).

With ``WORLD_SIZE`` unset or 1 nothing here changes the single-process run.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

# Imported before any process group exists: its functions' ``group=group.WORLD`` defaults, evaluated
# at import (DDP imports it), would otherwise hold the process group after every rank left it
# (base.training.rank_exit).
import torch.distributed.nn  # noqa: F401
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from base.errors import UserError
from base.training.devices import resolve_device
from configs import Config

logger = logging.getLogger(__name__)

WindowPiece = tuple[int, int, np.ndarray, np.ndarray]  # (start, length, outputs (L, C), labels (L, C))


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands in a (possibly single-process) run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this process writes files and logs (rank 0)."""
        return self.rank == 0


def ranks_from_env(environ: Mapping[str, str]) -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` as set by ``torchrun``; ``(0, 1, 0)`` when not set."""
    try:
        world_size = int(environ.get("WORLD_SIZE", "1"))
        rank = int(environ.get("RANK", "0"))
        local_rank = int(environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise UserError("RANK, LOCAL_RANK and WORLD_SIZE must be integers (they are set by torchrun)") from None
    if world_size < 1 or not 0 <= rank < world_size or local_rank < 0:
        raise UserError(f"inconsistent torchrun environment: RANK={rank}, WORLD_SIZE={world_size}")
    return rank, world_size, local_rank


def rank_device(device_spec: str, local_rank: int) -> torch.device:
    """The device of one rank: GPU ``local_rank`` unless the CPU is asked for (or there is no CUDA)."""
    device = resolve_device(device_spec)
    if device.type == "cpu":
        return device
    if local_rank >= torch.cuda.device_count():
        raise UserError(
            f"rank with LOCAL_RANK {local_rank} has no GPU: this node has {torch.cuda.device_count()}; "
            "start torchrun with --nproc_per_node at most the number of GPUs"
        )
    if device.index not in (None, 0, local_rank):
        logger.warning("device %s ignored under torchrun: each rank uses GPU LOCAL_RANK", device)
    return torch.device(f"cuda:{local_rank}")


def init_distributed(device_spec: str, environ: Mapping[str, str] | None = None) -> DistributedContext:
    """Join the process group when ``WORLD_SIZE`` > 1 (NCCL on CUDA, gloo on CPU); else a 1-rank context."""
    environ = os.environ if environ is None else environ
    rank, world_size, local_rank = ranks_from_env(environ)
    if world_size == 1:
        device = resolve_device(device_spec)
        if device.type == "cuda":  # kernels and the caching allocator then run on cuda:N, not on cuda:0
            torch.cuda.set_device(device)
        return DistributedContext(device=device)
    device = rank_device(device_spec, local_rank)
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(minutes=30))
        logger.info("rank %d of %d joined the %s process group on %s", rank, world_size, backend, device)
    return DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def rank_config(config: Config, context: DistributedContext) -> Config:
    """The config a rank runs: ranks other than 0 are quiet (no INFO logs, no progress bars)."""
    if context.is_main or config.train.quiet:
        return config
    return dataclasses.replace(config, train=dataclasses.replace(config.train, quiet=True))


# ----------------------------------------------------------------------------- sharding


def shuffled_order(n_items: int, seed: int) -> np.ndarray:
    """The order in which a shuffled DataLoader whose generator is seeded with ``seed`` visits items.

    ``base.data.dataset.make_loader`` seeds its generator with ``seed + epoch``; the DataLoader draws from
    it before its sampler does, so the order is taken from a DataLoader itself (over the indices).
    """
    loader = DataLoader(range(n_items), batch_size=max(n_items, 1), shuffle=True,
                        generator=torch.Generator().manual_seed(int(seed)))
    return np.concatenate([batch.numpy() for batch in loader] or [np.zeros(0, np.int64)])


def shard_indices(
    n_items: int, rank: int, world_size: int, shuffle: bool, seed: int = 0, epoch: int = 0, pad: bool = True
) -> np.ndarray:
    """The dataset indices one rank handles in one epoch.

    Every rank draws the same permutation (``shuffled_order(n_items, seed + epoch)``: the order of
    the single-process shuffled loader), and rank r takes items r, r + W, r + 2W, ... So the union of
    the ranks' k-th batches of size B is the single-process k-th batch of size W x B.
    With ``pad`` the list is first extended by its own beginning to a multiple of ``world_size``, so
    that every rank gets the same number of items (DDP needs the same number of steps everywhere).

    >>> shard_indices(5, 1, 2, shuffle=False).tolist(), shard_indices(5, 1, 2, shuffle=False, pad=False).tolist()
    ([1, 3, 0], [1, 3])
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside a world of {world_size}")
    if shuffle:
        order = shuffled_order(n_items, int(seed) + int(epoch))
    else:
        order = np.arange(n_items)
    if pad and n_items and n_items % world_size:
        extra = world_size - n_items % world_size
        order = np.concatenate([order, np.resize(order, extra)])
    return order[rank::world_size].astype(np.int64)


def shard_dataset(
    ds: Dataset, context: DistributedContext, shuffle: bool, seed: int = 0, epoch: int = 0, pad: bool | None = None
) -> Subset:
    """This rank's share of ``ds`` in iteration order (training: padded, and shuffled unless its order is
    fixed; evaluation: neither). ``pad`` defaults to ``shuffle``."""
    pad = shuffle if pad is None else pad
    indices = shard_indices(len(ds), context.rank, context.world_size, shuffle, seed, epoch, pad=pad)
    return Subset(ds, indices.tolist())


# ----------------------------------------------------------------------------- model and collectives


def wrap_model(model: nn.Module, context: DistributedContext) -> nn.Module:
    """``model`` in DistributedDataParallel when distributed (only its trainable parameters sync)."""
    if not context.is_distributed:
        return model
    device_ids = [context.device.index] if context.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def broadcast_buffers(model: nn.Module, context: DistributedContext) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics), as DDP does before a forward.

    Called after a training epoch, so that evaluation and the saved weights use the same statistics
    on every rank.
    """
    if not context.is_distributed:
        return
    for buffer in model.buffers():
        dist.broadcast(buffer.data, src=0)


def broadcast_weights(model: nn.Module, context: DistributedContext) -> None:
    """Give every rank rank 0's parameters and buffers (each rank drew its own initial weights)."""
    if not context.is_distributed:
        return
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            dist.broadcast(tensor.data, src=0)


def all_gather_objects(value: Any, context: DistributedContext) -> list[Any]:
    """``value`` of every rank, in rank order (``[value]`` when not distributed); every rank must call it."""
    if not context.is_distributed:
        return [value]
    gathered: list[Any] = [None] * context.world_size
    dist.all_gather_object(gathered, value)
    return gathered


def sum_across_ranks(values: tuple[float, ...], context: DistributedContext) -> tuple[float, ...]:
    """Element-wise sum of ``values`` over all ranks (``values`` itself when not distributed)."""
    if not context.is_distributed:
        return values
    device = context.device if dist.get_backend() == "nccl" else torch.device("cpu")
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tuple(tensor.cpu().tolist())


def gather_window_pieces(
    pieces: dict[int, list[WindowPiece]], context: DistributedContext
) -> dict[int, list[WindowPiece]]:
    """Every rank's per-window outputs, merged on every rank, each trial's windows sorted by start.

    Args:
        pieces: trial_index -> [(start, length, outputs, labels), ...] predicted by this rank.

    Returns:
        The same mapping over all ranks: what a single process predicting every window would hold.
    """
    if not context.is_distributed:
        return pieces
    gathered: list[Any] = [None] * context.world_size
    dist.all_gather_object(gathered, pieces)
    merged: dict[int, list[WindowPiece]] = {}
    for rank_pieces in gathered:
        for trial_index, windows in rank_pieces.items():
            merged.setdefault(trial_index, []).extend(windows)
    return {trial_index: sorted(windows, key=lambda piece: piece[0]) for trial_index, windows in sorted(merged.items())}
