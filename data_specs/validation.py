"""Shared helpers for checking Arrow tables against a contract schema."""

from __future__ import annotations

import pyarrow as pa

from lakelabel.data_specs.errors import ContractError

__all__ = ["ContractError", "check_table"]


def check_table(table: pa.Table, schema: pa.Schema, contract: str) -> pa.Table:
    """Return ``table`` with exactly ``schema``'s columns, types and metadata.

    Extra columns, missing columns, uncastable types and nulls in non-nullable
    columns raise ``ContractError`` naming the column.
    """
    names = set(table.column_names)
    missing = [f.name for f in schema if f.name not in names]
    if missing:
        raise ContractError(f"{contract}: missing column(s) {missing}")
    extra = sorted(names - set(schema.names))
    if extra:
        raise ContractError(f"{contract}: unexpected column(s) {extra}; contract has {schema.names}")
    columns = []
    for field in schema:
        col = table.column(field.name)
        if not col.type.equals(field.type):
            try:
                col = col.cast(field.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise ContractError(
                    f"{contract}: column {field.name!r} has type {col.type}, expected {field.type}"
                ) from exc
        if not field.nullable and col.null_count:
            raise ContractError(f"{contract}: column {field.name!r} has {col.null_count} null(s)")
        columns.append(col)
    return pa.Table.from_arrays(columns, schema=schema)
