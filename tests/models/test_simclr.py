from __future__ import annotations

from tests.models.method_contract import MethodContract


class TestSimclr(MethodContract):
    NAME = "simclr"
