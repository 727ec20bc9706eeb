"""The billing fleet under SIGKILL: the same input log, billed calm and while workers are killed.

:func:`drive` runs metering, rating and invoicing as `settle run` processes and feeds them a demo
marketplace in a fixed order — the events of the first month, the first month's closing tick, the
rest of the input, the second month's closing tick — while (with ``kill``) a random worker is
SIGKILLed and restarted every few seconds: mid-batch, mid-close, mid-relay. Then the killing stops,
the fleet drains, every tick is sent again and the late events follow. Because a tick closes only
what was published before it (its barrier) and every effect is exactly once, the documents must
equal those of the calm run, the ledger must verify and no partition may be left with a gap.

Used by `settle bench chaos` (demo-sized, with a backlog larger than the mock broker kept) and by
``tests/chaos/test_billing_chaos.py`` (smaller).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import orjson
from aiokafka import AIOKafkaProducer

from libs.ids import derive_id
from libs.ledger import verify
from libs.messaging.broker import publish_keyed, read_all, start_producer, stop_client
from libs.settings import Settings
from schemas import topics
from schemas.envelope import encode
from schemas.inputs import PayeeUpdated, PaymentReceived
from services import catalog
from services.clock.main import publish_tick
from services.operations import saga_check
from services.operations.compare import naming_corrected_invoice
from tools.demo.scenario import PLATFORM, Delivery, Scenario, deliveries_as_items, month_after
from tools.demo.settlement import payout_work
from tools.demo.settlement import worker_env_extra as payout_files_env
from tools.fleet import ROOT, wait_idle, worker_env

FLEET = ("metering", "rating", "invoicing")
SETTLEMENT_FLEET = (*FLEET, "payments", "payouts", "saga")
"""With ``settle``: the whole fleet, money included (payments applies wires only: no gateway is built)."""
IDLE_TIMEOUT_S = 900.0
VOLATILE_FIELDS = frozenset({"number", "credit_note_number"})
"""Assigned in close order (gapless per series): the same set of numbers, not the same owner."""


@dataclass
class ChaosResult:
    invoices: dict[str, Any]
    statements: dict[str, Any]
    settlement: dict[str, Any]
    """With ``settle``: payment status per invoice, payouts, sagas (by contract and period)."""
    kills: int
    elapsed_s: float
    ledger_ok: bool
    open_gaps: int
    dead_letters: int
    saga_violations: list[str] = field(default_factory=list)
    """With ``settle``: where a saga's state and payments, payouts or the ledger part (``settle sagas verify``)."""
    largest_partition_bytes: dict[str, int] = field(default_factory=dict)


class Fleet:
    """`settle run <worker> --relays 1` processes that can be SIGKILLed and restarted."""

    def __init__(self, env: Mapping[str, str], log_dir: Path, names: Sequence[str] = FLEET) -> None:
        self.env = dict(env)
        self.names = tuple(names)
        self.log_dir = log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.kills = 0

    def start(self, name: str) -> None:
        log = (self.log_dir / f"{name}.log").open("ab")
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "services.cli.main", "run", name, "--relays", "1"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        log.close()

    def kill(self, name: str) -> None:
        process = self.procs[name]
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait(10)
            self.kills += 1
        self.start(name)

    def check_alive(self) -> None:
        for name, process in self.procs.items():
            if process.poll() is not None:
                raise RuntimeError(f"worker {name} exited with status {process.returncode} (see {self.log_dir})")

    def stop(self) -> None:
        for process in self.procs.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.procs.values():
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)


@contextlib.contextmanager
def running_fleet(env: Mapping[str, str], log_dir: Path, names: Sequence[str] = FLEET) -> Iterator[Fleet]:
    fleet = Fleet(env, log_dir, names)
    try:
        for name in fleet.names:
            fleet.start(name)
        yield fleet
    finally:
        fleet.stop()


def split_at(deliveries: list[Delivery], instant: datetime) -> tuple[list[Delivery], list[Delivery]]:
    """Deliveries of events that happened before ``instant`` (and unreadable ones), then the rest."""
    before: list[Delivery] = []
    after: list[Delivery] = []
    for d in deliveries:
        try:
            happened = datetime.fromisoformat(str(orjson.loads(d.value)["time"]).replace("Z", "+00:00"))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            before.append(d)
            continue
        (before if happened < instant else after).append(d)
    return before, after


async def _publish(producer: AIOKafkaProducer, prefix: str, deliveries: list[Delivery], chunks: int) -> None:
    """Publish in ``chunks`` steps with a pause between them, so kills land while input arrives."""
    step = max(1, -(-len(deliveries) // chunks))
    for start in range(0, len(deliveries), step):
        await publish_keyed(producer, deliveries_as_items(deliveries[start : start + step]), prefix=prefix)
        await asyncio.sleep(0.3)


async def _killer(fleet: Fleet, rng: random.Random, interval_s: tuple[float, float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), rng.uniform(*interval_s))
        if stop.is_set():
            return
        await asyncio.to_thread(fleet.kill, rng.choice(fleet.names))


async def wait_quiet(
    pool: asyncpg.Pool,
    settings: Settings,
    bootstrap: str,
    fleet: Fleet,
    also_busy: Callable[[asyncpg.Pool], Awaitable[int]] | None = None,
) -> None:
    """Until nothing is left to consume, publish or close (tools.fleet.wait_idle), nor ``also_busy``, every
    worker alive."""
    services = [catalog.load(name) for name in fleet.names]
    await wait_idle(
        pool,
        bootstrap,
        services,
        topic_prefix=settings.topic_prefix,
        timeout_s=IDLE_TIMEOUT_S,
        alive=list(fleet.procs.values()),
        also_busy=also_busy,
    )


ACH_ACCOUNT = {"holder_name": "Demo Data Center", "routing_number": "021000021", "account_number": "000123456789"}
PAYOUT_RATES = {"EUR": ("1.0842", "1.0901"), "JPY": ("0.0067", "0.0066")}
"""1 EUR / 1 JPY in USD, as of the first month's start and the day after its close."""


def settlement_roles(scenario: Scenario) -> tuple[str | None, str | None]:
    """(the pay-when-paid supplier, the supplier with a minimum nobody reaches): the first two suppliers
    that have servers in the scenario."""
    busy: set[str] = set()
    for d in scenario.initial:
        with contextlib.suppress(orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            busy.add(orjson.loads(d.value)["data"]["supplier_id"])
    active = [s for s in scenario.suppliers if s in busy] + [None, None]
    return active[0], active[1]


def settlement_inputs(scenario: Scenario) -> list[Delivery]:
    """The money inputs of a settlement run, derived from the scenario without randomness: every supplier
    paid in USD by ACH (:func:`settlement_roles`: one pay-when-paid, one with a minimum nobody reaches), direct rates
    to USD for the other statement currencies (one change after the first close), and a wire from every
    other renter of a postpaid contract three weeks into the second month (R11 applies it oldest first; the
    first of them sends far more than it owes, leaving a credit balance)."""
    out: list[Delivery] = []

    def event(topic: str, key: str, type_: str, data: dict[str, Any], at: datetime) -> Delivery:
        body = orjson.dumps(data, option=orjson.OPT_SORT_KEYS)
        event_id = derive_id("chaos-settlement", scenario.tag, topic, type_, body, at.isoformat())
        return Delivery(topic, key, encode(event_id=event_id, source=PLATFORM, type=type_, time=at, data=data))

    pay_when_paid, minimum = settlement_roles(scenario)
    for supplier in scenario.suppliers:
        data = PayeeUpdated(
            supplier_id=supplier,
            payout_currency="USD",
            rail="ach",
            account=ACH_ACCOUNT,
            minimum_payout="1000000" if supplier == minimum else "0",
            pay_when_paid=supplier == pay_when_paid,
            on_hold=False,
        ).model_dump(mode="json", exclude_none=True)
        out.append(event(topics.SUPPLIERS.name, supplier, "supplier.payee_updated", data, scenario.start))
    close = month_after(scenario.start)
    for currency, rates in PAYOUT_RATES.items():
        for n, (rate, at) in enumerate(zip(rates, (scenario.start, close + timedelta(days=1)), strict=True)):
            data = {"rate_id": f"{scenario.tag}-{currency.lower()}-usd-{n}", "base": currency, "quote": "USD",
                    "rate": rate, "as_of": at.strftime("%Y-%m-%dT%H:%M:%SZ")}  # fmt: skip
            out.append(event(topics.FX_RATES.name, f"{currency}/USD", "fx.rate", data, at))
    postpaid = sorted({(c["renter_id"], c["currency"]) for c in scenario.contracts if c["billing_mode"] == "postpaid"})
    received = close + timedelta(days=21)
    for n, (renter, currency) in enumerate(postpaid[::2]):
        amount = "15000" if currency == "JPY" else "150.00"
        if n == 0:  # more than it owes: the rest is a credit balance that pays its next invoices as issued
            amount = "1500000" if currency == "JPY" else "15000.00"
        data = PaymentReceived(
            renter_id=renter,
            receipt_id=f"{scenario.tag}-wire-{renter}-{currency}",
            amount=amount,
            currency=currency,
            received_at=received,
            rail="wire",
        ).model_dump(mode="json")
        out.append(event(topics.PAYMENTS_RECEIVED.name, renter, "payment.received", data, received))
    return out


def _normalized(document: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in document.items() if k not in VOLATILE_FIELDS}


async def collect(pool: asyncpg.Pool) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every invoice (and credit note) by contract and period, every statement by supplier, currency, month."""
    invoices: dict[str, Any] = {}
    invoice_by_number: dict[str, str] = {}
    for row in await pool.fetch("select document::text as doc from invoicing.invoices"):
        doc = orjson.loads(row["doc"])
        key = f"{doc['contract_id']}|{doc['period_start']}"
        invoice_by_number[doc["number"]] = key
        invoices[key] = _normalized(doc)
    with contextlib.suppress(asyncpg.UndefinedTableError):
        for row in await pool.fetch("select document::text as doc from invoicing.credit_notes"):
            doc = orjson.loads(row["doc"])
            doc = naming_corrected_invoice(doc, invoice_by_number)
            invoices[f"credit-note|{doc['contract_id']}|{doc['credit_note_id']}"] = _normalized(doc)
    statements: dict[str, Any] = {}
    for row in await pool.fetch("select document::text as doc from invoicing.statements"):
        doc = orjson.loads(row["doc"])
        statements[f"{doc['supplier_id']}|{doc['currency']}|{doc['month']}"] = _normalized(doc)
    return invoices, statements


async def collect_settlement(pool: asyncpg.Pool) -> dict[str, Any]:
    """What the money services decided, keyed by what does not depend on close order: each invoice's payment
    status by (contract, period start), each renter's money in and credit balance per currency, every
    payout (ids derive from supplier, currency and months) and every saga's state by (contract, period
    start) with its compensations."""
    out: dict[str, Any] = {}
    for r in await pool.fetch(
        """select i.contract_id, i.period_start, s.status, s.paid_minor, s.remaining_minor, s.past_due, s.paid_at
             from payments.invoice_status s join payments.invoices i using (invoice_id)"""
    ):
        out[f"payment|{r['contract_id']}|{r['period_start'].isoformat()}"] = [str(v) for v in list(r)[2:]]
    for r in await pool.fetch("select renter_id, currency, money_in_minor, credit_minor from payments.books"):
        out[f"credit|{r['renter_id']}|{r['currency']}"] = [str(r["money_in_minor"]), str(r["credit_minor"])]
    for r in await pool.fetch(
        """select payout_id, supplier_id, currency, months, amount_minor, held_minor, payout_currency,
                  payout_amount_minor, rate_id, rail, state, reason, planned_at from payouts.payouts"""
    ):
        out[f"payout|{r['payout_id']}"] = [str(v) for v in list(r)[1:]]
    for r in await pool.fetch(
        """select s.contract_id, s.period_start, s.state, s.waits_for,
                  array(select c.kind || ':' || c.state from saga.compensations c
                         where c.saga_id = s.saga_id order by 1) as compensations
             from saga.sagas s"""
    ):
        out[f"saga|{r['contract_id']}|{r['period_start'].isoformat()}"] = [str(v) for v in list(r)[2:]]
    return out


async def largest_partitions(bootstrap: str, prefix: str) -> dict[str, int]:
    """Bytes in the largest partition of each burst topic (what a lagging consumer had to catch up on)."""
    out: dict[str, int] = {}
    for topic in (topics.USAGE_METERED, topics.CHARGES_RATED):
        sizes: dict[int, int] = {}
        for r in await read_all(bootstrap, prefix + topic.name, topic.partitions, timeout_s=300):
            sizes[r.partition] = sizes.get(r.partition, 0) + len(r.value or b"") + len(r.key or b"")
        out[topic.name] = max(sizes.values(), default=0)
    return out


async def drive(
    settings: Settings,
    pool: asyncpg.Pool,
    database_url: str,
    bootstrap: str,
    scenario: Scenario,
    *,
    kill: bool,
    seed: int,
    log_dir: Path,
    kill_interval_s: tuple[float, float] = (2.0, 6.0),
    chaos_after_publish_s: float = 20.0,
    settle: bool = False,
    follow_payouts: bool = False,
) -> ChaosResult:
    """Bill ``scenario`` once (see the module docstring); with ``kill``, under SIGKILL. With ``settle`` the
    whole fleet runs (payments, payouts, saga too) on :func:`settlement_inputs` as well. With
    ``follow_payouts`` (and ``settle``) payouts writes its files into the run's state directory and the saga
    follows them (``SETTLE_SAGA_FOLLOW_PAYOUTS``), as in the demo; the run waits for payouts' planning and
    files too, and ``settle sagas verify`` checks the payout side."""
    if follow_payouts and not settle:
        raise ValueError("follow_payouts needs settle: without payouts there is nothing to follow")
    rng = random.Random(seed)
    first_close = month_after(scenario.start)
    inputs = scenario.initial + (settlement_inputs(scenario) if settle else [])
    before, after = split_at(inputs, first_close)
    env = worker_env(database_url, bootstrap, settings.topic_prefix, SETTLE_STATE_DIR=str(settings.state_dir))
    if settle:
        env["SETTLE_GATEWAYS_ENABLED"] = ""  # money arrives as wires: no processor is called
    if follow_payouts:
        env.update(payout_files_env(settings.state_dir))
    began = time.perf_counter()
    also_busy = payout_work if follow_payouts else None
    with running_fleet(env, log_dir, SETTLEMENT_FLEET if settle else FLEET) as fleet:
        producer = await start_producer(bootstrap, client_id="settle-chaos")
        stop_killing = asyncio.Event()
        killer = asyncio.create_task(_killer(fleet, rng, kill_interval_s, stop_killing)) if kill else None
        try:
            await _publish(producer, settings.topic_prefix, before, chunks=10)
            await publish_tick(producer, bootstrap, settings.topic_prefix, first_close)  # mid-chaos
            await _publish(producer, settings.topic_prefix, after, chunks=10)
            await publish_tick(producer, bootstrap, settings.topic_prefix, scenario.end)  # mid-chaos
            if killer is not None:
                await asyncio.sleep(chaos_after_publish_s)  # the closes run while workers die
                stop_killing.set()
                await killer
            await wait_quiet(pool, settings, bootstrap, fleet, also_busy)
            for tick in scenario.ticks:  # again, after draining: nothing left to change
                await publish_tick(producer, bootstrap, settings.topic_prefix, tick)
            await wait_quiet(pool, settings, bootstrap, fleet, also_busy)
            if scenario.late:
                await _publish(producer, settings.topic_prefix, scenario.late, chunks=1)
                await publish_tick(producer, bootstrap, settings.topic_prefix, scenario.end)
                await wait_quiet(pool, settings, bootstrap, fleet, also_busy)
        finally:
            stop_killing.set()
            if killer is not None and not killer.done():
                killer.cancel()
            await stop_client(producer)
        kills = fleet.kills
    invoices, statements = await collect(pool)
    settlement = await collect_settlement(pool) if settle else {}
    async with pool.acquire() as conn:
        ledger_ok = (await verify(conn)).ok
        open_gaps = int(await conn.fetchval("select count(*) from settle.consumer_gaps where resolved_at is null"))
        dead = int(await conn.fetchval("select count(*) from settle.dead_letters"))
        sagas = (
            [v.line() for v in (await saga_check.check(conn, follow_payouts=follow_payouts)).violations]
            if settle
            else []
        )
    return ChaosResult(
        invoices=invoices,
        statements=statements,
        settlement=settlement,
        kills=kills,
        elapsed_s=time.perf_counter() - began,
        ledger_ok=ledger_ok,
        open_gaps=open_gaps,
        dead_letters=dead,
        saga_violations=sagas,
        largest_partition_bytes=await largest_partitions(bootstrap, settings.topic_prefix),
    )


def differences(calm: ChaosResult, chaos: ChaosResult, limit: int = 10) -> list[str]:
    """What differs between two runs' documents (empty when they are identical)."""
    out: list[str] = []
    pairs = (
        ("invoice", calm.invoices, chaos.invoices),
        ("statement", calm.statements, chaos.statements),
        ("settlement", calm.settlement, chaos.settlement),
    )
    for kind, a, b in pairs:
        for key in sorted(set(a) | set(b)):
            x, y = a.get(key), b.get(key)
            if x == y:
                continue
            if isinstance(x, dict) and isinstance(y, dict):  # only the fields that differ
                x, y = ({k: d.get(k) for k in sorted(set(x) | set(y)) if x.get(k) != y.get(k)} for d in (x, y))
            out.append(f"{kind} {key}: calm {x} ≠ chaos {y}")
    return out[:limit]
