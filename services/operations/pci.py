"""PCI posture check: Settle keeps processor tokens only, never a card number. This scans text for
anything shaped like a primary account number — 13 to 19 digits, optionally grouped by spaces or
dashes — that passes the Luhn check, in every text-like column of every table and in every topic
record. A finding names where it was and shows the number masked (first six, last four).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import asyncpg

PAN = re.compile(r"(?<![0-9])(?:[0-9][ -]?){12,18}[0-9](?![0-9])")
TEXT_TYPES = ("text", "character varying", "jsonb", "json", "bytea", "character")


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def pans_in(text: str) -> list[str]:
    """Masked candidates in ``text`` that pass Luhn (13–19 digits once separators are dropped)."""
    found = []
    for match in PAN.finditer(text):
        digits = re.sub(r"[ -]", "", match.group())
        if 13 <= len(digits) <= 19 and len(set(digits)) > 1 and luhn_ok(digits):
            found.append(f"{digits[:6]}…{digits[-4:]}")
    return found


@dataclass(frozen=True)
class Finding:
    where: str
    masked: str


async def scan_database(conn: asyncpg.Connection, *, schemas: Iterable[str] | None = None) -> list[Finding]:
    """Every text-like column of every table outside PostgreSQL's own schemas."""
    columns = await conn.fetch(
        """select table_schema, table_name, column_name, data_type from information_schema.columns c
            join information_schema.tables t using (table_schema, table_name)
           where t.table_type = 'BASE TABLE'
             and table_schema not in ('pg_catalog', 'information_schema') and data_type = any($1)
             and ($2::text[] is null or table_schema = any($2))
           order by 1, 2, 3""",
        list(TEXT_TYPES),
        list(schemas) if schemas is not None else None,
    )
    findings: list[Finding] = []
    for col in columns:
        ident = f'"{col["table_schema"]}"."{col["table_name"]}"'
        expr = (
            f"convert_from(\"{col['column_name']}\", 'UTF8')"
            if col["data_type"] == "bytea"
            else (f'"{col["column_name"]}"::text')
        )
        try:
            rows = await conn.fetch(f"select {expr} as v from {ident} where {expr} ~ '[0-9]{{4}}'")
        except asyncpg.PostgresError:  # bytes that are not UTF-8: scan them as latin-1 below
            rows = await conn.fetch(f"select encode(\"{col['column_name']}\", 'escape') as v from {ident}")
        for row in rows:
            for masked in pans_in(row["v"] or ""):
                findings.append(Finding(f"{col['table_schema']}.{col['table_name']}.{col['column_name']}", masked))
    return findings


def scan_records(topic: str, values: Iterable[bytes | None]) -> list[Finding]:
    findings = []
    for n, value in enumerate(values):
        if value:
            for masked in pans_in(value.decode("utf-8", "replace")):
                findings.append(Finding(f"{topic}#{n}", masked))
    return findings
