"""``settle`` commands over the kernel: the local stack, migrations, topics, ``run``, ``publish``,
``status``, dead letters and the ledger.

Commands that change things resolve PostgreSQL and Kafka by the local stack's rules (README,
"Configuration"): ``SETTLE_DATABASE_URL`` / ``SETTLE_KAFKA_BOOTSTRAP_SERVERS`` when set, else the local
server and the local mock-cluster broker (started on demand). Read commands use
:func:`services.cli.runtime.read_only`: they start nothing and migrate nothing.
"""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.table import Table

from libs import limits
from libs.db.migrate import migrate as apply_migrations
from libs.db.pool import create_pool
from libs.errors import BrokerUnavailableError, ConfigurationError, InvalidEventError, SettleError
from libs.ledger import balances as ledger_balances
from libs.ledger import verify as ledger_verify
from libs.messaging import deadletters
from libs.messaging.broker import check_topics, create_topics, keyed_partition, start_producer, stop_client
from libs.money import format_ledger
from libs.observability.logging import configure_logging
from libs.settings import get_settings
from schemas.topics import BY_NAME
from services import catalog
from services.cli.app import app, dlq_app, ledger_app, stack_app, topics_app
from services.cli.runtime import (
    EXIT_NOT_READY,
    console,
    database,
    error_object,
    read_only,
    report_error,
    resolve,
    run_async,
)


# --- stack --------------------------------------------------------------------------------------------------
@stack_app.command("up")
@run_async
async def stack_up() -> None:
    """Start (or find) PostgreSQL and the broker, create topics, apply migrations."""
    from libs.stack import stack_up as up

    status = await up(get_settings())
    async with database() as _:
        pass
    _print_stack(status)


@stack_app.command("down")
@run_async
async def stack_down() -> None:
    """Stop what `stack up` started (never a server Settle did not start)."""
    from libs.stack import stack_down as down

    await down(get_settings())
    console.print("local stack stopped")


@stack_app.command("status")
@run_async
async def stack_status() -> None:
    """Show what runs and where, starting nothing."""
    from libs.stack import stack_status as status

    _print_stack(await status(get_settings()))


def _print_stack(status: Any) -> None:
    table = Table("part", "kind", "address", "pid")
    broker = status.broker
    database_ = status.database
    table.add_row(
        "broker",
        broker.kind if broker else "-",
        broker.bootstrap_servers if broker else "not running",
        str(broker.pid or "") if broker else "",
    )
    table.add_row(
        "postgresql",
        database_.kind if database_ else "-",
        database_.display_url if database_ else "not running",
        str(database_.pid or "") if database_ else "",
    )
    console.print(table)
    if broker is not None and broker.kind == "mock":
        console.print(
            "[yellow]development broker:[/] librdkafka's mock cluster — in memory, not durable. "
            "Production means a real Kafka (SETTLE_KAFKA_BOOTSTRAP_SERVERS)."
        )


# --- migrations and topics ----------------------------------------------------------------------------------
@app.command()
@run_async
async def migrate() -> None:
    """Apply pending SQL migrations (idempotent; concurrent runs wait for each other)."""
    targets = await resolve(broker=False)
    pool = await create_pool(targets.database_url, max_size=2)
    try:
        async with pool.acquire() as conn:
            applied = await apply_migrations(conn)
    finally:
        await pool.close()
    console.print(f"applied {len(applied)} migration(s)" + (": " + ", ".join(applied) if applied else ""))


@topics_app.command("create")
@run_async
async def topics_create() -> None:
    """Create every registry topic and its dead-letter topic with the registry's partition counts."""
    settings = get_settings()
    targets = await resolve(settings)
    assert targets.bootstrap_servers is not None
    results = await create_topics(targets.bootstrap_servers, settings.topic_prefix)
    for name, outcome in sorted(results.items()):
        console.print(f"{name}: {outcome}")


@topics_app.command("list")
def topics_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """The topic registry: name, key, partitions, producer, event types."""
    from schemas.topics import REGISTRY

    if as_json:
        for t in REGISTRY:
            print(
                json.dumps(
                    {
                        "name": t.name,
                        "key": t.key,
                        "partitions": t.partitions,
                        "producer": t.producer,
                        "types": sorted(t.types),
                        "dlq": t.dlq,
                    }
                )
            )
        return
    table = Table("topic", "key", "partitions", "producer", "event types")
    for t in REGISTRY:
        table.add_row(t.name, t.key, str(t.partitions), t.producer, ", ".join(sorted(t.types)))
    console.print(table)


# --- run ----------------------------------------------------------------------------------------------------
@app.command()
@run_async
async def run(
    names: Annotated[list[str], typer.Argument(help="Workers to run, or `all`.")],
    relays: Annotated[int, typer.Option(help="Relay tasks in this process (0: consumers only).")] = 1,
) -> None:
    """Run workers until SIGTERM/SIGINT. Serves /metrics, /healthz and /readyz on SETTLE_METRICS_PORT."""
    from libs.messaging.worker import run_worker

    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)
    try:
        services, relay_only = catalog.resolve(names)
    except KeyError as exc:
        raise ConfigurationError(f"unknown worker(s) {exc}; known: {', '.join(catalog.worker_names())}") from None
    targets = await resolve(settings)
    assert targets.bootstrap_servers is not None
    await check_topics(targets.bootstrap_servers, settings.topic_prefix)
    # Each subscription's partition leases hold one session for the life of the worker, on top of the pool.
    leases = sum(len(service.subscriptions) for service in services)
    pool = await create_pool(targets.database_url, max_size=settings.db_pool_max + leases)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with pool.acquire() as conn:
            await apply_migrations(conn)
        await run_worker(
            services,
            settings,
            pool=pool,
            bootstrap_servers=targets.bootstrap_servers,
            stop=stop,
            relays=max(relays, 1) if relay_only else relays,
            health_port=settings.metrics_port,
        )
    finally:
        await pool.close()


# --- publish ------------------------------------------------------------------------------------------------
@app.command()
@run_async
async def publish(file: Annotated[Path, typer.Argument(help="JSON lines; `-` reads standard input.")]) -> None:
    """Send events with a real producer. Each line: {"topic","key","event"} or {"topic","key","raw"}."""
    settings = get_settings()
    targets = await resolve(settings)
    assert targets.bootstrap_servers is not None
    producer = await start_producer(targets.bootstrap_servers, client_id="settle-publish")
    sent = 0
    try:
        # A local file read line by line while the producer sends: blocking reads are fine in a CLI.
        stream = open(0, "rb", closefd=False) if str(file) == "-" else file.open("rb")  # noqa: SIM115, ASYNC230
        with stream:
            futures = []
            for number, line in enumerate(stream, 1):
                if number > limits.PUBLISH_FILE_MAX_LINES:
                    raise ConfigurationError(f"more than {limits.PUBLISH_FILE_MAX_LINES} lines; split the file")
                if not line.strip():
                    continue
                topic, key, value = parse_publish_line(line, number)
                registered = BY_NAME.get(topic) or BY_NAME.get(topic.removesuffix(".dlq"))
                key_bytes = key.encode() if key is not None else None
                partition = None
                if registered is not None and not topic.endswith(".dlq"):
                    partition = keyed_partition(registered, key_bytes)
                futures.append(
                    await producer.send(settings.topic_prefix + topic, value=value, key=key_bytes, partition=partition)
                )
                sent += 1
                if len(futures) >= 10_000:
                    await asyncio.gather(*futures)
                    futures.clear()
            await asyncio.gather(*futures)
    finally:
        await stop_client(producer)
    console.print(f"published {sent} message(s)")


def parse_publish_line(line: bytes, number: int) -> tuple[str, str | None, bytes]:
    try:
        item = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise InvalidEventError(f"line {number}: not JSON ({exc})") from None
    if not isinstance(item, dict) or "topic" not in item or ("event" in item) == ("raw" in item):
        raise InvalidEventError(f'line {number}: expected {{"topic", "key", "event"}} or {{"topic", "key", "raw"}}')
    topic = item["topic"]
    if not isinstance(topic, str) or (topic not in BY_NAME and topic.removesuffix(".dlq") not in BY_NAME):
        raise InvalidEventError(f"line {number}: unknown topic {topic!r} (see `settle topics list`)")
    key = item.get("key")
    value = orjson.dumps(item["event"]) if "event" in item else str(item["raw"]).encode()
    return topic, key if key is None else str(key), value


# --- status -------------------------------------------------------------------------------------------------
@app.command()
@run_async
async def status(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Lag per consumer group, outbox backlog and oldest age, dead-letter counts, stopped partitions
    (gaps). Starts nothing.

    Without a running (or reachable) broker the database half is still reported, lag is unknown,
    and the exit status is 2."""
    from services.cli.inspect import collect_backlog, collect_lag

    async with read_only() as ctx, ctx.pool.acquire() as conn:
        report: dict[str, Any] = await collect_backlog(conn)
        broker_error: SettleError | None = None
        try:
            report["consumers"] = await collect_lag(ctx.settings, (await ctx.broker()).bootstrap_servers, conn)
        except BrokerUnavailableError as exc:
            broker_error, report["consumers"] = exc, None
    if as_json:
        print(json.dumps((error_object(broker_error) if broker_error else {}) | report, default=str))
    else:
        _print_status(report)
        if broker_error is not None:
            report_error(broker_error, as_json=False)
    if broker_error is not None:
        raise typer.Exit(EXIT_NOT_READY)


def _print_status(report: dict[str, Any]) -> None:
    if report["consumers"] is None:
        console.print("consumer lag: unknown (no broker)")
    else:
        table = Table("consumer group", "topic", "lag")
        for group in report["consumers"]:
            for topic, lag in sorted(group["lag"].items()):
                table.add_row(group["group"], topic, str(lag))
        console.print(table)
    outbox = report["outbox"]
    console.print(
        f"outbox: {outbox['backlog']} unpublished, oldest {outbox['oldest_age_s']:.1f} s, {outbox['delayed']} delayed"
    )
    letters = Table("consumer", "topic", "open dead letters", "total")
    for row in report["dead_letters"]:
        letters.add_row(row["consumer"], row["topic"], str(row["open"]), str(row["total"]))
    console.print(letters)
    if report["gaps"]:
        gaps = Table("gap", "consumer", "topic[partition]", "missing offsets", "reason", title="STOPPED PARTITIONS")
        for gap in report["gaps"]:
            gaps.add_row(
                str(gap["id"]),
                gap["consumer"],
                f"{gap['topic']}[{gap['partition']}]",
                f"{gap['missing_from']}..{gap['missing_to'] - 1}",
                gap["reason"],
            )
        console.print(gaps)
        console.print("see `settle gaps list` and the gap runbook in the README")
    else:
        console.print("gaps: none (every partition is readable from each group's position)")


# --- dead letters -------------------------------------------------------------------------------------------
@dlq_app.command("list")
@run_async
async def dlq_list(
    consumer: Annotated[str | None, typer.Option(help="Only this consumer group.")] = None,
    include_redriven: Annotated[bool, typer.Option("--all", help="Include redriven ones.")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Dead letters with their reasons (open ones unless --all)."""
    async with read_only() as ctx, ctx.pool.acquire() as conn:
        rows = await deadletters.list_dead_letters(conn, consumer=consumer, include_redriven=include_redriven)
    if as_json:
        for row in rows:
            print(json.dumps(row, default=str))
        return
    table = Table("id", "consumer", "where", "event", "error", "waits behind", "reason")
    for r in rows:
        table.add_row(
            str(r["id"]),
            r["consumer"],
            f"{r['topic']}/{r['partition']}/{r['offset']}",
            f"{r['event_type'] or '-'} {r['event_id'] or ''}",
            r["error_class"],
            f"#{r['held_by']}" if r.get("held_by") else "",
            r["reason"],
        )
    console.print(table)


@dlq_app.command("show")
@run_async
async def dlq_show(letter_id: int) -> None:
    """One dead letter in full: reason, headers, original bytes."""
    async with read_only() as ctx, ctx.pool.acquire() as conn:
        row = await deadletters.get_dead_letter(conn, letter_id)
    if row is None:
        raise ConfigurationError(f"no dead letter {letter_id}")
    for key in ("key", "value"):
        raw = row[key]
        row[key] = None if raw is None else bytes(raw).decode("utf-8", "replace")
    print(json.dumps(row, default=str, indent=2))


@dlq_app.command("redrive")
@run_async
async def dlq_redrive(
    ids: Annotated[list[int] | None, typer.Argument(help="Dead-letter ids.")] = None,
    consumer: Annotated[str | None, typer.Option(help="Every open dead letter of this consumer.")] = None,
    all_open: Annotated[bool, typer.Option("--all", help="Every open dead letter.")] = False,
) -> None:
    """Republish dead letters to their original topic (after fixing the cause), with their original
    event ids. The messages held behind one (same key, later) follow it, in order."""
    if not ids and consumer is None and not all_open:
        raise ConfigurationError("say which: dead-letter ids, --consumer NAME, or --all")
    async with database() as pool, pool.acquire() as conn, conn.transaction():
        done = await deadletters.redrive(conn, ids=ids or None, consumer=consumer)
    console.print(f"redriven {len(done)} dead letter(s): {', '.join(map(str, done))}")


@dlq_app.command("drop")
@run_async
async def dlq_drop(
    letter_id: Annotated[int, typer.Argument(help="Dead-letter id.")],
    reason: Annotated[str, typer.Option(help="Why it is given up (kept with it).")],
) -> None:
    """Give up on a dead letter (it stays listed with --all, marked dropped): the messages of its key
    held behind it are redriven, in order."""
    if not reason.strip():
        raise ConfigurationError("a reason is required")
    async with database() as pool, pool.acquire() as conn, conn.transaction():
        try:
            followers = await deadletters.drop(conn, letter_id, reason)
        except LookupError as exc:
            raise ConfigurationError(str(exc)) from None
    console.print(f"dead letter {letter_id} dropped; {len(followers)} held message(s) redriven")


# --- ledger -------------------------------------------------------------------------------------------------
@ledger_app.command("balances")
@run_async
async def ledger_balances_cmd(
    owner: Annotated[str | None, typer.Option(help="Only accounts of this owner (e.g. renter:r-1).")] = None,
    prefix: Annotated[str | None, typer.Option(help="Only account codes starting with this.")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Account balances (on each account's normal side, in major units at ledger precision)."""
    async with read_only() as ctx, ctx.pool.acquire() as conn:
        rows = await ledger_balances(conn, owner=owner, prefix=prefix)
    if as_json:
        for b in rows:
            print(
                json.dumps(
                    {
                        "account": b.code,
                        "type": b.type,
                        "owner": b.owner,
                        "currency": b.currency,
                        "balance": format_ledger(b.normal_units, b.currency),
                        "asset": b.asset,
                    }
                )
            )
        return
    table = Table("account", "type", "owner", "currency", "balance")
    for b in rows:
        table.add_row(b.code, b.type, b.owner, b.currency, format_ledger(b.normal_units, b.currency))
    console.print(table)


@ledger_app.command("verify")
@run_async
async def ledger_verify_cmd(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Recompute every balance from postings, check every entry balances, print the trial balance,
    recompute every entry's chain link from its rows (naming the first bad entry).

    Exits 1 on any break (2 when it cannot check: no database, not migrated)."""
    async with read_only() as ctx, ctx.pool.acquire() as conn:
        report = await ledger_verify(conn)
    if as_json:
        print(json.dumps(report.__dict__ | {"ok": report.ok}, default=str))
    else:
        print_verify(report)
    if not report.ok:
        raise typer.Exit(1)


def print_verify(report: Any) -> None:
    table = Table("asset", "trial balance (units)")
    for asset, total in sorted(report.trial_balance.items()):
        table.add_row(asset, str(total))
    console.print(table)
    console.print(f"{report.entries} entries, {report.postings} postings, {report.accounts} accounts")
    if report.chains or report.chain_breaks:
        chains = ", ".join(f"{chain} ({n})" for chain, n in sorted(report.chains.items()))
        console.print(f"chains: {chains or 'none'}; {report.unchained_entries} entries from before chaining")
    if report.chain_breaks:
        chain, position, entry_id, reason = report.chain_breaks[0]
        console.print(f"[red]first bad entry:[/] {entry_id} (chain {chain}, position {position}): {reason}")
        for chain, position, entry_id, reason in report.chain_breaks[1:10]:
            console.print(f"[red]also:[/] {entry_id} (chain {chain}, position {position}): {reason}")
    for label, items in (
        ("unbalanced entries", report.unbalanced_entries),
        ("balance mismatches", report.balance_mismatches),
        ("floor breaches", report.floor_breaches),
        ("entries without postings", report.empty_entries),
    ):
        if items:
            console.print(f"[red]{label}:[/] {items[:10]}")
    console.print(
        "[green]ledger verified: every entry balances, balances match postings, trial balance is zero, "
        "every chain recomputes[/]"
        if report.ok
        else "[bold red]ledger verification FAILED[/]"
    )
