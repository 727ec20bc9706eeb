"""`settle gaps` and `settle outbox resend`: what an operator does when a broker lost records.

A consumer that finds records deleted before it read them stops that partition and records a gap
(``settle.consumer_gaps``); an internal topic's gap is usually refilled automatically from the
producer's outbox. The README's gap runbook says when to use which verb.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from libs import limits
from libs.messaging.gaps import resend_rows
from libs.messaging.positions import Gap, list_gaps, skip_gap
from schemas.topics import BY_NAME
from services.cli.app import gaps_app, outbox_app
from services.cli.runtime import console, database, read_only, run_async


def _gap_json(gap: Gap) -> dict[str, object]:
    return {
        "id": gap.id,
        "consumer": gap.consumer,
        "topic": gap.topic,
        "partition": gap.partition,
        "missing_from": gap.missing_from,
        "missing_to": gap.missing_to,
        "missing_count": gap.missing_count,
        "reason": gap.reason,
        "detected_at": gap.detected_at.isoformat(),
        "resolved_at": gap.resolved_at.isoformat() if gap.resolved_at else None,
        "resolution": gap.resolution,
    }


@gaps_app.command("list")
@run_async
async def gaps_list(
    include_resolved: Annotated[bool, typer.Option("--all", help="Include recovered and skipped gaps.")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Open gaps (stopped partitions), newest first; with --all also the recovered ones."""
    async with read_only() as ctx, ctx.pool.acquire() as conn:
        gaps = await list_gaps(conn, include_resolved=include_resolved, limit=limits.DLQ_LIST_MAX)
    if as_json:
        for gap in gaps:
            print(json.dumps(_gap_json(gap)))
        return
    table = Table("id", "consumer", "topic[partition]", "missing offsets", "detected", "state", "reason")
    for gap in gaps:
        state = gap.resolution or "[bold red]STOPPED[/]"
        table.add_row(
            str(gap.id),
            gap.consumer,
            f"{gap.topic}[{gap.partition}]",
            f"{gap.missing_from}..{gap.missing_to - 1}",
            gap.detected_at.isoformat(timespec="seconds"),
            state,
            gap.reason,
        )
    console.print(table)
    if not gaps:
        console.print("no gaps" + ("" if include_resolved else " open"))


@gaps_app.command("skip")
@run_async
async def gaps_skip(
    gap_id: Annotated[int, typer.Argument(help="Gap id from `settle gaps list`.")],
    reason: Annotated[str, typer.Option(help="Why it is safe (e.g. 'platform re-published 2026-12-04').")],
) -> None:
    """Resume a stopped partition after its gap: at the broker's first offset. Only after the missing
    records were re-published (they then arrive later and are deduplicated by event id) or are known
    to be lost for good — the reason is kept with the gap."""
    if not reason.strip():
        raise typer.BadParameter("a reason is required")
    async with database() as pool, pool.acquire() as conn:
        try:
            gap = await skip_gap(conn, gap_id, reason)
        except LookupError as exc:
            raise typer.BadParameter(str(exc)) from None
    console.print(
        f"gap {gap.id} skipped: {gap.consumer} resumes {gap.topic}[{gap.partition}] at offset {gap.missing_to} "
        "(within a few seconds, without a restart)"
    )


@outbox_app.command("resend")
@run_async
async def outbox_resend(
    topic: Annotated[str, typer.Option(help="Logical topic name, e.g. usage.metered.v1.")],
    partition: Annotated[int, typer.Option(min=0)],
    from_offset: Annotated[int, typer.Option("--from-offset", min=0)],
    to_offset: Annotated[int, typer.Option("--to-offset", min=0, help="Inclusive.")],
) -> None:
    """Queue again the outbox rows that were published at these offsets (same bytes and event ids);
    the relay publishes them at the end of the partition. For a consumer whose database is not the
    producer's (otherwise the consumer refills the gap from the outbox by itself)."""
    if topic not in BY_NAME or BY_NAME[topic].producer in ("platform", "operator"):
        raise typer.BadParameter(f"{topic} is not a topic Settle's services publish (see `settle topics list`)")
    if to_offset < from_offset:
        raise typer.BadParameter("--to-offset is before --from-offset")
    async with database() as pool, pool.acquire() as conn, conn.transaction():
        queued = await resend_rows(conn, topic, partition, from_offset, to_offset)
    wanted = to_offset - from_offset + 1
    console.print(f"{queued} of {wanted} published rows of {topic}[{partition}] queued again")
    if queued < wanted:
        console.print(
            "[yellow]some offsets have no outbox row: pruned (older than SETTLE_OUTBOX_RETENTION_S), "
            "or duplicates of a row the relay re-sent (those need nothing)[/]"
        )
