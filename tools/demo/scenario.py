"""A realistic two-month GPU marketplace, generated from a seed (pure: no I/O, no clock).

What it contains, so the demo exercises every billing rule:

* suppliers (data centers) with servers; contracts for renters — prepaid and postpaid, USD, EUR
  and JPY, billing anchor days 1 and 15, commitments, credit limits, SLA tiers, tax rates;
  a price amendment at 14:30 in the middle of a period, a commitment amendment, a termination;
* allocations of 1–8 GPUs provisioned and decommissioned inside the two months, maintenance
  windows, outages (one inside a maintenance window, one that ends up crossing an SLA tier);
* wallet top-ups (one prepaid wallet runs dry mid-period and is topped up later), egress telemetry;
* the mess of real delivery: ~4 % of events twice, lifecycle events out of order (a decommission
  before its provisioning), a window that ends before it starts (quarantined), a handful of
  malformed messages (dead-lettered), and a late outage that arrives after the first month's
  invoices are final (an adjustment on the second month's invoice);
* payment methods (fake processor tokens) for the renters of postpaid contracts, so the payments
  worker collects the first month's invoices when they fall due: mostly cards that pay, one soft
  decline paid on retry, one hard decline, one 5xx that fails over to the other gateway, one charge
  whose answer never comes (resolved by inquiry) — and one renter without a method, who pays by wire.

Every id carries ``tag`` (the run's first month), so the same seed can run again later in the same
database: time only moves forward, and a second run bills a new two months as correctly as the first.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from libs.ids import derive_id
from schemas.envelope import encode
from schemas.topics import BY_NAME, Topic

PLATFORM = "/platform/demo"
SLA_TIERS = [
    {"below_uptime": "0.999", "credit_percent": "5"},
    {"below_uptime": "0.99", "credit_percent": "10"},
    {"below_uptime": "0.95", "credit_percent": "25"},
]
GPU_MODELS = {"H100": ("2.35", "1.80"), "A100": ("1.60", "1.20"), "L40S": ("0.95", "0.70")}
CURRENCIES = {  # currency: (price factor on the USD price, tax rate, price decimals)
    "USD": ("1", "0.0825", 2),
    "EUR": ("0.92", "0.20", 2),
    "JPY": ("150", "0.10", 0),
}


@dataclass(frozen=True)
class Delivery:
    topic: str
    key: str | None
    value: bytes
    note: str = ""
    """Why this message is odd (duplicate, malformed, late ...); empty for ordinary ones."""


def deliveries_as_items(deliveries: list[Delivery]) -> list[tuple[Topic, bytes | None, bytes]]:
    """(topic, key, value) items for ``libs.messaging.broker.publish_keyed``."""
    return [(BY_NAME[d.topic], d.key.encode() if d.key is not None else None, d.value) for d in deliveries]


@dataclass
class Scenario:
    tag: str
    start: datetime
    """First instant of the first month."""
    end: datetime
    """First instant after the second month."""
    initial: list[Delivery] = field(default_factory=list)
    """Published before the clock starts moving."""
    late: list[Delivery] = field(default_factory=list)
    """Published after the first month has been invoiced."""
    ticks: list[datetime] = field(default_factory=list)
    late_after_tick: datetime | None = None
    contracts: list[dict[str, Any]] = field(default_factory=list)
    suppliers: list[str] = field(default_factory=list)
    payments: list[Delivery] = field(default_factory=list)
    """Payment methods (payments.methods.v1), published with the initial deliveries. Not billing inputs:
    kept apart from :attr:`deliveries`, which is what metering, rating and invoicing are fed."""
    methods: dict[str, str] = field(default_factory=dict)
    """Renter → the fake processor token of its default card (renters of postpaid contracts)."""
    without_method: list[str] = field(default_factory=list)
    """Renters of postpaid contracts with no payment method (they pay by wire)."""
    settlement: list[Delivery] = field(default_factory=list)
    """Supplier payees (suppliers.v1) and FX rates (fx.rates.v1), published with the initial deliveries.
    Not billing inputs either: payouts plans with them (R15), nothing that bills reads them."""
    payees: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Supplier → its ``supplier.payee_updated`` data."""
    pay_when_paid: str | None = None
    """The pay-when-paid supplier: it earns on a first-month invoice of :attr:`late_renter`."""
    below_minimum: str | None = None
    """The supplier whose minimum payout its earnings never reach."""
    late_renter: str | None = None
    """The renter (without a card) who pays its first-month invoices by a wire after their due date."""

    @property
    def deliveries(self) -> list[Delivery]:
        return self.initial + self.late


def month_after(moment: datetime) -> datetime:
    """The first instant of the month after the one containing ``moment``."""
    return (moment.replace(day=1) + timedelta(days=32)).replace(day=1)


def _fmt(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class _Builder:
    def __init__(self, seed: int, tag: str) -> None:
        self.rng = random.Random(seed)
        self.tag = tag
        self.counter = 0

    def id(self, kind: str) -> str:
        self.counter += 1
        return f"{self.tag}-{kind}-{self.counter:04d}"

    def event(
        self, topic: str, key: str | None, type_: str, data: dict[str, Any], at: datetime, note: str = ""
    ) -> Delivery:
        event_id = derive_id(
            "demo-event", self.tag, topic, type_, orjson.dumps(data, option=orjson.OPT_SORT_KEYS), _fmt(at)
        )
        return Delivery(topic, key, encode(event_id=event_id, source=PLATFORM, type=type_, time=at, data=data), note)


def generate(seed: int = 7, start: datetime | None = None, contracts: int = 30) -> Scenario:
    """The marketplace of two months starting at ``start`` (a month boundary, default December 2026)."""
    start = (start or datetime(2026, 12, 1, tzinfo=UTC)).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    middle = month_after(start)
    end = month_after(middle)
    tag = f"m{start:%Y%m}"
    b = _Builder(seed, tag)
    rng = b.rng
    scenario = Scenario(tag=tag, start=start, end=end)
    suppliers = [f"{tag}-dc-{name}" for name in ("frankfurt", "oregon", "tokyo", "virginia", "paris", "osaka")]
    scenario.suppliers = suppliers
    lifecycle: dict[str, list[Delivery]] = {}
    others: list[Delivery] = []
    late_outage: list[Delivery] = []

    for n in range(contracts):
        contract_id = f"{tag}-ct-{n + 1:03d}"
        renter_id = f"{tag}-renter-{(n % 12) + 1:02d}"
        currency = ("USD", "USD", "EUR", "JPY", "USD", "EUR")[n % 6]
        factor, tax_rate, places = CURRENCIES[currency]
        model = list(GPU_MODELS)[n % 3]
        usd_price, usd_rate = GPU_MODELS[model]
        quantum = "1" if places == 0 else "0.01"
        from decimal import Decimal

        price = (Decimal(usd_price) * Decimal(factor)).quantize(Decimal(quantum))
        rate = (Decimal(usd_rate) * Decimal(factor)).quantize(Decimal(quantum))
        prepaid = n % 4 == 1
        anchor = 15 if n % 5 == 3 else 1
        starts_at = start + timedelta(days=rng.choice([0, 0, 0, 2, 5, 9]), hours=rng.choice([0, 0, 8, 13]))
        commitment = "0"
        if n % 3 == 0:
            commitment = str((price * 24 * 20 * (1 + n % 2)).quantize(Decimal(quantum)))  # 20-40 GPU-days
        credit_limit = None
        if not prepaid and n % 7 == 2:
            credit_limit = str((price * 24 * 15).quantize(Decimal(quantum)))  # crossed within weeks
        ends_at = end - timedelta(days=3) if n % 9 == 4 else None
        data: dict[str, Any] = {
            "contract_id": contract_id,
            "renter_id": renter_id,
            "currency": currency,
            "billing_mode": "prepaid" if prepaid else "postpaid",
            "price_per_gpu_hour": str(price),
            "supplier_rate_per_gpu_hour": str(rate),
            "commitment_per_period": commitment,
            "credit_limit": credit_limit,
            "sla_tiers": SLA_TIERS,
            "tax_rate": tax_rate,
            "starts_at": _fmt(starts_at),
            "ends_at": _fmt(ends_at) if ends_at else None,
            "billing_anchor_day": anchor,
            "payment_terms_days": 30 if n % 2 else 14,
            "meter_prices": {"egress_gb": "0.05" if currency != "JPY" else "7"},
        }
        scenario.contracts.append(data)
        others.append(b.event("contracts.v1", contract_id, "contract.created", data, starts_at - timedelta(days=1)))
        if n % 8 == 2:  # a price rise at 14:30 in the middle of a period (R4 splits that hour)
            effective = start + timedelta(days=17, hours=14, minutes=30)
            new_price = str((price * Decimal("1.10")).quantize(Decimal(quantum)))
            others.append(
                b.event(
                    "contracts.v1",
                    contract_id,
                    "contract.amended",
                    {"contract_id": contract_id, "effective_at": _fmt(effective), "price_per_gpu_hour": new_price},
                    effective - timedelta(days=3),
                )
            )
        if n % 6 == 0 and commitment != "0":  # a bigger commitment from the second month (R5)
            effective = middle + timedelta(days=10)
            others.append(
                b.event(
                    "contracts.v1",
                    contract_id,
                    "contract.amended",
                    {
                        "contract_id": contract_id,
                        "effective_at": _fmt(effective),
                        "commitment_per_period": str(Decimal(commitment) * 2),
                    },
                    effective,
                )
            )
        if n == 10:  # an early termination in the second month
            effective = middle + timedelta(days=12, hours=6)
            others.append(
                b.event(
                    "contracts.v1",
                    contract_id,
                    "contract.terminated",
                    {"contract_id": contract_id, "effective_at": _fmt(effective)},
                    effective,
                )
            )
        if prepaid:
            first = (price * 24 * rng.choice([4, 8, 12])).quantize(Decimal(quantum))
            others.append(
                b.event(
                    "wallets.v1",
                    contract_id,
                    "wallet.topped_up",
                    {
                        "contract_id": contract_id,
                        "amount": str(first),
                        "currency": currency,
                        "payment_ref": b.id("pay"),
                    },
                    starts_at,
                )
            )
            top_up_at = start + timedelta(days=rng.choice([20, 26, 40]), hours=9)
            others.append(
                b.event(
                    "wallets.v1",
                    contract_id,
                    "wallet.topped_up",
                    {
                        "contract_id": contract_id,
                        "amount": str(first * 3),
                        "currency": currency,
                        "payment_ref": b.id("pay"),
                    },
                    top_up_at,
                )
            )

        for _ in range(1 + (n % 3 == 0) + (n % 5 == 0)):
            allocation_id = b.id("alloc")
            supplier = suppliers[rng.randrange(len(suppliers))]
            gpus = rng.choice([1, 2, 4, 8, 8])
            provisioned = starts_at + timedelta(hours=rng.randrange(0, 72), minutes=rng.choice([0, 0, 17, 45]))
            lifetime = timedelta(days=rng.randrange(6, 45), hours=rng.randrange(0, 24), minutes=rng.choice([0, 30]))
            decommissioned: datetime | None = provisioned + lifetime
            if provisioned + lifetime >= end - timedelta(hours=2) or rng.random() < 0.2:
                decommissioned = None  # still running when the demo ends
            events: list[Delivery] = []
            events.append(
                b.event(
                    "infra.lifecycle.v1",
                    allocation_id,
                    "gpu.allocation.provisioned",
                    {
                        "allocation_id": allocation_id,
                        "contract_id": contract_id,
                        "renter_id": renter_id,
                        "supplier_id": supplier,
                        "server_id": b.id("srv"),
                        "gpu_model": model,
                        "gpu_count": gpus,
                    },
                    provisioned,
                )
            )
            horizon = decommissioned or end
            for _ in range(rng.randrange(0, 3)):  # scheduled maintenance
                w_start = provisioned + timedelta(
                    hours=rng.randrange(6, max(7, int((horizon - provisioned).total_seconds() // 3600) - 6))
                )
                w_end = w_start + timedelta(hours=rng.choice([1, 2, 4]), minutes=rng.choice([0, 30]))
                window = b.id("mw")
                events.append(
                    b.event(
                        "infra.lifecycle.v1",
                        allocation_id,
                        "gpu.maintenance.started",
                        {"allocation_id": allocation_id, "window_id": window},
                        w_start,
                    )
                )
                events.append(
                    b.event(
                        "infra.lifecycle.v1",
                        allocation_id,
                        "gpu.maintenance.ended",
                        {"allocation_id": allocation_id, "window_id": window},
                        w_end,
                    )
                )
                if rng.random() < 0.3:  # an outage inside the maintenance window counts once (as maintenance)
                    incident = b.id("inc")
                    events.append(
                        b.event(
                            "infra.lifecycle.v1",
                            allocation_id,
                            "gpu.outage.started",
                            {"allocation_id": allocation_id, "incident_id": incident},
                            w_start + timedelta(minutes=10),
                        )
                    )
                    events.append(
                        b.event(
                            "infra.lifecycle.v1",
                            allocation_id,
                            "gpu.outage.ended",
                            {"allocation_id": allocation_id, "incident_id": incident},
                            w_start + timedelta(minutes=40),
                        )
                    )
            if rng.random() < 0.45:  # unscheduled outages earn SLA credits
                o_start = provisioned + timedelta(
                    hours=rng.randrange(3, max(4, int((horizon - provisioned).total_seconds() // 3600) - 3)),
                    minutes=rng.randrange(0, 60),
                )
                o_end = o_start + timedelta(minutes=rng.choice([7, 25, 50, 95, 240, 700]))
                incident = b.id("inc")
                events.append(
                    b.event(
                        "infra.lifecycle.v1",
                        allocation_id,
                        "gpu.outage.started",
                        {"allocation_id": allocation_id, "incident_id": incident},
                        o_start,
                    )
                )
                events.append(
                    b.event(
                        "infra.lifecycle.v1",
                        allocation_id,
                        "gpu.outage.ended",
                        {"allocation_id": allocation_id, "incident_id": incident},
                        o_end,
                    )
                )
            if decommissioned is not None:
                events.append(
                    b.event(
                        "infra.lifecycle.v1",
                        allocation_id,
                        "gpu.allocation.decommissioned",
                        {"allocation_id": allocation_id},
                        decommissioned,
                    )
                )
            if n % 4 == 0 and len(late_outage) == 0 and decommissioned is None:
                # A late outage in the first month, reported after its invoice is final (R3).
                o_start = max(provisioned, start) + timedelta(days=3, hours=5)
                if o_start < middle - timedelta(days=1):
                    incident = b.id("inc")
                    late_outage += [
                        b.event(
                            "infra.lifecycle.v1",
                            allocation_id,
                            "gpu.outage.started",
                            {"allocation_id": allocation_id, "incident_id": incident},
                            o_start,
                            note="late outage",
                        ),
                        b.event(
                            "infra.lifecycle.v1",
                            allocation_id,
                            "gpu.outage.ended",
                            {"allocation_id": allocation_id, "incident_id": incident},
                            o_start + timedelta(hours=3),
                            note="late outage",
                        ),
                    ]
            if n % 3 == 1:  # egress telemetry: a sample every 15 minutes for a day
                day = provisioned + timedelta(hours=2)
                for k in range(96):
                    events.append(
                        b.event(
                            "usage.samples.v1",
                            allocation_id,
                            "usage.sample.recorded",
                            {
                                "allocation_id": allocation_id,
                                "meter": "egress_gb",
                                "quantity": f"{rng.randrange(1, 40)}.{rng.randrange(0, 100):02d}",
                            },
                            day + timedelta(minutes=15 * k),
                        )
                    )
            if n % 7 == 5 and len(events) >= 2:  # out of order: the decommission (if any) before the provisioning
                events = [events[-1], *events[:-1]]
            lifecycle[allocation_id] = events

    # One contradiction: a maintenance window that ends before it starts (both events quarantined).
    first_alloc = next(iter(lifecycle))
    bad_window = b.id("mw")
    lifecycle[first_alloc] += [
        b.event(
            "infra.lifecycle.v1",
            first_alloc,
            "gpu.maintenance.ended",
            {"allocation_id": first_alloc, "window_id": bad_window},
            start + timedelta(days=6, hours=2),
            "contradiction",
        ),
        b.event(
            "infra.lifecycle.v1",
            first_alloc,
            "gpu.maintenance.started",
            {"allocation_id": first_alloc, "window_id": bad_window},
            start + timedelta(days=6, hours=5),
            "contradiction",
        ),
    ]

    ordered: list[Delivery] = [d for d in others if d.topic == "contracts.v1"]
    rest = [d for d in others if d.topic != "contracts.v1"] + [d for events in lifecycle.values() for d in events]
    ordered += rest
    # Redelivery: ~4 % of messages arrive twice (same bytes, so the same event id).
    duplicates = [Delivery(d.topic, d.key, d.value, "duplicate") for d in rng.sample(ordered, k=len(ordered) // 25)]
    malformed = [
        Delivery("infra.lifecycle.v1", "junk-1", b"<xml>not json</xml>", "malformed"),
        Delivery(
            "contracts.v1",
            f"{tag}-ct-bad",
            b.event(
                "contracts.v1",
                f"{tag}-ct-bad",
                "contract.created",
                {**scenario.contracts[0], "contract_id": f"{tag}-ct-bad", "currency": "XYZ"},
                start,
            ).value,
            "malformed",
        ),
        Delivery(
            "infra.lifecycle.v1",
            f"{tag}-alloc-bad",
            b.event(
                "infra.lifecycle.v1",
                f"{tag}-alloc-bad",
                "gpu.allocation.provisioned",
                {
                    "allocation_id": f"{tag}-alloc-bad",
                    "contract_id": f"{tag}-ct-001",
                    "renter_id": "r",
                    "supplier_id": suppliers[0],
                    "server_id": "s",
                    "gpu_model": "H100",
                    "gpu_count": 0,
                },
                start,
            ).value,
            "malformed",
        ),
        Delivery(
            "wallets.v1",
            f"{tag}-ct-002",
            b.event(
                "wallets.v1",
                f"{tag}-ct-002",
                "wallet.topped_up",
                {"contract_id": f"{tag}-ct-002", "amount": 100, "currency": "USD", "payment_ref": "p"},
                start,
            ).value,
            "malformed",
        ),
        Delivery(
            "usage.samples.v1", "x", orjson.dumps({"specversion": "1.0", "type": "usage.sample.recorded"}), "malformed"
        ),
    ]
    scenario.initial = ordered + duplicates + malformed
    # The clock: every 4 days, plus both month ends and every period end of anchor day 15 — and two ticks
    # inside an hour (a clock need not tick on the hour: the hour they fall in is closed by the next tick).
    ticks = {start + timedelta(days=4 * k) for k in range(1, 16)}
    ticks |= {middle, end, start.replace(day=15), middle.replace(day=15)}
    ticks |= {start + timedelta(days=2, hours=9, minutes=30), start + timedelta(days=17, hours=13, minutes=45)}
    scenario.ticks = sorted(t for t in ticks if start < t <= end)
    scenario.late = late_outage
    scenario.late_after_tick = middle + timedelta(days=1) if middle + timedelta(days=1) in scenario.ticks else None
    if scenario.late_after_tick is None:
        scenario.ticks = sorted({*scenario.ticks, middle + timedelta(days=1)})
        scenario.late_after_tick = middle + timedelta(days=1)
    _payment_methods(b, scenario)
    _settlement(b, scenario, lifecycle)
    return scenario


SCRIPTED_TOKENS = ("tok_chain_soft_ok", "tok_stolen", "tok_chain_500_then_ok", "tok_timeout_after_charge")
"""The fake processor's scripted cards, one renter each: a soft decline paid on retry, a hard decline,
a 5xx that fails over to the other gateway, a charge whose answer is held past the gateway timeout."""


def _payment_methods(b: _Builder, scenario: Scenario) -> None:
    """A default card per renter and currency of its postpaid contracts (no random draw: the billing
    inputs stay exactly what they were). The scripted tokens go to renters on 14-day terms, whose
    first invoices fall due early enough for a retry tick inside the demo; the last renter on 30-day
    terms has no method at all."""
    postpaid: dict[str, list[dict[str, Any]]] = {}
    for c in scenario.contracts:
        if c["billing_mode"] == "postpaid":
            postpaid.setdefault(c["renter_id"], []).append(c)
    short = [r for r, cs in sorted(postpaid.items()) if all(c["payment_terms_days"] == 14 for c in cs)]
    long = [r for r, cs in sorted(postpaid.items()) if r not in short]
    scenario.without_method = long[-1:] if long else short[-1:]
    scripted = dict(zip([r for r in short if r not in scenario.without_method], SCRIPTED_TOKENS, strict=False))
    for renter, contracts in sorted(postpaid.items()):
        if renter in scenario.without_method:
            continue
        token = scripted.get(renter, "tok_visa")
        scenario.methods[renter] = token
        for currency in sorted({c["currency"] for c in contracts}):
            data = {
                "renter_id": renter,
                "method_id": f"{renter}-pm-{currency.lower()}",
                "kind": "card",
                "gateway_token": token,
                "currency": currency,
                "default": True,
            }
            at = min(datetime.fromisoformat(c["starts_at"].replace("Z", "+00:00")) for c in contracts)
            scenario.payments.append(b.event("payments.methods.v1", renter, "payment_method.attached", data, at))
    return None


FX_RATES = {("EUR", "USD"): "1.0850", ("JPY", "USD"): "0.006700", ("USD", "EUR"): "0.9200", ("JPY", "EUR"): "0.006150"}
"""Direct pairs (1 base = rate quote) for every statement currency a payout currency differs from."""
PAYEES: dict[str, tuple[str, str, dict[str, str]]] = {  # supplier name: (rail, payout currency, account)
    "frankfurt": ("sepa", "EUR", {"holder_name": "Frankfurt DC GmbH", "iban": "DE02120300000000202051",
                                  "bic": "BYLADEM1001"}),
    "oregon": ("ach", "USD", {"holder_name": "Oregon DC Inc", "routing_number": "011000015",
                              "account_number": "000444555666"}),
    "tokyo": ("stablecoin", "USD", {"network": "ethereum", "token": "USDC",
                                    "address": "0x5aB1c2d3E4F5061728394A5B6C7D8E9f00112233"}),
    "virginia": ("ach", "USD", {"holder_name": "Virginia DC LLC", "routing_number": "026009593",
                                "account_number": "000777888999"}),
    "paris": ("sepa", "EUR", {"holder_name": "Paris DC SAS", "iban": "FR1420041010050500013M02606"}),
    "osaka": ("ach", "USD", {"holder_name": "Osaka DC KK", "routing_number": "121000358",
                             "account_number": "000222333444"}),
}  # fmt: skip
"""How each demo supplier is paid (valid routing numbers, IBANs and an EIP-55 address; not our own accounts)."""
BELOW_MINIMUM = "1000000.00"
"""The minimum payout of :attr:`Scenario.below_minimum` (USD): its earnings never reach it."""


def _settlement(b: _Builder, scenario: Scenario, lifecycle: dict[str, list[Delivery]]) -> None:
    """Payees and rates (no random draw: the billing inputs stay exactly what they were). The late renter is
    the renter without a method; the pay-when-paid supplier is the first that delivers to it in the first
    month; the below-minimum one is the first of osaka, paris, oregon that is neither that supplier nor an
    ACH payee that may be returned."""
    at = scenario.start
    scenario.late_renter = scenario.without_method[0] if scenario.without_method else None
    late_contracts = {c["contract_id"] for c in scenario.contracts if c["renter_id"] == scenario.late_renter}
    middle = month_after(scenario.start)
    for events in lifecycle.values():
        for d in events:
            data = orjson.loads(d.value)
            if (
                data["type"] == "gpu.allocation.provisioned"
                and data["data"]["contract_id"] in late_contracts
                and datetime.fromisoformat(data["time"].replace("Z", "+00:00")) < middle - timedelta(days=2)
            ):
                scenario.pay_when_paid = scenario.pay_when_paid or data["data"]["supplier_id"]
    names = {s.removeprefix(scenario.tag + "-dc-"): s for s in scenario.suppliers}
    scenario.below_minimum = next(
        (names[n] for n in ("osaka", "paris", "oregon") if names[n] != scenario.pay_when_paid), None
    )
    for (base, quote), rate in sorted(FX_RATES.items()):
        data = {"rate_id": f"{scenario.tag}-fx-{base}{quote}", "base": base, "quote": quote, "rate": rate,
                "as_of": _fmt(at)}  # fmt: skip
        scenario.settlement.append(b.event("fx.rates.v1", f"{base}/{quote}", "fx.rate", data, at))
    for name, supplier in names.items():
        rail, currency, account = PAYEES[name]
        data = {
            "supplier_id": supplier,
            "payout_currency": currency,
            "rail": rail,
            "account": account,
            "minimum_payout": BELOW_MINIMUM if supplier == scenario.below_minimum else "0",
            "pay_when_paid": supplier == scenario.pay_when_paid,
            "on_hold": False,
        }
        scenario.payees[supplier] = data
        scenario.settlement.append(b.event("suppliers.v1", supplier, "supplier.payee_updated", data, at))
