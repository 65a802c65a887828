"""VGGish audio embeddings (AudioSet release), one per video frame (SPEC §3), in TensorFlow or torch.

Importing this package imports neither TensorFlow nor torch (openSMILE must not run in a process
that has imported TensorFlow); TensorFlow is loaded when a ``VggishExtractor`` is built or a random
checkpoint is written, torch by ``network``, ``torch_extractor`` and the reading of ``vggish.pth``.

Modules (each imports only those above it: ``tests/test_vggish_engines.py`` checks that the
imports form no circle):
    params          every constant, with its unit
    mel_features    the log-mel spectrogram, pure numpy
    slim_model      the network as a TF1 graph with the release's variable names
    slim_checkpoint the release's vggish_model.ckpt (V1 or V2), checked and read without TensorFlow
    torch_weights   the same weights in PyTorch layout (the authors' vggish.pth): check, map, write;
                    ``read_state_dict`` reads either file as the vggish.pth state dict
    checkpoint      check a user's weights (either file) / PCA file; write random ones for the demo and tests
    network         the network in torch (the vggish.pth layout); ``load_vggish(path, device)`` builds
                    it from either file (the torch engine and the ABAW5 audio backbone)
    extractor       ``FrameEmbedder`` (frames, patches, batches, PCA) and ``VggishExtractor``, the
                    TensorFlow engine
    torch_extractor ``TorchVggishExtractor``, the torch engine (CPU or CUDA), no TensorFlow
    engines         ``make_extractor(engine, ...)``: the engine named tf or torch
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
