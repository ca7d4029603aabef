"""The on-disk index of a ROOT: a cache of the manifest that crash recovery and re-runs rely on."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import pytest

from pipeline.config import IngestConfig
from pipeline.ingest import ShardCommitter, read_manifest, run_ingest
from pipeline.lake_index import INDEX_FILE, LakeIndex
from tests.lakes import make_plain_lake
from tests.pipeline.test_ingest import assert_accounted, lake_uris

CONFIG = IngestConfig(workers=0, shard_max_count=7, batch_size=16)


#: index rows per index transaction: the default rule, about 2 units, every unit at the end
INDEX_BATCHES = [None, 25, 10**9]


@pytest.fixture(params=INDEX_BATCHES, ids=["index-batch-default", "index-batch-25-rows", "index-at-close"])
def index_batch(request, monkeypatch):
    if request.param is not None:
        monkeypatch.setattr(ShardCommitter, "_index_batch_rows", lambda self: request.param)
    return request.param


def _index_files(root: Path) -> list[Path]:
    return sorted((root / "manifest").glob(INDEX_FILE + "*"))


def test_index_matches_the_manifest(tmp_path, index_batch):
    lake, root = tmp_path / "lake", tmp_path / "out"
    make_plain_lake(lake, 40)
    run_ingest(str(lake), root, CONFIG)
    index = LakeIndex(root / "manifest" / INDEX_FILE)
    try:
        table = read_manifest(root)
        assert index.counts() == {"parts": 6, "kept": 40, "uris": 40}
        uris = table.column("source_uri").to_pylist()
        assert index.resolved(uris + ["file:///not/in/the/lake.jpg"]) == [True] * 40 + [False]
        keys = table.column("key").to_pylist()
        shards = [int(s[6:-4]) for s in table.column("shard").to_pylist()]
        assert index.shards_of(keys + ["0" * 32]) == dict(zip(keys, shards, strict=True))
    finally:
        index.close()


def test_duplicates_within_a_batch_that_commits_midway(tmp_path, index_batch):
    """Each image twice, the copy a few files later: units close inside batches (7 per shard, 16 per batch)."""
    lake, root = tmp_path / "lake", tmp_path / "out"
    paths = make_plain_lake(lake, 30)
    for i, path in enumerate(paths):
        (lake / f"part-{i // 100:03d}" / f"img-{i:06d}-copy.jpg").write_bytes(path.read_bytes())
    summary = run_ingest(str(lake), root, CONFIG)
    assert (summary["sharded"], summary["duplicate"]) == (30, 30)
    assert assert_accounted(root, lake_uris(lake)) == {"sharded": 30, "duplicate": 30}


def test_index_lagging_behind_the_manifest_is_caught_up(tmp_path):
    """A crash after a part landed but before its index commit: the next run indexes that part."""
    lake, root = tmp_path / "lake", tmp_path / "out"
    first = make_plain_lake(lake, 20)
    run_ingest(str(lake), root, CONFIG)
    saved = tmp_path / "saved-index"
    saved.mkdir()
    for path in _index_files(root):
        shutil.copy2(path, saved / path.name)
    make_plain_lake(lake, 20, start=20)
    (lake / "part-000" / "again.jpg").write_bytes(first[0].read_bytes())
    second = run_ingest(str(lake), root, CONFIG)
    assert (second["found"], second["duplicate"]) == (21, 1)
    for path in _index_files(root):
        path.unlink()
    for path in saved.iterdir():
        shutil.copy2(path, root / "manifest" / path.name)  # the index as it was before the second run
    third = run_ingest(str(lake), root, CONFIG)
    assert (third["found"], third["already_ingested"]) == (0, 41)
    runs = sorted((root / "manifest" / "_runs").glob("*.json"))
    assert len(runs) == 3
    assert assert_accounted(root, lake_uris(lake)) == {"sharded": 40, "duplicate": 1}


def test_lost_or_corrupt_index_is_rebuilt_from_the_manifest(tmp_path):
    lake, root = tmp_path / "lake", tmp_path / "out"
    make_plain_lake(lake, 25)
    run_ingest(str(lake), root, CONFIG)
    for path in _index_files(root):
        path.unlink()
    again = run_ingest(str(lake), root, CONFIG)
    assert (again["found"], again["already_ingested"]) == (0, 25)
    for path in _index_files(root):
        path.unlink()
    (root / "manifest" / INDEX_FILE).write_bytes(b"not a database" * 100)
    once_more = run_ingest(str(lake), root, CONFIG)
    assert (once_more["found"], once_more["already_ingested"]) == (0, 25)
    statuses = Counter(read_manifest(root).column("status").to_pylist())
    assert statuses == {"sharded": 25}


def test_index_batch_grows_with_the_index_and_is_capped(tmp_path):
    """Small index: at least INDEX_BATCH_MIN_ROWS per transaction; large: an eighth of the index, capped."""
    index = LakeIndex(tmp_path / INDEX_FILE)
    try:
        committer = ShardCommitter.__new__(ShardCommitter)
        committer.lake_index = index
        assert committer._index_batch_rows() == ShardCommitter.INDEX_BATCH_MIN_ROWS == 50_000
        index.add_units([LakeIndex.prepare_unit(0, ["ab" * 16], ["file:///a.jpg"])])
        assert index.rows == 2
        index.rows = 600_000
        assert committer._index_batch_rows() == 75_000
        index.rows = 800_000
        assert committer._index_batch_rows() == 100_000
        index.rows = 10**10
        assert committer._index_batch_rows() == ShardCommitter.INDEX_BATCH_MAX_ROWS
    finally:
        index.close()
