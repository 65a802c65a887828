import numpy as np
import pytest
import torch

from base.data.augment import normalise, prepare_frames

B, T, SIDE, CROP = 4, 6, 48, 40


def _coded_frames():
    """Frames whose pixels encode (window, time, row, column), so any crop/flip can be read back."""
    b, t, y, x = torch.meshgrid(torch.arange(B), torch.arange(T), torch.arange(SIDE), torch.arange(SIDE), indexing="ij")
    red = y * 5  # 0..235: row
    green = x * 5  # column
    blue = t * 20 + b  # differs per time step and window
    return torch.stack([red, green, blue], dim=-1).to(torch.uint8)  # (B, T, 48, 48, 3)


def _decode(prepared):
    pixels = torch.round((prepared * 0.5 + 0.5) * 255).long()  # (B, T, 3, crop, crop)
    return pixels[:, :, 0] // 5, pixels[:, :, 1] // 5, pixels[:, :, 2]


def test_eval_is_exact_centre_crop():
    frames = _coded_frames()
    prepared = prepare_frames(frames, crop=CROP, train=False)
    expected = frames[:, :, 4:44, 4:44, :].permute(0, 1, 4, 2, 3).float() / 127.5 - 1
    torch.testing.assert_close(prepared, expected)


def test_shape_dtype_and_range():
    frames = torch.randint(0, 256, (B, T, SIDE, SIDE, 3), dtype=torch.uint8)
    frames[0, 0, :, :] = 0
    frames[0, 1, :, :] = 255
    for train in (False, True):
        prepared = prepare_frames(frames, crop=CROP, train=train, generator=torch.Generator().manual_seed(0))
        assert prepared.shape == (B, T, 3, CROP, CROP)
        assert prepared.dtype == torch.float32
        assert prepared.is_contiguous()
        assert prepared.min() == -1.0 and prepared.max() == 1.0


def test_normalise_values():
    pixels = torch.tensor([0, 51, 255], dtype=torch.uint8)
    torch.testing.assert_close(normalise(pixels), torch.tensor([-1.0, (51 / 255 - 0.5) / 0.5, 1.0]))


def test_train_crop_and_flip_are_the_same_for_every_frame_of_a_window():
    frames = _coded_frames()
    generator = torch.Generator().manual_seed(3)
    rows, cols, blue = _decode(prepare_frames(frames, crop=CROP, train=True, generator=generator))
    offsets = set()
    for b in range(B):
        for t in range(T):
            assert torch.equal(rows[b, t], rows[b, 0]) and torch.equal(cols[b, t], cols[b, 0])
            assert (blue[b, t] == t * 20 + b).all()  # frame t of window b, in order
        top, left = int(rows[b, 0, 0, 0]), int(cols[b, 0, 0].min())
        assert 0 <= top <= SIDE - CROP and 0 <= left <= SIDE - CROP
        assert torch.equal(rows[b, 0, :, 0], torch.arange(top, top + CROP))  # contiguous rows, no vertical flip
        flipped = bool(cols[b, 0, 0, 0] > cols[b, 0, 0, -1])
        expected_cols = torch.arange(left, left + CROP)
        assert torch.equal(cols[b, 0, 0], expected_cols.flip(0) if flipped else expected_cols)
        offsets.add((top, left))
    assert len(offsets) > 1  # windows get their own crops


def test_train_draws_differ_between_windows_and_are_seeded():
    frames = _coded_frames().repeat(8, 1, 1, 1, 1)  # 32 windows
    first = prepare_frames(frames, train=True, generator=torch.Generator().manual_seed(1))
    again = prepare_frames(frames, train=True, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(first, again)
    _, cols, _ = _decode(first)
    flipped = cols[:, 0, 0, 0] > cols[:, 0, 0, -1]
    assert 0 < int(flipped.sum()) < len(flipped)  # both flipped and unflipped windows occur


def test_crop_larger_than_frames():
    with pytest.raises(ValueError, match="crop 50 is larger than the 48x48 frames"):
        prepare_frames(torch.zeros(1, 1, 48, 48, 3, dtype=torch.uint8), crop=50)


def test_full_size_crop_train_is_at_most_a_flip():
    frames = _coded_frames()
    prepared = prepare_frames(frames, crop=SIDE, train=True, generator=torch.Generator().manual_seed(0))
    plain = prepare_frames(frames, crop=SIDE, train=False)
    for b in range(B):
        assert torch.equal(prepared[b], plain[b]) or torch.equal(prepared[b], plain[b].flip(-1))
    assert np.isfinite(prepared.numpy()).all()


def _gather_reference(frames, crop, train, generator=None):
    """What prepare_frames computed before the CPU path: the draws, one gather, then normalise."""
    from base.data.augment import crop_flip_gather, draw_crops

    n, _, height, width, _ = frames.shape
    if train:
        top, left, flip = draw_crops(n, height, width, crop, generator)
    else:
        top = torch.full((n,), (height - crop) // 2)
        left = torch.full((n,), (width - crop) // 2)
        flip = torch.zeros(n, dtype=torch.bool)
    return normalise(crop_flip_gather(frames, top, left, flip, crop).permute(0, 1, 4, 2, 3).contiguous())


@pytest.mark.parametrize("shape,crop", [((16, 7, 48, 48, 3), 40), ((5, 3, 30, 52, 3), 24), ((3, 2, 9, 9, 1), 9)])
@pytest.mark.parametrize("train", [True, False])
def test_cpu_slicing_equals_the_gather_path_bit_for_bit(shape, crop, train):
    frames = torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(7))
    sliced = prepare_frames(frames, crop=crop, train=train, generator=torch.Generator().manual_seed(11))
    gathered = _gather_reference(frames, crop, train, generator=torch.Generator().manual_seed(11))
    assert sliced.dtype == gathered.dtype == torch.float32 and sliced.is_contiguous()
    assert torch.equal(sliced, gathered)


def test_cpu_slicing_reads_a_strided_batch():
    frames = torch.randint(0, 256, (4, 6, 48, 48, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    every_other = frames[::2]  # not contiguous
    sliced = prepare_frames(every_other, train=True, generator=torch.Generator().manual_seed(2))
    assert torch.equal(sliced, _gather_reference(every_other, CROP, True, torch.Generator().manual_seed(2)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_gather_path_equals_the_cpu_path():
    frames = torch.randint(0, 256, (8, 300, 48, 48, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    for train in (True, False):
        on_cpu = prepare_frames(frames, train=train, generator=torch.Generator().manual_seed(4))
        on_gpu = prepare_frames(frames.cuda(), train=train, generator=torch.Generator().manual_seed(4))
        assert on_gpu.device.type == "cuda" and torch.equal(on_gpu.cpu(), on_cpu)
