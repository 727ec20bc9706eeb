"""Fuzz the platform's input topics: 10,000 malformed messages — bad JSON, invalid UTF-8, empty bodies
and tombstones, JSON that is not an object, missing or wrong CloudEvents attributes, unknown types,
data that fails its schema or has wrong types, impossible, ancient and far-future times, payloads at
and over the 64 KiB limit — interleaved with valid contracts, allocations, top-ups and samples,
published with the real producer to the real broker while metering and rating run.

Every malformed message is dead-lettered by every consumer group that reads its topic, with a reason
that names what is wrong (table and ``<topic>.dlq`` topic); no partition stops (no gap, no lag); every
valid message has its effect; the ledger verifies. A second test redrives dead letters and checks that
the redriven events keep their original event ids. (README, "Fuzzing the inputs".)
"""

from __future__ import annotations

import asyncio
import json
import os
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from libs import limits
from libs.errors import InvalidEventError
from libs.ledger import verify
from libs.messaging.broker import read_all
from libs.messaging.envelope import decode_data, decode_raw
from libs.settings import get_settings
from schemas import topics
from services.cli.main import build_app
from services.metering.main import SERVICE as METERING
from services.rating.main import SERVICE as RATING
from tests.conftest import Stack
from tests.fleet import event_bytes, publish, read_topic, running, wait_until
from tools.fleet import consumer_lag

pytestmark = [pytest.mark.integration, pytest.mark.fuzz]

MALFORMED = 10_000
VALID_CONTRACTS = 40
SAMPLES_PER_ALLOCATION = 10
T0 = datetime(2026, 12, 1, tzinfo=UTC)
INPUTS = (topics.INFRA_LIFECYCLE, topics.CONTRACTS, topics.WALLETS, topics.USAGE_SAMPLES)
READERS = {  # consumer groups of metering and rating that read each input topic
    topics.INFRA_LIFECYCLE.name: ("metering",),
    topics.CONTRACTS.name: ("metering", "rating"),
    topics.WALLETS.name: ("rating",),
    topics.USAGE_SAMPLES.name: ("metering-samples",),
}
ENVELOPE = "not a valid CloudEvents 1.0 envelope"
SCHEMA = "data fails its schema"
NOT_JSON = "not JSON"


# --- valid inputs ---------------------------------------------------------------------------------------------
def _contract(cid: str) -> dict[str, Any]:
    return {
        "contract_id": cid,
        "renter_id": f"r-{cid}",
        "currency": "USD",
        "billing_mode": "prepaid",
        "price_per_gpu_hour": "2.00",
        "supplier_rate_per_gpu_hour": "1.50",
        "commitment_per_period": "0",
        "credit_limit": None,
        "sla_tiers": [],
        "tax_rate": "0",
        "starts_at": "2026-12-01T00:00:00Z",
        "ends_at": None,
        "billing_anchor_day": 1,
    }


def _provisioned(aid: str, cid: str) -> dict[str, Any]:
    return {
        "allocation_id": aid,
        "contract_id": cid,
        "renter_id": f"r-{cid}",
        "supplier_id": "s-1",
        "server_id": f"srv-{aid}",
        "gpu_model": "H100",
        "gpu_count": 2,
    }


def _topup(cid: str, n: int) -> dict[str, Any]:
    return {"contract_id": cid, "amount": "100.00", "currency": "USD", "payment_ref": f"pay-{n}"}


def _sample(aid: str) -> dict[str, Any]:
    return {"allocation_id": aid, "meter": "egress_gb", "quantity": "0.25"}


def valid_items() -> list[tuple[topics.Topic, str, bytes]]:
    items: list[tuple[topics.Topic, str, bytes]] = []
    for n in range(VALID_CONTRACTS):
        cid, aid = f"fz-c-{n}", f"fz-a-{n}"
        at = T0 + timedelta(hours=1)
        items.append((topics.CONTRACTS, cid, event_bytes("contract.created", _contract(cid), id=f"fz-cc-{n}", time=T0)))
        items.append(
            (
                topics.INFRA_LIFECYCLE,
                aid,
                event_bytes("gpu.allocation.provisioned", _provisioned(aid, cid), id=f"fz-p-{n}", time=at),
            )
        )
        items.append((topics.WALLETS, cid, event_bytes("wallet.topped_up", _topup(cid, n), id=f"fz-t-{n}", time=at)))
        for s in range(SAMPLES_PER_ALLOCATION):
            when = at + timedelta(minutes=5 * s)
            items.append(
                (
                    topics.USAGE_SAMPLES,
                    aid,
                    event_bytes("usage.sample.recorded", _sample(aid), id=f"fz-s-{n}-{s}", time=when),
                )
            )
    return items


# --- malformed inputs -----------------------------------------------------------------------------------------
TEMPLATES: dict[str, tuple[str, Callable[[str], dict[str, Any]]]] = {
    topics.INFRA_LIFECYCLE.name: ("gpu.allocation.provisioned", lambda key: _provisioned(key, "fz-c-0")),
    topics.CONTRACTS.name: ("contract.created", _contract),
    topics.WALLETS.name: ("wallet.topped_up", lambda key: _topup(key, 0)),
    topics.USAGE_SAMPLES.name: ("usage.sample.recorded", _sample),
}


@dataclass(frozen=True)
class Malformed:
    category: str
    topic: topics.Topic
    key: str
    value: bytes | None
    reason: str
    """A fragment the dead letter's reason must contain."""


def _envelope(topic: topics.Topic, key: str, n: int, **changes: Any) -> dict[str, Any]:
    type_, data = TEMPLATES[topic.name]
    document: dict[str, Any] = {
        "specversion": "1.0",
        "id": f"fuzz-{n}",
        "source": "/fuzz",
        "type": type_,
        "time": "2026-12-01T10:00:00Z",
        "datacontenttype": "application/json",
        "data": data(key),
    }
    document.update(changes)
    return document


def _json(document: Any) -> bytes:
    return orjson.dumps(document)


def _without(document: dict[str, Any], *names: str) -> dict[str, Any]:
    return {k: v for k, v in document.items() if k not in names}


def _data_change(topic: topics.Topic, key: str, n: int, **changes: Any) -> bytes:
    document = _envelope(topic, key, n)
    document["data"] = {**document["data"], **changes}
    return _json(document)


def _padded(topic: topics.Topic, key: str, n: int, size: int) -> bytes:
    """A message of exactly ``size`` bytes whose data has one oversized text field."""
    field = {"infra.lifecycle.v1": "server_id", "contracts.v1": "renter_id"}.get(topic.name, "contract_id")
    if topic.name == topics.USAGE_SAMPLES.name:
        field = "allocation_id"
    bare = _data_change(topic, key, n, **{field: ""})
    return _data_change(topic, key, n, **{field: "x" * (size - len(bare))})


def _data_without(topic: topics.Topic, key: str, n: int, rng: random.Random) -> bytes:
    """The envelope with one of its data's required fields left out."""
    document = _envelope(topic, key, n)
    model = topic.model_for(document["type"])
    assert model is not None
    required = sorted(name for name, field in model.model_fields.items() if field.is_required())
    left_out = rng.choice(required)
    document["data"] = {k: v for k, v in document["data"].items() if k != left_out}
    return _json(document)


Maker = Callable[[topics.Topic, str, int, random.Random], tuple[bytes | None, str]]
_WRONG_DATA_TYPES: dict[str, list[dict[str, Any]]] = {
    "infra.lifecycle.v1": [{"gpu_count": "eight"}, {"gpu_count": 1.5}, {"gpu_count": 0}, {"allocation_id": 17}],
    "contracts.v1": [
        {"price_per_gpu_hour": 2.0},  # a JSON number for an amount is refused
        {"currency": "XXQ"},
        {"billing_anchor_day": 31},
        {"sla_tiers": "none"},
        {"starts_at": "2150-01-01T00:00:00Z"},  # a far-future time inside data
        {"starts_at": "1969-07-20T20:17:40Z"},  # an ancient one
    ],
    "wallets.v1": [{"amount": 100}, {"amount": "-5.00"}, {"amount": "1e3"}, {"currency": None}],
    "usage.samples.v1": [{"quantity": 0.25}, {"quantity": "-1"}, {"quantity": "0.0000001"}, {"meter": "Egress GB"}],
}
MAKERS: dict[str, Maker] = {
    "truncated JSON": lambda t, k, n, r: (_json(_envelope(t, k, n))[: r.randint(1, 60)], NOT_JSON),
    "random bytes": lambda t, k, n, r: (b"\x00" + r.randbytes(r.randint(0, 300)), NOT_JSON),
    "invalid UTF-8": lambda t, k, n, r: (
        _json(_envelope(t, k, n, source="/fuzz-@")).replace(b"/fuzz-@", b"/fuzz-\xff\xfe\xc3"),
        NOT_JSON,
    ),
    "empty body": lambda t, k, n, r: (b"", NOT_JSON),
    "tombstone": lambda t, k, n, r: (None, "empty message (tombstone)"),
    "not an object": lambda t, k, n, r: (
        r.choice([b"[]", b"42", b'"event"', b"null", b"true", b"[[[[1]]]]"]),
        "not a CloudEvent: the JSON is a",
    ),
    "deep nesting": lambda t, k, n, r: (b"[" * 2000 + b"]" * 2000, "depth limit exceeded"),
    "no specversion": lambda t, k, n, r: (_json(_without(_envelope(t, k, n), "specversion")), "no 'specversion'"),
    "other specversion": lambda t, k, n, r: (_json(_envelope(t, k, n, specversion="0.3")), ENVELOPE),
    "missing attribute": lambda t, k, n, r: (
        _json(_without(_envelope(t, k, n), r.choice(["id", "source", "type", "time", "data"]))),
        ENVELOPE,
    ),
    "wrong attribute type": lambda t, k, n, r: (
        _json(
            _envelope(
                t,
                k,
                n,
                **r.choice(
                    [
                        {"id": n},
                        {"id": "has spaces"},
                        {"id": "x" * (limits.MAX_ID_CHARS + 1)},
                        {"time": 1764547200},
                        {"data": [1, 2]},
                        {"data": "text"},
                        {"datacontenttype": "text/xml"},
                        {"schemaversion": 0},
                    ]
                ),
            )
        ),
        ENVELOPE,
    ),
    "impossible time": lambda t, k, n, r: (
        _json(
            _envelope(
                t,
                k,
                n,
                time=r.choice(
                    ["2026-13-01T00:00:00Z", "yesterday", "2026-12-01T00:00:00+02:00", "2026-12-01 10:00:00", ""]
                ),
            )
        ),
        ENVELOPE + ": time",
    ),
    "far-future time": lambda t, k, n, r: (
        _json(
            _envelope(t, k, n, time=r.choice(["9999-12-31T23:59:59Z", "2100-01-01T00:00:00Z", "3026-12-01T00:00:00Z"]))
        ),
        "outside the years 2000–2099",
    ),
    "ancient time": lambda t, k, n, r: (
        _json(
            _envelope(t, k, n, time=r.choice(["1970-01-01T00:00:00Z", "0001-01-01T00:00:00Z", "1999-12-31T23:59:59Z"]))
        ),
        "outside the years 2000–2099",
    ),
    "unknown type": lambda t, k, n, r: (
        _json(_envelope(t, k, n, type=r.choice(["gpu.allocation.exploded", "contract.deleted", "x"]))),
        "is not one of",
    ),
    "missing data field": lambda t, k, n, r: (_data_without(t, k, n, r), SCHEMA),
    "wrong data type": lambda t, k, n, r: (_data_change(t, k, n, **r.choice(_WRONG_DATA_TYPES[t.name])), SCHEMA),
    "near the size limit": lambda t, k, n, r: (
        _padded(
            t,
            k,
            n,
            r.choice([limits.MAX_EVENT_BYTES, r.randint(limits.MAX_EVENT_BYTES - 4096, limits.MAX_EVENT_BYTES)]),
        ),
        SCHEMA,
    ),
    "over the size limit": lambda t, k, n, r: (
        _padded(t, k, n, r.choice([limits.MAX_EVENT_BYTES + 1, r.randint(limits.MAX_EVENT_BYTES + 2, 300_000)])),
        f"the limit is {limits.MAX_EVENT_BYTES}",
    ),
}
SIZE_CATEGORIES = {"near the size limit", "over the size limit"}
SIZED_EVERY = 25
"""Only one message in 25 is a big one (~3 MiB of the 10,000 are at or over the limit)."""


def malformed_items(count: int = MALFORMED, seed: int = 12) -> list[Malformed]:
    rng = random.Random(seed)
    small = [name for name in MAKERS if name not in SIZE_CATEGORIES]
    sized = sorted(SIZE_CATEGORIES)
    made = []
    for n in range(count):
        category = sized[(n // SIZED_EVERY) % 2] if n % SIZED_EVERY == 0 else small[n % len(small)]
        topic = INPUTS[n % len(INPUTS)]
        key = f"fuzz-{n}"
        value, reason = MAKERS[category](topic, key, n, rng)
        made.append(Malformed(category, topic, key, value, reason))
    return made


def _refusal(item: Malformed) -> str:
    """What consume's decoding says about one message (raises if it is accepted)."""
    try:
        raw = decode_raw(item.value)
        model = item.topic.model_for(raw.type)
        if model is None:
            return f"event type {raw.type!r} is not one of {item.topic.name}'s types"
        decode_data(raw, model)
    except InvalidEventError as error:
        return error.reason
    raise AssertionError(f"{item.category} message was accepted: {item.value!r:.300}")


def test_every_malformed_message_is_refused_by_decoding_with_its_reason() -> None:
    """The generator's own check, without a broker: every category is refused for the stated reason."""
    items = malformed_items()
    assert len(items) == MALFORMED
    assert set(Counter(i.category for i in items)) == set(MAKERS)
    for item in items:
        reason = _refusal(item)
        assert item.reason in reason, (item.category, reason)
    sizes = [len(i.value) for i in items if i.category in SIZE_CATEGORIES and i.value is not None]
    assert max(sizes) > limits.MAX_EVENT_BYTES and limits.MAX_EVENT_BYTES in sizes


def _interleave(valid: list[Any], malformed: list[Any]) -> list[Any]:
    step = len(malformed) // len(valid) + 1
    mixed: list[Any] = []
    for n, item in enumerate(valid):
        mixed.extend(malformed[n * step : (n + 1) * step])
        mixed.append(item)
    mixed.extend(malformed[len(valid) * step :])
    return mixed


async def _count(stack: Stack, sql: str) -> int:
    return int(await stack.pool.fetchval(sql))


async def test_ten_thousand_malformed_messages_are_dead_lettered_and_nothing_stops(stack: Stack) -> None:
    malformed = malformed_items()
    valid = valid_items()
    expected_letters = Counter(
        (consumer, item.topic.name) for item in malformed for consumer in READERS[item.topic.name]
    )
    await publish(
        stack,
        _interleave(valid, [(m.topic, m.key, m.value) for m in malformed]),  # type: ignore[misc]
    )
    services = [METERING, RATING]

    async def settled() -> bool:
        letters = await _count(stack, "select count(*) from settle.dead_letters")
        unsent = await _count(stack, "select count(*) from settle.outbox where sent_at is null")
        lag = await consumer_lag(stack.pool, stack.bootstrap_servers, services, stack.settings.topic_prefix)
        return letters >= sum(expected_letters.values()) and unsent == 0 and lag == 0

    async with running(stack, services, relays=2):
        await wait_until(settled, timeout_s=120, what="every message consumed and every dead letter published")

    # No partition stopped: no gap, nothing left unread (checked above), every group still leasing.
    assert await _count(stack, "select count(*) from settle.consumer_gaps") == 0
    # Each malformed message is dead-lettered once by each group that reads its topic, with its reason.
    rows = await stack.pool.fetch(
        "select consumer, topic, key, error_class, reason, value from settle.dead_letters order by id"
    )
    assert Counter((r["consumer"], r["topic"]) for r in rows) == expected_letters
    by_key = {m.key: m for m in malformed}
    for row in rows:
        item = by_key[bytes(row["key"]).decode()]  # only malformed messages (never a valid one) are here
        assert row["topic"] == item.topic.name
        assert row["error_class"] == "InvalidEventError", row["reason"]
        assert item.reason in row["reason"], (item.category, row["reason"])
        assert (None if row["value"] is None else bytes(row["value"])) == item.value  # the original bytes
    # ... and published to <topic>.dlq (the kernel's dead-letter topics).
    dlq_records = 0
    for topic in INPUTS:
        physical = stack.settings.topic_prefix + topic.dlq
        dlq_records += len(await read_all(stack.bootstrap_servers, physical, topics.DLQ_PARTITIONS, timeout_s=60))
    assert dlq_records == len(rows)

    # The valid messages had their effect.
    assert await _count(stack, "select count(*) from metering.contracts where contract_id like 'fz-c-%'") == 40
    assert await _count(stack, "select count(*) from rating.contracts where contract_id like 'fz-c-%'") == 40
    assert await _count(stack, "select count(*) from metering.allocations where contract_id like 'fz-c-%'") == 40
    samples = await stack.pool.fetch(
        "select allocation_id, sum(quantity) as total from metering.samples group by allocation_id"
    )
    assert {r["allocation_id"]: r["total"] for r in samples} == {
        f"fz-a-{n}": Decimal("0.25") * SAMPLES_PER_ALLOCATION for n in range(VALID_CONTRACTS)
    }
    assert (
        await _count(stack, "select count(*) from rating.wallet_topups where status in ('received', 'applied')")
        == VALID_CONTRACTS
    )
    async with stack.pool.acquire() as conn:
        report = await verify(conn)
        topup_entries = await conn.fetchval("select count(*) from ledger.entries where kind = 'rating.wallet_topup'")
    assert report.ok, report
    assert topup_entries == VALID_CONTRACTS


def _settle(stack: Stack, *args: str) -> str:
    """Run a `settle` verb in this process against the test's stack; its output (exit status 0)."""
    env: dict[str, str | None] = {k: None for k in os.environ if k.startswith("SETTLE_")}
    env.update(
        SETTLE_DATABASE_URL=stack.database_url,
        SETTLE_KAFKA_BOOTSTRAP_SERVERS=stack.bootstrap_servers,
        SETTLE_TOPIC_PREFIX=stack.settings.topic_prefix,
        SETTLE_STATE_DIR=str(stack.settings.state_dir),
        NO_COLOR="1",
    )
    get_settings.cache_clear()
    try:
        done = CliRunner().invoke(build_app(), list(args), env=env)
    finally:
        get_settings.cache_clear()
    assert done.exit_code == 0, (args, done.stdout, done.stderr, done.exception)
    return done.stdout


async def test_a_top_up_id_sent_again_with_other_data_has_no_effect_and_holds_nothing(stack: Stack) -> None:
    """R2's "an id already seen has no effect", on a platform input: a top-up id sent again with another
    amount is dead-lettered as an id conflict with its reason, the first one stands, and the contract's
    later top-ups apply (platform inputs hold no key; until 2026-12-08, second session, they waited behind
    the conflict for an operator)."""
    cid = "fz-c-conflict"
    first = _topup(cid, 1)
    items: list[tuple[topics.Topic, str, bytes]] = [
        (topics.CONTRACTS, cid, event_bytes("contract.created", _contract(cid), id="fz-cc2", time=T0)),
        (topics.WALLETS, cid, event_bytes("wallet.topped_up", first, id="fz-dup", time=T0)),
    ]
    await publish(stack, items)

    async def topups(n: int) -> bool:
        return await _count(stack, f"select count(*) from rating.wallet_topups where contract_id = '{cid}'") == n

    async with running(stack, [RATING]):
        await wait_until(lambda: topups(1), what="the first top-up applied")
        other = first | {"amount": str(Decimal(first["amount"]) + 1)}
        await publish(stack, [(topics.WALLETS, cid, event_bytes("wallet.topped_up", other, id="fz-dup", time=T0))])
        await wait_until(
            lambda: _count(stack, "select count(*) from settle.dead_letters where event_id = 'fz-dup'"),
            what="the repeat dead-lettered",
        )
        later = [
            (topics.WALLETS, cid, event_bytes("wallet.topped_up", _topup(cid, n), id=f"fz-after-{n}", time=T0))
            for n in (2, 3)
        ]
        await publish(stack, later)
        await wait_until(lambda: topups(3), what="the later top-ups applied")
    letter = await stack.pool.fetchrow("select error_class, reason from settle.dead_letters where event_id = 'fz-dup'")
    assert letter["error_class"] == "IdempotencyConflictError" and "different payload" in letter["reason"]
    amounts = await stack.pool.fetch(f"select event_id from rating.wallet_topups where contract_id = '{cid}'")
    assert sorted(r["event_id"] for r in amounts) == ["fz-after-2", "fz-after-3", "fz-dup"]


async def test_settle_dlq_redrive_keeps_the_original_event_ids(stack: Stack) -> None:
    """A broken top-up of a contract is dead-lettered and holds nothing: the contract's later top-ups apply
    at once (R8 follows event time, so they need not wait for it; until 2026-12-08, second session, they
    waited behind it as held dead letters until an operator acted, and the wallet lacked their money). The
    operator drops the broken one (`settle dlq drop`, reason kept). A malformed message redriven as it is
    (`settle dlq redrive`) goes back with its own id and bytes and is dead-lettered again under that id."""
    cid = "fz-c-redrive"
    broken = _topup(cid, 99) | {"amount": 100}  # a JSON number for an amount: dead-lettered
    bad_topup = _topup("fz-other", 9) | {"amount": "-1"}
    items: list[tuple[topics.Topic, str, bytes]] = [
        (topics.CONTRACTS, cid, event_bytes("contract.created", _contract(cid), id="fz-cc", time=T0)),
        (topics.WALLETS, cid, event_bytes("wallet.topped_up", broken, id="fz-broken", time=T0)),
        *[
            (topics.WALLETS, cid, event_bytes("wallet.topped_up", _topup(cid, n), id=f"fz-later-{n}", time=T0))
            for n in range(3)
        ],
        (topics.WALLETS, "fz-other", event_bytes("wallet.topped_up", bad_topup, id="fz-bad-topup", time=T0)),
    ]
    await publish(stack, items)

    async def letters(n: int) -> bool:
        return await _count(stack, "select count(*) from settle.dead_letters where consumer = 'rating'") >= n

    async def applied() -> bool:
        return await _count(stack, f"select count(*) from rating.wallet_topups where contract_id = '{cid}'") == 3

    async with running(stack, [RATING]):
        await wait_until(lambda: letters(2), what="the broken top-up and the bad one dead-lettered")
        await wait_until(applied, what="the later top-ups applied without waiting")
        rows = await stack.pool.fetch(
            "select id, event_id, held_by from settle.dead_letters where consumer = 'rating' order by id"
        )
        assert sorted(r["event_id"] for r in rows) == ["fz-bad-topup", "fz-broken"]
        assert all(r["held_by"] is None for r in rows)
        assert await _count(stack, "select count(*) from settle.key_holds where consumer = 'rating'") == 0
        root = next(r for r in rows if r["event_id"] == "fz-broken")
        bad = next(r for r in rows if r["event_id"] == "fz-bad-topup")
        out = await asyncio.to_thread(_settle, stack, "dlq", "drop", str(root["id"]), "--reason", "paid twice")
        assert f"dead letter {root['id']} dropped; 0 held message(s) redriven" in out, out
        out = await asyncio.to_thread(_settle, stack, "dlq", "redrive", str(bad["id"]))
        assert f"redriven 1 dead letter(s): {bad['id']}" in out
        await wait_until(lambda: letters(3), what="the bad one dead-lettered again")
    topups = await stack.pool.fetch(f"select event_id from rating.wallet_topups where contract_id = '{cid}'")
    assert sorted(r["event_id"] for r in topups) == [f"fz-later-{n}" for n in range(3)]
    dropped = await stack.pool.fetchrow("select drop_reason from settle.dead_letters where id = $1", root["id"])
    assert dropped["drop_reason"] == "paid twice"
    again = await stack.pool.fetch(
        "select id, event_id, value, reason from settle.dead_letters where event_id = 'fz-bad-topup' order by id"
    )
    assert [r["event_id"] for r in again] == ["fz-bad-topup", "fz-bad-topup"]
    assert bytes(again[0]["value"]) == bytes(again[1]["value"]) and SCHEMA in again[1]["reason"]
    # On the topic: the redriven message is there twice — published, then redriven — with one id.
    wallets = await read_topic(stack, topics.WALLETS)
    ids = Counter(json.loads(r.value)["id"] for r in wallets)
    assert ids == {**{f"fz-later-{n}": 1 for n in range(3)}, "fz-bad-topup": 2, "fz-broken": 1}
