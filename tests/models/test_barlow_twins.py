from __future__ import annotations

from tests.models.method_contract import MethodContract


class TestBarlowTwins(MethodContract):
    NAME = "barlow_twins"
