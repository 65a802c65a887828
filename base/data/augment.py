"""Face frames to backbone input on the device: crop, flip, scale to [-1, 1] (SPEC §4, §5).

Training takes one random crop offset and one random horizontal flip per window, the same for all
of its frames (the authors' group transforms), so the motion inside a window stays coherent.
Evaluation takes the centre crop.
"""

from __future__ import annotations

import torch

FRAME_MEAN = 0.5  # backbone input normalisation, per channel (SPEC §4)
FRAME_STD = 0.5


def normalise(frames: torch.Tensor) -> torch.Tensor:
    """uint8 pixels to float32 ``(x / 255 - 0.5) / 0.5`` in [-1, 1]."""
    return (frames.float() / 255.0 - FRAME_MEAN) / FRAME_STD


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
    if not train:
        top, left = (height - crop) // 2, (width - crop) // 2
        cropped = frames[:, :, top:top + crop, left:left + crop, :]  # (B, T, crop, crop, 3)
    else:
        draw_device = generator.device if generator is not None else torch.device("cpu")
        top = torch.randint(0, height - crop + 1, (n_windows,), generator=generator, device=draw_device)
        left = torch.randint(0, width - crop + 1, (n_windows,), generator=generator, device=draw_device)
        flip = torch.randint(0, 2, (n_windows,), generator=generator, device=draw_device).bool()
        # small host-to-device copies that do not wait for the GPU (the draws' memory is staged at once)
        top, left, flip = (t.to(frames.device, non_blocking=True) for t in (top, left, flip))
        offsets = torch.arange(crop, device=frames.device)
        rows = top[:, None] + offsets  # (B, crop)
        cols = left[:, None] + torch.where(flip[:, None], crop - 1 - offsets, offsets)  # (B, crop)
        batch = torch.arange(n_windows, device=frames.device)
        by_pixel = frames.permute(0, 2, 3, 1, 4)  # (B, H, W, T, 3)
        cropped = by_pixel[batch[:, None, None], rows[:, :, None], cols[:, None, :]]  # (B, crop, crop, T, 3)
        cropped = cropped.permute(0, 3, 1, 2, 4)  # (B, T, crop, crop, 3)
    return normalise(cropped.permute(0, 1, 4, 2, 3).contiguous())  # (B, T, 3, crop, crop)
