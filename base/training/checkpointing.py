"""Checkpoints that let a killed run continue exactly where it stopped.

A checkpoint is a plain dict saved with ``torch.save`` and read back with ``weights_only=True``
(tensors, numbers, strings and containers only), so loading one never runs code. Writes are
atomic: a temporary file is written first and then renamed over the target.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from base import atomic
from base.errors import UserError

# Train settings that may change between a run and its resumption (paths, budget, verbosity).
# Everything else in the model and train sections changes the trajectory and must match.
RESUME_FREE_KEYS = frozenset({
    "dataset_path", "save_path", "fold", "num_epochs", "min_num_epochs", "early_stopping", "device",
    "num_workers", "cpu_threads", "resume", "quiet", "save_model", "n_plot_trials",
    "backbone_checkpoint", "random_backbone", "backbone_chunk_size", "deterministic",
    "tensorboard",
})
RESUME_CHECKED_SECTIONS = ("model", "train")


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to ``path`` through a temporary file, so a kill or a full disk never leaves half a file.

    A failed write raises its ``OSError`` (ENOSPC, ...), which the scripts report in one line: torch's
    zip writer turns it into an opaque ``RuntimeError``, so it is saved through a Python file object
    whose ``OSError`` is recovered from that ``RuntimeError``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic.atomic_path(path) as tmp, open(tmp, "wb") as handle:
            torch.save(obj, handle)
    except RuntimeError as exc:
        failed_write = exc.__context__
        if not isinstance(failed_write, OSError):
            raise
        if failed_write.filename is None:
            failed_write.filename = str(path)
        raise failed_write from None


def load_torch_file(path: str | Path, what: str = "checkpoint") -> dict[str, Any]:
    """Read a dict saved by ``atomic_torch_save`` without executing pickled code."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a damaged or foreign file is the user's to fix
        raise UserError(f"{what} {path} could not be read ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict):
        raise UserError(f"{what} {path} does not hold a dict; was it written by this project?")
    return data


# ----------------------------------------------------------------------------- random states


def capture_rng_state(generator: torch.Generator | None = None) -> dict[str, Any]:
    """Every random state a training epoch consumes, as plain types and tensors."""
    numpy_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "bit_generator": numpy_state["bit_generator"],
            "key": [int(k) for k in numpy_state["state"]["key"]],
            "pos": int(numpy_state["state"]["pos"]),
            "has_gauss": int(numpy_state["has_gauss"]),
            "gauss": float(numpy_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generator": generator.get_state() if generator is not None else None,
    }
    return state


def restore_rng_state(state: Mapping[str, Any], generator: torch.Generator | None = None) -> bool:
    """Put back the random states recorded by ``capture_rng_state``.

    Returns False when ``state`` holds a generator state that does not fit ``generator`` (one of
    another device type: a CPU generator's state is 5056 bytes, a CUDA one's 16); ``generator`` is
    then left as it is, for the caller to reseed. True otherwise.
    """
    random.setstate(_as_python_random_state(state["python"]))
    numpy_state = state["numpy"]
    np.random.set_state({
        "bit_generator": numpy_state["bit_generator"],
        "state": {"key": np.asarray(numpy_state["key"], dtype=np.uint32), "pos": numpy_state["pos"]},
        "has_gauss": numpy_state["has_gauss"],
        "gauss": numpy_state["gauss"],
    })
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    if generator is None or state["generator"] is None:
        return True
    return restore_generator_state(generator, state["generator"])


def restore_generator_state(generator: torch.Generator, state: torch.Tensor) -> bool:
    """``generator.set_state(state)`` when ``state`` is the state of that kind of generator; else False."""
    if state.dtype != torch.uint8 or state.numel() != generator.get_state().numel():
        return False
    generator.set_state(state)
    return True


def _as_python_random_state(value: Any) -> tuple:
    """``random.setstate`` wants nested tuples; a stored state may come back with lists."""
    version, internal, gauss = value
    return (version, tuple(internal), gauss)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices) with one number."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rank_seed(seed: int, rank: int) -> int:
    """The seed of one DDP rank (dropout, crops): ``seed + rank``, so rank 0 (and a single process) keeps ``seed``."""
    return seed + rank


def reseed(seed: int, rank: int, epoch: int) -> int:
    """A fresh seed from the run's seed, the rank and the epoch, for random states a checkpoint cannot give back."""
    return int(np.random.SeedSequence((seed, rank, epoch)).generate_state(1)[0])


# ----------------------------------------------------------------------------- compatibility


def config_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """``section.key`` names whose values differ and would change the run's trajectory.

    Args:
        saved: ``configs.to_dict`` of the config stored in a checkpoint.
        current: ``configs.to_dict`` of the config of this invocation.
    """
    differing = []
    for section in RESUME_CHECKED_SECTIONS:
        old, new = saved.get(section, {}), current.get(section, {})
        for key in sorted(set(old) | set(new)):
            if key in RESUME_FREE_KEYS:
                continue
            if _normalise(old.get(key)) != _normalise(new.get(key)):
                differing.append(f"{section}.{key}")
    return differing


def _normalise(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def check_resumable(saved: Mapping[str, Any], current: Mapping[str, Any], path: str | Path) -> None:
    """Refuse to resume from a checkpoint written with a different model or recipe."""
    differing = config_differences(saved, current)
    if differing:
        details = ", ".join(
            f"{key} (checkpoint {_lookup(saved, key)!r}, now {_lookup(current, key)!r})" for key in differing
        )
        raise UserError(
            f"checkpoint {path} was written with a different configuration: {details}; "
            "use the same settings, a different --stamp, or --resume 0 to start over"
        )


def _lookup(config: Mapping[str, Any], dotted: str) -> Any:
    section, key = dotted.split(".", 1)
    return config.get(section, {}).get(key)
