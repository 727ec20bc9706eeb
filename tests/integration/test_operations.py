"""Data that waits or disappears, made visible and operable: held items (metering, rating), quarantined
invoice closes, the operator audit and the held-data gauges.

Events go through the real consume() (inbox claims, offsets, dead letters) with records built here
(``tests.feed``), against the test's own PostgreSQL database; the CLI runs as a subprocess against the
same database.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from domain.contracts.store import contract_partition
from libs.db.migrate import MIGRATIONS_DIR, migrate
from libs.db.pool import create_pool
from libs.errors import OperatorRequestError
from libs.messaging import deadletters
from libs.messaging.consume import Subscription
from libs.messaging.worker import Runtime
from libs.observability import metrics
from libs.settings import Settings
from libs.stack.database import with_database
from schemas import topics
from services import held_gauges
from services.invoicing.handlers import SUBSCRIPTION as INVOICING
from services.metering.main import SERVICE as METERING
from services.operations import held, quarantine
from services.rating.handlers import SUBSCRIPTION as RATING
from tests.conftest import Servers, Stack
from tests.feed import Feed
from tests.fleet import event_bytes, settle_in_process
from tests.integration.test_rating_service import Hour, contract_created, usage, watermark_bytes

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 2, 10, tzinfo=UTC)
HOUR = timedelta(hours=1)


def lifecycle(event_type: str, allocation_id: str, at: datetime, *, event_id: str, **data: Any) -> bytes:
    return event_bytes(event_type, {"allocation_id": allocation_id, **data}, id=event_id, time=at)


def metering_lifecycle() -> Subscription:
    return METERING.subscriptions[0]


async def forwarded(stack: Stack, partition: int) -> datetime | None:
    async with stack.pool.acquire() as conn:
        value: datetime | None = await conn.fetchval(
            "select forwarded_through from rating.watermarks where partition = $1", partition
        )
        return value


# ====================================================================================================
# rating: held usage gates its partition until dropped or released
# ====================================================================================================


async def test_dropping_held_usage_dead_letters_it_audits_it_and_ungates_the_watermark(stack: Stack) -> None:
    feed = Feed(stack, RATING)
    hour = Hour("c-ghost", "a-ghost", T0, gpu_count=2)
    topic, key, value = usage(hour)
    partition = contract_partition("c-ghost")
    await feed.send(topic, key, value)
    await feed.send(topics.USAGE_METERED, "watermark", watermark_bytes(T0 + 2 * HOUR, partition), partition)
    assert await forwarded(stack, partition) is None  # gated: the contract never came

    event_id = f"usage-ev-{hour.usage_id}"
    item = held.item_id("rating", "usage", event_id)
    async with stack.pool.acquire() as conn:
        items = {i.id: i for i in await held.list_held(conn, "rating")}
        counts = {c.kind: c for c in await held_gauges.count_held(conn, "rating")}
    assert items[item].status == "held"
    assert items[item].event_time == T0 + HOUR
    assert items[item].keys["contract_id"] == "c-ghost" and items[item].keys["partition"] == partition
    assert "gates the watermark" in items[item].reason
    assert counts["usage"].count == 1 and counts["usage"].oldest_age_s >= 0
    assert counts["usage_released"].count == 0

    async with stack.pool.acquire() as conn, conn.transaction():
        with pytest.raises(OperatorRequestError, match="why"):
            await held.drop(conn, item, reason="  ", actor="ops")
    async with stack.pool.acquire() as conn, conn.transaction():
        result = await held.drop(conn, item, reason="contract c-ghost was never signed", actor="ops")

    assert await forwarded(stack, partition) == T0 + 2 * HOUR
    async with stack.pool.acquire() as conn:
        assert await conn.fetchval("select count(*) from rating.usage_held") == 0
        letter = await deadletters.get_dead_letter(conn, result.dead_letter_id or -1)
        assert letter is not None
        assert letter["consumer"] == "rating" and letter["topic"] == topics.USAGE_METERED.name
        assert letter["event_id"] == event_id and (letter["partition"], letter["offset"]) == (partition, 0)
        assert "dropped from rating's hold by ops" in letter["reason"]
        assert "contract c-ghost was never signed" in letter["reason"]
        assert json.loads(bytes(letter["value"]))["id"] == event_id
        action = await conn.fetchrow("select * from settle.operator_actions where id = $1", result.action_id)
        assert (action["actor"], action["action"], action["item_id"]) == ("ops", "drop", item)
        assert action["detail"]["dead_letter_id"] == result.dead_letter_id
        assert await conn.fetchval("select count(*) from settle.inbox where event_id = $1", event_id) == 0
        watermark_rows = await conn.fetchval(
            "select count(*) from settle.outbox where topic = $1 and partition = $2",
            topics.CHARGES_RATED.name,
            partition,
        )
        assert watermark_rows == 1
        # Redriving it gives it back to rating as new input (its inbox claim was forgotten): held again.
        assert await deadletters.redrive(conn, ids=[result.dead_letter_id or -1]) == [result.dead_letter_id]
    await feed.send(topic, key, value)
    async with stack.pool.acquire() as conn:
        assert await conn.fetchval("select count(*) from rating.usage_held") == 1
        with pytest.raises(OperatorRequestError, match="is not held"):
            await held.drop(conn, held.item_id("rating", "usage", "nope"), reason="x", actor="ops")


async def test_released_usage_stops_gating_and_is_rated_when_its_contract_arrives(stack: Stack) -> None:
    feed = Feed(stack, RATING)
    hour = Hour("c-late", "a-late", T0, gpu_count=1)
    partition = contract_partition("c-late")
    await feed.send(*usage(hour))
    await feed.send(topics.USAGE_METERED, "watermark", watermark_bytes(T0 + 2 * HOUR, partition), partition)
    item = held.item_id("rating", "usage", f"usage-ev-{hour.usage_id}")

    async with stack.pool.acquire() as conn, conn.transaction():
        result = await held.release(conn, item, reason="contract is coming, bill the others", actor="ops")
    assert "no longer gates" in result.outcome
    assert await forwarded(stack, partition) == T0 + 2 * HOUR
    async with stack.pool.acquire() as conn:
        (listed,) = [i for i in await held.list_held(conn, "rating") if i.id == item]
        assert listed.status == "released"
        counts = {c.kind: c.count for c in await held_gauges.count_held(conn, "rating")}
        assert counts["usage"] == 0 and counts["usage_released"] == 1
        with pytest.raises(OperatorRequestError, match="released already"):
            await held.release(conn, item, reason="again", actor="ops")

    await feed.send(*contract_created("c-late", starts_at=T0 - 24 * HOUR))
    async with stack.pool.acquire() as conn:
        assert await conn.fetchval("select count(*) from rating.usage_held") == 0
        priced = await conn.fetchval("select gpu_seconds from rating.priced_hours where contract_id = 'c-late'")
        assert priced == 3600


async def test_releasing_usage_of_a_contract_known_by_now_rates_it_at_once(stack: Stack) -> None:
    """Usage is released automatically when its contract arrives; one left behind (here: put there by
    hand) is rated by a release, and the partition's watermark moves on."""
    feed = Feed(stack, RATING)
    partition = contract_partition("c-known")
    await feed.send(*contract_created("c-known", starts_at=T0 - 24 * HOUR))
    await feed.send(topics.USAGE_METERED, "watermark", watermark_bytes(T0 + 3 * HOUR, partition), partition)
    _, _, value = usage(Hour("c-known", "a-known", T0 + HOUR, gpu_count=3))
    doc = json.loads(value)
    envelope = {k: doc.get(k) for k in ("id", "source", "type", "time", "subject", "correlationid", "causationid")}
    envelope |= {"schemaversion": doc.get("schemaversion", 1), "data": doc["data"]}
    async with stack.pool.acquire() as conn:
        await conn.execute(
            "insert into rating.usage_held (event_id, contract_id, partition, envelope) values ($1, $2, $3, $4)",
            doc["id"],
            "c-known",
            partition,
            envelope,
        )
        await conn.execute("update rating.watermarks set forwarded_through = null where partition = $1", partition)
    async with stack.pool.acquire() as conn, conn.transaction():
        result = await held.release(conn, held.item_id("rating", "usage", doc["id"]), reason="stuck", actor="ops")
    assert "rated now" in result.outcome
    assert await forwarded(stack, partition) == T0 + 3 * HOUR
    async with stack.pool.acquire() as conn:
        assert await conn.fetchval("select count(*) from rating.usage_held") == 0
        seconds = await conn.fetchval("select gpu_seconds from rating.priced_hours where contract_id = 'c-known'")
        assert seconds == 3 * 3600


async def test_held_topups_and_contract_events_can_be_dropped_but_not_released(stack: Stack) -> None:
    feed = Feed(stack, RATING)
    from tests.integration.test_rating_service import contract_terminated, topped_up

    await feed.send(*topped_up("c-none", "50.00", T0, event_id="top-1"))
    await feed.send(*contract_terminated("c-none", T0 + HOUR, event_id="term-1"))
    async with stack.pool.acquire() as conn:
        ids = {i.id for i in await held.list_held(conn, "rating")}
        assert {"rating:topup:top-1", "rating:contract_event:term-1"} <= ids
        for item in ("rating:topup:top-1", "rating:contract_event:term-1"):
            with pytest.raises(OperatorRequestError, match="cannot be released"):
                await held.release(conn, item, reason="x", actor="ops")
    async with stack.pool.acquire() as conn, conn.transaction():
        await held.drop(conn, "rating:topup:top-1", reason="refunded outside Settle", actor="ops")
        dropped = await held.drop(conn, "rating:contract_event:term-1", reason="sent by mistake", actor="ops")
    async with stack.pool.acquire() as conn:
        status, why = await conn.fetchrow("select status, reason from rating.wallet_topups where event_id = 'top-1'")
        assert status == "quarantined" and "refunded outside Settle" in why
        letter = await deadletters.get_dead_letter(conn, dropped.dead_letter_id or -1)
        assert letter is not None and letter["topic"] == topics.CONTRACTS.name
        assert await held.list_held(conn, "rating") == []


async def test_invoicing_held_contract_events_are_listed_counted_and_dropped(stack: Stack) -> None:
    """Invoicing holds an amendment or termination that arrives before its contract, as metering and
    rating do: an operator sees it in ``settle held list`` and can drop it (dead-lettered for invoicing,
    redrivable), not release it."""
    from tests.integration.test_rating_service import contract_terminated

    feed = Feed(stack, INVOICING)
    await feed.send(*contract_terminated("c-late", T0 + HOUR, event_id="term-inv"))
    item = "invoicing:contract_event:term-inv"
    async with stack.pool.acquire() as conn:
        (listed,) = await held.list_held(conn, "invoicing")
        assert listed.id == item and listed.service == "invoicing" and listed.event_time == T0 + HOUR
        assert listed.keys == {"event_id": "term-inv", "event_type": "contract.terminated", "contract_id": "c-late"}
        assert item in {i.id for i in await held.list_held(conn)}
        counts = {c.kind: c.count for c in await held_gauges.count_held(conn, "invoicing")}
        assert counts["contract_event"] == 1
        with pytest.raises(OperatorRequestError, match="cannot be released"):
            await held.release(conn, item, reason="x", actor="ops")
    async with stack.pool.acquire() as conn, conn.transaction():
        dropped = await held.drop(conn, item, reason="contract c-late was cancelled", actor="ops")
    async with stack.pool.acquire() as conn:
        assert await held.list_held(conn, "invoicing") == []
        letter = await deadletters.get_dead_letter(conn, dropped.dead_letter_id or -1)
        assert letter is not None and (letter["consumer"], letter["topic"]) == ("invoicing", topics.CONTRACTS.name)
        assert "dropped from invoicing's hold by ops" in letter["reason"]
        assert (
            await conn.fetchval(
                "select count(*) from settle.inbox where consumer = 'invoicing' and event_id = 'term-inv'"
            )
            == 0
        )
        assert await deadletters.redrive(conn, ids=[dropped.dead_letter_id or -1]) == [dropped.dead_letter_id]
    await feed.send(*contract_terminated("c-late", T0 + HOUR, event_id="term-inv"))
    async with stack.pool.acquire() as conn:
        assert [i.id for i in await held.list_held(conn, "invoicing")] == [item]  # new input: held again


# ====================================================================================================
# metering: held lifecycle events
# ====================================================================================================


async def test_metering_held_events_are_tracked_listed_and_dropped(stack: Stack) -> None:
    feed = Feed(stack, metering_lifecycle())
    await feed.send(
        topics.INFRA_LIFECYCLE,
        "a-1",
        lifecycle("gpu.maintenance.ended", "a-1", T0 + HOUR, event_id="mx-end", window_id="w-1"),
    )
    await feed.send(
        topics.INFRA_LIFECYCLE, "a-2", lifecycle("gpu.allocation.decommissioned", "a-2", T0, event_id="dec-2")
    )
    await feed.send(
        topics.INFRA_LIFECYCLE, "a-3", lifecycle("gpu.outage.ended", "a-3", T0, event_id="out-end", incident_id="i-1")
    )
    provisioned = {
        "contract_id": "c-unknown",
        "renter_id": "r-1",
        "supplier_id": "s-1",
        "server_id": "srv-1",
        "gpu_model": "H100",
        "gpu_count": 4,
    }
    await feed.send(
        topics.INFRA_LIFECYCLE,
        "a-1",
        lifecycle("gpu.allocation.provisioned", "a-1", T0, event_id="prov-1", **provisioned),
    )
    async with stack.pool.acquire() as conn:
        items = {i.id: i for i in await held.list_held(conn, "metering")}
    assert set(items) == {
        "metering:lifecycle_event:mx-end",
        "metering:lifecycle_event:dec-2",
        "metering:lifecycle_event:out-end",
        "metering:allocation:a-1",
    }
    assert items["metering:lifecycle_event:mx-end"].keys["event_type"] == "gpu.maintenance.ended"
    assert items["metering:lifecycle_event:mx-end"].event_time == T0 + HOUR
    assert "decommission before any provisioning" in items["metering:lifecycle_event:dec-2"].reason
    assert items["metering:allocation:a-1"].event_time == T0
    assert "c-unknown" in items["metering:allocation:a-1"].reason

    # Its start arrives: no longer held, and the table follows by itself.
    await feed.send(
        topics.INFRA_LIFECYCLE,
        "a-1",
        lifecycle("gpu.maintenance.started", "a-1", T0, event_id="mx-start", window_id="w-1"),
    )
    async with stack.pool.acquire() as conn:
        ids = {i.id for i in await held.list_held(conn, "metering")}
        assert "metering:lifecycle_event:mx-end" not in ids
        for item in ("metering:lifecycle_event:dec-2", "metering:allocation:a-1"):
            with pytest.raises(OperatorRequestError, match="cannot be released"):
                await held.release(conn, item, reason="x", actor="ops")
        with pytest.raises(OperatorRequestError, match="cannot be dropped"):
            await held.drop(conn, "metering:allocation:a-1", reason="x", actor="ops")
        counts = {c.kind: c.count for c in await held_gauges.count_held(conn, "metering")}
        assert counts == {"lifecycle_event": 2, "contract_event": 0, "allocation": 1}

    async with stack.pool.acquire() as conn, conn.transaction():
        result = await held.drop(conn, "metering:lifecycle_event:out-end", reason="no such incident", actor="ops")
    async with stack.pool.acquire() as conn:
        facts = await conn.fetchval("select facts from metering.allocations where allocation_id = 'a-3'")
        assert [f["event_id"] for f in facts] == []
        assert await conn.fetchval("select count(*) from metering.held_events where event_id = 'out-end'") == 0
        letter = await deadletters.get_dead_letter(conn, result.dead_letter_id or -1)
        assert letter is not None
        assert (letter["consumer"], letter["topic"]) == ("metering", topics.INFRA_LIFECYCLE.name)
        body = json.loads(bytes(letter["value"]))
        assert body["type"] == "gpu.outage.ended" and body["data"] == {"allocation_id": "a-3", "incident_id": "i-1"}
    # A listed event that is not held (a stale row): the drop only corrects the listing, audited as such.
    async with stack.pool.acquire() as conn, conn.transaction():
        await conn.execute(
            """insert into metering.held_events (event_id, allocation_id, kind, at, reason)
               values ('ghost-end', 'a-none', 'maintenance_ended', $1, 'r')""",
            T0,
        )
        stale = await held.drop(conn, "metering:lifecycle_event:ghost-end", reason="cleanup", actor="ops")
        assert stale.dead_letter_id is None and "not held any more" in stale.outcome
        detail = await conn.fetchval("select detail from settle.operator_actions where id = $1", stale.action_id)
        assert detail["stale"] is True
    # The outage's start now opens a window that the dropped end no longer closes.
    await feed.send(
        topics.INFRA_LIFECYCLE,
        "a-3",
        lifecycle("gpu.outage.started", "a-3", T0 + HOUR, event_id="out-start", incident_id="i-1"),
    )
    async with stack.pool.acquire() as conn:
        assert await conn.fetchval("select count(*) from settle.dead_letters where event_id = 'out-start'") == 0
        assert {i.id for i in await held.list_held(conn, "metering")} == {
            "metering:lifecycle_event:dec-2",
            "metering:allocation:a-1",
        }


# ====================================================================================================
# Gauges
# ====================================================================================================


async def test_held_metrics_task_exports_counts_and_oldest_age(stack: Stack) -> None:
    feed = Feed(stack, RATING)
    await feed.send(*usage(Hour("c-gauge", "a-gauge", T0, gpu_count=1)))
    async with stack.pool.acquire() as conn:
        await conn.execute("update rating.usage_held set held_at = now() - interval '7 hours'")
    stop = asyncio.Event()
    settings = Settings(database_url=stack.database_url, held_alert_after_s=3600)
    task = asyncio.create_task(held_gauges.metrics_task("rating")(Runtime(settings, stack.pool, "", stop)))
    for _ in range(100):
        if metrics.HELD_ITEMS.labels("rating", "usage")._value.get() == 1:
            break
        await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(task, 5)
    assert metrics.HELD_ITEMS.labels("rating", "usage")._value.get() == 1
    assert metrics.HELD_OLDEST_AGE.labels("rating", "usage")._value.get() >= 7 * 3600
    assert metrics.HELD_ITEMS.labels("rating", "topup")._value.get() == 0
    assert metrics.HELD_ALERT_AFTER._value.get() == 3600


async def test_metering_gauges_the_latest_tick_it_applied_for_the_silent_clock_alert(stack: Stack) -> None:
    async with stack.pool.acquire() as conn:
        await conn.execute("update metering.clock set target = '2026-12-01T05:00:00Z' where id = 1")
    stop = asyncio.Event()
    settings = Settings(database_url=stack.database_url)
    task = asyncio.create_task(held_gauges.metrics_task("metering")(Runtime(settings, stack.pool, "", stop)))
    want = datetime(2026, 12, 1, 5, tzinfo=UTC).timestamp()
    for _ in range(100):
        if metrics.CLOCK_LATEST_TICK._value.get() == want:
            break
        await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(task, 5)
    assert metrics.CLOCK_LATEST_TICK._value.get() == want


# ====================================================================================================
# Quarantined invoice closes
# ====================================================================================================


async def test_quarantined_closes_are_listed_and_retried_with_an_audit(stack: Stack) -> None:
    async with stack.pool.acquire() as conn:
        await conn.execute(
            """insert into invoicing.contract_state (contract_id, partition, next_period_start, next_close_at,
                                                     blocked_reason)
               values ('c-bad', 0, '2026-03-01Z', '2026-04-01Z', 'R10: negative tax'),
                      ('c-good', 1, '2026-03-01Z', '2026-04-01Z', null)"""
        )
        await conn.execute(
            """insert into invoicing.statements_blocked (supplier_id, currency, month, reason)
               values ('sup-x', 'EUR', '2026-02', 'R12: chargeback split does not sum')"""
        )
        counts = {c.kind: c.count for c in await held_gauges.count_held(conn, "invoicing")}
        assert counts == {"quarantined_close": 1, "blocked_statement": 1, "contract_event": 0}
        (blocked,) = await quarantine.list_blocked_statements(conn)
        assert blocked.as_json() | {"blocked_at": None} == {
            "supplier_id": "sup-x",
            "currency": "EUR",
            "month": "2026-02",
            "reason": "R12: chargeback split does not sum",
            "blocked_at": None,
            "carried_to": None,  # no later statement of the pair yet
        }
        (row,) = await quarantine.list_quarantined(conn)
        assert row.contract_id == "c-bad" and row.reason == "R10: negative tax"
        assert row.as_json()["next_close_at"] == "2026-04-01T00:00:00Z"
        for contract_id, message in (("c-good", "not quarantined"), ("c-nope", "does not know")):
            with pytest.raises(OperatorRequestError, match=message):
                await quarantine.retry(conn, contract_id, reason="x", actor="ops")
    async with stack.pool.acquire() as conn, conn.transaction():
        action_id = await quarantine.retry(conn, "c-bad", reason="tax rate amended", actor="ops")
    async with stack.pool.acquire() as conn:
        assert await quarantine.list_quarantined(conn) == []
        assert {c.kind: c.count for c in await held_gauges.count_held(conn, "invoicing")}["quarantined_close"] == 0
        action = await conn.fetchrow("select * from settle.operator_actions where id = $1", action_id)
        assert (action["action"], action["item_id"], action["reason"]) == (
            "retry",
            "invoicing:close:c-bad",
            "tax rate amended",
        )
        assert action["detail"]["blocked_reason"] == "R10: negative tax"


# ====================================================================================================
# The CLI
# ====================================================================================================


def settle(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return settle_in_process({"SETTLE_DATABASE_URL": stack.database_url, "USER": "cli-operator"}, *args)


async def test_cli_lists_drops_and_retries(stack: Stack) -> None:
    feed = Feed(stack, RATING)
    hour = Hour("c-cli", "a-cli", T0, gpu_count=1)
    await feed.send(*usage(hour))
    async with stack.pool.acquire() as conn:
        await conn.execute(
            """insert into invoicing.contract_state (contract_id, partition, blocked_reason)
               values ('c-blocked', 2, 'bug: division by zero')"""
        )
    item = held.item_id("rating", "usage", f"usage-ev-{hour.usage_id}")

    listed = await asyncio.to_thread(settle, stack, "held", "list", "--service", "rating", "--json")
    assert listed.returncode == 0, listed.stderr
    (doc,) = [json.loads(line) for line in listed.stdout.splitlines()]
    assert doc["id"] == item and doc["status"] == "held" and doc["contract_id"] == "c-cli"
    assert doc["event_time"] == "2026-03-02T11:00:00Z" and doc["received_at"]

    refused = await asyncio.to_thread(settle, stack, "held", "release", "metering:allocation:x", "--reason", "r")
    assert refused.returncode == 2 and "cannot be released" in refused.stderr
    dropped = await asyncio.to_thread(settle, stack, "held", "drop", item, "--reason", "test contract")
    assert dropped.returncode == 0, dropped.stderr
    assert "dropped" in dropped.stdout and "dead letter" in dropped.stdout

    blocked = await asyncio.to_thread(settle, stack, "invoices", "quarantine", "list", "--json")
    assert blocked.returncode == 0, blocked.stderr
    assert [json.loads(line)["contract_id"] for line in blocked.stdout.splitlines()] == ["c-blocked"]
    retried = await asyncio.to_thread(settle, stack, "invoices", "quarantine", "retry", "c-blocked")
    assert retried.returncode == 0, retried.stderr

    audit = await asyncio.to_thread(settle, stack, "audit", "--json")
    actions = [json.loads(line) for line in audit.stdout.splitlines()]
    assert [(a["action"], a["item_id"], a["actor"]) for a in actions] == [
        ("retry", "invoicing:close:c-blocked", "cli-operator"),
        ("drop", item, "cli-operator"),
    ]


# ====================================================================================================
# Migration 0040 on a database with data
# ====================================================================================================


async def test_migration_backfills_held_events_from_stored_facts(servers: Servers, tmp_path: Path) -> None:
    """Allocations stored before 0040: their held events (a decommission without a provisioning, a
    window end without its start) land in metering.held_events; accepted ones do not."""
    folder = tmp_path / "migrations"
    folder.mkdir()
    for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
        if path.name < "0040":
            shutil.copy(path, folder / path.name)
    name = f"settle_t_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(servers.admin_dsn)
    await admin.execute(f'create database "{name}"')
    try:
        pool = await create_pool(with_database(servers.admin_dsn, name), max_size=2)
        try:
            async with pool.acquire() as conn:
                await migrate(conn, folder)

                def fact(event_id: str, kind: str, hour: int, window_id: str | None = None) -> dict[str, Any]:
                    provision = None
                    if kind == "provisioned":
                        provision = {
                            "contract_id": "c",
                            "renter_id": "r",
                            "supplier_id": "s",
                            "server_id": "x",
                            "gpu_model": "H100",
                            "gpu_count": 1,
                        }
                    at = (T0 + hour * HOUR).isoformat().replace("+00:00", "Z")
                    return {
                        "event_id": event_id,
                        "kind": kind,
                        "at": at,
                        "window_id": window_id,
                        "provision": provision,
                        "arrival_seq": hour,
                    }

                await conn.execute(
                    """insert into metering.allocations (allocation_id, facts, contract_id)
                       values ('a', $1, null), ('b', $2, 'c')""",
                    [fact("dec", "decommissioned", 0)],
                    [
                        fact("prov", "provisioned", 0),
                        fact("m-end", "maintenance_ended", 2, "w"),
                        fact("o-start", "outage_started", 1, "i"),
                        fact("o-end", "outage_ended", 3, "i"),
                    ],
                )
                applied = await migrate(conn)  # 0040, then whatever later migrations exist
                assert applied[0] == "0040_operations.sql" and all(n > "0040" for n in applied)
                rows = await conn.fetch("select event_id, allocation_id, kind from metering.held_events order by 1")
                assert [tuple(r) for r in rows] == [("dec", "a", "decommissioned"), ("m-end", "b", "maintenance_ended")]
        finally:
            await pool.close()
    finally:
        await admin.execute(f'drop database if exists "{name}" with (force)')
        await admin.close()
