"""Per-file ingest work, run in worker processes: read, hash, validate, encode the shard members."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

import fsspec

from data_specs.shards import key_for_sha256
from pipeline.images import check_image, check_plain_jpeg
from pipeline.lake import SourceSpec
from pipeline.tario import SampleEncoder


@dataclass
class BatchResult:
    """Column-wise outcome of one batch (cheap to pickle; the writer appends ``blob`` slices).

    ``reasons[i]`` is None for a valid image, whose ``.jpg`` + ``.json`` tar members are
    ``blob[ends[i-1]:ends[i]]`` (rejected files add nothing to ``blob``).
    """

    uris: list[str]
    reasons: list[str | None]
    sha256: list[str | None]
    keys: list[str | None]
    width: list[int | None]
    height: list[int | None]
    nbytes: list[int | None]
    formats: list[str | None]
    reencoded: list[bool | None]
    ends: list[int]
    blob: bytes

    def __len__(self) -> int:
        return len(self.uris)


@dataclass(frozen=True)
class WorkerOptions:
    run_id: str
    max_pixels: int
    max_side: int | None
    jpeg_quality: int
    mtime: int


_FS_CACHE: dict[tuple, object] = {}


def _filesystem(spec: SourceSpec):
    cache_key = (spec.protocol, json.dumps(spec.storage_options, sort_keys=True, default=str))
    fs = _FS_CACHE.get(cache_key)
    if fs is None:
        fs = fsspec.filesystem(spec.protocol, **spec.storage_options)
        _FS_CACHE[cache_key] = fs
    return fs


#: First read size: most lake files fit, and a buffer under malloc's mmap threshold (128 KiB) costs
#: no page faults. A 1 MiB first read made every file an mmap + munmap: 4x the CPU of the read itself.
_FIRST_READ = 1 << 16


def _read_local(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        data = os.read(fd, _FIRST_READ)
        if len(data) < _FIRST_READ:  # a short read of a regular file means end of file
            return data
        chunks = [data]
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks)


def read_batch(
    spec: SourceSpec, items: list[tuple[str, str | None, bytes | None]]
) -> list[bytes | Exception]:
    """Bytes of each item: carried ``data``, a local read, or one concurrent fsspec ``cat``."""
    out: list[bytes | Exception] = [b""] * len(items)
    remote: list[tuple[int, str]] = []
    for i, (_uri, path, data) in enumerate(items):
        if data is not None:
            out[i] = data
        elif spec.kind == "local":
            try:
                out[i] = _read_local(path)
            except OSError as exc:
                out[i] = exc
        else:
            remote.append((i, path))
    if remote:
        fs = _filesystem(spec)
        got = fs.cat([p for _, p in remote], on_error="return")
        for i, path in remote:
            value = got.get(path)
            out[i] = value if isinstance(value, (bytes, Exception)) else OSError(f"no data for {path}")
    return out


def process_batch(
    spec: SourceSpec, options: WorkerOptions, items: list[tuple[str, str | None, bytes | None]]
) -> BatchResult:
    """Validate a batch of lake files; never raises for a bad file (it becomes a rejection).

    This loop runs once per file of the lake, so it is kept flat: the common case (an upright RGB
    JPEG, kept byte for byte) takes :func:`check_plain_jpeg`'s libjpeg-turbo path, everything else
    :func:`check_image`'s PIL path.
    """
    n = len(items)
    uris = [item[0] for item in items]
    reasons: list[str | None] = [None] * n
    shas: list[str | None] = [None] * n
    keys: list[str | None] = [None] * n
    width: list[int | None] = [None] * n
    height: list[int | None] = [None] * n
    nbytes: list[int | None] = [None] * n
    formats: list[str | None] = [None] * n
    reencoded: list[bool | None] = [None] * n
    ends = [0] * n
    parts: list[bytes] = []
    offset = 0
    run_id_json = json.dumps(options.run_id)
    max_pixels, max_side, quality = options.max_pixels, options.max_side, options.jpeg_quality
    encode = SampleEncoder(options.mtime).encode
    dumps, sha256 = json.dumps, hashlib.sha256
    for i, raw in enumerate(read_batch(spec, items)):
        ends[i] = offset
        if isinstance(raw, Exception):
            reasons[i] = "read_error"
            continue
        sha = sha256(raw).hexdigest()
        shas[i] = sha
        size = nbytes[i] = len(raw)
        plain = check_plain_jpeg(raw, max_pixels, max_side)
        if type(plain) is tuple:
            w, h = plain
            data, fmt, mode, ow, oh, again = raw, "JPEG", "RGB", w, h, False
        else:
            check = (
                plain
                if plain is not None
                else check_image(raw, max_pixels=max_pixels, max_side=max_side, jpeg_quality=quality)
            )
            fmt = check.format
            if check.reason is not None:
                reasons[i], formats[i] = check.reason, fmt
                width[i] = check.original_width or None
                height[i] = check.original_height or None
                continue
            data, mode, w, h = check.data, check.mode, check.width, check.height
            ow, oh, again = check.original_width, check.original_height, check.reencoded
        key = key_for_sha256(sha)
        keys[i], width[i], height[i], formats[i], reencoded[i] = key, w, h, fmt, again
        meta = (
            f'{{"key":"{key}","source_uri":{dumps(uris[i])},"sha256":"{sha}","format":"{fmt}",'
            f'"mode":"{mode}","width":{w},"height":{h},"original_width":{ow},"original_height":{oh},'
            f'"bytes":{size},"reencoded":{"true" if again else "false"},"run_id":{run_id_json}}}'
        )
        member = encode(key, data, meta.encode())
        parts.append(member)
        offset += len(member)
        ends[i] = offset
    return BatchResult(
        uris, reasons, shas, keys, width, height, nbytes, formats, reencoded, ends, b"".join(parts)
    )
