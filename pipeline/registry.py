"""What registry entries share (clustering methods, selection rules): a settings block of their own,
validated, and a constructor that refuses another entry's settings."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field


class BlockSettings(BaseModel):
    """An entry's own config block (``cluster.<method>:``, ``select.<rule>:``); misspelt keys are errors."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Configured:
    """A registry entry: ``name`` (its registry key and config block) and its ``Settings``."""

    name: ClassVar[str]
    Settings: ClassVar[type[BlockSettings]]

    def __init__(self, settings: BlockSettings):
        if not isinstance(settings, self.Settings):
            raise TypeError(
                f"{self.name}: settings must be {self.Settings.__name__}, not {type(settings).__name__}"
            )
        self.settings = settings


def block_fields(registry: dict[str, Any], what: str) -> dict[str, Any]:
    """One config block per registry entry, named as the entry, of its ``Settings`` (for
    ``pydantic.create_model``): a new entry brings its block, flags and UI form with it."""
    return {
        name: (
            entry.Settings,
            Field(default_factory=entry.Settings, description=f"settings of {what} {name}"),
        )
        for name, entry in registry.items()
    }
