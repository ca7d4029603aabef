"""Listing a local lake: the chunked listing ingest uses and the file-by-file one agree."""

from __future__ import annotations

import os
from pathlib import Path

from lakelabel.pipeline.lake import LakeFile, file_uri, iter_lake, iter_lake_chunks, resolve_source
from tests.lakes import make_bad_lake


def test_chunks_hold_every_file_once_and_match_iter_lake(tmp_path):
    lake = tmp_path / "lake"
    expected = make_bad_lake(lake, tmp_path / "outside")
    (lake / "deep" / "a" / "b").mkdir(parents=True)
    (lake / "deep" / "a" / "b" / "z.jpg").write_bytes(b"x")
    os.symlink(lake / "deep", lake / "deep_link")  # a symlink to a folder already listed
    spec = resolve_source(str(lake))
    files = list(iter_lake(spec))
    from_chunks: list[LakeFile] = []
    for plain, others in iter_lake_chunks(spec):
        assert plain == sorted(plain) and [f.uri for f in others] == sorted(f.uri for f in others)
        assert len({os.path.dirname(p) for p in plain}) <= 1  # a local chunk is one folder
        from_chunks += [LakeFile(file_uri(p), p) for p in plain] + others
    assert sorted(from_chunks) == sorted(files)
    assert len({f.uri for f in files}) == len(files)  # each file once
    rel = {Path(f.uri[len("file://") :]).relative_to(lake).as_posix(): f for f in files}
    assert set(expected) <= set(rel)
    skipped = {k for k, (status, _) in expected.items() if status == "skipped"}
    assert all(rel[k].skip_reason is not None for k in skipped)
    assert "deep/a/b/z.jpg" in rel  # a folder reached twice (here by a symlink) is listed once
    assert rel["deep_link"].skip_reason == "symlink_loop" and "deep_link/a/b/z.jpg" not in rel
    # plain paths are the regular, visible files reached without a symlink
    plain_all = {p for plain, _ in iter_lake_chunks(spec) for p in plain}
    assert all(not Path(p).is_symlink() and not Path(p).name.startswith(".") for p in plain_all)
