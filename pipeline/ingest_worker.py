"""Per-file ingest work, run in worker processes: read, hash, validate, encode the shard members."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

import fsspec

from data_specs.shards import key_for_sha256
from pipeline.images import check_image
from pipeline.lake import SourceSpec
from pipeline.tario import tar_member


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


def _read_local(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks = []
        while True:
            chunk = os.read(fd, 1 << 20)
            chunks.append(chunk)
            if len(chunk) < 1 << 20:  # a short read of a regular file means end of file
                break
    finally:
        os.close(fd)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


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
    """Validate a batch of lake files; never raises for a bad file (it becomes a rejection)."""
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
    for i, raw in enumerate(read_batch(spec, items)):
        ends[i] = offset
        if isinstance(raw, Exception):
            reasons[i] = "read_error"
            continue
        sha = hashlib.sha256(raw).hexdigest()
        shas[i] = sha
        nbytes[i] = len(raw)
        check = check_image(
            raw, max_pixels=options.max_pixels, max_side=options.max_side, jpeg_quality=options.jpeg_quality
        )
        formats[i] = check.format
        if check.reason is not None:
            reasons[i] = check.reason
            width[i] = check.original_width or None
            height[i] = check.original_height or None
            continue
        key = key_for_sha256(sha)
        keys[i], width[i], height[i], reencoded[i] = key, check.width, check.height, check.reencoded
        meta = (
            f'{{"key":"{key}","source_uri":{json.dumps(uris[i])},"sha256":"{sha}","format":"{check.format}",'
            f'"mode":"{check.mode}","width":{check.width},"height":{check.height},'
            f'"original_width":{check.original_width},"original_height":{check.original_height},'
            f'"bytes":{len(raw)},"reencoded":{"true" if check.reencoded else "false"},"run_id":{run_id_json}}}'
        )
        member = tar_member(key + ".jpg", check.data, options.mtime) + tar_member(
            key + ".json", meta.encode(), options.mtime
        )
        parts.append(member)
        offset += len(member)
        ends[i] = offset
    return BatchResult(
        uris, reasons, shas, keys, width, height, nbytes, formats, reencoded, ends, b"".join(parts)
    )
