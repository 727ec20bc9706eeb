"""Replay and rebuild from the input archive (``settle replay``, ``settle rebuild``, ``settle archive``).

**Replay** (:func:`replay_range`) reads a range of one archived topic and hands it, chunk by chunk, to
the consumer groups of the chosen services through ``consume()`` — in this process, against the live
database, without Kafka. The inbox decides as for any delivery: an event the group already applied
is a duplicate (by event id, never by offset) and changes nothing; one it never applied (a dropped or
refused dead letter, a record a bug fix now accepts) is handled now. Positions only move forward, so
the groups' own reading is undisturbed. A range older than the inbox retention is refused: the claims
that make it a no-op may be pruned (rebuild instead).

**Rebuild** (:func:`rebuild_into`) recomputes every derived fact in a fresh database from the archive
alone, with the real workers (metering, rating, invoicing as ``settle run`` processes) on a private
topic prefix of the configured broker. The log order is the clock's: each archived tick carries the
end offsets of the input partitions when it was sent (its barrier), so the archive is replayed as
segments — every input record below tick *k*'s barrier that is not published yet (each partition in
offset order, to its recorded partition), then tick *k*, then wait until the fleet is idle — and
after the last tick the rest. Offsets in the private topics equal the archived ones (checked for
every record), so the barriers mean what they meant. A tick without a barrier takes the records
received before it. The archive must be whole: every archived partition from offset 0 without a hole
(a pruned month or an archive switched on late cannot be rebuilt from, and is refused).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import asyncpg
import orjson
import typer
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from libs import limits
from libs.db.migrate import migrate
from libs.db.pool import create_pool
from libs.errors import OperatorRequestError
from libs.messaging.archive import (
    ArchivedRecord,
    ArchiveRange,
    count_range,
    month_partitions,
    oldest_received,
    prune_archive,
    read_range,
    read_topic_log,
    spans,
)
from libs.messaging.broker import bootstrap_list, create_topics, start_producer, stop_client
from libs.messaging.consume import Consumer
from libs.messaging.topic import all_physical
from libs.settings import Settings, get_settings
from libs.times import parse_utc
from schemas import topics
from services import catalog
from services.cli.runtime import console, resolve, run_async
from services.operations import audit
from services.operations.compare import BILLING_KINDS, Snapshot, differences, snapshot
from tools.fleet import wait_idle, worker_env, worker_processes

FLEET = ("metering", "rating", "invoicing")
"""The workers a rebuild runs (every consumer of the archived inputs and of what they produce)."""
PUBLISH_CHUNK = 5000
"""Archived records read and sent per round by a rebuild."""
IDLE_TIMEOUT_S = 3600.0

archive_app = typer.Typer(help="The input archive: what is kept, pruning by retention.", no_args_is_help=True)


# --- replay ------------------------------------------------------------------------------------------------
@dataclass
class ReplayResult:
    records: int = 0
    processed: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    by_consumer: dict[str, dict[str, int]] = field(default_factory=dict)


def subscriptions_for(topic: str, services: Sequence[str]) -> list[Any]:
    """The consumer groups of these services (every worker when empty) that read ``topic``."""
    names = list(services) or [n for n in catalog.worker_names() if n != catalog.RELAY]
    found = []
    for name in names:
        try:
            service = catalog.load(name)
        except KeyError:
            raise OperatorRequestError(f"no service {name!r} (known: {', '.join(catalog.worker_names())})") from None
        found += [s for s in service.subscriptions if any(t.name == topic for t in s.topics)]
    if not found:
        raise OperatorRequestError(f"no consumer group of {', '.join(names)} reads {topic}")
    return found


async def check_replayable(conn: asyncpg.Connection, selection: ArchiveRange, settings: Settings) -> int:
    """How many records the range holds; refuses ranges beyond the limits or the inbox retention."""
    topic = topics.BY_NAME.get(selection.topic)
    if topic is None or not topic.archive:
        archived = ", ".join(t.name for t in topics.REGISTRY if t.archive)
        raise OperatorRequestError(f"{selection.topic} is not an archived topic (archived: {archived})")
    total = await count_range(conn, selection)
    if total > limits.REPLAY_MAX_EVENTS:
        raise OperatorRequestError(
            f"the range holds {total} records; at most {limits.REPLAY_MAX_EVENTS} per replay: narrow it"
        )
    oldest = await oldest_received(conn, selection)
    horizon = datetime.now(UTC) - timedelta(seconds=settings.inbox_retention_s)
    if oldest is not None and oldest < horizon:
        raise OperatorRequestError(
            f"the range holds records received {oldest:%Y-%m-%d %H:%M}Z, before the inbox retention "
            f"({settings.inbox_retention_s // 86400} days): their claims may be pruned, so a replay could apply "
            "them twice. Narrow --from, or recompute from the archive with `settle rebuild --into DSN`"
        )
    return total


async def replay_range(
    pool: asyncpg.Pool,
    selection: ArchiveRange,
    services: Sequence[str],
    *,
    topic_prefix: str = "",
    progress: Progress | None = None,
) -> ReplayResult:
    """Feed the archived range to each chosen consumer group through ``consume()`` (see module doc)."""
    result = ReplayResult()
    subs = subscriptions_for(selection.topic, services)
    async with pool.acquire() as conn:
        total = await count_range(conn, selection)
    task = progress.add_task(f"replaying {selection.topic}", total=total * len(subs)) if progress else None
    for sub in subs:
        consumer = Consumer(pool, sub, topic_prefix=topic_prefix)
        counts = result.by_consumer.setdefault(sub.consumer, {"processed": 0, "duplicates": 0, "dead_letters": 0})
        async with pool.acquire() as conn:
            async for chunk in read_range(conn, selection, prefix=topic_prefix, chunk=min(sub.batch_max, 1000)):
                batch = await consumer.process(chunk)
                counts["processed"] += batch.processed
                counts["duplicates"] += batch.duplicates
                counts["dead_letters"] += batch.dead_letters
                result.records += len(chunk)
                if progress is not None and task is not None:
                    progress.advance(task, len(chunk))
        result.processed += counts["processed"]
        result.duplicates += counts["duplicates"]
        result.dead_letters += counts["dead_letters"]
    return result


# --- rebuild -----------------------------------------------------------------------------------------------
@dataclass
class RebuildResult:
    published: int
    ticks: int
    elapsed_s: float
    prefix: str


@dataclass(frozen=True)
class _Tick:
    record: ArchivedRecord
    barrier: dict[str, list[int]] | None


def _tick_of(record: ArchivedRecord) -> _Tick:
    try:
        data = orjson.loads(record.value or b"{}").get("data") or {}
    except orjson.JSONDecodeError:
        data = {}
    barrier = data.get("barrier") if isinstance(data, dict) else None
    return _Tick(record, barrier if isinstance(barrier, dict) else None)


async def check_fresh(into_dsn: str) -> None:
    """Refuse a target database that already holds Settle state (a rebuild starts from nothing)."""
    conn = await asyncpg.connect(into_dsn)
    try:
        if await conn.fetchval("select to_regclass('settle.inbox') is not null"):
            used = await conn.fetchval(
                "select exists (select 1 from settle.inbox) or exists (select 1 from ledger.entries)"
            )
            if used:
                raise OperatorRequestError(
                    "the target database already holds Settle state (inbox claims or ledger entries): "
                    "rebuild into a fresh, empty database"
                )
        await migrate(conn)
    finally:
        await conn.close()


async def check_whole(conn: asyncpg.Connection) -> dict[tuple[str, int], int]:
    """Every archived partition's end offset; refuses an archive with holes or a missing head."""
    ends: dict[tuple[str, int], int] = {}
    broken = []
    for span in await spans(conn):
        if not span.contiguous_from_zero:
            broken.append(
                f"{span.topic}[{span.partition}] holds {span.records} records at offsets "
                f"{span.first_offset}..{span.last_offset}"
            )
        ends[(span.topic, span.partition)] = span.last_offset + 1
    if broken:
        raise OperatorRequestError(
            "the archive is not whole (a rebuild needs every partition from offset 0): " + "; ".join(broken[:5])
        )
    return ends


async def _send(producer: AIOKafkaProducer, prefix: str, records: Sequence[ArchivedRecord]) -> None:
    """Publish records to their recorded partitions, in order; each must land at its recorded offset."""
    futures = [
        await producer.send(
            prefix + r.topic, value=r.value, key=r.key, partition=r.partition, headers=list(r.headers) or None
        )
        for r in records
    ]
    for record, meta in zip(records, await asyncio.gather(*futures), strict=True):
        if meta.offset != record.offset:
            raise OperatorRequestError(
                f"{record.topic}[{record.partition}]@{record.offset} landed at offset {meta.offset} of the "
                "private topic: the private topics were not empty"
            )


async def delete_topics(bootstrap_servers: str, prefix: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_list(bootstrap_servers))
    try:
        await admin.start()
        await admin.delete_topics(list(all_physical(prefix)))
    except Exception as exc:  # cleanup only: the run's outcome does not depend on it
        console.print(f"[yellow]private topics {prefix}* not deleted: {exc}[/]")
    finally:
        await stop_client(admin)


async def rebuild_into(
    source: asyncpg.Pool,
    into_dsn: str,
    bootstrap_servers: str,
    *,
    log_dir: Path,
    progress: Progress | None = None,
    idle_timeout_s: float = IDLE_TIMEOUT_S,
    extra_env: dict[str, str] | None = None,
    fleet: Sequence[str] = FLEET,
) -> RebuildResult:
    """Recompute all derived state in ``into_dsn`` (fresh) from ``source``'s archive (module doc). ``fleet``
    names one worker process per entry: a name given twice runs two processes of it (its partitions are
    shared by lease, as in production)."""
    began = time.perf_counter()
    await check_fresh(into_dsn)
    async with source.acquire() as conn:
        ends = await check_whole(conn)
        ticks = [_tick_of(r) for r in await read_topic_log(conn, topics.CLOCK_TICKS.name, 0)]
    inputs = sorted(k for k in ends if k[0] != topics.CLOCK_TICKS.name)
    total = sum(ends[k] for k in inputs) + len(ticks)
    prefix = f"rebuild{uuid.uuid4().hex[:8]}."
    await create_topics(bootstrap_servers, prefix)
    task = progress.add_task("rebuilding", total=total) if progress else None
    services = [catalog.load(name) for name in dict.fromkeys(fleet)]
    env = worker_env(into_dsn, bootstrap_servers, prefix, **(extra_env or {}))
    published = 0
    into = await create_pool(into_dsn, max_size=4)
    try:
        with worker_processes(env, [[name, "--relays", "1"] for name in fleet], log_dir=log_dir) as procs:
            producer = await start_producer(bootstrap_servers, client_id="settle-rebuild")
            try:
                sent: dict[tuple[str, int], int] = dict.fromkeys(inputs, 0)

                async def publish_inputs(
                    upto: dict[tuple[str, int], int], by_time: set[tuple[str, int]], received_by: datetime | None
                ) -> int:
                    """Publish each partition up to ``upto`` (exclusive); partitions in ``by_time`` only as
                    far as their records were received by ``received_by``."""
                    count = 0
                    for key in inputs:
                        end = min(upto.get(key, ends[key]), ends[key])
                        while sent[key] < end:
                            async with source.acquire() as conn:
                                chunk = await read_topic_log(
                                    conn, *key, from_offset=sent[key], to_offset=min(end, sent[key] + PUBLISH_CHUNK)
                                )
                            if key in by_time and received_by is not None:
                                late = [i for i, r in enumerate(chunk) if r.received_at and r.received_at > received_by]
                                chunk = chunk[: late[0]] if late else chunk
                            if not chunk:
                                break
                            await settle_ticks()  # the ticks before this segment are done first
                            await _send(producer, prefix, chunk)
                            sent[key] = chunk[-1].offset + 1
                            count += len(chunk)
                            if progress is not None and task is not None:
                                progress.advance(task, len(chunk))
                    return count

                async def idle() -> None:
                    await wait_idle(
                        into, bootstrap_servers, services, topic_prefix=prefix, timeout_s=idle_timeout_s, alive=procs
                    )

                ticks_unsettled = False

                async def settle_ticks() -> None:
                    """Wait until the fleet is idle if a tick went out since it last was. Consecutive ticks
                    with no input between them go out back to back: the workers take ticks in order anyway,
                    and nothing can land between them (most of an hourly clock's ticks)."""
                    nonlocal ticks_unsettled
                    if ticks_unsettled:
                        await idle()
                        ticks_unsettled = False

                for tick in ticks:
                    if tick.barrier is not None:
                        barrier = tick.barrier
                        upto = {
                            (t, p): ends_at[p]
                            for t, ends_at in barrier.items()
                            for p in range(len(ends_at))
                            if isinstance(ends_at[p], int)
                        }
                        by_time = {k for k in inputs if k[0] not in barrier}  # topics the barrier does not name
                    else:
                        upto, by_time = {}, set(inputs)
                    published += await publish_inputs(upto, by_time, tick.record.received_at)
                    await _send(producer, prefix, [tick.record])
                    published += 1
                    if progress is not None and task is not None:
                        progress.advance(task, 1)
                    ticks_unsettled = True
                published += await publish_inputs({}, set(), None)
                await idle()
            finally:
                await stop_client(producer)
    finally:
        await into.close()
        await delete_topics(bootstrap_servers, prefix)
    return RebuildResult(published=published, ticks=len(ticks), elapsed_s=time.perf_counter() - began, prefix=prefix)


async def compare_databases(
    a_dsn: str, b_dsn: str, *, kinds: tuple[str, ...] | None = BILLING_KINDS
) -> tuple[Snapshot, Snapshot]:
    """Snapshots of two databases; by default the billing fleet's journal only (what a rebuild redoes)."""
    snaps = []
    for dsn in (a_dsn, b_dsn):
        pool = await create_pool(dsn, max_size=2)
        try:
            async with pool.acquire() as conn:
                snaps.append(await snapshot(conn, kinds=kinds))
        finally:
            await pool.close()
    return snaps[0], snaps[1]


# --- commands ----------------------------------------------------------------------------------------------
def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    )


def _time(text: str | None, option: str) -> datetime | None:
    if text is None:
        return None
    try:
        return parse_utc(text)
    except ValueError as exc:
        raise typer.BadParameter(f"{option}: {exc}") from None


def _print_differences(live: Snapshot, other: Snapshot, names: tuple[str, str]) -> list[str]:
    found = differences(live, other, names=names, limit=50)
    table = Table("", names[0], names[1])
    for kind, count in live.counts().items():
        table.add_row(kind, str(count), str(other.counts()[kind]))
    table.add_row("journal digest", live.entries_digest()[:16], other.entries_digest()[:16])
    console.print(table)
    if found:
        console.print(f"[bold yellow]{len(found)}{'+' if len(found) >= 50 else ''} differences[/]")
        for line in found:
            console.print(f"  {line}", markup=False)
    else:
        console.print("[bold green]identical[/]: documents, numbers, charges, balances and journal entries")
    return found


async def _scratch_dsn(base_dsn: str) -> tuple[str, str]:
    from libs.stack.database import with_database

    name = f"settle_scratch_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(base_dsn)
    try:
        await admin.execute(f'create database "{name}"')
    finally:
        await admin.close()
    return name, with_database(base_dsn, name)


async def _drop_database(base_dsn: str, name: str) -> None:
    admin = await asyncpg.connect(base_dsn)
    try:
        await admin.execute(f'drop database if exists "{name}" with (force)')
    finally:
        await admin.close()


@run_async
async def replay(
    topic: Annotated[str, typer.Option(help="Archived topic to replay (e.g. contracts.v1).")],
    from_time: Annotated[str | None, typer.Option("--from", help="Event time at or after (ISO 8601, UTC).")] = None,
    to_time: Annotated[str | None, typer.Option("--to", help="Event time before (ISO 8601, UTC).")] = None,
    from_offset: Annotated[int | None, typer.Option(help="First offset (every partition).")] = None,
    to_offset: Annotated[int | None, typer.Option(help="Last offset, included (every partition).")] = None,
    partition: Annotated[int | None, typer.Option(help="Only this partition.")] = None,
    service: Annotated[list[str] | None, typer.Option(help="Service(s) to feed (default: every reader).")] = None,
    dry_run: Annotated[bool, typer.Option(help="Recompute in a scratch database and show what differs.")] = False,
    operator: Annotated[str | None, typer.Option(help="Who runs it (default: $USER), for the audit.")] = None,
) -> None:
    """Re-feed archived input to the services' handlers: events already applied are skipped by event id.

    --dry-run recomputes everything from the archive in a scratch database with the code as it is now
    (through the private-topic rebuild) and prints what differs from the live state; nothing live changes.
    """
    settings = get_settings()
    selection = ArchiveRange(
        topic,
        from_time=_time(from_time, "--from"),
        to_time=_time(to_time, "--to"),
        from_offset=from_offset,
        to_offset=to_offset,
        partition=partition,
    )
    targets = await resolve(settings, broker=dry_run)
    pool = await create_pool(targets.database_url, max_size=4)
    arguments = {
        "topic": topic,
        "from": from_time,
        "to": to_time,
        "from_offset": from_offset,
        "to_offset": to_offset,
        "partition": partition,
        "services": list(service or []),
        "dry_run": dry_run,
    }
    try:
        async with pool.acquire() as conn:
            await migrate(conn)
            run_id = await audit.start_run(
                conn, operator=operator or audit.default_actor(), command="replay", arguments=arguments
            )
        detail: dict[str, Any] = {}
        ok = False
        try:
            async with pool.acquire() as conn:
                total = await check_replayable(conn, selection, settings)
            detail["records"] = total
            if dry_run:
                assert targets.bootstrap_servers is not None
                subscriptions_for(topic, service or [])  # the names are checked before any work
                name, scratch = await _scratch_dsn(targets.database_url)
                try:
                    with _progress() as progress:
                        result = await rebuild_into(
                            pool,
                            scratch,
                            targets.bootstrap_servers,
                            log_dir=settings.state_dir / "replay-logs",
                            progress=progress,
                        )
                    live, other = await compare_databases(targets.database_url, scratch)
                    found = _print_differences(live, other, ("live", "recomputed"))
                    detail.update(differences=len(found), published=result.published, scratch=name)
                finally:
                    await _drop_database(targets.database_url, name)
            else:
                with _progress() as progress:
                    replayed = await replay_range(
                        pool, selection, service or [], topic_prefix=settings.topic_prefix, progress=progress
                    )
                detail.update(
                    processed=replayed.processed,
                    duplicates=replayed.duplicates,
                    dead_letters=replayed.dead_letters,
                    by_consumer=replayed.by_consumer,
                )
                console.print(
                    f"replayed {replayed.records} record deliveries of {total} archived records: "
                    f"{replayed.processed} applied now, {replayed.duplicates} already applied, "
                    f"{replayed.dead_letters} dead-lettered"
                )
            ok = True
        except Exception as exc:
            detail["error"] = repr(exc)[:1000]
            raise
        finally:
            async with pool.acquire() as conn:
                await audit.finish_run(conn, run_id, ok=ok, detail=detail)
        console.print(f"audit: settle.replay_runs #{run_id}")
    finally:
        await pool.close()


@run_async
async def rebuild(
    into: Annotated[str, typer.Option(help="DSN of a fresh, empty database to rebuild into.")],
    compare: Annotated[bool, typer.Option(help="Compare the result with the live database.")] = True,
    operator: Annotated[str | None, typer.Option(help="Who runs it (default: $USER), for the audit.")] = None,
    rating_workers: Annotated[
        int, typer.Option(min=1, help="`settle run rating` processes (they share its partitions by lease).")
    ] = 1,
) -> None:
    """Recompute all derived state in a fresh database from the input archive, in the clock's log order,
    with the real workers on a private topic prefix; then compare it with the live state."""
    settings = get_settings()
    targets = await resolve(settings)
    assert targets.bootstrap_servers is not None
    pool = await create_pool(targets.database_url, max_size=4)
    try:
        async with pool.acquire() as conn:
            await migrate(conn)
            run_id = await audit.start_run(
                conn,
                operator=operator or audit.default_actor(),
                command="rebuild",
                arguments={"into": _redacted(into), "compare": compare, "rating_workers": rating_workers},
            )
        detail: dict[str, Any] = {}
        ok = False
        try:
            with _progress() as progress:
                result = await rebuild_into(
                    pool,
                    into,
                    targets.bootstrap_servers,
                    log_dir=settings.state_dir / "rebuild-logs",
                    progress=progress,
                    fleet=("metering", *["rating"] * rating_workers, "invoicing"),
                )
            detail.update(published=result.published, ticks=result.ticks, elapsed_s=round(result.elapsed_s, 1))
            console.print(
                f"rebuilt from {result.published} archived records ({result.ticks} ticks) in {result.elapsed_s:.1f} s"
            )
            if compare:
                live, rebuilt = await compare_databases(targets.database_url, into)
                found = _print_differences(live, rebuilt, ("live", "rebuilt"))
                detail.update(differences=len(found), journal_digest=rebuilt.entries_digest())
                ok = not found
            else:
                ok = True
        except Exception as exc:
            detail["error"] = repr(exc)[:1000]
            raise
        finally:
            async with pool.acquire() as conn:
                await audit.finish_run(conn, run_id, ok=ok, detail=detail)
        console.print(f"audit: settle.replay_runs #{run_id}")
        if not ok:
            raise typer.Exit(1)
    finally:
        await pool.close()


def _redacted(dsn: str) -> str:
    """A DSN without its password (the audit keeps arguments)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


@archive_app.command("status")
@run_async
async def archive_status() -> None:
    """What the archive keeps: per topic and partition the offsets, per month partition the rows."""
    from services.cli.runtime import read_only

    async with read_only() as ctx, ctx.pool.acquire() as conn:
        table = Table("topic[partition]", "offsets", "records", "whole")
        for span in await spans(conn):
            table.add_row(
                f"{span.topic}[{span.partition}]",
                f"{span.first_offset}..{span.last_offset}",
                str(span.records),
                "yes" if span.contiguous_from_zero else "[red]no[/]",
            )
        console.print(table)
        months = Table("month partition", "rows (estimate)")
        for month in await month_partitions(conn):
            months.add_row(month.name, str(month.rows))
        console.print(months)
        runs = Table("run", "started", "operator", "command", "outcome", "arguments")
        for run in await audit.list_runs(conn, limit=10):
            runs.add_row(
                str(run["id"]),
                run["started_at"].isoformat(timespec="seconds"),
                run["operator"],
                run["command"],
                run["outcome"],
                orjson.dumps(run["arguments"]).decode(),
            )
        console.print(runs)


@archive_app.command("prune")
@run_async
async def archive_prune(
    dry_run: Annotated[bool, typer.Option(help="Only list the month partitions that would be dropped.")] = False,
) -> None:
    """Drop the archive's month partitions older than SETTLE_ARCHIVE_RETENTION_MONTHS (whole tables)."""
    settings = get_settings()
    targets = await resolve(settings, broker=False)
    pool = await create_pool(targets.database_url, max_size=2)
    try:
        doomed = await prune_archive(pool, datetime.now(UTC), settings.archive_retention_months, dry_run=dry_run)
    finally:
        await pool.close()
    verb = "would drop" if dry_run else "dropped"
    console.print(f"{verb} {len(doomed)} month partitions" + "".join(f"\n  {m.name} (~{m.rows} rows)" for m in doomed))
