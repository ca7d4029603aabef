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
    present = np.fromiter((v is not None for v in values), dtype=bool, count=n)
    nulls = n - int(np.count_nonzero(present))
    if not nulls:
        return None, 0
    return pa.py_buffer(np.packbits(present, bitorder="little")), nulls


def arrow_array(values: Sequence, type: pa.DataType) -> pa.Array:
    """``pa.array(values, type)`` for a string, signed integer or boolean ``type``; None is null.

    Raises ``TypeError`` for another type, and what ``str.encode`` / NumPy raise for a value
    that does not fit (a lone surrogate in a string, an integer out of range).
    """
    n = len(values)
    validity, nulls = _validity(values, n)
    if pa.types.is_string(type):
        encoded = [b"" if v is None else v.encode() for v in values]
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.fromiter(map(len, encoded), dtype=np.int64, count=n), out=offsets[1:])
        if offsets[-1] >= 2**31:
            raise ValueError(f"{offsets[-1]} bytes of strings do not fit one Arrow string array")
        buffers = [validity, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(b"".join(encoded))]
    elif type in _INTEGERS:
        data = np.fromiter((0 if v is None else v for v in values), dtype=_INTEGERS[type], count=n)
        buffers = [validity, pa.py_buffer(data)]
    elif pa.types.is_boolean(type):
        bits = np.fromiter((v is True for v in values), dtype=bool, count=n)
        buffers = [validity, pa.py_buffer(np.packbits(bits, bitorder="little"))]
    else:
        raise TypeError(f"arrow_array builds string, signed integer and boolean arrays, not {type}")
    return pa.Array.from_buffers(type, n, buffers, null_count=nulls)
