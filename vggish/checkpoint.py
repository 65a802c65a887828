"""The VGGish weights a user brings: check them, read the PCA parameters, or write random ones.

A user downloads two files from the AudioSet VGGish release:

- ``vggish_model.ckpt``: a TensorFlow checkpoint. The release ships it as one file (TensorFlow's
  V1 checkpoint format); a checkpoint re-saved by a newer TensorFlow is a prefix with
  ``vggish_model.ckpt.index`` and ``vggish_model.ckpt.data-00000-of-00001`` (V2). Both restore.
- ``vggish_pca_params.npz``: ``pca_eigen_vectors`` (128, 128) and ``pca_means`` (128, 1).

``check_checkpoint`` accepts both kinds of weights: a TensorFlow checkpoint's table of variables is
read without TensorFlow (``vggish.slim_checkpoint``: openSMILE must not run in a process that
imported TensorFlow), the same weights in PyTorch layout (the authors' ``vggish.pth``) by
``vggish.torch_weights``, so that a wrong or truncated file is reported before any work starts.
``write_random_checkpoint`` writes the real variable names with random weights, for the demo and
the tests (it needs TensorFlow).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from base.errors import UserError
from vggish import params, torch_weights
from vggish.slim_checkpoint import CHECKPOINT_FORMATS, V1, V2, check_slim_checkpoint
from vggish.slim_model import variable_shapes

logger = logging.getLogger(__name__)


def check_checkpoint(path: str | Path) -> str:
    """Check that ``path`` is readable VGGish weights and return what to restore.

    A TensorFlow checkpoint is checked variable by variable without TensorFlow
    (``vggish.slim_checkpoint``) and its prefix is returned; a PyTorch file (``vggish.pth``, see
    ``vggish.torch_weights``) is checked key by key and shape by shape (this imports torch) and its
    path is returned.

    Raises:
        UserError: the files are missing or truncated, or VGGish variables are missing or have
            other shapes (extra variables, e.g. optimizer slots, are allowed).
    """
    if torch_weights.is_torch_checkpoint(path):
        return torch_weights.check_torch_checkpoint(path)
    return check_slim_checkpoint(path)


# ----------------------------------------------------------------------------- PCA parameters


@dataclass(frozen=True)
class PcaParams:
    """The AudioSet PCA (with whitening) of the embedding, from ``vggish_pca_params.npz``."""

    eigen_vectors: np.ndarray  # (128, 128): output dims x input dims
    means: np.ndarray  # (128, 1)

    def apply(self, embeddings: np.ndarray, quantize: bool = True) -> np.ndarray:
        """PCA of (N, 128) embeddings; with ``quantize`` clipped to [-2, 2] and mapped to uint8.

        This is how the AudioSet release turned raw embeddings into its published features; the
        project keeps the raw pre-PCA embedding (as the authors did) and offers this for
        completeness.
        """
        projected = (self.eigen_vectors @ (embeddings.T - self.means)).T  # (N, 128)
        if not quantize:
            return projected.astype(np.float32)
        clipped = np.clip(projected, params.QUANTIZE_MIN, params.QUANTIZE_MAX)
        scale = 255.0 / (params.QUANTIZE_MAX - params.QUANTIZE_MIN)
        return ((clipped - params.QUANTIZE_MIN) * scale).astype(np.uint8)


def load_pca_params(path: str | Path) -> PcaParams:
    """Read and check ``vggish_pca_params.npz``.

    Raises:
        UserError: the file is missing, not an npz, lacks a key, or has other shapes.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"VGGish PCA parameters {path} not found; {params.RELEASE_HINT}")
    keys = (params.PCA_EIGEN_VECTORS_KEY, params.PCA_MEANS_KEY)
    try:
        with np.load(path, allow_pickle=False) as npz:
            if not hasattr(npz, "files"):
                raise ValueError("a single array, not an npz archive")
            found = list(npz.files)
            arrays = {key: np.asarray(npz[key], dtype=np.float64) for key in keys if key in found}
    except (OSError, ValueError) as exc:
        raise UserError(
            f"VGGish PCA parameters {path} could not be read as a numpy .npz file ({exc}); "
            f"{params.RELEASE_HINT}"
        ) from None
    missing = [key for key in keys if key not in arrays]
    if missing:
        raise UserError(
            f"VGGish PCA parameters {path} lack the key(s) {', '.join(missing)} "
            f"(found: {', '.join(found) or 'none'}); {params.RELEASE_HINT}"
        )
    size = params.EMBEDDING_SIZE
    vectors, means = arrays[params.PCA_EIGEN_VECTORS_KEY], arrays[params.PCA_MEANS_KEY]
    if vectors.shape != (size, size) or means.size != size or means.ndim > 2:
        raise UserError(
            f"VGGish PCA parameters {path} have {params.PCA_EIGEN_VECTORS_KEY} {vectors.shape} and "
            f"{params.PCA_MEANS_KEY} {means.shape}, expected ({size}, {size}) and ({size}, 1)"
        )
    if not (np.isfinite(vectors).all() and np.isfinite(means).all()):
        raise UserError(f"VGGish PCA parameters {path} contain NaN or infinite values")
    return PcaParams(vectors, means.reshape(size, 1))


def check_pca_params(path: str | Path) -> None:
    """Check ``vggish_pca_params.npz`` (see ``load_pca_params``); raises UserError when wrong."""
    load_pca_params(path)


# ----------------------------------------------------------------------------- random weights


def random_weight(name: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """He-normal weights for the ReLU layers, Glorot-uniform for the linear embedding, zero biases."""
    if name.endswith("/biases"):
        return np.zeros(shape, dtype=np.float32)
    fan_in = int(np.prod(shape[:-1]))
    if f"/{params.EMBEDDING_SCOPE}/" in name:
        limit = np.sqrt(6.0 / (fan_in + shape[-1]))
        return rng.uniform(-limit, limit, size=shape).astype(np.float32)
    return rng.standard_normal(shape, dtype=np.float32) * np.float32(np.sqrt(2.0 / fan_in))


def write_random_checkpoint(path: str | Path, seed: int = 0, checkpoint_format: str = V2) -> None:
    """Write a VGGish checkpoint with the real variable names and random weights.

    Args:
        path: checkpoint prefix, e.g. ``.../vggish_model.ckpt``. ``v2`` writes ``path.index``,
            ``path.data-00000-of-00001`` and ``path.meta``; ``v1`` writes the single file ``path``
            as in the AudioSet release.
        seed: numpy seed of the weights (the same seed gives the same checkpoint).
        checkpoint_format: ``v2`` (default) or ``v1``.
    """
    if checkpoint_format not in CHECKPOINT_FORMATS:
        raise ValueError(f"checkpoint_format must be one of {CHECKPOINT_FORMATS}, got {checkpoint_format!r}")
    from vggish import slim_model

    tf = slim_model.import_tensorflow()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    graph = tf.Graph()
    with graph.as_default():
        slim_model.define_vggish()
        variables = slim_model.vggish_variables(graph)
        version = tf.train.SaverDef.V1 if checkpoint_format == V1 else tf.train.SaverDef.V2
        saver = tf.train.Saver(var_list=variables, write_version=version)
        feeds = [tf.placeholder(tf.float32, shape=v.shape) for v in variables]
        assigns = [v.assign(feed) for v, feed in zip(variables, feeds)]
    shapes = variable_shapes()
    with graph.as_default(), tf.Session(graph=graph) as session:
        for variable, feed, assign in zip(variables, feeds, assigns):  # one at a time: bounded memory
            value = random_weight(variable.op.name, shapes[variable.op.name], rng)
            session.run(assign, feed_dict={feed: value})
        saver.save(session, str(path), write_meta_graph=checkpoint_format == V2, write_state=False)
    logger.info("wrote a random-weight VGGish checkpoint (%s, seed %d) to %s", checkpoint_format, seed, path)


def write_random_pca_params(path: str | Path, seed: int = 0) -> None:
    """Write a ``vggish_pca_params.npz`` with a random orthonormal basis and random means."""
    rng = np.random.default_rng(seed)
    size = params.EMBEDDING_SIZE
    basis, _ = np.linalg.qr(rng.standard_normal((size, size)))  # (128, 128) orthonormal
    means = rng.standard_normal((size, 1))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:  # a file handle keeps np.savez from appending '.npz'
        np.savez(handle, **{params.PCA_EIGEN_VECTORS_KEY: basis, params.PCA_MEANS_KEY: means})
