"""Face frames to backbone input: crop, flip, scale to [-1, 1] (SPEC §4, §5).

Training takes one random crop offset and one random horizontal flip per window, the same for all
of its frames (the authors' group transforms), so the motion inside a window stays coherent.
Evaluation takes the centre crop.

Two ways to the same tensors from the same draws:

* on a GPU (any device but the CPU), one 5-D gather crops and flips the whole batch in a kernel
  (``crop_flip_gather``), then ``normalise`` scales it;
* on the CPU that gather costs about 25 ms per 300-frame window, so each window is cut out of the
  batch as a strided view instead (the flip is a negative stride, the channel move a transpose) and
  read once through a 256-entry table of ``normalise``'s values (``prepare_windows_by_slicing``):
  one pass per window, the same float32 values bit for bit.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

FRAME_MEAN = 0.5  # backbone input normalisation, per channel (SPEC §4)
FRAME_STD = 0.5


def normalise(frames: torch.Tensor) -> torch.Tensor:
    """uint8 pixels to float32 ``(x / 255 - 0.5) / 0.5`` in [-1, 1]."""
    return (frames.float() / 255.0 - FRAME_MEAN) / FRAME_STD


@functools.cache
def _pixel_table() -> np.ndarray:
    """``normalise`` of every uint8 value: (256,) float32, so a lookup equals the arithmetic exactly."""
    return normalise(torch.arange(256, dtype=torch.uint8)).numpy()


def draw_crops(
    n_windows: int, height: int, width: int, crop: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One random crop offset and flip per window: ``top``, ``left`` (int64) and ``flip`` (bool), each (B,).

    Drawn on the generator's device (the CPU without one) in this order: the tops, the lefts, the flips.
    """
    device = generator.device if generator is not None else torch.device("cpu")
    top = torch.randint(0, height - crop + 1, (n_windows,), generator=generator, device=device)
    left = torch.randint(0, width - crop + 1, (n_windows,), generator=generator, device=device)
    flip = torch.randint(0, 2, (n_windows,), generator=generator, device=device).bool()
    return top, left, flip


def crop_flip_gather(frames: torch.Tensor, top: torch.Tensor, left: torch.Tensor, flip: torch.Tensor,
                     crop: int) -> torch.Tensor:
    """(B, T, H, W, C) -> (B, T, crop, crop, C): every window cropped (and flipped) by one gather."""
    n_windows = frames.shape[0]
    # small host-to-device copies that do not wait for the GPU
    top, left, flip = (t.to(frames.device, non_blocking=True) for t in (top, left, flip))
    offsets = torch.arange(crop, device=frames.device)
    rows = top[:, None] + offsets  # (B, crop)
    cols = left[:, None] + torch.where(flip[:, None], crop - 1 - offsets, offsets)  # (B, crop)
    batch = torch.arange(n_windows, device=frames.device)
    by_pixel = frames.permute(0, 2, 3, 1, 4)  # (B, H, W, T, C)
    cropped = by_pixel[batch[:, None, None], rows[:, :, None], cols[:, None, :]]  # (B, crop, crop, T, C)
    return cropped.permute(0, 3, 1, 2, 4)  # (B, T, crop, crop, C)


def prepare_windows_by_slicing(frames: torch.Tensor, top: torch.Tensor, left: torch.Tensor,
                               flip: torch.Tensor, crop: int) -> torch.Tensor:
    """CPU path: (B, T, H, W, C) uint8 -> (B, T, C, crop, crop) float32, cropped, flipped and normalised.

    Equal, bit for bit, to ``normalise`` of ``crop_flip_gather``'s output moved to channels first.
    """
    pixels = frames.numpy()  # (B, T, H, W, C), shares memory
    n_windows, n_frames, _height, _width, n_channels = pixels.shape
    table = _pixel_table()
    out = np.empty((n_windows, n_frames, n_channels, crop, crop), dtype=np.float32)
    for index, (y, x, mirrored) in enumerate(zip(top.tolist(), left.tolist(), flip.tolist())):
        window = pixels[index, :, y:y + crop, x:x + crop, :]  # (T, crop, crop, C), a view
        if mirrored:
            window = window[:, :, ::-1, :]
        np.take(table, window.transpose(0, 3, 1, 2), out=out[index])  # (T, C, crop, crop)
    return torch.from_numpy(out)


def prepare_frames(
    frames: torch.Tensor, crop: int = 40, train: bool = False, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Crop and normalise a batch of windows of frames.

    Args:
        frames: (B, T, H, W, 3) uint8, on any device.
        crop: side of the square crop (40 for the 48x48 frames).
        train: random crop and flip per window; else the centre crop.
        generator: random generator for the crop/flip (the trainer's is on the CPU; one on the frames'
            device works too).

    Returns:
        (B, T, 3, crop, crop) float32 on the frames' device, values in [-1, 1].
    """
    n_windows, _n_frames, height, width, _channels = frames.shape
    if crop > height or crop > width:
        raise ValueError(f"crop {crop} is larger than the {height}x{width} frames")
    on_cpu = frames.device.type == "cpu" and frames.dtype == torch.uint8
    if not train:
        y, x = (height - crop) // 2, (width - crop) // 2
        if on_cpu:
            centre = torch.full((n_windows,), y), torch.full((n_windows,), x), torch.zeros(n_windows, dtype=torch.bool)
            return prepare_windows_by_slicing(frames, *centre, crop)
        cropped = frames[:, :, y:y + crop, x:x + crop, :]  # (B, T, crop, crop, 3)
    else:
        top, left, flip = draw_crops(n_windows, height, width, crop, generator)
        if on_cpu:
            return prepare_windows_by_slicing(frames, top, left, flip, crop)
        cropped = crop_flip_gather(frames, top, left, flip, crop)  # (B, T, crop, crop, 3)
    return normalise(cropped.permute(0, 1, 4, 2, 3).contiguous())  # (B, T, 3, crop, crop)
