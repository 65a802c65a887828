"""The two engines that compute VGGish embeddings, chosen by name (``FeatureConfig.vggish_engine``).

- ``tf``: ``vggish.extractor.VggishExtractor``, the slim graph in TensorFlow (the authors'
  arithmetic; the default);
- ``torch``: ``vggish.torch_extractor.TorchVggishExtractor``, ``vggish.network.VGGish`` in torch,
  on a CUDA GPU with ``device="gpu"``; it never imports TensorFlow.

Both take the same files and settings and return the same embeddings to float32 rounding. Each
engine's library is imported only when that engine is built, so a worker holds one of them.
"""

from __future__ import annotations

from enum import StrEnum

from base.errors import UserError
from vggish import extractor


class VggishEngine(StrEnum):
    """What computes the network: TensorFlow (the slim graph) or torch (``vggish.network``)."""

    TF = "tf"
    TORCH = "torch"


VGGISH_ENGINES = tuple(engine.value for engine in VggishEngine)


def check_engine(engine: str) -> VggishEngine:
    """The engine named ``engine``; else one UserError line naming the choices."""
    try:
        return VggishEngine(engine)
    except ValueError:
        raise UserError(f"VGGish engine must be {' or '.join(VGGISH_ENGINES)}, got '{engine}'") from None


def make_extractor(engine: str, checkpoint_path: str, pca_params_path: str | None = None, *, batch_size: int = 256,
                   num_threads: int = 1, postprocess: bool = False, device: str = "cpu") -> extractor.FrameEmbedder:
    """Build the named engine's extractor (see ``VggishExtractor`` for the arguments).

    Raises:
        UserError: an unknown engine, a missing or wrong file, a setting out of range, or
            ``device="gpu"`` with the torch engine where torch sees no GPU.
    """
    if check_engine(engine) is VggishEngine.TORCH:
        from vggish.torch_extractor import TorchVggishExtractor as Extractor  # imports torch
    else:
        Extractor = extractor.VggishExtractor  # imports TensorFlow when built
    return Extractor(checkpoint_path, pca_params_path, batch_size=batch_size, num_threads=num_threads,
                     postprocess=postprocess, device=device)
