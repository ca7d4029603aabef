"""Checks every layer uses (a leaf module: it imports nothing of lakelabel)."""

from __future__ import annotations

from collections.abc import Iterable


class ConfigError(ValueError):
    """A configuration file or value is invalid."""


def check_choice(name: str, value: object, valid: Iterable) -> None:
    """Fail with one message naming ``value`` and listing ``valid`` unless ``value`` is one of them."""
    valid = list(valid)
    if value not in valid:
        raise ValueError(f"unknown {name} {value!r}; valid: {', '.join(map(str, valid))}")
