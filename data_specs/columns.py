"""Arrow arrays from Python lists, assembled from buffers.

``pa.array(list)`` imports pandas on its first call in a process, whenever pandas is installed
(to ask whether the list is a pandas object): ~0.3 s of CPU on our CI machine, as much as
ingesting 15,000 files. The ingest manifest and its contract check build their columns here
instead; the values and types are exactly those ``pa.array`` would give.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

_INTEGERS = {
    pa.int8(): np.int8,
    pa.int16(): np.int16,
    pa.int32(): np.int32,
    pa.int64(): np.int64,
}


def _validity(values: Sequence, n: int) -> tuple[pa.Buffer | None, int]:
    return _bitmap(np.fromiter((v is not None for v in values), dtype=bool, count=n))


def arrow_array(values: Sequence, type: pa.DataType) -> pa.Array:
    """``pa.array(values, type)`` for a string, signed integer or boolean ``type``; None is null.

    Raises ``TypeError`` for another type, and what ``str.encode`` / NumPy raise for a value
    that does not fit (a lone surrogate in a string, an integer out of range).
    """
    n = len(values)
    if n and values.count(values[0]) == n:  # one value throughout (all None, all "JPEG"): no per-row work
        return _uniform_array(values[0], n, type)
    validity, nulls = _validity(values, n) if None in values else (None, 0)
    if pa.types.is_string(type):
        text = "".join(values) if not nulls else ""
        if not nulls and text.isascii():  # one encode; a character is a byte
            data = text.encode("ascii")
            lengths = np.fromiter(map(len, values), dtype=np.int64, count=n)
        else:
            encoded = [b"" if v is None else v.encode() for v in values]
            data = b"".join(encoded)
            lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=n)
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        if offsets[-1] >= 2**31:
            raise ValueError(f"{offsets[-1]} bytes of strings do not fit one Arrow string array")
        buffers = [validity, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(data)]
    elif type in _INTEGERS:
        values = values if not nulls else [0 if v is None else v for v in values]
        data = np.fromiter(values, dtype=_INTEGERS[type], count=n)
        buffers = [validity, pa.py_buffer(data)]
    elif pa.types.is_boolean(type):
        bits = np.fromiter((v is True for v in values), dtype=bool, count=n)
        buffers = [validity, pa.py_buffer(np.packbits(bits, bitorder="little"))]
    else:
        raise TypeError(f"arrow_array builds string, signed integer and boolean arrays, not {type}")
    return pa.Array.from_buffers(type, n, buffers, null_count=nulls)


def _uniform_array(value, n: int, type: pa.DataType) -> pa.Array:
    """:func:`arrow_array` of ``n`` copies of ``value``."""
    if not (pa.types.is_string(type) or type in _INTEGERS or pa.types.is_boolean(type)):
        raise TypeError(f"arrow_array builds string, signed integer and boolean arrays, not {type}")
    if value is None:
        return pa.nulls(n, type)
    if pa.types.is_string(type):
        return repeated_string(value, n)
    if type in _INTEGERS:
        return pa.Array.from_buffers(type, n, [None, pa.py_buffer(np.full(n, value, dtype=_INTEGERS[type]))])
    bits = np.packbits(np.full(n, value is True, dtype=bool), bitorder="little")  # boolean
    return pa.Array.from_buffers(type, n, [None, pa.py_buffer(bits)])


def repeated_string(value: str, n: int) -> pa.Array:
    """A string array of ``n`` copies of ``value`` (no per-row work)."""
    data = value.encode()
    return fixed_width_strings(data * n, len(data), np.ones(n, dtype=bool))


def _bitmap(valid: np.ndarray) -> tuple[pa.Buffer | None, int]:
    nulls = len(valid) - int(np.count_nonzero(valid))
    if not nulls:
        return None, 0
    return pa.py_buffer(np.packbits(valid, bitorder="little")), nulls


def fixed_width_strings(data: bytes, width: int, valid: np.ndarray) -> pa.Array:
    """A string array of ``len(valid)`` values of ``width`` bytes each, packed in ``data``;
    rows where ``valid`` is False are null (their bytes are ignored)."""
    n = len(valid)
    if len(data) != n * width:
        raise ValueError(f"{len(data)} bytes of data for {n} strings of {width} bytes")
    offsets = np.arange(0, (n + 1) * width, width, dtype=np.int32)
    validity, nulls = _bitmap(valid)
    return pa.Array.from_buffers(
        pa.string(), n, [validity, pa.py_buffer(offsets), pa.py_buffer(data)], null_count=nulls
    )


def integers(values: np.ndarray, type: pa.DataType, null: int | None = -1) -> pa.Array:
    """A signed integer array of ``type`` from ``values``; entries equal to ``null`` are null
    (``null=None``: none is)."""
    if type not in _INTEGERS:
        raise TypeError(f"integers builds signed integer arrays, not {type}")
    validity, nulls = (None, 0) if null is None else _bitmap(values != null)
    data = np.ascontiguousarray(values, dtype=_INTEGERS[type])
    return pa.Array.from_buffers(type, len(values), [validity, pa.py_buffer(data)], null_count=nulls)


def strings_by_code(names: Sequence[str], codes: np.ndarray) -> pa.Array:
    """``names[codes[i]]`` for each row, as a string array; a negative code is null."""
    encoded = [name.encode() for name in names]
    name_bytes = np.frombuffer(b"".join(encoded) or b"\0", dtype=np.uint8)
    name_lengths = np.array([len(e) for e in encoded] or [0], dtype=np.int64)
    name_starts = np.concatenate([[0], np.cumsum(name_lengths)[:-1]])
    valid = codes >= 0
    safe = np.where(valid, codes, 0)
    lengths = np.where(valid, name_lengths[safe], 0)
    offsets = np.zeros(len(codes) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    # byte j of row i is name byte name_starts[code] + (j - offsets[i])
    at = np.arange(offsets[-1], dtype=np.int64) + np.repeat(name_starts[safe] - offsets[:-1], lengths)
    validity, nulls = _bitmap(valid)
    buffers = [validity, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(name_bytes[at].tobytes())]
    return pa.Array.from_buffers(pa.string(), len(codes), buffers, null_count=nulls)


def _chunks(column: pa.Array | pa.ChunkedArray) -> list[pa.Array]:
    return column.chunks if isinstance(column, pa.ChunkedArray) else [column]


def valid_rows(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Per row, True where ``column`` is not null (read off the validity bitmaps)."""
    masks = []
    for chunk in _chunks(column):
        bitmap = chunk.buffers()[0]
        if chunk.null_count == 0 or bitmap is None:
            masks.append(np.full(len(chunk), chunk.null_count == 0))
        else:
            bits = np.unpackbits(np.frombuffer(bitmap, dtype=np.uint8), bitorder="little")
            masks.append(bits[chunk.offset : chunk.offset + len(chunk)].astype(bool))
    return np.concatenate(masks) if masks else np.zeros(0, dtype=bool)


def string_in(column: pa.Array | pa.ChunkedArray, values: Sequence[str]) -> np.ndarray:
    """Per row of a string column, True where it equals one of ``values`` (null: False)."""
    if not pa.types.is_string(column.type):
        raise TypeError(f"string_in reads string columns, not {column.type}")
    found = []
    for chunk in _chunks(column):
        _, offsets, data = chunk.buffers()
        offsets = np.frombuffer(offsets, dtype=np.int32)[chunk.offset : chunk.offset + len(chunk) + 1]
        text = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, dtype=np.uint8)
        starts, lengths = offsets[:-1], np.diff(offsets)
        hit = np.zeros(len(chunk), dtype=bool)
        for value in values:
            wanted = np.frombuffer(value.encode(), dtype=np.uint8)
            rows = np.flatnonzero(lengths == len(wanted))
            same = (text[starts[rows, None] + np.arange(len(wanted))] == wanted).all(axis=1)
            hit[rows[same]] = True
        found.append(hit & valid_rows(chunk))
    return np.concatenate(found) if found else np.zeros(0, dtype=bool)
