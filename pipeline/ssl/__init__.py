"""Registry of SSL methods as the pipeline sees them: one file per method (its settings block, view
recipe and loss module in ``models/methods``), one entry here, one contract test
(``tests/pipeline/test_ssl_methods.py``). Loads no torch: the config is built from it."""

from __future__ import annotations

from lakelabel.pipeline.ssl.barlow_twins import BarlowTwins
from lakelabel.pipeline.ssl.base import SSLEntry, SSLSettings, ViewRecipe
from lakelabel.pipeline.ssl.byol import BYOL
from lakelabel.pipeline.ssl.simclr import SimCLR
from lakelabel.pipeline.ssl.simsiam import SimSiam

METHODS: dict[str, type[SSLEntry]] = {
    "simsiam": SimSiam,
    "byol": BYOL,
    "barlow_twins": BarlowTwins,
    "simclr": SimCLR,
}

__all__ = ["METHODS", "SSLEntry", "SSLSettings", "ViewRecipe"]
