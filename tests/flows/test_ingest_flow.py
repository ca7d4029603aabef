"""ingest_flow on a real (ephemeral, temp-DB) Prefect server, with local and Dask task runners."""

from __future__ import annotations

from pathlib import Path

import pytest
from prefect.testing.utilities import prefect_test_harness

from lakelabel.data_specs.manifest import read_manifest
from lakelabel.flows.ingest import ingest_flow
from lakelabel.pipeline.config import IngestConfig, RunnerConfig
from tests.lakes import make_bad_lake
from tests.pipeline.test_ingest import assert_accounted, lake_uris


@pytest.fixture(scope="module")
def prefect_server():
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["threads", "processes"])
def test_ingest_flow_local_runners(prefect_server, tmp_path: Path, kind: str):
    lake = tmp_path / "lake"
    expected = make_bad_lake(lake, tmp_path / "outside")
    root = tmp_path / "out"
    config = IngestConfig(flow_partition_size=4, shard_max_count=6, workers=2)
    summary = ingest_flow(str(lake), str(root), config, RunnerConfig(kind=kind, max_workers=2))
    assert summary["found"] == len(expected)
    assert_accounted(root, lake_uris(lake))
    again = ingest_flow(str(lake), str(root), config, RunnerConfig(kind=kind, max_workers=2))
    assert (again["new"], again["already_ingested"], again["found"]) == (0, len(expected), len(expected))


@pytest.mark.slow
def test_ingest_flow_on_local_dask_cluster(prefect_server, tmp_path: Path):
    from distributed import LocalCluster

    lake = tmp_path / "lake"
    expected = make_bad_lake(lake, tmp_path / "outside")
    root = tmp_path / "out"
    with LocalCluster(
        n_workers=2, threads_per_worker=1, host="127.0.0.1", dashboard_address=None, processes=True
    ) as cluster:
        summary = ingest_flow(
            str(lake),
            str(root),
            IngestConfig(flow_partition_size=5),
            RunnerConfig(dask_address=cluster.scheduler_address),
        )
    assert summary["found"] == len(expected)
    assert_accounted(root, lake_uris(lake))
    assert (read_manifest(root).column("status").to_pylist()).count("rejected") == 5


def test_unknown_runner_kind_lists_valid_choices():
    from lakelabel.pipeline.config import ConfigError

    with pytest.raises(ConfigError, match="valid: threads, processes, dask"):
        RunnerConfig(kind="spark").resolved_kind()
