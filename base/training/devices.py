"""Turn the ``device`` config value (auto, cpu, cuda, cuda:N) into a ``torch.device``, and the
settings that follow from the device (DataLoader workers, cuDNN determinism, CPU threads).

A GPU asked for by name (``cuda``, ``cuda:N``, the authors' ``-gpu N``) that torch cannot use is an
error that says what torch sees; only ``auto`` falls back to the CPU, and says so.
"""

from __future__ import annotations

import logging
import os
import re

import torch

from base.errors import UserError

logger = logging.getLogger(__name__)

_DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda)(?::(\d+))?$")
AUTO_WORKERS = -1  # ``num_workers`` value: derive the DataLoader workers from the device and the CPUs
MAX_AUTO_WORKERS = 8


def cuda_report() -> str:
    """What torch sees of CUDA, for messages: its build's CUDA version and the GPUs it can count."""
    built = torch.version.cuda or "none (CPU-only build)"
    report = f"torch {torch.__version__} built with CUDA {built}, {torch.cuda.device_count()} GPU(s) visible"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        report += f", CUDA_VISIBLE_DEVICES='{visible}'"
    return report


def resolve_device(spec: str) -> torch.device:
    """The device named by ``spec``; ``auto`` is the first GPU when CUDA works, else the CPU (logged: a
    warning when torch is a CUDA build, which should have found one).

    Args:
        spec: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.

    Raises:
        UserError: for a malformed name, or a GPU that torch cannot use on this machine.
    """
    match = _DEVICE_PATTERN.match(spec.strip().lower())
    if match is None or (match.group(2) is not None and match.group(1) != "cuda"):
        raise UserError(f"config key 'device' must be auto, cpu, cuda or cuda:N, got '{spec}'")
    kind, index = match.group(1), match.group(2)
    if kind == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda:0")
        # a CUDA build without a usable GPU is the suspicious case (a driver too old, a GPU not exposed)
        level = logging.WARNING if torch.version.cuda else logging.INFO
        logger.log(level, "device auto: no usable GPU (%s), running on the CPU; pass --device cuda to make this "
                   "an error instead", cuda_report())
        return torch.device("cpu")
    if kind == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UserError(f"device '{spec}' needs a GPU, but torch cannot use one here ({cuda_report()}); check the "
                        "NVIDIA driver and the job's GPU request, or pass --device cpu")
    gpu = int(index or 0)
    if gpu >= torch.cuda.device_count():
        raise UserError(f"device '{spec}' does not exist: {cuda_report()} (cuda:0..)")
    return torch.device(f"cuda:{gpu}")


def gpu_index_to_device(gpu: int) -> str:
    """The authors' ``-gpu N`` flag as a device name, ``cuda:N`` (an error later when no GPU is usable)."""
    if gpu < 0:
        raise UserError(f"-gpu must be a GPU index (0, 1, ...), got {gpu}")
    return f"cuda:{gpu}"


def available_cpus() -> int:
    """CPUs this process may run on (a scheduler's CPU set, not the whole machine, where it has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def loader_workers(num_workers: int, device: torch.device, n_ranks: int = 1) -> int:
    """DataLoader worker processes for the ``num_workers`` config value.

    ``-1`` (auto): none on the CPU (the training process uses the cores); on CUDA this process's
    share of the CPUs (divided among ``n_ranks`` ranks) minus one for the training loop, at least
    1 and at most ``MAX_AUTO_WORKERS``, so that the GPU does not wait for the windows. ``0`` or more:
    exactly that many.
    """
    if num_workers != AUTO_WORKERS:
        return num_workers
    if device.type != "cuda":
        return 0
    return max(1, min(MAX_AUTO_WORKERS, available_cpus() // max(1, n_ranks) - 1))


def set_determinism(deterministic: bool) -> None:
    """cuDNN deterministic kernels (``deterministic``), or its autotuner (``cudnn.benchmark``) otherwise.

    Deterministic: a rerun on the same GPU gives the same numbers (SPEC §5: seed 0, benchmark off).
    Benchmark: cuDNN times the convolution algorithms for each new shape and keeps the fastest.
    """
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic


def set_cpu_threads(n_threads: int) -> None:
    """Limit torch's intra-op CPU threads (the authors' ``-cpu N``); 0 keeps torch's default."""
    if n_threads < 0:
        raise UserError(f"config key 'cpu_threads' must be >= 0, got {n_threads}")
    if n_threads:
        torch.set_num_threads(n_threads)
