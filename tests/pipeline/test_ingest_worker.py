"""The ingest worker: the compiled core and the Python path write the same samples and verdicts."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import time
from array import array
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lakelabel.pipeline.ingest.worker import HAS_COMPILED_CORE, BatchResult, WorkerOptions, process_batch
from lakelabel.pipeline.lake import iter_lake, resolve_source
from lakelabel.pipeline.lake_index import uri_digest, uri_digests
from tests.lakes import make_bad_lake

needs_core = pytest.mark.skipif(not HAS_COMPILED_CORE, reason="compiled core not built")
COLUMNS = ("uris", "reasons", "sha256", "keys", "width", "height", "nbytes", "formats", "reencoded")


def test_compiled_core_is_built_where_required():
    """CI sets LAKELABEL_REQUIRE_COMPILED_CORE: there a silently skipped build is a failure."""
    if os.environ.get("LAKELABEL_REQUIRE_COMPILED_CORE") and not HAS_COMPILED_CORE:
        pytest.fail(
            "lakelabel.pipeline._fastscan is not built: install gcc, libjpeg-dev and libssl-dev, then "
            "reinstall"
        )


def _jpeg(seed: int, size: tuple[int, int] = (24, 16), **save) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", **save)
    return out.getvalue()


def _lake(tmp_path: Path) -> Path:
    """The bad-case lake plus JPEGs the compiled core must keep or leave to Python."""
    lake = tmp_path / "lake"
    make_bad_lake(lake, tmp_path / "outside")
    extra = lake / "core"
    extra.mkdir()
    # names that json.dumps escapes: quotes, backslash, control characters, non-BMP, non-ASCII
    for i, name in enumerate(['quote"s.jpg', "back\\slash.jpg", "new\nline\t.jpg", "emoji 🚗.jpg", "ça.jpg"]):
        (extra / name).write_bytes(_jpeg(100 + i))
    (extra / "progressive.jpg").write_bytes(_jpeg(110, progressive=True))
    (extra / "subsampled_420.jpg").write_bytes(_jpeg(111, (40, 30), subsampling=2))
    (extra / "grey.jpg").write_bytes(_grey_jpeg())
    (extra / "wide.jpg").write_bytes(_jpeg(113, (300, 20)))  # over max_side below
    (extra / "bit_flipped.jpg").write_bytes(_damaged(_jpeg(114, (64, 64))))  # either verdict, same in both
    return lake


def _grey_jpeg() -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.full((16, 16), 90, dtype=np.uint8), mode="L").save(out, "JPEG")
    return out.getvalue()


def _damaged(jpeg: bytes) -> bytes:
    raw = bytearray(jpeg)
    raw[len(raw) // 2] ^= 0x10
    return bytes(raw)


def _items(lake: Path) -> list[tuple[str, str | None, bytes | None]]:
    spec = resolve_source(str(lake))
    return [(f.uri, f.path, f.data) for f in iter_lake(spec) if f.skip_reason is None]


def _samples(result: BatchResult) -> list[bytes]:
    blob = result.blob
    if result.spool is not None:
        blob = Path(result.spool).read_bytes()
    return [blob[a:b] for a, b in zip(result.starts, result.ends, strict=True)]


def _options(compiled: bool, spool_dir: str | None = None) -> WorkerOptions:
    return WorkerOptions(
        run_id="ingest-test-\u00e9",
        max_pixels=40_000,
        max_side=256,
        jpeg_quality=90,
        mtime=1_700_000_000,
        spool_dir=spool_dir,
        compiled=compiled,
    )


def _both_paths_agree(lake: Path) -> tuple[BatchResult, BatchResult]:
    """The lake's files through the Python path and the compiled core: same columns, same bytes."""
    items = _items(lake)
    spec = resolve_source(str(lake))
    python = process_batch(spec, _options(compiled=False), items)
    compiled = process_batch(spec, _options(compiled=True), items)
    for column in COLUMNS:
        assert getattr(compiled, column) == getattr(python, column), column
    assert _samples(compiled) == _samples(python)
    return python, compiled


@needs_core
def test_compiled_core_matches_python_path(tmp_path):
    python, compiled = _both_paths_agree(_lake(tmp_path))
    kept = [s for s in _samples(compiled) if s]
    assert len(kept) == sum(r is None for r in python.reasons) > 20
    # every sample is a valid tar pair whose JSON is the contract's
    for sample in kept:
        with tarfile.open(fileobj=io.BytesIO(sample + bytes(1024))) as tf:
            names = tf.getnames()
            meta = json.loads(tf.extractfile(names[1]).read())
        assert names == [meta["key"] + ".jpg", meta["key"] + ".json"]
        assert meta["run_id"] == "ingest-test-\u00e9"


@needs_core
def test_compiled_core_decides_only_plain_upright_jpegs(tmp_path):
    from lakelabel.pipeline import _fastscan

    lake = _lake(tmp_path)
    items = _items(lake)
    paths, uris = [p for _, p, _ in items], [u for u, _, _ in items]
    _, hexes, numbers, digests = _fastscan.scan_plain_jpegs(paths, uris, 40_000, 256, 0, "r")
    assert len(hexes) == 64 * len(paths) and len(numbers) == 5 * 8 * len(paths)
    assert digests == uri_digests(uris)  # every URI, decided or not (unicode and spaces included)
    shas = [None if hexes[i] == 0 else hexes[i : i + 64].decode() for i in range(0, len(hexes), 64)]
    decided = {
        Path(p).relative_to(lake).as_posix() for p, sha in zip(paths, shas, strict=True) if sha is not None
    }
    assert {"core/progressive.jpg", "core/subsampled_420.jpg", "core/emoji 🚗.jpg"} <= decided
    left_to_python = {
        "core/grey.jpg",  # not 3-channel
        "core/wide.jpg",  # over max_side
        "modes/cmyk.jpg",
        "modes/exif_rotated.jpg",
        "bad/truncated.jpg",
        "bad/zero.jpg",
        "bad/text.jpg",
        "good/png_named.jpg",
    }
    assert not decided & left_to_python
    assert all(
        Path(p).read_bytes()[:3] == b"\xff\xd8\xff" for p, s in zip(paths, shas, strict=True) if s is not None
    )


@needs_core
def test_spooled_samples_equal_inline_ones(tmp_path):
    lake = _lake(tmp_path)
    items = _items(lake)
    spec = resolve_source(str(lake))
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    inline = process_batch(spec, _options(compiled=True), items)
    spooled = process_batch(spec, _options(compiled=True, spool_dir=str(spool_dir)), items)
    assert spooled.blob == b"" and Path(spooled.spool).parent == spool_dir
    assert Path(spooled.spool).name.startswith(".spool-") and spooled.spool.endswith(".tmp")
    assert _samples(spooled) == _samples(inline)


def test_core_arguments_are_checked():
    if not HAS_COMPILED_CORE:
        pytest.skip("compiled core not built")
    from lakelabel.pipeline import _fastscan

    with pytest.raises(ValueError, match="differ in length"):
        _fastscan.scan_plain_jpegs(["a"], [], 1, 0, 0, "r")
    with pytest.raises(TypeError, match="must hold str"):
        _fastscan.scan_plain_jpegs([b"a"], ["a"], 1, 0, 0, "r")
    # a missing file is left to the Python path (which records read_error), never an exception
    out = _fastscan.scan_plain_jpegs(["/no/such/file.jpg"], ["file:///no/such/file.jpg"], 1, 0, 0, "r")
    assert out[0] == b"" and out[1] == bytes(64)
    assert array("q", out[2]).tolist() == [-1, -1, -1, 0, 0]  # width, height, bytes: null; empty sample
    assert out[3] == uri_digest("file:///no/such/file.jpg")
    lone_surrogate = "file:///lake/bad-\udcff.jpg"  # an undecodable file name, as os.fsdecode gives it
    assert _fastscan.scan_plain_jpegs(["/no/such"], [lone_surrogate], 1, 0, 0, "r")[3] == uri_digest(
        lone_surrogate
    )


@needs_core
def test_damaged_jpegs_get_the_same_verdicts_and_bytes_on_both_paths(tmp_path):
    """Truncated, bit-flipped, zeroed, randomised and spliced variants of JPEGs of every layout
    (baseline and progressive; 4:4:4, 4:2:2, 4:2:0; restart intervals; optimised tables): the
    compiled core (libjpeg's strict decode) keeps exactly what the Python path keeps."""
    rng = np.random.default_rng(7)
    lake = tmp_path / "damaged"
    lake.mkdir()
    originals = _jpeg_kinds()
    for i in range(600):
        raw = bytearray(originals[i % len(originals)])
        kind, at = i % 5, int(rng.integers(2, len(raw) - 4))
        if kind == 0:
            raw = raw[:at]
        elif kind == 1:
            raw[at] ^= 1 << int(rng.integers(0, 8))
        elif kind == 2:
            raw[at : at + 16] = bytes(len(raw[at : at + 16]))
        elif kind == 3:
            raw[at : at + 3] = rng.integers(0, 256, 3, dtype=np.uint8).tobytes()
        else:
            raw[at:at] = bytes([int(rng.choice([0xFF, 0x00, int(rng.integers(0, 256))]))])
        (lake / f"variant-{i:03d}.jpg").write_bytes(bytes(raw))
    python, _ = _both_paths_agree(lake)
    reasons = [r for r in python.reasons]
    assert reasons.count(None) > 100 and len(reasons) - reasons.count(None) > 100  # both outcomes


def _without_quant_table_1(jpeg: bytes) -> bytes:
    """``jpeg`` whose DQT defines table 3 where it defined table 1 (which its frame still uses)."""
    raw, at = bytearray(jpeg), 2
    while raw[at] == 0xFF and raw[at + 1] != 0xDA:  # marker segments up to the scan
        length = int.from_bytes(raw[at + 2 : at + 4], "big")
        if raw[at + 1] == 0xDB:
            table = at + 4
            while table < at + 2 + length:
                if raw[table] & 0x0F == 1:
                    raw[table] = (raw[table] & 0xF0) | 3
                table += 1 + (128 if raw[table] >> 4 else 64)
        at += 2 + length
    return bytes(raw)


@needs_core
def test_a_file_never_borrows_tables_from_the_file_before_it(tmp_path):
    """A reused libjpeg decompressor keeps the last file's tables: a file missing one decoded."""
    lake = tmp_path / "lake"
    lake.mkdir()
    good = _jpeg(300, (32, 32), quality=80)
    broken = _without_quant_table_1(_jpeg(301, (32, 32), quality=80))
    assert broken != _jpeg(301, (32, 32), quality=80)
    (lake / "a-good.jpg").write_bytes(good)
    (lake / "b-missing-table.jpg").write_bytes(broken)
    items = _items(lake)
    spec = resolve_source(str(lake))
    compiled = process_batch(spec, _options(compiled=True), items)
    python = process_batch(spec, _options(compiled=False), items)
    assert compiled.reasons == python.reasons == [None, "decode_error"]


_DIES_WITH_PARENT = """
import os, signal, sys, time
import lakelabel.pipeline.ingest.worker as worker
if sys.argv[1] == "python":
    worker._fastscan = None  # the ctypes fallback
pid = os.fork()
if pid == 0:
    print(worker.set_parent_death_signal(signal.SIGTERM), os.getpid(), flush=True)
    time.sleep(60)
    os._exit(0)
time.sleep(60)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("core", [pytest.param("compiled", marks=needs_core), "python"])
def test_a_worker_is_signalled_when_its_parent_dies(core):
    parent = subprocess.Popen(
        [sys.executable, "-c", _DIES_WITH_PARENT, core], stdout=subprocess.PIPE, text=True
    )
    ok, child = parent.stdout.readline().split()
    assert ok == "True" and _alive(int(child))
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 10
    while _alive(int(child)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(int(child))


def _jpeg_kinds() -> list[bytes]:
    """JPEGs of each layout: baseline 4:4:4, 4:2:2, 4:2:0; restart intervals; optimised tables;
    tiny and odd sizes; some progressive."""
    kinds = []
    for i in range(24):
        size = ((8, 8), (32, 32), (37, 21), (90, 64))[i % 4]
        save = {"quality": (30, 75, 95)[i % 3], "subsampling": (0, 1, 2)[(i // 3) % 3]}
        if i % 4 == 1:
            save["restart_marker_blocks"] = 1 + i % 3
        if i % 5 == 0:
            save["optimize"] = True
        if i % 7 == 0:
            save["progressive"] = True
        kinds.append(_jpeg(300 + i, size, **save))
    return kinds


@needs_core
def test_the_compiled_core_gives_the_same_answers_from_concurrent_threads(tmp_path):
    """It runs with the GIL released (a Prefect thread runner maps batches over threads): calls that
    overlap must not share state. JPEGs with optimised (per-image) Huffman tables, some damaged."""
    from concurrent.futures import ThreadPoolExecutor

    from lakelabel.pipeline import _fastscan

    paths = []
    for i in range(48):
        raw = bytearray(_jpeg(900 + i, (40, 24), optimize=True, quality=(40, 90)[i % 2]))
        if i % 3 == 0:
            raw[len(raw) // 2] ^= 0x10
        path = tmp_path / f"img-{i:02d}.jpg"
        path.write_bytes(bytes(raw))
        paths.append(str(path))
    batches = [paths[i : i + 6] for i in range(0, len(paths), 6)] * 4

    def scan(batch: list[str]) -> tuple:
        return _fastscan.scan_plain_jpegs(batch, [f"file://{p}" for p in batch], 1 << 30, 0, 0, "r")

    alone = [scan(batch) for batch in batches]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(scan, batches))
    assert together == alone
