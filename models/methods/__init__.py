"""Registry of SSL methods: one file per method, one entry here (as solo-learn's ``METHODS``)."""

from __future__ import annotations

from lakelabel.models.methods.barlow_twins import BarlowTwins
from lakelabel.models.methods.base import SSLMethod
from lakelabel.models.methods.byol import BYOL
from lakelabel.models.methods.simclr import SimCLR
from lakelabel.models.methods.simsiam import SimSiam

METHODS: dict[str, type[SSLMethod]] = {
    "simsiam": SimSiam,
    "byol": BYOL,
    "barlow_twins": BarlowTwins,
    "simclr": SimCLR,
}


def build_method(name: str, backbone, feat_dim: int, **kwargs) -> SSLMethod:
    """Instantiate the method ``name`` around ``backbone``; unknown names list the valid ones."""
    if name not in METHODS:
        raise ValueError(f"unknown SSL method {name!r}; valid: {', '.join(METHODS)}")
    return METHODS[name](backbone, feat_dim, **kwargs)
