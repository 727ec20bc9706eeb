"""Self-checks of the end-to-end test's oracle (``tests/scenarios/oracle.py``) on tiny cases computed
by hand from docs/billing-rules.md, of its own reading of the input contract, and of its interval
arithmetic against a per-second brute force. Events are written here as plain JSON (not with the
product's encoder), so the oracle's path from bytes to numbers shares nothing with the product's."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from tests.scenarios import oracle

DEC = datetime(2026, 12, 1, tzinfo=UTC)
JAN = datetime(2027, 1, 1, tzinfo=UTC)
FEB = datetime(2027, 2, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Msg:
    topic: str
    value: bytes


def msg(topic: str, type_: str, data: dict[str, Any], at: datetime, id_: str) -> Msg:
    envelope = {
        "specversion": "1.0",
        "id": id_,
        "source": "/test",
        "type": type_,
        "time": at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "datacontenttype": "application/json",
        "data": data,
    }
    return Msg(topic, json.dumps(envelope).encode())


def contract(
    contract_id: str,
    *,
    price: str = "1.00",
    rate: str = "0.50",
    commitment: str = "0",
    tiers: list[dict[str, str]] | None = None,
    tax: str = "0",
    mode: str = "postpaid",
    currency: str = "USD",
    starts_at: datetime = DEC,
    anchor: int = 1,
) -> Msg:
    data = {
        "contract_id": contract_id,
        "renter_id": "r-1",
        "currency": currency,
        "billing_mode": mode,
        "price_per_gpu_hour": price,
        "supplier_rate_per_gpu_hour": rate,
        "commitment_per_period": commitment,
        "credit_limit": None,
        "sla_tiers": tiers or [],
        "tax_rate": tax,
        "starts_at": starts_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "ends_at": None,
        "billing_anchor_day": anchor,
    }
    created_at = starts_at - timedelta(days=1)
    return msg("contracts.v1", "contract.created", data, created_at, f"{contract_id}-created")


def life(type_: str, at: datetime, id_: str, allocation_id: str = "a-1", **extra: Any) -> Msg:
    return msg("infra.lifecycle.v1", type_, {"allocation_id": allocation_id, **extra}, at, id_)


def provision(at: datetime, contract_id: str, gpus: int, allocation_id: str = "a-1") -> Msg:
    return life(
        "gpu.allocation.provisioned",
        at,
        f"{allocation_id}-prov",
        allocation_id,
        contract_id=contract_id,
        renter_id="r-1",
        supplier_id="s-1",
        server_id="srv",
        gpu_model="H100",
        gpu_count=gpus,
    )


def at(day: int, hour: int = 0, minute: int = 0) -> datetime:
    return DEC + timedelta(days=day - 1, hours=hour, minutes=minute)


# --- money and intervals ---------------------------------------------------------------------------------


def test_rounding_is_half_even_and_symmetric() -> None:
    cases = {
        Fraction(1, 2): 0,
        Fraction(3, 2): 2,
        Fraction(5, 2): 2,
        Fraction(-5, 2): -2,
        Fraction(-3, 2): -2,
        Fraction(2499, 1000): 2,
        Fraction(2501, 1000): 3,
        Fraction(7): 7,
    }
    for value, want in cases.items():
        assert oracle.round_half_even_int(value) == want, value
    assert oracle.round_minor(Fraction("9.925"), "USD") == 992
    assert oracle.round_minor(Fraction("9.935"), "USD") == 994
    assert oracle.round_minor(Fraction("1534.5"), "JPY") == 1534
    assert oracle.show_minor(15340, "USD") == "153.40"
    assert oracle.show_minor(-5, "EUR") == "-0.05"
    assert oracle.show_minor(1534, "JPY") == "1534"


spans = st.lists(st.tuples(st.integers(0, 60), st.integers(0, 60)), max_size=5)


def _seconds(s: list[tuple[int, int]]) -> set[int]:
    return {t for a, b in s for t in range(a, b)}


@given(spans, spans)
def test_interval_arithmetic_matches_a_per_second_brute_force(
    a: list[tuple[int, int]], b: list[tuple[int, int]]
) -> None:
    ua, ub = oracle.union(a), oracle.union(b)
    assert _seconds(ua) == _seconds(a)
    assert all(x < y for x, y in ua)
    assert all(ua[i][1] < ua[i + 1][0] for i in range(len(ua) - 1))
    assert _seconds(oracle.intersect(ua, ub)) == _seconds(a) & _seconds(b)
    assert _seconds(oracle.subtract(ua, ub)) == _seconds(a) - _seconds(b)


def test_periods_follow_the_anchor_day() -> None:
    start, end = oracle.period_of(15, oracle.epoch(datetime(2026, 12, 14, 23, 59, 59, tzinfo=UTC)))
    assert (oracle.instant(start), oracle.instant(end)) == (
        datetime(2026, 11, 15, tzinfo=UTC),
        datetime(2026, 12, 15, tzinfo=UTC),
    )
    start, end = oracle.period_of(1, oracle.epoch(datetime(2026, 12, 31, 23, tzinfo=UTC)))
    assert (oracle.instant(start), oracle.instant(end)) == (DEC, JAN)


def test_largest_remainder_gives_the_extra_units_to_the_smallest_ids_on_ties() -> None:
    assert oracle.split_largest_remainder(10, {"c": 1, "b": 1, "a": 1}) == {"a": 4, "b": 3, "c": 3}
    assert oracle.split_largest_remainder(10, {"a": 1, "b": 2, "z": 0}) == {"a": 3, "b": 7, "z": 0}


# --- the input contract, read by the oracle itself ---------------------------------------------------------


def test_the_oracle_refuses_what_the_input_contract_refuses() -> None:
    good = contract("c-ok")
    document = json.loads(good.value)

    def variant(**data: Any) -> Msg:
        return Msg("contracts.v1", json.dumps({**document, "data": {**document["data"], **data}}).encode())

    refused = [
        variant(currency="XYZ"),  # not ISO 4217
        variant(price_per_gpu_hour=1.5),  # a JSON number, not a decimal string
        variant(price_per_gpu_hour="1e3"),  # not a plain decimal
        variant(tax_rate="0.1234567890123"),  # 13 places
        variant(billing_anchor_day=29),
        variant(starts_at="2026-12-01T00:00:00+01:00"),  # not UTC
        variant(ends_at="2026-11-01T00:00:00Z"),  # before starts_at
        variant(meter_prices={"egress_gb": "0.0000001"}),  # meter prices: at most 6 places
        Msg("contracts.v1", json.dumps({**document, "specversion": "0.3"}).encode()),
        Msg("contracts.v1", json.dumps({**document, "type": "contract.renamed"}).encode()),
        Msg("wallets.v1", good.value),  # a type of another topic
        provision(DEC, "c-ok", 0),  # no GPUs
        msg(
            "contracts.v1",
            "contract.amended",
            {"contract_id": "c-ok", "effective_at": "2026-12-02T00:00:00Z"},
            DEC,
            "a",
        ),
    ]
    decoded = oracle.decode(refused)
    assert decoded.accepted == [], [e.data for e in decoded.accepted]
    assert len(decoded.rejected) == len(refused)
    assert all(why for _, _, why in decoded.rejected)


def test_the_oracle_floors_sub_second_times_and_reads_decimals_exactly() -> None:
    event = contract("c-1", price="0.000000000001")
    document = json.loads(event.value)
    document["time"] = "2026-11-30T00:00:00.999Z"
    document["data"]["starts_at"] = "2026-12-01T00:00:00.5+00:00"
    [accepted] = oracle.decode([Msg("contracts.v1", json.dumps(document).encode())]).accepted
    assert accepted.at == oracle.epoch(datetime(2026, 11, 30, tzinfo=UTC))
    assert accepted.data["starts_at"] == oracle.epoch(DEC)
    assert accepted.data["price_per_gpu_hour"] == Fraction(1, 10**12)
    assert accepted.data["payment_terms_days"] == 30  # the extension's default


# --- invoices computed by hand -----------------------------------------------------------------------------


def test_one_period_with_amendment_windows_quarantine_true_up_sla_and_tax() -> None:
    """Computed by hand:

    2 GPUs on [Dec 10 14:00, 16:00); maintenance 15:00-15:30 with an outage 15:10-15:20 inside it
    (maintenance), an outage 15:40-15:46, a window ending before it starts (no effect). Billable:
    14:00-15:00, 15:30-15:40, 15:46-16:00. Price 2.00, from 14:30 3.00:
    2x0.5x2 + 2x0.5x3 + 2x(10/60)x3 + 2x(14/60)x3 = 2 + 3 + 1 + 1.40 = 7.40.
    Uptime 1 - 12 min / (240 - 60) = 14/15 < 0.99 → 10 % → -0.74. True-up 100 - 7.40 = 92.60.
    Subtotal 99.26; tax 10 % = 9.926 → 9.93; total 109.19.
    """
    messages = [
        contract(
            "c-1",
            price="2.00",
            commitment="100.00",
            tax="0.10",
            tiers=[{"below_uptime": "0.99", "credit_percent": "10"}],
        ),
        msg(
            "contracts.v1",
            "contract.amended",
            {"contract_id": "c-1", "effective_at": "2026-12-10T14:30:00Z", "price_per_gpu_hour": "3.00"},
            at(2),
            "c-1-amend",
        ),
        life("gpu.allocation.decommissioned", at(10, 16), "dec"),  # before its provisioning arrives
        provision(at(10, 14), "c-1", 2),
        provision(at(10, 14), "c-1", 2),  # a duplicate id: no effect
        life("gpu.maintenance.started", at(10, 15), "m1s", window_id="w1"),
        life("gpu.maintenance.ended", at(10, 15, 30), "m1e", window_id="w1"),
        life("gpu.outage.started", at(10, 15, 10), "o1s", incident_id="i1"),
        life("gpu.outage.ended", at(10, 15, 20), "o1e", incident_id="i1"),
        life("gpu.outage.started", at(10, 15, 40), "o2s", incident_id="i2"),
        life("gpu.outage.ended", at(10, 15, 46), "o2e", incident_id="i2"),
        life("gpu.maintenance.ended", at(10, 15, 50), "bad-e", window_id="w2"),
        life("gpu.maintenance.started", at(10, 15, 55), "bad-s", window_id="w2"),
        Msg("infra.lifecycle.v1", b"<not json>"),
    ]
    decoded = oracle.decode(messages)
    assert decoded.duplicates == 1
    assert len(decoded.rejected) == 1
    want = oracle.expected(decoded.accepted, decoded.accepted, late_after=JAN, demo_end=JAN, true_up_adjustments=False)
    assert list(want.invoices) == [("c-1", DEC)]
    shown = want.invoices[("c-1", DEC)].shown()
    assert shown == {
        "lines.usage": "7.40",
        "lines.commitment_true_up": "92.60",
        "lines.adjustments": "0.00",
        "lines.sla_credit": "-0.74",
        "subtotal": "99.26",
        "tax": "9.93",
        "total": "109.19",
        "prepaid_applied": "0.00",
        "credit_applied": "0.00",
        "amount_due": "109.19",
        "credit_carried_forward": "0.00",
    }


def test_prepaid_draws_and_a_negative_amount_due_carried_to_the_next_invoice() -> None:
    """1 GPU for 24 h from Dec 1 with a 2 h outage: usage 22.00, uptime 22/24 < 0.95 → 25 % → -5.50,
    total 16.50 (tax 0). Wallet 100 → drawn 22.00; due 16.50 - 22.00 < 0 → 0, 5.50 carried. January:
    nothing used, the 5.50 is applied and carried again."""
    messages = [
        contract("p-1", mode="prepaid", tiers=[{"below_uptime": "0.95", "credit_percent": "25"}]),
        msg(
            "wallets.v1",
            "wallet.topped_up",
            {"contract_id": "p-1", "amount": "100", "currency": "USD", "payment_ref": "pay-1"},
            DEC,
            "top-1",
        ),
        provision(DEC, "p-1", 1),
        life("gpu.outage.started", at(1, 12), "o-s", incident_id="i"),
        life("gpu.outage.ended", at(1, 14), "o-e", incident_id="i"),
        life("gpu.allocation.decommissioned", at(2), "dec"),
    ]
    events = oracle.decode(messages).accepted
    want = oracle.expected(events, events, late_after=FEB, demo_end=FEB, true_up_adjustments=False)
    december, january = want.invoices[("p-1", DEC)], want.invoices[("p-1", JAN)]
    assert (december.usage_minor, december.sla_credit_minor, december.total_minor) == (2200, -550, 1650)
    assert (december.prepaid_applied_minor, december.amount_due_minor) == (2200, 0)
    assert december.credit_carried_forward_minor == 550
    assert (january.total_minor, january.credit_applied_minor, january.amount_due_minor) == (0, 550, 0)
    assert january.credit_carried_forward_minor == 550


def test_wallet_balance_carries_and_top_ups_count_in_their_own_period() -> None:
    """1 GPU at 1.00 from Dec 1, open: 744.00 per month. Top-up 5 on Dec 1 and 10 on Jan 5:
    December draws 5.00, January 10.00 (the overage of December is never settled by January's top-up).
    Tax 20 %: 744 + 148.80 = 892.80."""
    messages = [
        contract("p-2", mode="prepaid", tax="0.20", currency="EUR"),
        msg(
            "wallets.v1",
            "wallet.topped_up",
            {"contract_id": "p-2", "amount": "5", "currency": "EUR", "payment_ref": "pay-1"},
            DEC,
            "top-1",
        ),
        msg(
            "wallets.v1",
            "wallet.topped_up",
            {"contract_id": "p-2", "amount": "10.00", "currency": "EUR", "payment_ref": "pay-2"},
            JAN + timedelta(days=4),
            "top-2",
        ),
        provision(DEC, "p-2", 1),
    ]
    events = oracle.decode(messages).accepted
    want = oracle.expected(events, events, late_after=FEB, demo_end=FEB, true_up_adjustments=False)
    assert want.invoices[("p-2", DEC)].shown()["amount_due"] == "887.80"
    assert want.invoices[("p-2", JAN)].shown()["amount_due"] == "882.80"


def test_a_late_outage_lands_as_adjustment_lines_on_the_next_invoice_and_statement() -> None:
    """1 GPU at 1.00 (supplier 0.50) all along; an outage Dec 5 00:00-01:00 published after January 2.
    December: 744.00, no credit. After: usage -1.00; uptime 1 - 1/744 < 0.999 → 5 % of 743.00 = 37.15.
    January: 744.00 - 1.00 - 37.15 = 705.85. Statements: December 372.00; January 372.00 - 0.50 =
    371.50 with a -37.15 chargeback, net 334.35."""
    initial = [
        contract("c-9", tiers=[{"below_uptime": "0.999", "credit_percent": "5"}]),
        provision(DEC, "c-9", 1),
    ]
    late = [
        life("gpu.outage.started", at(5), "late-s", incident_id="i-late"),
        life("gpu.outage.ended", at(5, 1), "late-e", incident_id="i-late"),
    ]
    before = oracle.decode(initial)
    after = oracle.decode(initial + late)
    want = oracle.expected(
        before.accepted, after.accepted, late_after=JAN + timedelta(days=1), demo_end=FEB, true_up_adjustments=True
    )
    december, january = want.invoices[("c-9", DEC)], want.invoices[("c-9", JAN)]
    assert december.shown()["total"] == "744.00"
    assert december.sla_credit_minor == 0
    assert [(a.period_start, a.kind, a.amount_minor) for a in january.adjustments] == [
        (DEC, "usage", -100),
        (DEC, "sla_credit", -3715),
    ]
    assert january.shown()["total"] == "705.85"
    dec_statement = want.statements[("s-1", "USD", "2026-12")]
    jan_statement = want.statements[("s-1", "USD", "2027-01")]
    assert dec_statement.shown()["net"] == "372.00"
    assert jan_statement.shown() == {
        "earnings": {"a-1": "371.50"},
        "earnings_total": "371.50",
        "sla_chargebacks": "-37.15",
        "carried": "0.00",
        "net": "334.35",
    }
