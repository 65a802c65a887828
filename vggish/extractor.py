"""One VGGish embedding per video frame, as the authors computed them (SPEC §3).

The waveform's end is padded with one second of its last sample, its log-mel spectrogram is
computed once, and video frame i gets the 96-frame (0.96 s) patch that starts at log-mel frame
``round(i / fps / 0.010)``; frames past the last complete patch reuse the last one. Patches go
through the network ``batch_size`` at a time, so memory does not grow with the video's length
(the original fed a whole video at once and needed about 10 GB).

``FrameEmbedder`` does this framing, the batching and the optional PCA postprocessing for any
engine that embeds a batch of patches; ``VggishExtractor`` is the TensorFlow engine (the slim graph,
the authors' arithmetic), ``vggish.torch_extractor.TorchVggishExtractor`` the torch one
(``vggish.engines`` picks one by name).

TensorFlow is imported when a ``VggishExtractor`` is built, never at import time. It runs on the CPU
unless ``device="gpu"``: then TensorFlow may use the GPUs, allocating their memory as it needs it
instead of mapping nearly all of it (several VGGish workers share a GPU that way, and training can
still get one), but the embeddings are then the GPU kernels' and differ slightly from the CPU build's.
"""

from __future__ import annotations

import logging
import os
from abc import ABC, abstractmethod
from collections.abc import MutableMapping
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from base.errors import UserError
from vggish import params, torch_weights
from vggish.checkpoint import PcaParams, check_checkpoint, load_pca_params
from vggish.mel_features import log_mel_spectrogram

logger = logging.getLogger(__name__)

VGGISH_DEVICES = ("cpu", "gpu")  # FeatureConfig.vggish_device


def check_device(device: str) -> str:
    """``device`` when it is ``cpu`` or ``gpu``; else a UserError."""
    if device not in VGGISH_DEVICES:
        raise UserError(f"VGGish device must be cpu or gpu, got '{device}'")
    return device


def hide_gpus(environ: MutableMapping[str, str] = os.environ) -> None:
    """Hide every GPU from CUDA in this process (``CUDA_VISIBLE_DEVICES=-1``).

    Only for a process that does nothing but VGGish (a preprocessing worker), and before TensorFlow
    is imported: torch in the same process would lose the GPUs too.
    """
    environ["CUDA_VISIBLE_DEVICES"] = "-1"


def session_config(tf: Any, device: str, num_threads: int) -> Any:
    """TensorFlow session options: the thread counts, and no GPU (``cpu``) or GPU memory grown on demand (``gpu``)."""
    config = tf.ConfigProto(intra_op_parallelism_threads=num_threads, inter_op_parallelism_threads=num_threads)
    if check_device(device) == "cpu":
        config.device_count["GPU"] = 0
    else:
        config.gpu_options.allow_growth = True
    return config


def _hide_gpus_from_tensorflow(tf: Any) -> None:
    """No GPU for this TensorFlow process (the session options alone still let it initialise CUDA)."""
    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # already initialised: the session's device_count still keeps VGGish off the GPUs
        logger.debug("TensorFlow's devices were already initialised; VGGish relies on its session options")


def patch_starts(
    n_frames: int,
    fps: float,
    hop_s: float = params.STFT_HOP_S,
    *,
    n_log_mel_frames: int,
    patch_frames: int = params.PATCH_FRAMES,
) -> np.ndarray:
    """First log-mel frame of the patch of each video frame.

    Frame i's patch starts at ``round(i * patch_hop)`` with ``patch_hop = (1 / fps) / hop_s``
    log-mel frames (ties to even, as Python's ``round``). Only the ``1 + floor((n_log_mel_frames -
    patch_frames) / patch_hop)`` patches that fit exist; later frames reuse the last of them.

    Args:
        n_frames: video frames.
        fps: video frames per second.
        hop_s: log-mel hop, seconds.
        n_log_mel_frames: rows of the (padded) log-mel spectrogram.
        patch_frames: log-mel frames per patch.

    Returns:
        int64 (n_frames,), each in ``[0, n_log_mel_frames - patch_frames]``.
    """
    if n_log_mel_frames < patch_frames:
        raise ValueError(f"{n_log_mel_frames} log-mel frames cannot hold a {patch_frames}-frame patch")
    patch_hop = (1.0 / fps) * (1.0 / hop_s)  # log-mel frames per video frame (same float maths as the authors)
    n_available = 1 + int(np.floor((n_log_mel_frames - patch_frames) / patch_hop))
    index = np.minimum(np.arange(n_frames), n_available - 1)
    return np.round(index * patch_hop).astype(np.int64)


def gather_patches(log_mel: np.ndarray, starts: np.ndarray, patch_frames: int = params.PATCH_FRAMES) -> np.ndarray:
    """Patches ``log_mel[s : s + patch_frames]`` for each start: (len(starts), patch_frames, bands)."""
    rows = starts[:, None] + np.arange(patch_frames)  # (B, 96)
    return log_mel[rows]  # (B, 96, 64)


def to_float_mono(waveform: np.ndarray) -> np.ndarray:
    """Mono float32 samples in [-1, 1] from (n,) or (n, channels) audio, float or integer PCM."""
    waveform = np.asarray(waveform)
    if waveform.ndim not in (1, 2):
        raise UserError(f"audio must be (samples,) or (samples, channels), got shape {waveform.shape}")
    if waveform.size == 0:
        raise UserError("the audio is empty: nothing to compute VGGish features from")
    if np.issubdtype(waveform.dtype, np.unsignedinteger):
        raise UserError(f"unsigned integer audio ({waveform.dtype}) is not supported: pass float or signed PCM")
    if np.issubdtype(waveform.dtype, np.integer):
        full_scale = float(2 ** (8 * waveform.dtype.itemsize - 1))  # int16: 32768
        waveform = waveform.astype(np.float32) / np.float32(full_scale)
    elif not np.issubdtype(waveform.dtype, np.floating):
        raise UserError(f"audio samples must be numbers, got dtype {waveform.dtype}")
    if waveform.ndim == 2:
        waveform = waveform.mean(axis=1)
    return waveform.astype(np.float32, copy=False)


def prepare_waveform(waveform: np.ndarray, sample_rate: int, end_pad_s: float = params.END_PAD_S) -> np.ndarray:
    """Mono, end-padded with ``end_pad_s`` of its last sample, resampled to 16 kHz: float32 (n,)."""
    mono = to_float_mono(waveform)
    n_pad = int(round(end_pad_s * sample_rate))
    padded = np.concatenate([mono, np.full(n_pad, mono[-1], dtype=np.float32)])
    del mono
    if sample_rate != params.SAMPLE_RATE_HZ:
        import resampy  # imported here: it loads numba, which is slow to start

        padded = resampy.resample(padded, sample_rate, params.SAMPLE_RATE_HZ).astype(np.float32, copy=False)
    return padded


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """Samples (n,) or (n, channels) as float32 in [-1, 1] (16-bit PCM / 32768) and the rate in Hz."""
    import soundfile

    path = Path(path)
    if not path.is_file():
        raise UserError(f"audio file {path} not found")
    try:
        waveform, sample_rate = soundfile.read(str(path), dtype="float32", always_2d=False)
    except (RuntimeError, soundfile.LibsndfileError) as exc:
        raise UserError(f"audio file {path} could not be read ({exc})") from None
    return waveform, int(sample_rate)


class FrameEmbedder(ABC):
    """One embedding per video frame of a recording, batched; an engine loads the weights
    (``_load``) and embeds a batch of patches (``_embed_batch``).

    The settings, the framing (end padding, log-mel, one patch per video frame), the batches and
    the PCA postprocessing are the same for every engine, so that the engines differ in their
    arithmetic only. Use an engine as a context manager, or call ``close``.
    """

    def __init__(
        self,
        checkpoint_path: str | Path,
        pca_params_path: str | None = None,
        batch_size: int = 256,
        num_threads: int = 1,
        postprocess: bool = False,
        device: str = "cpu",
    ) -> None:
        """Check the settings and the files, then load the weights into the engine.

        Args:
            checkpoint_path: ``vggish_model.ckpt`` (the release's single file, a V2 prefix or a folder
                holding it), or the same weights in PyTorch layout (``vggish.pth``, see
                ``vggish.torch_weights``).
            pca_params_path: ``vggish_pca_params.npz``; checked when given, used only with
                ``postprocess``.
            batch_size: patches per forward pass (bounds memory).
            num_threads: the engine's CPU threads (0: the library decides).
            postprocess: return the AudioSet-style PCA-whitened, 8-bit quantized embedding (values
                0..255, as float32) instead of the raw pre-PCA embedding the authors stored.
            device: ``cpu`` or ``gpu`` (what ``gpu`` means is the engine's).

        Raises:
            UserError: a file is missing or wrong, or a setting is out of range.
        """
        if batch_size < 1:
            raise UserError(f"VGGish batch size must be at least 1, got {batch_size}")
        if num_threads < 0:
            raise UserError(f"VGGish threads must be 0 (automatic) or more, got {num_threads}")
        self.batch_size = batch_size
        self.num_threads = num_threads
        self.device = check_device(device)
        self._closed = False
        self.pca: PcaParams | None = load_pca_params(pca_params_path) if pca_params_path else None
        if postprocess and self.pca is None:
            raise UserError("VGGish postprocessing needs the PCA parameters: pass vggish_pca_params.npz")
        self.postprocess = postprocess
        self._load(str(checkpoint_path))

    @abstractmethod
    def _load(self, checkpoint_path: str) -> None:
        """Check the weight file and load it into the engine (a UserError when it is wrong)."""

    @abstractmethod
    def _embed_batch(self, batch: np.ndarray) -> np.ndarray:
        """Raw embeddings of one batch of patches: float32 (B, 96, 64) -> (B, 128)."""

    @abstractmethod
    def _release(self) -> None:
        """Free what the engine holds (a session, a network)."""

    # ------------------------------------------------------------------------- embedding

    def embed_patches(self, patches: np.ndarray) -> np.ndarray:
        """Raw embeddings of log-mel patches (N, 96, 64), ``batch_size`` at a time: float32 (N, 128)."""
        if self._closed:
            raise RuntimeError(f"this {type(self).__name__} is closed")
        out = np.empty((len(patches), params.EMBEDDING_SIZE), dtype=np.float32)
        for first in range(0, len(patches), self.batch_size):
            batch = np.asarray(patches[first : first + self.batch_size], dtype=np.float32)  # (B, 96, 64)
            out[first : first + len(batch)] = self._embed_batch(batch)
        return out

    def embed_log_mel(self, log_mel: np.ndarray, fps: float, n_frames: int) -> np.ndarray:
        """One embedding per video frame from a (padded) log-mel spectrogram (T, 64): (n_frames, 128)."""
        starts = patch_starts(n_frames, fps, n_log_mel_frames=len(log_mel))
        unique_starts, frame_to_patch = np.unique(starts, return_inverse=True)  # frames past the end share one
        out = np.empty((len(unique_starts), params.EMBEDDING_SIZE), dtype=np.float32)
        for first in range(0, len(unique_starts), self.batch_size):
            batch_starts = unique_starts[first : first + self.batch_size]
            out[first : first + len(batch_starts)] = self.embed_patches(gather_patches(log_mel, batch_starts))
        embeddings = out[frame_to_patch.reshape(-1)]  # (n_frames, 128)
        if self.postprocess:
            assert self.pca is not None
            embeddings = self.pca.apply(embeddings, quantize=True).astype(np.float32)
        return embeddings

    def embed_frames(self, waveform: np.ndarray, sample_rate: int, fps: float, n_frames: int) -> np.ndarray:
        """One embedding per video frame of a recording.

        Args:
            waveform: (samples,) or (samples, channels), float in [-1, 1] or integer PCM.
            sample_rate: Hz of ``waveform`` (resampled to 16 kHz when different).
            fps: video frames per second.
            n_frames: video frames to embed.

        Returns:
            float32 (n_frames, 128).
        """
        if not fps > 0:
            raise UserError(f"video frame rate must be positive, got {fps}")
        if sample_rate <= 0:
            raise UserError(f"audio sample rate must be positive, got {sample_rate}")
        if n_frames < 0:
            raise UserError(f"number of video frames must not be negative, got {n_frames}")
        samples = prepare_waveform(waveform, sample_rate)
        if n_frames == 0:
            return np.zeros((0, params.EMBEDDING_SIZE), dtype=np.float32)
        log_mel = log_mel_spectrogram(samples, params.SAMPLE_RATE_HZ)  # (T, 64)
        del samples
        return self.embed_log_mel(log_mel, fps, n_frames)

    def embed_wav_file(self, path: str | Path, fps: float, n_frames: int) -> np.ndarray:
        """``embed_frames`` of a wav file (16-bit PCM is read as samples / 32768): (n_frames, 128)."""
        waveform, sample_rate = read_wav(path)
        return self.embed_frames(waveform, sample_rate, fps, n_frames)

    # ------------------------------------------------------------------------- lifetime

    def close(self) -> None:
        """Free the engine (the extractor cannot embed afterwards)."""
        if not self._closed:
            self._closed = True
            self._release()

    def __enter__(self) -> FrameEmbedder:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class VggishExtractor(FrameEmbedder):
    """The TensorFlow engine: restores the checkpoint into the slim graph once and embeds many recordings.

    ``num_threads`` is TensorFlow's intra- and inter-op threads; ``device="cpu"`` hides the GPUs
    from TensorFlow, ``gpu`` lets it use them (memory grown as needed). See ``FrameEmbedder`` for
    the other arguments.

    Example::

        with VggishExtractor("vggish_model.ckpt") as vggish:
            embeddings = vggish.embed_wav_file("video.wav", fps=30.0, n_frames=900)  # (900, 128)
    """

    _session: Any = None

    def _load(self, checkpoint_path: str) -> None:
        # vggish.pth is read (with torch) before TensorFlow is imported; a TF checkpoint is restored
        torch_values = (torch_weights.load_slim_variables(checkpoint_path)
                        if torch_weights.is_torch_checkpoint(checkpoint_path) else None)
        prefix = checkpoint_path if torch_values is not None else check_checkpoint(checkpoint_path)

        from vggish import slim_model

        tf = slim_model.import_tensorflow()
        if self.device == "cpu":
            _hide_gpus_from_tensorflow(tf)
        self._graph = tf.Graph()
        with self._graph.as_default():
            self._features, self._embedding = slim_model.define_vggish()
            saver = tf.train.Saver(var_list=slim_model.vggish_variables(self._graph))
        self.session_config = session_config(tf, self.device, self.num_threads)
        self._session = tf.Session(graph=self._graph, config=self.session_config)
        try:
            with self._graph.as_default():  # outside it, TF 2 would try to restore eagerly
                if torch_values is None:
                    saver.restore(self._session, prefix)
                else:
                    slim_model.assign_variables(self._session, self._graph, torch_values)
        except tf.errors.OpError as exc:
            self.close()
            reason = str(exc.message).strip().splitlines()[0]
            raise UserError(
                f"VGGish checkpoint {checkpoint_path} could not be restored ({reason}); {params.RELEASE_HINT}"
            ) from None
        self._graph.finalize()
        logger.debug("VGGish restored from %s (batch %d, %d threads, %s)", prefix, self.batch_size, self.num_threads,
                     self.device)

    def _embed_batch(self, batch: np.ndarray) -> np.ndarray:
        return self._session.run(self._embedding, {self._features: batch})  # (B, 128)

    def _release(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None
