"""Registry of clustering methods: one file per method, one entry here, one column entry in
``data_specs/clusters.py`` and one contract test (``tests/pipeline/test_clustering_methods.py``)."""

from __future__ import annotations

from lakelabel.pipeline.clustering.base import ClusteringMethod, ClusterInputs, MethodOutput, MethodSettings
from lakelabel.pipeline.clustering.kmeans import KMeans
from lakelabel.pipeline.clustering.scan import Scan
from lakelabel.pipeline.clustering.sela import SeLa
from lakelabel.pipeline.clustering.sinkhorn import Sinkhorn

METHODS: dict[str, type[ClusteringMethod]] = {
    "kmeans": KMeans,
    "sinkhorn": Sinkhorn,
    "sela": SeLa,
    "scan": Scan,
}

__all__ = ["METHODS", "ClusterInputs", "ClusteringMethod", "MethodOutput", "MethodSettings"]
