from __future__ import annotations

from tests.models.helpers import loss_falls
from tests.models.method_contract import MethodContract


class TestSimCLR(MethodContract):
    NAME = "simclr"

    def test_wasserstein_variant_trains(self):
        first, last, spread = loss_falls(self.NAME, loss="wasserstein")
        assert last < first / 2 and spread > 0.5
