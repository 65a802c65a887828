"""TensorFlow checkpoints of VGGish (``vggish_model.ckpt``), read without TensorFlow.

The AudioSet release ships its checkpoint as one file (TensorFlow's V1 format, a sorted table of
tensor slices); a checkpoint re-saved by a newer TensorFlow is a prefix with
``vggish_model.ckpt.index`` (a sorted table of tensor entries) and
``vggish_model.ckpt.data-00000-of-00001`` (the tensors' raw bytes) (V2). Both are read here with a
small reader of TensorFlow's on-disk table format and a schema-free protocol buffer decoder:

- ``check_slim_checkpoint``: the table of variables (names, shapes, types), so that a wrong or
  truncated file is reported before any work starts;
- ``read_slim_checkpoint``: the weights themselves, for the torch network (``vggish.network``).

No TensorFlow import: openSMILE must not run in a process that imported TensorFlow, and the torch
engine of preprocessing runs without it.
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
from vggish import params
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
_FLOAT32 = np.dtype("<f4")  # how both formats store a float32 tensor's values


class _Corrupt(Exception):
    """The bytes are not a readable TensorFlow table (truncated, compressed or another file)."""


def _varint(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
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


def _proto_fields(buf: bytes | memoryview) -> dict[int, list[int | bytes]]:
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


def _shape(shape_proto: bytes | memoryview) -> tuple[int, ...]:
    """TensorShapeProto -> tuple of dimension sizes (field 2: repeated Dim, whose field 1 is size)."""
    dims = []
    for dim in _proto_fields(shape_proto).get(2, []):
        size = int(_first(_proto_fields(dim), 1, 0))  # type: ignore[arg-type]
        dims.append(size - (1 << 64) if size >= 1 << 63 else size)
    return tuple(dims)


def _read_block(handle: BinaryIO, offset: int, size: int) -> memoryview:
    """A block's bytes; a view, so that the entries sliced from it (200 MB for fc1_1) are not copied."""
    handle.seek(offset)
    data = handle.read(size + _BLOCK_TRAILER_BYTES)
    if len(data) != size + _BLOCK_TRAILER_BYTES:
        raise _Corrupt("a block lies past the end of the file")
    if data[size] != 0:
        raise _Corrupt("compressed blocks are not supported")
    return memoryview(data)[:size]


def _block_entries(block: memoryview) -> Iterator[tuple[bytes, memoryview]]:
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
        key = key[:shared] + bytes(block[pos : pos + unshared])
        pos += unshared
        value = block[pos : pos + value_length]
        pos += value_length
        if pos > end:
            raise _Corrupt("entry runs past its block")
        yield key, value


def _table_entries(path: Path) -> Iterator[tuple[bytes, memoryview]]:
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
    data_file: str = ""  # V2: the data file holding the bytes (V1: they are in the table itself)
    offset: int = 0  # V2: first byte in ``data_file``
    size: int = 0  # V2: bytes in ``data_file``
    sliced: bool = False  # V2: stored in parts (a partitioned variable), not as one run of bytes


def _read_v2(prefix: str) -> dict[str, TensorEntry]:
    # BundleEntryProto fields: 1 dtype, 2 shape, 3 shard_id, 4 offset, 5 size, 6 crc32c, 7 slices.
    entries: dict[str, TensorEntry] = {}
    n_shards = 1
    for key, value in _table_entries(Path(prefix + ".index")):
        fields = _proto_fields(value)
        if key == b"":  # BundleHeaderProto: field 1 num_shards
            n_shards = int(_first(fields, 1, 1))  # type: ignore[arg-type]
            continue
        shard, offset, size = (int(_first(fields, n, 0)) for n in (3, 4, 5))  # type: ignore[arg-type]
        entries[key.decode("utf-8", "replace")] = TensorEntry(
            _shape(_first(fields, 2, b"")), int(_first(fields, 1, 0)),  # type: ignore[arg-type]
            f"{prefix}.data-{shard:05d}-of-{n_shards:05d}", offset, size, sliced=7 in fields)
    for name, entry in entries.items():
        data = Path(entry.data_file)
        if not data.is_file():
            raise UserError(
                f"VGGish checkpoint {prefix} has an index but its data file {data.name} is missing; "
                f"copy all vggish_model.ckpt.* files, or {params.RELEASE_HINT}"
            )
        if data.stat().st_size < entry.offset + entry.size:
            raise UserError(
                f"VGGish checkpoint {prefix} is truncated: {data.name} ends before variable '{name}'; "
                f"download it again ({params.CHECKPOINT_URL})"
            )
    return entries


def _v2_values(entries: dict[str, TensorEntry], names: list[str]) -> Iterator[tuple[str, np.ndarray]]:
    for name in names:
        entry = entries[name]
        count = int(np.prod(entry.shape))
        if entry.sliced or entry.size != count * _FLOAT32.itemsize:
            raise _Corrupt(f"variable '{name}' is not stored as {count} float32 values in one piece")
        yield name, np.fromfile(entry.data_file, dtype=_FLOAT32, count=count, offset=entry.offset)


def _full_slice(slice_proto: bytes | memoryview, shape: tuple[int, ...]) -> bool:
    """Whether a TensorSliceProto (field 1: repeated extent {1: start, 2: length}) covers ``shape``."""
    extents = [_proto_fields(extent) for extent in _proto_fields(slice_proto).get(1, [])]  # type: ignore[arg-type]
    if len(extents) not in (0, len(shape)):
        return False
    return all(_first(extent, 1, 0) == 0 and _first(extent, 2, size) == size
               for extent, size in zip(extents, shape))


def _v1_values(path: str, entries: dict[str, TensorEntry], names: list[str]) -> Iterator[tuple[str, np.ndarray]]:
    # Every other entry is SavedTensorSlices whose field 2 is SavedSlice {1: name, 2: slice,
    # 3: TensorProto}; TensorProto holds float32 values as packed float_val (field 5) or as
    # tensor_content (field 4).
    wanted = set(names)
    for key, value in _table_entries(Path(path)):
        if key == b"":
            continue
        saved = _proto_fields(_first(_proto_fields(value), 2, b""))  # type: ignore[arg-type]
        name = bytes(_first(saved, 1, b"")).decode("utf-8", "replace")  # type: ignore[arg-type]
        if name not in wanted:
            continue
        shape = entries[name].shape
        if not _full_slice(_first(saved, 2, b""), shape):  # type: ignore[arg-type]
            raise _Corrupt(f"variable '{name}' is stored in parts (a partitioned variable)")
        tensor = _proto_fields(_first(saved, 3, b""))  # type: ignore[arg-type]
        chunks = tensor.get(4) or tensor.get(5) or [b""]
        values = np.concatenate([np.frombuffer(chunk, dtype=_FLOAT32) for chunk in chunks])  # a copy: the block goes
        if values.size != int(np.prod(shape)):
            raise _Corrupt(f"variable '{name}' holds {values.size} values, not {int(np.prod(shape))}")
        wanted.discard(name)
        yield name, values
    if wanted:
        raise _Corrupt(f"no values for {', '.join(sorted(wanted)[:_N_LISTED])}")


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


def check_slim_checkpoint(path: str | Path) -> str:
    """Check that ``path`` is a readable VGGish TensorFlow checkpoint and return the prefix to restore.

    Raises:
        UserError: the files are missing or truncated, or VGGish variables are missing or have
            other shapes (extra variables, e.g. optimizer slots, are allowed).
    """
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


def read_slim_checkpoint(path: str | Path) -> dict[str, np.ndarray]:
    """The VGGish variables of a checked TensorFlow checkpoint, read without TensorFlow.

    Args:
        path: the release's ``vggish_model.ckpt`` (V1), a V2 prefix or one of its files, or a folder.

    Returns:
        Slim variable name -> float32 array in the slim layout (``variable_shapes`` order).

    Raises:
        UserError: the checkpoint fails ``check_slim_checkpoint``, its values cannot be read, or
            they are not finite. (Only TensorFlow verifies the files' checksums: bytes damaged in
            place are found when they make a weight NaN or infinite.)
    """
    prefix, checkpoint_format = resolve_checkpoint(check_slim_checkpoint(path))
    entries = read_checkpoint_variables(prefix)
    names = list(variable_shapes())
    values: dict[str, np.ndarray] = {}
    try:
        found = _v2_values(entries, names) if checkpoint_format == V2 else _v1_values(prefix, entries, names)
        for name, flat in found:
            values[name] = flat.reshape(entries[name].shape)
    except (_Corrupt, OSError, ValueError, TypeError) as exc:
        raise UserError(
            f"VGGish checkpoint {path} could not be read ({exc}); download it again ({params.CHECKPOINT_URL})"
        ) from None
    not_finite = [name for name in names if not np.isfinite(values[name]).all()]
    if not_finite:
        raise UserError(
            f"VGGish checkpoint {path} holds NaN or infinite weights in {', '.join(not_finite[:_N_LISTED])}: "
            f"it is damaged; download it again ({params.CHECKPOINT_URL})"
        )
    logger.debug("read %d VGGish variables from %s (%s) without TensorFlow", len(values), prefix, checkpoint_format)
    return {name: values[name] for name in names}
