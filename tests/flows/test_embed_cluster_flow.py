"""embed_flow, cluster_flow and select_flow on a real (temp-DB) Prefect server, over CIFAR-10 images,
with threads and on a Dask LocalCluster (the same labels as the in-process path)."""

from __future__ import annotations

import pytest
from prefect.testing.utilities import prefect_test_harness

from lakelabel.data_specs.clusters import read_assignments
from lakelabel.data_specs.embeddings import read_embeddings
from lakelabel.data_specs.selections import read_selection
from lakelabel.flows.cluster import cluster_flow
from lakelabel.flows.embed import embed_flow
from lakelabel.flows.select import select_flow
from lakelabel.pipeline.cluster import cluster
from lakelabel.pipeline.config import ClusterConfig, EmbedConfig, IngestConfig, RunnerConfig, SelectConfig
from lakelabel.pipeline.ingest import run_ingest
from lakelabel.pipeline.select import select
from tests.cifar import cifar_subset


@pytest.mark.slow
def test_embed_and_cluster_flows(tmp_path):
    lake, truth = cifar_subset(tmp_path, n_train=0, n_test=250)
    root = tmp_path / "root"
    run_ingest(str(lake), root, IngestConfig(workers=0, shard_max_count=50))
    config = EmbedConfig(encoder="random", stem="imagenet", workers=0, shards_per_task=2, parallel_tasks=2)
    with prefect_test_harness(server_startup_timeout=120):
        summary = embed_flow(str(root), config, RunnerConfig(kind="threads", max_workers=2))
        assert summary["tasks"] == 3 and summary["shards_embedded"] == 5 and summary["images_embedded"] == 250
        again = embed_flow(str(root), config, RunnerConfig(kind="threads", max_workers=2))
        assert again["shards_embedded"] == 0 and again["shards_skipped"] == 5
        assert read_embeddings(summary["embeddings"]).n == 250
        config = ClusterConfig(k=5, sela={"heads": 2, "epochs": 2}, parts_per_task=2)
        clusters = cluster_flow(str(root), config, runner=RunnerConfig(kind="threads", max_workers=2))
        assert clusters["skipped"] is False and clusters["images"] == 250
        assert cluster_flow(str(root), config)["skipped"] is True
        # on a Dask LocalCluster (worker processes): the same labels as this process's cluster()
        from distributed import LocalCluster

        with LocalCluster(
            n_workers=2, threads_per_worker=1, host="127.0.0.1", dashboard_address=None, processes=True
        ) as dask:
            on_dask = cluster_flow(
                str(root),
                config.model_copy(update={"run_name": "dask", "methods": ["kmeans", "sinkhorn", "sela"]}),
                runner=RunnerConfig(dask_address=dask.scheduler_address),
            )
            # select on Dask too: rounds on a working sample of 120 of the 250 images, parts in pairs
            selecting = SelectConfig(
                rounds=1,
                epochs=1,
                min_steps=20,
                passes=3,
                hidden=16,
                review_budget=5,
                sample=120,
                parts_per_task=2,
            )
            selected = select_flow(
                str(root),
                selecting.model_copy(update={"run_name": "dask"}),
                runner=RunnerConfig(dask_address=dask.scheduler_address),
            )
    assert on_dask["skipped"] is False and on_dask["cluster_sizes"]["sinkhorn"] != []
    local = cluster(
        root, config.model_copy(update={"run_name": "local", "methods": ["kmeans", "sinkhorn", "sela"]})
    )
    assert local["state_sha256"] == on_dask["state_sha256"]
    assert read_assignments(root, "dask").equals(read_assignments(root, "local"))
    assert read_assignments(root).num_rows == 250
    # select on 2 threads, with a truth CSV (its evaluation columns too): parts side by side in one
    # process give the labels and metrics of one part at a time (dropout's global generator is locked)
    with_truth = selecting.model_copy(update={"truth": str(truth)})
    with prefect_test_harness(server_startup_timeout=120):
        threaded = select_flow(
            str(root),
            with_truth.model_copy(update={"run_name": "threads"}),
            runner=RunnerConfig(kind="threads", max_workers=2),
        )
    alone = select(root, with_truth.model_copy(update={"run_name": "alone"}))
    assert read_selection(root, "threads").equals(read_selection(root, "alone"))
    assert threaded["metrics"] == alone["metrics"] and alone["metrics"]["evaluated"] == 250
    local_selection = select(root, selecting.model_copy(update={"run_name": "local"}))
    assert selected["working_sample"] < 250 and selected["state_sha256"] == local_selection["state_sha256"]
    assert read_selection(root, "dask").equals(read_selection(root, "local"))
    assert selected["roles"] == local_selection["roles"] and sum(selected["roles"].values()) == 250
