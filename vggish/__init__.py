"""VGGish audio embeddings (AudioSet release, TensorFlow + tf_slim), one per video frame (SPEC §3).

Importing this package does not import TensorFlow (openSMILE must not run in a process that has
imported it); TensorFlow is loaded when a ``VggishExtractor`` is built or a random checkpoint is
written.

Modules:
    params        every constant, with its unit
    mel_features  the log-mel spectrogram, pure numpy
    slim_model    the network as a TF1 graph with the release's variable names
    checkpoint    check a user's checkpoint / PCA file; write random ones for the demo and tests
    network       the network in torch (the vggish.pth layout)
    torch_weights the same weights in PyTorch layout (the authors' vggish.pth): check, map, write
    extractor     ``VggishExtractor``: per-video-frame embeddings, batched
"""

from vggish.checkpoint import (
    PcaParams,
    check_checkpoint,
    check_pca_params,
    load_pca_params,
    write_random_checkpoint,
    write_random_pca_params,
)
from vggish.extractor import VggishExtractor, patch_starts

__all__ = [
    "PcaParams",
    "VggishExtractor",
    "check_checkpoint",
    "check_pca_params",
    "load_pca_params",
    "patch_starts",
    "write_random_checkpoint",
    "write_random_pca_params",
]
