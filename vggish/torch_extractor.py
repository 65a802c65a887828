"""The torch engine of VGGish embeddings: the same frames, patches and postprocessing, the torch network.

``TorchVggishExtractor`` is a ``FrameEmbedder`` (``vggish.extractor``) whose batches go through
``vggish.network.VGGish`` instead of the slim graph, on the CPU or on a CUDA GPU. With the same
weights its embeddings equal the TensorFlow engine's to float32 rounding (the two libraries sum
the convolutions in other orders); on a GPU, TF32 is switched off while it embeds, so that the
convolutions keep float32's precision.

This module imports torch, never TensorFlow: a TensorFlow checkpoint is read by
``vggish.slim_checkpoint`` in pure Python, so a preprocessing worker running this engine does
without TensorFlow altogether.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

from base.errors import UserError
from base.training.devices import cuda_report
from vggish.extractor import FrameEmbedder, check_device
from vggish.network import load_vggish

logger = logging.getLogger(__name__)


def torch_device(device: str) -> torch.device:
    """The torch device of a ``vggish_device`` value: ``cpu``, or ``gpu`` as the first CUDA GPU.

    Raises:
        UserError: ``device`` is not cpu or gpu, or it is gpu and torch cannot use a GPU here.
    """
    if check_device(device) == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UserError(f"VGGish device gpu with the torch engine needs a GPU, but torch cannot use one here "
                        f"({cuda_report()}); check the NVIDIA driver and the job's GPU request, or pass "
                        f"--vggish-device cpu")
    return torch.device("cuda")


@contextmanager
def _float32_arithmetic(device: torch.device, num_threads: int) -> Iterator[None]:
    """Within: ``num_threads`` CPU threads (0: unchanged) and, on CUDA, no TF32 in convolutions or
    matrix products (cuDNN allows it by default); the previous settings come back after."""
    previous_threads = torch.get_num_threads()
    precisions = (torch.backends.cudnn.conv, torch.backends.cuda.matmul)
    previous_precisions = [backend.fp32_precision for backend in precisions]
    if num_threads:
        torch.set_num_threads(num_threads)
    if device.type == "cuda":
        for backend in precisions:
            backend.fp32_precision = "ieee"
    try:
        yield
    finally:
        if num_threads:
            torch.set_num_threads(previous_threads)
        if device.type == "cuda":
            for backend, precision in zip(precisions, previous_precisions):
                backend.fp32_precision = precision


class TorchVggishExtractor(FrameEmbedder):
    """The torch engine: loads VGGish into torch once and embeds many recordings, one patch per video frame.

    The arguments are ``VggishExtractor``'s (see ``FrameEmbedder``); here a TensorFlow checkpoint
    is read without TensorFlow, ``num_threads`` is torch's CPU threads while embedding (the
    process-wide setting comes back after each batch), and ``device="gpu"`` is the first CUDA GPU
    torch sees (a UserError when there is none).

    Example::

        with TorchVggishExtractor("vggish_model.ckpt", device="gpu") as vggish:
            embeddings = vggish.embed_wav_file("video.wav", fps=30.0, n_frames=900)  # (900, 128)
    """

    _network: torch.nn.Module | None = None

    def _load(self, checkpoint_path: str) -> None:
        self.torch_device = torch_device(self.device)
        network = load_vggish(checkpoint_path, self.torch_device)
        network.requires_grad_(False)
        # channels-last feature maps: the CPU max-pools ran ~4x faster (0.68 -> 0.18 s per 64 patches)
        self._network = network.to(memory_format=torch.channels_last)
        logger.debug("VGGish (torch) loaded from %s (batch %d, %d threads, %s)", checkpoint_path, self.batch_size,
                     self.num_threads, self.torch_device)

    def _embed_batch(self, batch: np.ndarray) -> np.ndarray:
        assert self._network is not None
        with torch.inference_mode(), _float32_arithmetic(self.torch_device, self.num_threads):
            patches = torch.from_numpy(batch).to(self.torch_device)  # (B, 96, 64)
            return self._network(patches).cpu().numpy()  # (B, 128)

    def _release(self) -> None:
        self._network = None
        if self.torch_device.type == "cuda":
            torch.cuda.empty_cache()
