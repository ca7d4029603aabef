"""The bad lake served by an S3-compatible server (moto) on 127.0.0.1, ingested through s3://."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import boto3
import pytest

from lakelabel.data_specs.manifest import read_manifest
from lakelabel.pipeline.config import IngestConfig
from lakelabel.pipeline.ingest import run_ingest
from tests.lakes import make_bad_lake
from tests.pipeline.test_ingest import shard_keys


@pytest.mark.slow
def test_ingest_from_s3_url(tmp_path: Path, s3_endpoint: str):
    lake = tmp_path / "lake"
    expected = make_bad_lake(lake, tmp_path / "outside")
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="lake")
    uploaded = []
    for path in sorted(lake.rglob("*")):
        if path.is_file() and not path.is_symlink():
            key = "cams/" + path.relative_to(lake).as_posix()
            s3.put_object(Bucket="lake", Key=key, Body=path.read_bytes())
            uploaded.append(f"s3://lake/{key}")
    options = {"endpoint_url": s3_endpoint, "key": "testing", "secret": "testing"}
    root = tmp_path / "out"
    summary = run_ingest("s3://lake/cams", root, IngestConfig(workers=2, storage_options=options))
    table = read_manifest(root).to_pandas()
    assert sorted(table.source_uri) == sorted(uploaded)
    assert summary["found"] == len(uploaded) == table.source_uri.nunique()
    reasons = Counter(table.reason.dropna())
    assert reasons == Counter(
        {"truncated": 1, "empty": 1, "not_an_image": 2, "decompression_bomb": 1, "hidden": 1}
    )
    n_symlinks = sum(1 for s, _ in expected.values() if s == "skipped") - 1  # S3 has no symlinks
    assert n_symlinks == 1
    keys = shard_keys(root)
    assert len(keys) == len(set(keys)) == (table.status == "sharded").sum()
    # incremental over S3: a second run reads nothing new
    again = run_ingest("s3://lake/cams", root, IngestConfig(workers=0, storage_options=options))
    assert (again["new"], again["already_ingested"], again["found"]) == (0, len(uploaded), len(uploaded))
