"""Per-file ingest work, run in worker processes: read, hash, validate, encode the shard members."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from array import array
from dataclasses import dataclass

from lakelabel.data_specs.shards import key_for_sha256
from lakelabel.pipeline.lake import SourceSpec
from lakelabel.pipeline.lake_index import uri_digests
from lakelabel.pipeline.tario import SampleEncoder

try:  # the compiled core of the common case (pipeline/_fastscan.c): read, hash, validate, encode
    from lakelabel.pipeline import _fastscan
except ImportError:  # pragma: no cover - installed without a C compiler or libjpeg/OpenSSL headers
    _fastscan = None

#: True when the compiled core is built; ingest runs the same checks in Python without it.
HAS_COMPILED_CORE = _fastscan is not None


#: one lake file to validate: (its URI, the path its filesystem opens or None, its bytes or None)
WorkItem = tuple[str, str | None, bytes | None]


def set_parent_death_signal(sig: int) -> bool:
    """Have the kernel send ``sig`` to this process when its parent dies (Linux ``prctl``);
    False where that is not available. The compiled core does it without loading ctypes (~6 ms
    a worker)."""
    if _fastscan is not None:
        return _fastscan.set_parent_death_signal(sig)
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        return libc.prctl(1, sig) == 0  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return False


#: int64 numbers per file in :attr:`BatchResult.numbers`, and their columns
NUMBERS_PER_FILE = 5
WIDTH, HEIGHT, NBYTES, START, END = range(NUMBERS_PER_FILE)
#: ``BatchResult.hexes`` of a file that has no sha256 (it could not be read)
NO_SHA256 = bytes(64)
#: ``BatchResult.numbers`` of a file nothing is known of yet: null width, height and bytes, no sample
UNDECIDED_NUMBERS = array("q", [-1, -1, -1, 0, 0]).tobytes()


@dataclass
class BatchResult:
    """Packed outcome of one batch: cheap to pickle, and read column-wise by the writer.

    - ``hexes``: 64 ASCII hex digits of each file's sha256 (:data:`NO_SHA256` when unread);
      a valid file's key is its first 32.
    - ``numbers``: :data:`NUMBERS_PER_FILE` native int64 per file: width, height, bytes (-1 for
      null), and the byte range ``start:end`` of its ``.jpg`` + ``.json`` tar members in the
      batch's samples (an empty range for a rejected file).
    - ``reasons[i]`` is None for a valid image, else why it was rejected.
    - The samples are ``blob``, or, when the worker spooled them, the file ``spool`` (which the
      writer deletes): a local worker hands over megabytes per batch through the page cache.
    - ``uris`` are the batch's source URIs; the local process pool leaves them out in transit
      (the writer knows them) and puts them back.
    """

    hexes: bytes
    numbers: bytes
    reasons: list[str | None]
    formats: list[str | None]
    reencoded: list[bool | None]
    blob: bytes
    spool: str | None = None
    uris: list[str] | None = None
    #: the worker reuses the spool file (a ring of ``spool_slots``): the writer must not delete it
    spool_kept: bool = False
    #: :func:`~lakelabel.pipeline.lake_index.uri_digest` of each URI, concatenated (what the index stores)
    uri_digests: bytes | None = None

    def __len__(self) -> int:
        return len(self.reasons)

    def _column(self, column: int) -> list[int]:
        return array("q", self.numbers)[column::NUMBERS_PER_FILE].tolist()

    def _nullable(self, column: int) -> list[int | None]:
        return [None if v == -1 else v for v in self._column(column)]

    # column views as lists (for tests and callers off the hot path)
    @property
    def sha256(self) -> list[str | None]:
        h = self.hexes
        return [None if h[i : i + 64] == NO_SHA256 else h[i : i + 64].decode() for i in range(0, len(h), 64)]

    @property
    def keys(self) -> list[str | None]:
        return [
            key_for_sha256(sha) if reason is None else None
            for sha, reason in zip(self.sha256, self.reasons, strict=True)
        ]

    @property
    def width(self) -> list[int | None]:
        return self._nullable(WIDTH)

    @property
    def height(self) -> list[int | None]:
        return self._nullable(HEIGHT)

    @property
    def nbytes(self) -> list[int | None]:
        return self._nullable(NBYTES)

    @property
    def starts(self) -> list[int]:
        return self._column(START)

    @property
    def ends(self) -> list[int]:
        return self._column(END)


@dataclass(frozen=True)
class WorkerOptions:
    run_id: str
    max_pixels: int
    max_side: int | None
    jpeg_quality: int
    mtime: int
    #: folder (on ROOT's file system) where workers spool their samples; None: send them inline
    spool_dir: str | None = None
    #: spool files each worker reuses in turn (0: a new file per batch, deleted by the writer).
    #: Rewriting a file in place skips allocating and freeing its pages; the caller must size the
    #: ring beyond the batches in flight, so a file is rewritten only after the writer copied it.
    spool_slots: int = 0
    #: use the compiled core (:mod:`lakelabel.pipeline._fastscan`) for local upright RGB JPEGs when built
    compiled: bool = True


_FS_CACHE: dict[tuple, object] = {}


def _filesystem(spec: SourceSpec):
    cache_key = (spec.protocol, json.dumps(spec.storage_options, sort_keys=True, default=str))
    fs = _FS_CACHE.get(cache_key)
    if fs is None:
        import fsspec

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


_SPOOL_IDS = itertools.count()
#: this worker's reused spool files: path -> open descriptor
_SPOOL_RING: dict[str, int] = {}


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def process_batch(
    spec: SourceSpec, options: WorkerOptions, items: list[tuple[str, str | None, bytes | None]]
) -> BatchResult:
    """Validate a batch of lake files; never raises for a bad file (it becomes a rejection).

    Local upright RGB JPEGs (the common case, kept byte for byte) go through the compiled core
    when it is built; every other file, and every file without it, through :func:`_python_samples`
    (``check_plain_jpeg``'s libjpeg-turbo path, else ``check_image``'s PIL path). Both
    write the same bytes and decide the same verdicts (``tests/pipeline/test_ingest_worker.py``).
    """
    n = len(items)
    uris = [item[0] for item in items]
    spool, spool_fd, ring = None, -1, options.spool_slots > 0
    if options.spool_dir is not None and ring:
        spool = os.path.join(
            options.spool_dir, f".spool-{os.getpid()}-r{next(_SPOOL_IDS) % options.spool_slots}.tmp"
        )
        spool_fd = _SPOOL_RING.get(spool, -1)
        if spool_fd < 0:
            spool_fd = _SPOOL_RING[spool] = os.open(spool, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        os.lseek(spool_fd, 0, os.SEEK_SET)  # stale bytes past this batch's samples are never read
    elif options.spool_dir is not None:
        spool = os.path.join(options.spool_dir, f".spool-{os.getpid()}-{next(_SPOOL_IDS)}.tmp")
        spool_fd = os.open(spool, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        if _fastscan is not None and options.compiled and spec.kind == "local":
            blob, hexes, numbers, digests = _fastscan.scan_plain_jpegs(
                [item[1] for item in items],
                uris,
                options.max_pixels,
                options.max_side or 0,
                options.mtime,
                options.run_id,
                spool_fd,
            )
            offset = blob if spool is not None else len(blob)
            todo = [i for i in range(n) if not hexes[i * 64]]
            formats: list[str | None] = ["JPEG"] * n
            reencoded: list[bool | None] = [False] * n
            for i in todo:
                formats[i] = reencoded[i] = None
        else:
            blob, offset, todo = b"", 0, list(range(n))
            hexes, numbers = NO_SHA256 * n, UNDECIDED_NUMBERS * n
            digests = uri_digests(uris)
            formats, reencoded = [None] * n, [None] * n
        reasons: list[str | None] = [None] * n
        parts: list[bytes] = []
        if todo:
            hexes, numbers = bytearray(hexes), array("q", numbers)
            columns = (reasons, hexes, numbers, formats, reencoded)
            parts = _python_samples(spec, options, items, todo, uris, columns, offset)
            hexes, numbers = bytes(hexes), numbers.tobytes()
        if spool is not None:
            for part in parts:
                _write_all(spool_fd, part)
            blob = b""
        elif parts:
            blob = b"".join((blob, *parts))
    except BaseException:
        if spool is not None and not ring:
            os.unlink(spool)
        raise
    finally:
        if spool is not None and not ring:
            os.close(spool_fd)
    return BatchResult(
        hexes, numbers, reasons, formats, reencoded, blob, spool, uris, spool_kept=ring, uri_digests=digests
    )


def _python_samples(
    spec: SourceSpec,
    options: WorkerOptions,
    items: list[tuple[str, str | None, bytes | None]],
    todo: list[int],
    uris: list[str],
    columns: tuple[list, ...],
    offset: int,
) -> list[bytes]:
    """The Python path for files ``todo`` of a batch: fills their columns, returns their samples.

    Samples are numbered from byte ``offset`` on. This loop runs once per file when the compiled
    core is missing, so it is kept flat.
    """
    from lakelabel.pipeline.images import check_image, check_plain_jpeg  # PIL loads only when a file needs it

    reasons, hexes, numbers, formats, reencoded = columns
    parts: list[bytes] = []
    run_id_json = json.dumps(options.run_id)
    max_pixels, max_side, quality = options.max_pixels, options.max_side, options.jpeg_quality
    encode = SampleEncoder(options.mtime).encode
    dumps, sha256 = json.dumps, hashlib.sha256
    for i, raw in zip(todo, read_batch(spec, [items[i] for i in todo]), strict=True):
        row = i * NUMBERS_PER_FILE
        numbers[row + START] = numbers[row + END] = offset
        if isinstance(raw, Exception):
            reasons[i] = "read_error"
            continue
        sha = sha256(raw).hexdigest()
        hexes[i * 64 : i * 64 + 64] = sha.encode()
        size = numbers[row + NBYTES] = len(raw)
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
                numbers[row + WIDTH] = check.original_width or -1
                numbers[row + HEIGHT] = check.original_height or -1
                continue
            data, mode, w, h = check.data, check.mode, check.width, check.height
            ow, oh, again = check.original_width, check.original_height, check.reencoded
        key = key_for_sha256(sha)
        numbers[row + WIDTH], numbers[row + HEIGHT], formats[i], reencoded[i] = w, h, fmt, again
        meta = (
            f'{{"key":"{key}","source_uri":{dumps(uris[i])},"sha256":"{sha}","format":"{fmt}",'
            f'"mode":"{mode}","width":{w},"height":{h},"original_width":{ow},"original_height":{oh},'
            f'"bytes":{size},"reencoded":{"true" if again else "false"},"run_id":{run_id_json}}}'
        )
        member = encode(key, data, meta.encode())
        parts.append(member)
        offset += len(member)
        numbers[row + END] = offset
    return parts
