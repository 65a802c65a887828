"""The VGGish weights a user brings: check them, read the PCA parameters, or write random ones.

A user downloads two files from the AudioSet VGGish release:

- ``vggish_model.ckpt``: a TensorFlow checkpoint. The release ships it as one file (TensorFlow's
  V1 checkpoint format); a checkpoint re-saved by a newer TensorFlow is a prefix with
  ``vggish_model.ckpt.index`` and ``vggish_model.ckpt.data-00000-of-00001`` (V2). Both restore.
- ``vggish_pca_params.npz``: ``pca_eigen_vectors`` (128, 128) and ``pca_means`` (128, 1).

``check_checkpoint`` reads the checkpoint's table of variables with a small reader of TensorFlow's
on-disk table format (no TensorFlow import: openSMILE must not run in a process that imported
TensorFlow), so that a wrong or truncated file is reported before any work starts.
``write_random_checkpoint`` writes the real variable names with random weights, for the demo and
the tests (it needs TensorFlow). The same weights in PyTorch layout (the authors' ``vggish.pth``)
are checked by ``vggish.torch_weights``; ``check_checkpoint`` accepts both.
"""

from __future__ import annotations

import logging
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from base.errors import UserError
from vggish import params, torch_weights
from vggish.slim_model import variable_shapes

logger = logging.getLogger(__name__)

V1 = "v1"  # one file, as in the AudioSet release
V2 = "v2"  # prefix.index + prefix.data-NNNNN-of-NNNNN (+ prefix.meta)
CHECKPOINT_FORMATS = (V1, V2)

_N_LISTED = 3  # names quoted in an error message


# ----------------------------------------------------------------------------- table reader
# TensorFlow stores a checkpoint's variable table as a LevelDB-style sorted table: blocks of
# prefix-compressed (key, value) entries, an index block of block handles, and a 48-byte footer
# ending with a magic number. Values are protocol buffers, decoded below by field number.

_TABLE_MAGIC = 0xDB4775248B80FB57
_FOOTER_BYTES = 48
_BLOCK_TRAILER_BYTES = 5  # compression type (1 byte) + crc32c (4 bytes)
_DT_FLOAT = 1  # tensorflow DataType enum value of float32


class _Corrupt(Exception):
    """The bytes are not a readable TensorFlow table (truncated, compressed or another file)."""


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise _Corrupt("bad varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def _proto_fields(buf: bytes) -> dict[int, list[int | bytes]]:
    """Field number -> values of a serialized protocol buffer message (no schema needed)."""
    fields: dict[int, list[int | bytes]] = {}
    pos = 0
    while pos < len(buf):
        tag, pos = _varint(buf, pos)
        number, wire_type = tag >> 3, tag & 7
        if wire_type == 0:
            value, pos = _varint(buf, pos)
        elif wire_type == 1:
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire_type == 2:
            length, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + length], pos + length
        elif wire_type == 5:
            value, pos = buf[pos : pos + 4], pos + 4
        else:
            raise _Corrupt(f"unsupported protobuf wire type {wire_type}")
        if pos > len(buf):
            raise _Corrupt("truncated protobuf message")
        fields.setdefault(number, []).append(value)
    return fields


def _first(fields: dict[int, list[int | bytes]], number: int, default: int | bytes) -> int | bytes:
    return fields.get(number, [default])[0]


def _shape(shape_proto: bytes) -> tuple[int, ...]:
    """TensorShapeProto -> tuple of dimension sizes (field 2: repeated Dim, whose field 1 is size)."""
    dims = []
    for dim in _proto_fields(shape_proto).get(2, []):
        size = int(_first(_proto_fields(dim), 1, 0))  # type: ignore[arg-type]
        dims.append(size - (1 << 64) if size >= 1 << 63 else size)
    return tuple(dims)


def _read_block(handle: BinaryIO, offset: int, size: int) -> bytes:
    handle.seek(offset)
    data = handle.read(size + _BLOCK_TRAILER_BYTES)
    if len(data) != size + _BLOCK_TRAILER_BYTES:
        raise _Corrupt("a block lies past the end of the file")
    if data[size] != 0:
        raise _Corrupt("compressed blocks are not supported")
    return data[:size]


def _block_entries(block: bytes) -> Iterator[tuple[bytes, bytes]]:
    if len(block) < 4:
        raise _Corrupt("block too short")
    (n_restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    end = len(block) - 4 - 4 * n_restarts
    if end < 0:
        raise _Corrupt("bad block restart array")
    pos, key = 0, b""
    while pos < end:
        shared, pos = _varint(block, pos)
        unshared, pos = _varint(block, pos)
        value_length, pos = _varint(block, pos)
        key = key[:shared] + block[pos : pos + unshared]
        pos += unshared
        value = block[pos : pos + value_length]
        pos += value_length
        if pos > end:
            raise _Corrupt("entry runs past its block")
        yield key, value


def _table_entries(path: Path) -> Iterator[tuple[bytes, bytes]]:
    """Every (key, value) of a sorted table file, in key order, read block by block."""
    with open(path, "rb") as handle:
        handle.seek(0, 2)
        file_size = handle.tell()
        if file_size < _FOOTER_BYTES:
            raise _Corrupt("file shorter than a table footer")
        handle.seek(file_size - _FOOTER_BYTES)
        footer = handle.read(_FOOTER_BYTES)
        if struct.unpack_from("<Q", footer, _FOOTER_BYTES - 8)[0] != _TABLE_MAGIC:
            raise _Corrupt("no table footer")
        _meta_offset, pos = _varint(footer, 0)
        _meta_size, pos = _varint(footer, pos)
        index_offset, pos = _varint(footer, pos)
        index_size, _ = _varint(footer, pos)
        index = _read_block(handle, index_offset, index_size)
        for _separator, block_handle in _block_entries(index):
            offset, pos = _varint(block_handle, 0)
            size, _ = _varint(block_handle, pos)
            yield from _block_entries(_read_block(handle, offset, size))


@dataclass(frozen=True)
class TensorEntry:
    """One variable of a checkpoint, as its table describes it."""

    shape: tuple[int, ...]
    dtype: int  # tensorflow DataType enum value (1: float32)


def _read_v2(prefix: str) -> dict[str, TensorEntry]:
    entries: dict[str, TensorEntry] = {}
    n_shards = 1
    spans: list[tuple[str, int, int, int]] = []  # (name, shard, offset, size)
    for key, value in _table_entries(Path(prefix + ".index")):
        fields = _proto_fields(value)
        if key == b"":  # BundleHeaderProto: field 1 num_shards
            n_shards = int(_first(fields, 1, 1))  # type: ignore[arg-type]
            continue
        name = key.decode("utf-8", "replace")
        shape_proto = _first(fields, 2, b"")
        entries[name] = TensorEntry(_shape(shape_proto), int(_first(fields, 1, 0)))  # type: ignore[arg-type]
        spans.append((name, *(int(_first(fields, n, 0)) for n in (3, 4, 5))))  # type: ignore[misc]
    for name, shard, offset, size in spans:
        data = Path(f"{prefix}.data-{shard:05d}-of-{n_shards:05d}")
        if not data.is_file():
            raise UserError(
                f"VGGish checkpoint {prefix} has an index but its data file {data.name} is missing; "
                f"copy all vggish_model.ckpt.* files, or {params.RELEASE_HINT}"
            )
        if data.stat().st_size < offset + size:
            raise UserError(
                f"VGGish checkpoint {prefix} is truncated: {data.name} ends before variable '{name}'; "
                f"download it again ({params.CHECKPOINT_URL})"
            )
    return entries


def _read_v1(path: str) -> dict[str, TensorEntry]:
    # The table's first entry, under the empty key, is SavedTensorSlices whose field 1 is the
    # SavedTensorSliceMeta: field 1 repeated SavedSliceMeta {1: name, 2: shape, 3: dtype}.
    for key, value in _table_entries(Path(path)):
        if key != b"":
            break
        meta = _proto_fields(bytes(_first(_proto_fields(value), 1, b"")))  # type: ignore[arg-type]
        entries = {}
        for tensor in meta.get(1, []):
            fields = _proto_fields(tensor)  # type: ignore[arg-type]
            name = bytes(_first(fields, 1, b"")).decode("utf-8", "replace")  # type: ignore[arg-type]
            entries[name] = TensorEntry(_shape(_first(fields, 2, b"")), int(_first(fields, 3, 0)))  # type: ignore[arg-type]
        return entries
    raise _Corrupt("no tensor table")


# ----------------------------------------------------------------------------- checkpoint check

_SUFFIX = re.compile(r"\.(index|meta|data-\d{5}-of-\d{5})$")


def resolve_checkpoint(path: str | Path) -> tuple[str, str]:
    """The checkpoint prefix to restore and its format (``v1`` or ``v2``) for what a user typed.

    Accepts the release's single file, a V2 prefix, one of a V2 checkpoint's files, or a folder
    holding ``vggish_model.ckpt``.
    """
    text = str(path)
    if Path(text).is_dir():
        text = str(Path(text) / "vggish_model.ckpt")
    stripped = _SUFFIX.sub("", text)
    if Path(stripped + ".index").is_file():
        return stripped, V2
    if Path(text).is_file():
        return text, V1
    raise UserError(
        f"VGGish checkpoint {path} not found: expected the file vggish_model.ckpt of the AudioSet "
        f"release (or a re-saved checkpoint: vggish_model.ckpt.index and "
        f"vggish_model.ckpt.data-00000-of-00001); {params.RELEASE_HINT}"
    )


def read_checkpoint_variables(path: str | Path) -> dict[str, TensorEntry]:
    """Name -> shape and dtype of every variable a checkpoint holds, read without TensorFlow."""
    prefix, checkpoint_format = resolve_checkpoint(path)
    try:
        return _read_v2(prefix) if checkpoint_format == V2 else _read_v1(prefix)
    except (_Corrupt, OSError) as exc:
        raise UserError(
            f"VGGish checkpoint {path} is truncated or not a TensorFlow checkpoint ({exc}); "
            f"{params.RELEASE_HINT}"
        ) from None


def check_checkpoint(path: str | Path) -> str:
    """Check that ``path`` is a readable VGGish checkpoint and return the prefix to restore.

    A PyTorch file (``vggish.pth``, see ``vggish.torch_weights``) is checked key by key and shape
    by shape (this imports torch) and its path is returned.

    Raises:
        UserError: the files are missing or truncated, or VGGish variables are missing or have
            other shapes (extra variables, e.g. optimizer slots, are allowed).
    """
    if torch_weights.is_torch_checkpoint(path):
        return torch_weights.check_torch_checkpoint(path)
    prefix, _ = resolve_checkpoint(path)
    found = read_checkpoint_variables(path)
    expected = variable_shapes()
    missing = [name for name in expected if name not in found]
    if missing:
        others = ", ".join(sorted(found)[:_N_LISTED]) or "none"
        raise UserError(
            f"VGGish checkpoint {path} lacks {len(missing)} of the {len(expected)} VGGish variables "
            f"(first missing: {', '.join(missing[:_N_LISTED])}; it holds e.g. {others}): "
            f"it is not the AudioSet VGGish model; {params.RELEASE_HINT}"
        )
    wrong = [
        f"{name} {found[name].shape} instead of {shape}"
        for name, shape in expected.items()
        if found[name].shape != shape
    ]
    if wrong:
        raise UserError(
            f"VGGish checkpoint {path} has variables of other shapes than VGGish's "
            f"({'; '.join(wrong[:_N_LISTED])}); {params.RELEASE_HINT}"
        )
    not_float = [name for name in expected if found[name].dtype != _DT_FLOAT]
    if not_float:
        raise UserError(
            f"VGGish checkpoint {path} stores {', '.join(not_float[:_N_LISTED])} in another type "
            f"than float32; {params.RELEASE_HINT}"
        )
    return prefix


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
