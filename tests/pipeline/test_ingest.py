from __future__ import annotations

import glob
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import tarfile
import time
import zipfile
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import webdataset as wds

import lakelabel.pipeline.ingest.pool as ingest_pool
import lakelabel.pipeline.ingest.session as ingest_session
from lakelabel.data_specs.manifest import read_manifest
from lakelabel.data_specs.shards import KEY_RE, validate_sample_json
from lakelabel.pipeline.config import IngestConfig
from lakelabel.pipeline.ingest import IngestError, map_ordered, recover, run_ingest
from tests.lakes import make_bad_lake, make_plain_lake


def _rel(uri: str, lake: Path) -> str:
    return uri.split(str(lake) + "/", 1)[1]


def shard_keys(root: Path) -> list[str]:
    """Keys of every sample in every shard, read with webdataset."""
    urls = sorted(glob.glob(str(root / "shards" / "shard-*.tar")))
    if not urls:
        return []
    ds = wds.WebDataset(urls, shardshuffle=False, nodesplitter=wds.single_node_only, empty_check=False)
    return [sample["__key__"] for sample in ds]


def assert_accounted(root: Path, lake_files: list[str]) -> dict:
    """Every file exactly once in the manifest; every sharded key in exactly one shard."""
    table = read_manifest(root).to_pandas()
    uris = Counter(table["source_uri"])
    assert sorted(uris) == sorted(lake_files), "manifest rows differ from the files under the lake"
    assert max(uris.values()) == 1, "a file appears twice in the manifest"
    keys = shard_keys(root)
    assert len(keys) == len(set(keys)), "a key appears in two shards"
    sharded = table[table.status == "sharded"]
    assert sorted(sharded.key) == sorted(keys)
    dup = table[table.status == "duplicate"]
    assert set(dup.key) <= set(keys), "a duplicate points to a key that is not in the shards"
    return dict(Counter(table.status))


def lake_uris(lake: Path) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(lake):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            if os.path.isdir(path) and not os.path.islink(path) and not name.startswith("."):
                continue
            out.append("file://" + path)
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
    return out


@pytest.fixture
def bad_lake(tmp_path: Path) -> tuple[Path, dict]:
    lake = tmp_path / "lake"
    expected = make_bad_lake(lake, tmp_path / "outside")
    return lake, expected


@pytest.mark.parametrize(("workers", "compiled_core"), [(0, True), (2, True), (2, False)])
def test_bad_lake_every_case_recorded_and_run_goes_on(bad_lake, tmp_path, workers, compiled_core):
    lake, expected = bad_lake
    root = tmp_path / f"out{workers}"
    config = IngestConfig(workers=workers, shard_max_count=5, compiled_core=compiled_core)
    summary = run_ingest(str(lake), root, config)
    counts = assert_accounted(root, lake_uris(lake))
    assert summary["found"] == len(expected) == sum(counts.values())
    table = read_manifest(root).to_pandas()
    by_rel = {_rel(r.source_uri, lake): r for r in table.itertuples()}
    for rel, (status, reason) in expected.items():
        row = by_rel[rel]
        if status in ("rejected", "skipped"):
            assert (row.status, row.reason) == (status, reason), rel
        else:
            assert row.status in ("sharded", "duplicate") and not isinstance(row.reason, str), rel
    # one copy of the duplicated image is kept, the others point at its key and shard
    group = table[table.sha256 == by_rel["good/plain.jpg"].sha256]
    assert sorted(group.status) == ["duplicate", "duplicate", "sharded"]
    assert group.key.nunique() == 1 and group.shard.nunique() == 1
    assert summary["shards_written"] >= 3  # shard_max_count=5 bounds the shards
    rotated = by_rel["modes/exif_rotated.jpg"]
    assert (rotated.width, rotated.height) == (20, 40)


def test_shards_read_back_with_tarfile_and_webdataset(bad_lake, tmp_path):
    lake, _ = bad_lake
    root = tmp_path / "out"
    run_ingest(str(lake), root, IngestConfig(workers=0, shard_max_count=4, max_side=32))
    table = read_manifest(root).to_pandas().set_index("key")
    for shard in sorted((root / "shards").glob("shard-*.tar")):
        with tarfile.open(shard) as tf:
            names = tf.getnames()
            assert len(names) % 2 == 0 and len(names) // 2 <= 4
            for name in names:
                key, ext = name.split(".")
                assert KEY_RE.match(key) and ext in ("jpg", "json")
                if ext == "json":
                    meta = validate_sample_json(json.loads(tf.extractfile(name).read()))
                    assert (
                        table.loc[key, "shard"] == shard.name
                        if isinstance(table.loc[key, "shard"], str)
                        else True
                    )
    ds = wds.WebDataset(
        sorted(str(p) for p in (root / "shards").glob("*.tar")),
        shardshuffle=False,
        nodesplitter=wds.single_node_only,
        empty_check=False,
    ).decode("pil")
    n = 0
    for sample in ds:
        assert sample["jpg"].mode == "RGB" and max(sample["jpg"].size) <= 32
        assert sample["json"]["key"] == sample["__key__"]
        n += 1
    assert n == (read_manifest(root).column("status").to_pylist()).count("sharded")
    assert meta["run_id"].startswith("ingest-")


@pytest.mark.parametrize("suffix", [".tar.gz", ".zip"])
def test_archive_source(bad_lake, tmp_path, suffix):
    lake, expected = bad_lake
    archive = tmp_path / f"lake{suffix}"
    members = [p for p in lake.rglob("*") if p.is_file() and not p.is_symlink()]
    if suffix == ".zip":
        with zipfile.ZipFile(archive, "w") as zf:
            for p in members:
                zf.write(p, p.relative_to(lake).as_posix())
    else:
        with tarfile.open(archive, "w:gz") as tf:
            for p in members:
                tf.add(p, p.relative_to(lake).as_posix())
    root = tmp_path / "out"
    summary = run_ingest(str(archive), root, IngestConfig(workers=2))
    table = read_manifest(root).to_pandas()
    assert summary["found"] == len(members) == len(table) == table.source_uri.nunique()
    scheme = "zip" if suffix == ".zip" else "tar"
    assert all(
        u.startswith(f"{scheme}://") and u.endswith("::file://" + str(archive)) for u in table.source_uri
    )
    reasons = Counter(table.reason.dropna())
    assert reasons == Counter(
        {"truncated": 1, "empty": 1, "not_an_image": 2, "decompression_bomb": 1, "hidden": 1}
    )
    assert len(shard_keys(root)) == (table.status == "sharded").sum()


def test_incremental_ingests_only_new_files(tmp_path):
    lake, root = tmp_path / "lake", tmp_path / "out"
    make_plain_lake(lake, 120)
    first = run_ingest(str(lake), root, IngestConfig(workers=0, shard_max_count=50))
    assert (first["sharded"], first["shards_written"]) == (120, 3)
    shards_before = {p.name: p.stat().st_mtime_ns for p in (root / "shards").glob("*.tar")}
    make_plain_lake(lake, 30, start=120)
    (lake / "part-999").mkdir()
    (lake / "part-999" / "again.jpg").write_bytes((lake / "part-000" / "img-000000.jpg").read_bytes())
    second = run_ingest(str(lake), root, IngestConfig(workers=0, shard_max_count=50))
    assert (second["already_ingested"], second["new"], second["sharded"], second["duplicate"]) == (
        120,
        31,
        30,
        1,
    )
    assert second["shards_written"] == 1
    after = {p.name: p.stat().st_mtime_ns for p in (root / "shards").glob("*.tar")}
    assert {k: after[k] for k in shards_before} == shards_before, "old shards were rewritten"
    assert sorted(set(after) - set(shards_before)) == ["shard-000003.tar"]
    table = read_manifest(root).to_pandas()
    dup = table[table.source_uri.str.endswith("again.jpg")].iloc[0]
    orig = table[table.source_uri.str.endswith("img-000000.jpg")].iloc[0]
    assert (dup.status, dup.key, dup.shard) == ("duplicate", orig.key, orig.shard)
    assert_accounted(root, lake_uris(lake))
    third = run_ingest(str(lake), root, IngestConfig(workers=0))
    assert (third["new"], third["shards_written"], third["already_ingested"]) == (0, 0, 151)


def test_recovery_removes_partial_outputs(tmp_path):
    lake, root = tmp_path / "lake", tmp_path / "out"
    make_plain_lake(lake, 60)
    run_ingest(str(lake), root, IngestConfig(workers=0, shard_max_count=20))
    # a crash between the shard rename and its manifest part, and temp files left behind
    (root / "manifest" / "part-000002.parquet").unlink()
    (root / "shards" / ".shard-000003.tar.tmp").write_bytes(b"partial")
    (root / "manifest" / ".part-000003.parquet.tmp").write_bytes(b"partial")
    (root / "shards" / ".spool-4242-7.tmp").write_bytes(b"a worker's samples, never taken in")
    state = recover(root)
    state.index.close()
    assert not (root / "shards" / "shard-000002.tar").exists()
    assert not list(root.rglob(".*.tmp"))
    assert len(state.removed_orphans) == 4 and state.next_index == 2
    assert state.index_sync == {"indexed_parts": 2, "rebuilt": 1}  # it had indexed the lost part
    summary = run_ingest(str(lake), root, IngestConfig(workers=0, shard_max_count=20))
    assert (summary["new"], summary["sharded"], summary["already_ingested"]) == (20, 20, 40)
    assert_accounted(root, lake_uris(lake))


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _ingest_command(lake: Path, root: Path, *flags: str) -> list[str]:
    """``lakelabel ingest LAKE --out ROOT FLAGS...`` as a subprocess command."""
    return [sys.executable, "-m", "lakelabel", "ingest", str(lake), "--out", str(root), *flags]


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_loses_and_duplicates_nothing(tmp_path):
    lake, root = tmp_path / "lake", tmp_path / "out"
    make_plain_lake(lake, 3000, size=(48, 48))
    cmd = _ingest_command(
        lake, root, "--shard-max-count", "100", "--workers", "1", "--batch-size", "16", "--no-progress"
    )
    kills = orphans_checked = 0
    for wait_for in (2, 9, 17):  # kill after this many committed manifest parts
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if len(list((root / "manifest").glob("part-*.parquet"))) >= wait_for:
                break
            time.sleep(0.01)
        if proc.poll() is None:
            children = _children(proc.pid)
            orphans_checked += len(children)
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
            proc.wait()
            deadline = time.time() + 15
            while time.time() < deadline and any(_alive(c) for c in children):
                time.sleep(0.1)
            assert not [c for c in children if _alive(c)], "worker processes outlived the killed ingest"
        proc.wait()
    assert kills >= 2, "the ingest finished before it could be killed; make the lake larger"
    assert orphans_checked >= kills, "no worker processes were seen to check for orphans"
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["already_ingested"] + summary["new"] == summary["found"] == 3000
    counts = assert_accounted(root, lake_uris(lake))
    assert counts == {"sharded": 3000}
    assert not list(root.rglob(".*.tmp"))


def test_root_inside_source_and_concurrent_ingest_are_refused(tmp_path):
    lake = tmp_path / "lake"
    make_plain_lake(lake, 3)
    with pytest.raises(IngestError, match="must not be inside the source"):
        run_ingest(str(lake), lake / "out")
    from lakelabel.pipeline.ingest import RootLock

    with RootLock(tmp_path / "out"), pytest.raises(IngestError, match="another ingest holds the lock"):
        run_ingest(str(lake), tmp_path / "out")


def test_manifest_is_plain_parquet_with_contract_metadata(tmp_path):
    lake, root = tmp_path / "lake", tmp_path / "out"
    make_plain_lake(lake, 5)
    run_ingest(str(lake), root, IngestConfig(workers=0))
    part = next((root / "manifest").glob("part-*.parquet"))
    schema = pq.read_schema(part)
    assert schema.metadata[b"lakelabel.contract"] == b"manifest"
    assert {
        "source_uri",
        "status",
        "reason",
        "key",
        "shard",
        "width",
        "height",
        "bytes",
        "sha256",
        "run_id",
    } <= set(schema.names)
    run_files = list((root / "manifest" / "_runs").glob("*.json"))
    assert len(run_files) == 1 and json.loads(run_files[0].read_text())["sharded"] == 5


def test_workers_fork_only_in_a_single_threaded_process_without_faiss_or_torch():
    import subprocess
    import sys
    import threading

    from lakelabel.pipeline.ingest import fork_is_safe

    code = (
        "import sys; from lakelabel.pipeline.ingest import fork_is_safe; "
        "print(fork_is_safe(), 'torch' in sys.modules)"
    )
    fresh = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert fresh.stdout.split() == ["True", "False"]  # what `lakelabel ingest` sees
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        assert not fork_is_safe()
    finally:
        stop.set()
        thread.join()


def test_row_columns_are_the_manifest_schema_and_the_cli_path_loads_no_arrow():
    """ingest names the manifest columns itself so that pyarrow loads after the workers start."""
    from lakelabel.data_specs.manifest import MANIFEST_SCHEMA, STATUSES
    from lakelabel.pipeline.ingest.rows import _ROW_COLUMNS, STATUS_CODES

    assert [*_ROW_COLUMNS, "run_id", "ingested_at"] == MANIFEST_SCHEMA.names
    assert STATUS_CODES == STATUSES
    code = (
        "import sys, lakelabel.cli, lakelabel.pipeline.ingest; "
        "print(sorted({'pyarrow', 'numpy', 'PIL', 'fsspec'} & set(sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_spooled_samples_are_copied_without_copy_file_range(tmp_path, monkeypatch):
    """Where the OS lacks copy_file_range (macOS) or refuses it, the writer reads and writes."""
    import lakelabel.pipeline.ingest.writer as ingest

    def refuse(*args, **kwargs):
        raise OSError("not here")

    monkeypatch.setattr(ingest, "_copy_file_range", refuse)
    lake, root = tmp_path / "lake", tmp_path / "out"
    make_plain_lake(lake, 12)
    summary = run_ingest(str(lake), root, IngestConfig(workers=1, shard_max_count=5, batch_size=4))
    assert (summary["sharded"], summary["shards_written"]) == (12, 3)
    assert assert_accounted(root, lake_uris(lake)) == {"sharded": 12}
    assert not list(root.rglob(".*.tmp"))


def _uneven(batch: list[int]) -> list[int]:
    time.sleep(0.02 if batch[0] % 3 == 0 else 0.0)  # some batches finish after later ones
    return [x * 2 for x in batch]


def _fails_on_seven(batch: list[int]) -> int:
    if 7 in batch:
        raise ValueError("seven is not allowed")
    return sum(batch)


def _dies_on_seven(batch: list[int]) -> int:
    if 7 in batch:
        os._exit(3)
    return sum(batch)


class _Unpicklable(Exception):
    def __reduce__(self):
        raise TypeError("not picklable")


def _unpicklable_error(batch: list[int]) -> int:
    raise _Unpicklable("odd")


def _worker_pids() -> set[int]:
    return {child.pid for child in multiprocessing.active_children()}


def test_map_ordered_keeps_order_and_bounds_the_window():
    batches = [[i, i + 100] for i in range(40)]
    pulled = []

    def source():
        for i, batch in enumerate(batches):
            pulled.append(i)
            yield batch

    results = []
    for i, result in enumerate(map_ordered(_uneven, source(), 2)):
        results.append(result)
        assert len(pulled) <= i + 1 + 4 * 2  # at most 4 batches per worker ahead of the consumer
    assert results == [[2 * i, 2 * i + 200] for i in range(40)]
    assert not _worker_pids()


def test_map_ordered_reraises_a_worker_exception_and_stops_the_workers():
    with pytest.raises(ValueError, match="seven is not allowed"):
        list(map_ordered(_fails_on_seven, [[i] for i in range(20)], 2))
    assert not _worker_pids()
    with pytest.raises(IngestError, match="in an ingest worker: _Unpicklable"):
        list(map_ordered(_unpicklable_error, [[1]], 1))


def test_map_ordered_reports_a_worker_that_dies():
    with pytest.raises(IngestError, match=r"ingest worker \d+ died \(exit code 3\)"):
        list(map_ordered(_dies_on_seven, [[i] for i in range(20)], 2))
    assert not _worker_pids()


def test_map_ordered_spawns_workers_when_fork_is_unsafe(monkeypatch):
    monkeypatch.setattr(ingest_pool, "fork_is_safe", lambda: False)
    assert list(map_ordered(len, [[1, 2], [3], [], [4, 5, 6]], 2)) == [2, 1, 0, 3]


def test_workers_reuse_spool_files_in_a_ring_without_mixing_batches(tmp_path, monkeypatch):
    """A window of 8 batches of 3 files: each worker's ring of 9 spool files wraps many times;
    every kept sample must hold its own file's bytes, and no spool file outlives the run."""
    import hashlib

    monkeypatch.setattr(ingest_session, "IN_FLIGHT_FILES", 8)
    lake, root = tmp_path / "lake", tmp_path / "out"
    paths = make_plain_lake(lake, 150, size=(24, 16))
    summary = run_ingest(str(lake), root, IngestConfig(workers=2, batch_size=3, shard_max_count=40))
    assert (summary["sharded"], summary["rejected"]) == (150, 0)
    assert assert_accounted(root, lake_uris(lake)) == {"sharded": 150}
    by_uri = {f"file://{p}": p.read_bytes() for p in paths}
    seen = 0
    for shard in sorted((root / "shards").glob("shard-*.tar")):
        with tarfile.open(shard) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        for name, data in members.items():
            if name.endswith(".jpg"):
                meta = json.loads(members[name[:-4] + ".json"])
                assert data == by_uri[meta["source_uri"]]
                assert hashlib.sha256(data).hexdigest()[:32] == name[:-4]
                seen += 1
    assert seen == 150
    assert not list((root / "shards").glob(".spool-*"))


def _slow_after_first(batch: list[int]) -> int:
    if batch[0]:
        time.sleep(30)  # a batch in hand the caller will never ask for
    return batch[0]


def test_map_ordered_stops_its_workers_at_once_when_the_caller_stops():
    """Workers still inside a 30 s batch are gone as soon as close() returns (terminated, not joined);
    no wall-time bound, which a loaded machine would break."""
    results = map_ordered(_slow_after_first, [[i] for i in range(8)], 2)
    assert next(results) == 0
    results.close()  # the caller gave up (as on an error in the writer)
    assert not _worker_pids()


def test_an_invalid_config_fails_before_anything_is_written(tmp_path):
    lake, root = tmp_path / "lake", tmp_path / "deep" / "out"
    make_plain_lake(lake, 50)
    done = subprocess.run(
        _ingest_command(lake, root, "--shard-max-count", "0"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "shard_max_count" in done.stderr
    assert not (tmp_path / "deep").exists()


@pytest.mark.parametrize(("workers", "compiled_core"), [(0, True), (2, True), (0, False)])
def test_names_that_are_not_utf8_are_sharded_and_found_again(tmp_path, workers, compiled_core):
    """File names of raw bytes (old cameras, Windows shares) are stored losslessly, percent-encoded;
    every good image is sharded, and a re-run finds every file done."""
    from urllib.parse import unquote_to_bytes

    lake = tmp_path / "lake"
    paths = make_plain_lake(lake, 250)
    odd = [b"caf\xe9 %41.jpg", b"\xff\xfe.jpg", "ünïcode ok.jpg".encode()]
    folder = os.fsencode(paths[0].parent)
    for path, name in zip(paths[:3], odd, strict=True):
        os.rename(os.fsencode(path), folder + b"/" + name)
    bad_folder = os.fsencode(lake) + b"/dir-\xe9"  # a folder name that is not UTF-8 either
    os.mkdir(bad_folder)
    os.rename(os.fsencode(paths[3]), bad_folder + b"/x.jpg")
    config = IngestConfig(workers=workers, shard_max_count=100, compiled_core=compiled_core)
    summary = run_ingest(str(lake), tmp_path / "root", config)
    assert summary["sharded"] == 250 and summary["rejected"] == 0
    uris = read_manifest(tmp_path / "root").column("source_uri").to_pylist()
    raw = {unquote_to_bytes(u) for u in uris if "%" in u}  # (only the names that are not UTF-8 hold a %)
    prefix = b"file://" + folder + b"/"
    assert {prefix + odd[0], prefix + odd[1], b"file://" + bad_folder + b"/x.jpg"} <= raw
    assert f"file://{paths[0].parent}/ünïcode ok.jpg" in uris  # UTF-8 names stay as they are
    assert f"file://{paths[0].parent}/caf%E9 %2541.jpg" in uris
    again = run_ingest(str(lake), tmp_path / "root", config)
    assert again["already_ingested"] == 250 and again["sharded"] == 0


def test_a_loop_of_file_symlinks_is_a_symlink_loop(tmp_path):
    lake = tmp_path / "lake"
    make_plain_lake(lake, 1)
    os.symlink(lake / "b", lake / "a")
    os.symlink(lake / "a", lake / "b")
    os.symlink(lake / "nothing", lake / "broken")
    run_ingest(str(lake), tmp_path / "root", IngestConfig(workers=0))
    rows = read_manifest(tmp_path / "root").to_pandas().set_index("source_uri")
    assert rows.loc[f"file://{lake}/a", "reason"] == rows.loc[f"file://{lake}/b", "reason"] == "symlink_loop"
    assert rows.loc[f"file://{lake}/broken", "reason"] == "broken_symlink"


def test_an_archive_member_name_that_is_not_utf8_is_sharded(tmp_path):
    paths = make_plain_lake(tmp_path / "lake", 3)
    archive = tmp_path / "lake.tar"
    with tarfile.open(archive, "w", format=tarfile.GNU_FORMAT) as tar:
        for i, path in enumerate(paths):
            tar.add(path, arcname=os.fsdecode(b"old-\xe9-%d.jpg" % i))  # raw bytes in the header
    summary = run_ingest(str(archive), tmp_path / "root", IngestConfig(workers=0))
    assert summary["sharded"] == 3
    uris = sorted(read_manifest(tmp_path / "root").column("source_uri").to_pylist())
    assert uris[0] == f"tar://old-%E9-0.jpg::file://{archive}"
