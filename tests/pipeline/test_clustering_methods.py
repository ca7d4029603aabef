"""Contract of every registered clustering method (pipeline/clustering): a new method passes these
by adding its file (settings, declared columns, run) and its registry entry."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from pydantic import ValidationError

from lakelabel.data_specs.clusters import COLUMN_TYPES
from lakelabel.pipeline.clustering import METHODS
from lakelabel.pipeline.clustering.base import ClusterInputs
from lakelabel.pipeline.config import ClusterConfig
from lakelabel.pipeline.metrics import hungarian_accuracy

K, PER, DIM = 4, 60, 16
SMALL = {
    "sela": {"heads": 2, "epochs": 10, "label_updates": 3, "batch_size": 64},
    "scan": {"neighbours": 5, "epochs": 10, "heads": 2, "batch_size": 64},
}


def blobs(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """K well-separated unit-norm clusters in DIM dimensions (the contract's sanity input)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(K, DIM)) * 3
    truth = np.repeat(np.arange(K), PER)
    x = centres[truth] + rng.normal(size=(K * PER, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), truth


def run(name: str, seed: int = 0):
    config = ClusterConfig(k=K, methods=[name], seed=seed, **SMALL)
    method = METHODS[name](getattr(config, name))
    x, truth = blobs()
    return method, method.run(ClusterInputs(x, K, config)).assign(x, 0), truth


@pytest.mark.parametrize("name", list(METHODS))
def test_method_contract(name: str) -> None:
    method, out, truth = run(name)
    # its columns are exactly data_specs', with the contract's types and one row per image
    fields = [pa.field(column, COLUMN_TYPES[kind]) for column, kind in method.columns()]
    assert list(out) == [f.name for f in fields] and fields
    for f in fields:
        column = pa.array(out[f.name])
        assert len(column) == K * PER and column.type == f.type and column.null_count == 0
        if f.type == pa.int32():  # a label column: in [0, K) and finds the blobs
            labels = out[f.name]
            assert labels.min() >= 0 and labels.max() < K
            acc = hungarian_accuracy(labels, truth)[0]
            assert acc >= 0.95, (f.name, acc)
    # deterministic for a seed
    _, again, _ = run(name)
    for column, values in out.items():
        np.testing.assert_array_equal(values, again[column])


@pytest.mark.parametrize("name", list(METHODS))
def test_method_owns_a_validated_config_block(name: str) -> None:
    assert isinstance(getattr(ClusterConfig(), name), METHODS[name].Settings)
    with pytest.raises(ValidationError, match="not_a_setting"):
        ClusterConfig(**{name: {"not_a_setting": 1}})
    with pytest.raises(TypeError, match=name):
        METHODS[name](object())


def test_unknown_or_repeated_methods_are_refused() -> None:
    with pytest.raises(ValidationError, match="unknown clustering method 'magic'"):
        ClusterConfig(methods=["kmeans", "magic"])
    with pytest.raises(ValidationError, match="each once"):
        ClusterConfig(methods=["kmeans", "kmeans"])


def test_keys_outside_their_block_are_refused() -> None:
    with pytest.raises(ValidationError, match="heads"):  # the flat layout of 0.1 is gone: cluster.sela.heads
        ClusterConfig(heads=2)


def test_scan_encoder_update_needs_the_shards_and_a_known_precision() -> None:
    x, _ = blobs()
    config = ClusterConfig(k=K, methods=["scan"], scan=SMALL["scan"] | {"encoder_epochs": 1.0})
    with pytest.raises(ValueError, match="needs the lake's shards"):
        METHODS["scan"](config.scan).run(ClusterInputs(x, K, config))
    with pytest.raises(ValueError, match="fp8"):  # the config refuses it, before any training
        config.scan.precision = "fp8"
