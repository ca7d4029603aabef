"""What registry entries share (clustering methods, selection rules): a settings block of their own,
validated, and a constructor that refuses another entry's settings."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict


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
