"""Streaming reads of ``.npy`` matrices: fixed-size row chunks through ``read()`` into one buffer.

Unlike ``np.load(mmap_mode="r")``, pages read this way do not count towards the process's resident
memory, so a pass over a 40 GB score file keeps the RSS at one chunk.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch


class NpyRows:
    """Row chunks of a C-ordered 2-D ``.npy`` file; iterate as often as needed (one pass each).

    ``NpyRows(path, chunk_rows)`` is a zero-argument callable returning a fresh iterator of
    float32 tensors ``(≤ chunk_rows, n_cols)`` — the chunk source of
    :func:`lakelabel.models.sinkhorn.sinkhorn_knopp`.
    The yielded tensor is reused by the next chunk: consume it before advancing.
    """

    def __init__(self, path: str | Path, chunk_rows: int = 65536):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no such .npy file: {str(self.path)!r}")
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
        with open(self.path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, fortran, dtype = read_header(f)
            self.offset = f.tell()
        if len(shape) != 2 or fortran:
            raise ValueError(f"{str(self.path)!r}: expected a C-ordered 2-D array, got shape {shape}")
        self.n_rows, self.n_cols = shape
        self.dtype = np.dtype(dtype)
        self.chunk_rows = chunk_rows

    def __call__(self) -> Iterator[torch.Tensor]:
        buffer = np.empty((self.chunk_rows, self.n_cols), dtype=self.dtype)
        row_bytes = self.n_cols * self.dtype.itemsize
        with open(self.path, "rb", buffering=0) as f:
            f.seek(self.offset)
            for start in range(0, self.n_rows, self.chunk_rows):
                rows = min(self.chunk_rows, self.n_rows - start)
                view = memoryview(buffer).cast("B")[: rows * row_bytes]
                got = f.readinto(view)
                if got != rows * row_bytes:
                    raise OSError(f"{str(self.path)!r}: file ended at row {start} (truncated)")
                chunk = torch.from_numpy(buffer[:rows])
                yield chunk if chunk.dtype == torch.float32 else chunk.float()


def write_npy_rows(
    path: str | Path, chunks: Iterator[np.ndarray], n_rows: int, n_cols: int, dtype="float32"
) -> None:
    """Write a ``(n_rows, n_cols)`` ``.npy`` from row chunks without holding it in memory."""
    header = {
        "descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
        "fortran_order": False,
        "shape": (n_rows, n_cols),
    }
    written = 0
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        for chunk in chunks:
            chunk = np.ascontiguousarray(chunk, dtype=dtype)
            if chunk.ndim != 2 or chunk.shape[1] != n_cols:
                raise ValueError(f"chunk of shape {chunk.shape} does not have {n_cols} columns")
            f.write(chunk.tobytes())
            written += chunk.shape[0]
    if written != n_rows:
        raise ValueError(f"wrote {written} rows, header says {n_rows}")
