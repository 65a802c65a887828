"""Turn the ``device`` config value (auto, cpu, cuda, cuda:N) into a ``torch.device``."""

from __future__ import annotations

import logging
import re

import torch

from base.errors import UserError

logger = logging.getLogger(__name__)

_DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda)(?::(\d+))?$")


def resolve_device(spec: str) -> torch.device:
    """The device named by ``spec``; ``auto`` is the first GPU when CUDA works, else the CPU.

    Args:
        spec: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.

    Raises:
        UserError: for a malformed name, or a GPU that this machine does not have.
    """
    match = _DEVICE_PATTERN.match(spec.strip().lower())
    if match is None or (match.group(2) is not None and match.group(1) != "cuda"):
        raise UserError(f"config key 'device' must be auto, cpu, cuda or cuda:N, got '{spec}'")
    kind, index = match.group(1), match.group(2)
    if kind == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if kind == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UserError(f"device '{spec}' was asked for but CUDA is not available here; use --device cpu or auto")
    gpu = int(index or 0)
    if gpu >= torch.cuda.device_count():
        raise UserError(
            f"device '{spec}' does not exist: this machine has {torch.cuda.device_count()} GPU(s) (cuda:0..)"
        )
    return torch.device(f"cuda:{gpu}")


def gpu_index_to_device(gpu: int) -> str:
    """The authors' ``-gpu N`` flag as a device name: ``cuda:N`` when CUDA works, else ``cpu``."""
    if gpu < 0:
        raise UserError(f"-gpu must be a GPU index (0, 1, ...), got {gpu}")
    if not torch.cuda.is_available():
        logger.info("-gpu %d given but CUDA is not available: using the CPU", gpu)
        return "cpu"
    return f"cuda:{gpu}"


def set_cpu_threads(n_threads: int) -> None:
    """Limit torch's intra-op CPU threads (the authors' ``-cpu N``); 0 keeps torch's default."""
    if n_threads < 0:
        raise UserError(f"config key 'cpu_threads' must be >= 0, got {n_threads}")
    if n_threads:
        torch.set_num_threads(n_threads)
