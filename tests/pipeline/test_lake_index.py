"""The on-disk index of a ROOT: a cache of the manifest that crash recovery and re-runs rely on."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import lakelabel.pipeline.lake_index as lake_index
from lakelabel.data_specs.manifest import read_manifest
from lakelabel.pipeline.config import IngestConfig
from lakelabel.pipeline.ingest import ShardCommitter, run_ingest
from lakelabel.pipeline.lake_index import INDEX_DIR, LakeIndex, find_sorted, merge_sorted_blocks
from tests.lakes import make_plain_lake
from tests.pipeline.test_ingest import assert_accounted, lake_uris

CONFIG = IngestConfig(workers=0, shard_max_count=7, batch_size=16)


#: index rows per index run: the default (all units at the end, here), 25 (about 2 units), 10**9
INDEX_BATCHES = [None, 25, 10**9]


@pytest.fixture(params=INDEX_BATCHES, ids=["index-batch-default", "index-batch-25-rows", "index-at-close"])
def index_batch(request, monkeypatch):
    if request.param is not None:
        monkeypatch.setattr(ShardCommitter, "INDEX_BATCH_ROWS", request.param)
    return request.param


def _index_files(root: Path) -> list[Path]:
    return sorted((root / "manifest" / INDEX_DIR).glob("run-*.idx"))


def test_index_matches_the_manifest(tmp_path, index_batch):
    lake, root = tmp_path / "lake", tmp_path / "out"
    make_plain_lake(lake, 40)
    run_ingest(str(lake), root, CONFIG)
    index = LakeIndex(root / "manifest" / INDEX_DIR)
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
    """Each image twice, the copy a few files later: units close inside batches (7 per shard, 16 per
    batch)."""
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
    assert (second["new"], second["duplicate"]) == (21, 1)
    for path in _index_files(root):
        path.unlink()
    for path in saved.iterdir():
        shutil.copy2(path, root / "manifest" / INDEX_DIR / path.name)  # the index before the second run
    third = run_ingest(str(lake), root, CONFIG)
    assert (third["new"], third["already_ingested"], third["found"]) == (0, 41, 41)
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
    assert (again["new"], again["already_ingested"]) == (0, 25)
    runs = _index_files(root)
    assert runs
    runs[0].write_bytes(runs[0].read_bytes()[:-8])  # a damaged run (one word short)
    once_more = run_ingest(str(lake), root, CONFIG)
    assert (once_more["new"], once_more["already_ingested"]) == (0, 25)
    statuses = Counter(read_manifest(root).column("status").to_pylist())
    assert statuses == {"sharded": 25}


def _random_keys(rng: np.random.Generator, n: int) -> list[str]:
    return [rng.bytes(16).hex() for _ in range(n)]


def test_runs_merge_tier_by_tier_and_every_row_stays_findable(tmp_path, monkeypatch):
    monkeypatch.setattr(lake_index, "FANOUT", 3)
    monkeypatch.setattr(lake_index, "MERGE_BLOCK", 5)  # merges take several blocks per run
    rng = np.random.default_rng(0)
    index = LakeIndex(tmp_path / INDEX_DIR)
    kept: dict[str, int] = {}
    uris: list[str] = []
    for part in range(10):
        keys = _random_keys(rng, 7)
        part_uris = [f"file:///lake/{part}/{i}.jpg" for i in range(9)]
        index.add_units([index.prepare_unit(part, keys, part_uris)])
        kept.update(dict.fromkeys(keys, part))
        uris += part_uris
    # FANOUT 3: units 0-8 became 3 runs of tier 1, then one of tier 2; unit 9 is a run of tier 0
    assert sorted(run.tier for run in index._runs) == [0, 2]
    assert index.counts() == {"parts": 10, "kept": 70, "uris": 90}
    assert (
        sum(int(run.parts[:, 1:].sum()) for run in index._runs) == 160
    )  # per-part counts: 90 URIs + 70 keys
    index._load_filter()
    assert index.shards_of([*kept, "f" * 32]) == kept
    assert index.resolved([*uris, "file:///lake/new.jpg"]) == [True] * 90 + [False]
    for run in index._runs:
        key_hi, _, _, uri_hi, _ = run.columns()
        assert np.all(np.diff(key_hi.astype(np.float64)) >= 0) and np.all(
            np.diff(uri_hi.astype(np.float64)) >= 0
        )
    index.add_units([index.prepare_unit(10, _random_keys(rng, 7), [])])
    index.add_units([index.prepare_unit(11, _random_keys(rng, 7), [])])  # 3 runs of tier 0 → one of tier 1
    assert sorted(run.tier for run in index._runs) == [1, 2]
    reopened = LakeIndex(tmp_path / INDEX_DIR)
    assert reopened.sync(tmp_path, list(range(12))) == {"indexed_parts": 0, "rebuilt": 0}
    assert reopened.shards_of(list(kept)) == kept


def test_a_merge_cut_short_leaves_its_inputs_which_the_next_start_drops(tmp_path, monkeypatch):
    monkeypatch.setattr(lake_index, "FANOUT", 2)
    index = LakeIndex(tmp_path / INDEX_DIR)
    index.add_units([index.prepare_unit(0, ["ab" * 16], ["file:///a.jpg"])])
    (first,) = [run.path for run in index._runs]
    saved = first.read_bytes()
    index.add_units(
        [index.prepare_unit(1, ["cd" * 16], ["file:///b.jpg"])]
    )  # merges both into one run of tier 1
    assert [run.tier for run in index._runs] == [1] and not first.exists()
    first.write_bytes(saved)  # as if the process died before removing the merge's inputs
    reopened = LakeIndex(tmp_path / INDEX_DIR)
    assert len(reopened._runs) == 2
    assert reopened.sync(tmp_path, [0, 1]) == {"indexed_parts": 0, "rebuilt": 0}
    assert not first.exists() and [run.tier for run in reopened._runs] == [1]
    assert reopened.counts() == {"parts": 2, "kept": 2, "uris": 2}


def test_find_sorted_handles_shared_64_bit_prefixes():
    hi = np.array([1, 5, 5, 5, 9], dtype=np.uint64)
    lo = np.array([0, 30, 10, 20, 7], dtype=np.uint64)
    query_hi = np.array([5, 5, 5, 9, 9, 2, 1], dtype=np.uint64)
    query_lo = np.array([20, 10, 99, 7, 8, 0, 0], dtype=np.uint64)
    assert find_sorted(hi, lo, query_hi, query_lo).tolist() == [3, 2, -1, 4, -1, -1, 0]
    empty = np.array([], dtype=np.uint64)
    assert find_sorted(empty, empty, query_hi, query_lo).tolist() == [-1] * 7


def test_merge_sorted_blocks_equals_a_full_sort():
    rng = np.random.default_rng(1)
    runs = []
    for n in (0, 1, 17, 40, 3):
        hi = np.sort(rng.integers(0, 50, n).astype(np.uint64))  # many ties across runs
        runs.append([hi, rng.integers(0, 2**63, n).astype(np.uint64)])
    out: list[tuple[int, list[np.ndarray]]] = []
    merge_sorted_blocks(runs, lambda row, block: out.append((row, block)), block=4)
    rows = [row for row, _ in out]
    merged_hi = np.concatenate([block[0] for _, block in out])
    merged_lo = np.concatenate([block[1] for _, block in out])
    assert rows == [sum(len(block[0]) for _, block in out[:i]) for i in range(len(out))]
    assert np.all(np.diff(merged_hi.astype(np.int64)) >= 0)
    pairs = sorted(
        zip(
            np.concatenate([r[0] for r in runs]).tolist(),
            np.concatenate([r[1] for r in runs]).tolist(),
            strict=True,
        )
    )
    assert sorted(zip(merged_hi.tolist(), merged_lo.tolist(), strict=True)) == pairs
    assert max(len(block[0]) for _, block in out) <= 4 * len(runs) + 40  # bounded by the block (plus ties)


def test_duplicates_of_earlier_batches_and_units_are_found(tmp_path, index_batch):
    """Copies far behind their originals: the original sits in the open unit, in a committed unit
    the index does not hold yet, or in the index (the key filter sends each to an exact check)."""
    lake, root = tmp_path / "lake", tmp_path / "out"
    paths = make_plain_lake(lake, 60)
    late = lake / "zz-late"
    late.mkdir()
    for i in (0, 20, 45, 58, 59):
        (late / f"copy-{i:02d}.jpg").write_bytes(paths[i].read_bytes())
    summary = run_ingest(str(lake), root, CONFIG)
    assert (summary["sharded"], summary["duplicate"]) == (60, 5)
    table = read_manifest(root)
    rows = {
        uri: (status, key)
        for uri, status, key in zip(
            *(table.column(c).to_pylist() for c in ("source_uri", "status", "key")), strict=True
        )
    }
    for i in (0, 20, 45, 58, 59):
        status, key = rows[f"file://{late}/copy-{i:02d}.jpg"]
        assert status == "duplicate" and key == rows[f"file://{paths[i]}"][1]
    assert assert_accounted(root, lake_uris(lake)) == {"sharded": 60, "duplicate": 5}


def test_key_bytes_decode_the_key_digits_of_the_valid_rows():
    from lakelabel.pipeline.ingest.writer import _key_bytes

    hexes = bytes.fromhex("00" * 64) + b"0123456789abcdef" * 4 + b"fedcba9876543210" * 4
    assert _key_bytes(hexes, np.array([1, 2])) == bytes.fromhex(
        "0123456789abcdef" * 2 + "fedcba9876543210" * 2
    )
    assert _key_bytes(hexes, np.array([], dtype=np.intp)) == b""
