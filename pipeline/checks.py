"""Checks every layer uses, and the config type of a choice (a leaf module: it imports nothing of
lakelabel)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator

#: compute precisions (devices, fine-tuning, SCAN's encoder update) and encoder stems (encoders, configs)
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16")
STEMS: tuple[str, ...] = ("small", "imagenet")


class ConfigError(ValueError):
    """A configuration file or value is invalid."""


def check_choice(name: str, value: object, valid: Iterable) -> None:
    """Fail with one message naming ``value`` and listing ``valid`` unless ``value`` is one of them."""
    valid = list(valid)
    if value not in valid:
        raise ValueError(f"unknown {name} {value!r}; valid: {', '.join(map(str, valid))}")


def choice(name: str, values: Iterable[str]) -> Any:
    """A config field's type: one of ``values`` (a ``Literal``: schemas, the Prefect UI and the CLI
    list them), whose error names the bad value and the valid ones."""
    values = tuple(values)

    def check(value: object) -> object:
        check_choice(name, value, values)
        return value

    return Annotated[Literal[values], BeforeValidator(check)]
