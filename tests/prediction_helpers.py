"""Fake trained runs and small videos for the prediction tests.

``save_run`` writes a run folder exactly as training does (``best.pt`` = ``{"model", "config", "epoch",
"score"}`` and ``config.json``) with the random weights of ``model.build_model``, so that prediction,
fusion and submission code can be tested in milliseconds. ``face_video`` encodes a real video whose
first frames show a demo face and whose last frames are black.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from base.preprocessing import demo
from base.training.checkpointing import atomic_torch_save
from base.training.cross_validation import fold_config
from base.training.run_folder import run_folder
from configs import Config, apply_overrides, save_config, to_dict
from model import build_model

TINY_MODEL = {
    "cnn1d_channels": [8, 8],
    "aural_channels": [4, 4],
    "window_length": 16,
    "hop_length": 8,
    "batch_size": 4,
    "random_backbone": True,
}


def tiny_config(dataset: Path | str | None = None, **overrides: Any) -> Config:
    """A small model config (TCN widths 8/4, windows of 16 frames) with ``overrides`` (flat keys)."""
    values: dict[str, Any] = dict(TINY_MODEL)
    if dataset is not None:
        values["dataset_path"] = str(dataset)
    values.update(overrides)
    return apply_overrides(Config(), values)


def save_run(save_path: Path, config: Config, fold: int, seed: int = 0) -> Path:
    """Write a run folder with random weights (seeded) for ``fold``; returns the folder."""
    config = fold_config(apply_overrides(config, {"save_path": str(save_path)}), fold)
    torch.manual_seed(seed)
    model = build_model(config)
    run = run_folder(config, fold).create()
    save_config(config, run.path)
    atomic_torch_save({"model": model.state_dict(), "config": to_dict(config), "epoch": 0, "score": 0.0}, run.best)
    return run.path


def face_video(path: Path, n_face_frames: int, n_black_frames: int, fps: float = 10.0, with_audio: bool = True,
               size: int = 160, seed: int = 0) -> Path:
    """Encode ``n_face_frames`` frames of a smiling demo face, then ``n_black_frames`` black frames."""
    rng = np.random.default_rng(seed)
    identity = demo.random_identity(rng)
    n_frames = n_face_frames + n_black_frames
    labels = np.zeros((n_frames, 2))
    labels[:, 0] = 0.5 + 0.3 * np.sin(np.arange(n_frames) / 5.0)  # positive valence: a bright, clear face
    labels[:, 1] = 0.4 * np.cos(np.arange(n_frames) / 7.0)
    frames = np.zeros((n_frames, size, size, 3), np.uint8)
    for i in range(n_face_frames):
        frames[i] = demo.render_face(float(labels[i, 0]), float(labels[i, 1]), size, identity)
    sample_rate = 16000
    audio = demo.synthesize_voice(labels, fps, sample_rate, rng) if with_audio else None
    demo.encode_video(frames, audio, sample_rate, fps, path, path.suffix.lstrip("."))
    return path
