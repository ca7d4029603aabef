"""The error every contract check raises (no Arrow import: shard names and keys need none)."""


class ContractError(ValueError):
    """A table or sample does not match its data contract."""
