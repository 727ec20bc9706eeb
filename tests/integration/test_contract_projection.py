"""The ``contracts.v1`` projection is one table shape, written three times.

Metering, rating and invoicing each keep ``<schema>.contracts`` and ``<schema>.contract_events_held``
(``domain/contracts/store.py`` reads and writes them with the schema as a parameter). Each service's
migration creates its own copy (``libs/db/migrations/0010_metering.sql``, ``0020_rating.sql``,
``0030_invoicing.sql``); migrations are checksummed and never edited, so the copies cannot be
generated from one source. This test is the check instead: in a migrated database the columns
(name, order, type, nullability, default) and the indexes of the three copies must be identical, so
a migration that changes one copy and not the others fails the suite.
"""

from __future__ import annotations

import pytest

from tests.conftest import Stack

pytestmark = pytest.mark.integration

SCHEMAS = ("metering", "rating", "invoicing")
TABLES = ("contracts", "contract_events_held")


async def _columns(stack: Stack, schema: str, table: str) -> list[tuple[object, ...]]:
    rows = await stack.pool.fetch(
        """select ordinal_position, column_name, data_type, is_nullable, column_default
             from information_schema.columns
            where table_schema = $1 and table_name = $2
            order by ordinal_position""",
        schema,
        table,
    )
    return [tuple(r) for r in rows]


async def _indexes(stack: Stack, schema: str, table: str) -> list[str]:
    """Index definitions with the schema name taken out (and the generated index name, which
    PostgreSQL derives from the table and column names, kept: it is the same in every schema)."""
    rows = await stack.pool.fetch(
        "select indexdef from pg_indexes where schemaname = $1 and tablename = $2 order by indexname",
        schema,
        table,
    )
    return sorted(r["indexdef"].replace(f" {schema}.", " <schema>.") for r in rows)


@pytest.mark.parametrize("table", TABLES)
async def test_the_three_projection_tables_have_the_same_columns_and_indexes(stack: Stack, table: str) -> None:
    columns = {schema: await _columns(stack, schema, table) for schema in SCHEMAS}
    indexes = {schema: await _indexes(stack, schema, table) for schema in SCHEMAS}
    assert all(columns.values()), f"{table} is missing from a schema: {columns}"
    first = SCHEMAS[0]
    for schema in SCHEMAS[1:]:
        assert columns[schema] == columns[first], f"{schema}.{table} columns differ from {first}.{table}"
        assert indexes[schema] == indexes[first], f"{schema}.{table} indexes differ from {first}.{table}"
    # The columns the code relies on (domain/contracts/store.py), so an identical drift fails too.
    names = {row[1] for row in columns[first]}
    wanted = (
        {"contract_id", "renter_id", "currency", "billing_mode", "partition", "terms"}
        if table == "contracts"
        else {"event_id", "contract_id", "type", "time", "data"}
    )
    assert wanted <= names, f"{table} lacks {sorted(wanted - names)}"
