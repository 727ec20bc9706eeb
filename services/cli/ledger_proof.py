"""``settle ledger hash``: the canonical hash of the journal (``libs.ledger.proof``), read-only.

Two ledgers hash the same when they hold the same entries — same ids, times, kinds, causes,
references, descriptions and postings — whatever order their rows were written in and whenever.
``settle ledger verify`` (``services.cli.kernel``) checks the entry chain.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from libs.errors import ConfigurationError
from libs.ledger import hash_ledger
from libs.times import format_utc, parse_utc
from services.cli.app import ledger_app
from services.cli.runtime import console, read_only, run_async


@ledger_app.command("hash")
@run_async
async def ledger_hash_cmd(
    through: Annotated[
        str | None,
        typer.Option(help="Only entries that occurred at or before this RFC 3339 UTC instant."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """SHA-256 over every journal entry in canonical form and order (README, "Ledger proof")."""
    try:
        until = parse_utc(through) if through is not None else None
    except ValueError as exc:
        raise ConfigurationError(f"--through: {exc}") from None
    async with read_only() as ctx, ctx.pool.acquire() as conn:
        result = await hash_ledger(conn, through=until)
    if as_json:
        print(
            json.dumps(
                {
                    "hash": result.hash,
                    "algorithm": "sha256",
                    "canonical_form": "settle.ledger.v1",
                    "entries": result.entries,
                    "postings": result.postings,
                    "through": format_utc(until) if until is not None else None,
                }
            )
        )
        return
    scope = f"through {format_utc(until)}" if until is not None else "all entries"
    console.print(f"{result.hash}  ({result.entries} entries, {result.postings} postings, {scope})")
