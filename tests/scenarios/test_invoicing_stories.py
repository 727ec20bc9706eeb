"""Billing stories for invoicing, end to end over Kafka and PostgreSQL (R5, R6, R7, R3, R10, R12).

Each story publishes what the platform and rating would (contracts, rated charges, wallet draws,
watermarks), runs the invoicing worker, and reads the finalized documents. Every expected cent is
computed here from the rules with exact fractions and ``decimal``'s own half-even quantize — never
by calling the service's domain.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction

import pytest

from domain.contracts import chart
from services.invoicing.main import SERVICE as INVOICING
from tests.conftest import Stack
from tests.fleet import running
from tests.integration.test_invoicing_service import (
    FEB,
    JAN,
    MAR,
    Story,
    assert_ledger_sound,
    balance_units,
    count,
    half_even,
    invoices_of,
    shown,
    statement_of,
    wait_invoices,
    wait_statements,
)

pytestmark = pytest.mark.integration

HOUR_S = 3600


def seconds(start: datetime, end: datetime) -> int:
    return int((end - start).total_seconds())


def units(amount: Fraction, currency_places: int = 2) -> int:
    """An exact amount in ledger units (exponent + 6), half to even: what round_ledger must give."""
    return round(amount * Fraction(10) ** (currency_places + 6))


# --- R5 -----------------------------------------------------------------------------------------------------


async def test_commitment_is_prorated_over_a_mid_period_start_and_trued_up(stack: Stack) -> None:
    """A 310.00 commitment, contract starting 2026-01-11 07:00: January is committed only for the
    seconds inside the term; usage of 40.00 is trued up to the prorated amount, February in full."""
    starts_at = datetime(2026, 1, 11, 7, tzinfo=UTC)
    story = Story()
    story.contract("ctr-commit", renter="rnt-c", commitment="310", price="2", tax="0.1", starts_at=starts_at)
    for n in range(5):  # 5 hours x 4 GPUs x 2.00 = 40.00
        story.charge("ctr-commit", "alloc-1", "sup-1", starts_at + timedelta(hours=n), billable=4 * HOUR_S)
    story.watermark(FEB[1])
    await story.publish(stack)
    async with running(stack, [INVOICING], relays=0):
        await wait_invoices(stack, 2)
    jan, feb = await invoices_of(stack, "ctr-commit")

    prorated = Fraction(310) * seconds(starts_at, JAN[1]) / seconds(*JAN)  # 310 x 497 h / 744 h
    usage = Fraction(5 * 4 * HOUR_S * 2, HOUR_S)
    true_up = prorated - usage
    assert jan["lines"]["usage"] == "40.00"
    assert jan["lines"]["commitment_true_up"] == shown(true_up, "USD") == "167.08"
    subtotal = Decimal("40.00") + half_even(true_up, 2)
    tax = half_even(Fraction(subtotal) * Fraction("0.1"), 2)
    assert (jan["subtotal"], jan["tax"], jan["total"]) == (str(subtotal), str(tax), str(subtotal + tax))
    # February: nothing used, the whole commitment is due (R5), taxed.
    assert feb["lines"]["usage"] == "0.00"
    assert feb["lines"]["commitment_true_up"] == "310.00"
    assert (feb["tax"], feb["total"]) == ("31.00", "341.00")
    # Ledger: the true-ups are commitment revenue, at the exact amount; rounding takes the rest (R6).
    assert await balance_units(stack, chart.revenue_commitment("USD").code) == -(units(true_up) + units(Fraction(310)))
    assert await balance_units(stack, chart.receivable("rnt-c", "USD").code) == units(
        Fraction(subtotal + tax) + Fraction(341)
    )
    await assert_ledger_sound(stack)


# --- R7 -----------------------------------------------------------------------------------------------------


async def test_sla_tier_boundary_hit_exactly_gives_the_next_tier_and_charges_suppliers_back(
    stack: Stack,
) -> None:
    """Uptime is exactly 0.99: the 0.99 tier does not apply (uptime is not below it); the tier with the
    smallest threshold still above it (0.999, 5 %) does. The credit is charged back by outage share."""
    story = Story()
    story.contract("ctr-sla", renter="rnt-s", price="2.35", rate="1.5", tiers=[("0.99", "10"), ("0.999", "5")])
    hour = datetime(2026, 1, 10, tzinfo=UTC)
    for n in range(10):  # alloc-1 (sup-A): 10 GPUs, 480 outage GPU-seconds per hour
        story.charge("ctr-sla", "alloc-1", "sup-A", hour + timedelta(hours=n), billable=35_520, outage=480)
    for n in range(10):  # alloc-2 (sup-B): 10 GPUs, 240 outage GPU-seconds per hour, one maintenance hour
        story.charge("ctr-sla", "alloc-2", "sup-B", hour + timedelta(hours=n), billable=35_760, outage=240)
    story.charge("ctr-sla", "alloc-2", "sup-B", hour + timedelta(hours=10), billable=0, maintenance=36_000)
    story.watermark(JAN[1])
    await story.publish(stack)
    async with running(stack, [INVOICING], relays=0):
        await wait_invoices(stack, 1)
        await wait_statements(stack, 2)
    [inv] = await invoices_of(stack, "ctr-sla")

    provisioned = 20 * 36_000 + 36_000
    maintenance = 36_000
    outage = 10 * 480 + 10 * 240
    uptime = 1 - Fraction(outage, provisioned - maintenance)
    assert uptime == Fraction(99, 100)  # exactly on the 0.99 threshold
    billable = 10 * 35_520 + 10 * 35_760
    usage = Fraction(billable) * Fraction("2.35") / HOUR_S  # 465.30
    credit = -Fraction(5, 100) * usage  # -23.265 → half to even: -23.26
    assert inv["lines"]["usage"] == shown(usage, "USD") == "465.30"
    assert inv["lines"]["sla_credit"] == shown(credit, "USD") == "-23.26"
    assert inv["sla_credit_percent"] == "5"
    assert inv["uptime"] == "0.990000000000"
    assert inv["subtotal"] == str(half_even(usage, 2) + half_even(credit, 2))

    # R12: 23.26 split 4800 : 2400 by largest remainder: 1550.67 / 775.33 → 1550 + 775, one unit to
    # the larger remainder (alloc-1).
    a = await statement_of(stack, "sup-A", "2026-01")
    b = await statement_of(stack, "sup-B", "2026-01")
    earning_a = Fraction(10 * 35_520 * 3, 2 * HOUR_S)
    earning_b = Fraction(10 * 35_760 * 3, 2 * HOUR_S)
    assert a["earnings"] == {"alloc-1": shown(earning_a, "USD")}
    assert b["earnings"] == {"alloc-2": shown(earning_b, "USD")}
    assert (a["sla_chargebacks"], b["sla_chargebacks"]) == ("-15.51", "-7.75")
    assert a["net"] == str(half_even(earning_a, 2) - Decimal("15.51"))
    # Ledger: contra-revenue at the exact credit, recovery from suppliers at the rounded split.
    assert await balance_units(stack, chart.sla_contra_revenue("USD").code) == units(-credit)
    assert await balance_units(stack, chart.sla_recovery("USD").code) == -units(Fraction(2326, 100))
    await assert_ledger_sound(stack)


# --- R6 (JPY) --------------------------------------------------------------------------------------------


async def test_jpy_invoice_rounds_to_whole_yen_half_to_even(stack: Stack) -> None:
    story = Story()
    story.contract("ctr-jpy", renter="rnt-j", currency="JPY", price="250", rate="180", tax="0.1")
    story.charge("ctr-jpy", "alloc-1", "sup-1", datetime(2026, 1, 4, tzinfo=UTC), billable=4_321)
    story.charge("ctr-jpy", "alloc-1", "sup-1", datetime(2026, 1, 4, 1, tzinfo=UTC), billable=1_234)
    story.watermark(JAN[1])
    await story.publish(stack)
    async with running(stack, [INVOICING], relays=0):
        await wait_invoices(stack, 1)
        await wait_statements(stack, 1)
    [inv] = await invoices_of(stack, "ctr-jpy")
    usage = Fraction((4_321 + 1_234) * 250, HOUR_S)  # 385.76.. yen, summed exactly, rounded once
    line = half_even(usage, 0)
    tax = half_even(Fraction(line) * Fraction("0.1"), 0)  # 38.6 → 39
    assert inv["lines"]["usage"] == str(line) == "386"
    assert (inv["tax"], inv["total"], inv["amount_due"]) == (str(tax), str(line + tax), str(line + tax))
    assert all("." not in inv[k] for k in ("subtotal", "tax", "total", "prepaid_applied", "amount_due"))
    statement = await statement_of(stack, "sup-1", "2026-01")
    assert statement["earnings"] == {"alloc-1": shown(Fraction(5_555 * 180, HOUR_S), "JPY")} == {"alloc-1": "278"}
    # JPY ledger units are micro-yen (JPY/6).
    assert await balance_units(stack, chart.receivable("rnt-j", "JPY").code) == int(line + tax) * 10**6
    await assert_ledger_sound(stack)


# --- R8/R10 prepaid ---------------------------------------------------------------------------------------


async def test_prepaid_draws_are_applied_and_a_negative_amount_due_is_carried_to_the_next_invoice(
    stack: Stack,
) -> None:
    """January: 100.00 of usage, all drawn from the wallet; a 10 % SLA credit makes the total 99.00,
    so 1.00 is owed to the renter: due 0.00, carried 1.00. February: 20.00 of overage + tax, less the
    carried 1.00."""
    story = Story()
    story.contract("ctr-pre", renter="rnt-p", mode="prepaid", price="2", tax="0.1", tiers=[("0.999", "10")])
    story.topup("ctr-pre", "100")
    hour = datetime(2026, 1, 6, tzinfo=UTC)
    for n in range(5):  # 5 x 36,000 GPU-s at 2.00/h = 100.00; 72 outage GPU-seconds per hour
        story.charge("ctr-pre", "alloc-1", "sup-1", hour + timedelta(hours=n), billable=36_000, outage=72)
    story.draw("ctr-pre", hour + timedelta(hours=1), "40.005")
    story.draw("ctr-pre", hour + timedelta(hours=4), "59.995")
    story.charge("ctr-pre", "alloc-1", "sup-1", datetime(2026, 2, 3, tzinfo=UTC), billable=36_000)  # 20.00
    story.watermark(MAR[0])
    await story.publish(stack)
    async with running(stack, [INVOICING], relays=0):
        await wait_invoices(stack, 2)
    jan, feb = await invoices_of(stack, "ctr-pre")

    usage = Fraction(5 * 36_000 * 2, HOUR_S)
    uptime = 1 - Fraction(5 * 72, 5 * 36_000 + 5 * 72)  # 0.998 < 0.999 → 10 %
    assert uptime < Fraction("0.999")
    credit = half_even(-usage / 10, 2)
    subtotal = half_even(usage, 2) + credit
    tax = half_even(Fraction(subtotal) * Fraction("0.1"), 2)
    total = subtotal + tax
    applied = half_even(Fraction(Decimal("40.005") + Decimal("59.995")), 2)
    assert (jan["lines"]["usage"], jan["lines"]["sla_credit"]) == ("100.00", str(credit))
    assert (jan["total"], jan["prepaid_applied"]) == (str(total), str(applied)) == ("99.00", "100.00")
    assert (jan["amount_due"], jan["credit_carried_forward"]) == ("0.00", str(applied - total)) == ("0.00", "1.00")

    feb_total = Decimal("20.00") + half_even(Fraction(20) * Fraction("0.1"), 2)
    assert (feb["total"], feb["prepaid_applied"], feb["credit_applied"]) == (str(feb_total), "0.00", "1.00")
    assert feb["amount_due"] == str(feb_total - (applied - total)) == "21.00"
    assert feb["credit_carried_forward"] == "0.00"
    # Ledger: wallet drawn to zero and cleared; the carried credit went through credit_balance and back.
    assert await balance_units(stack, chart.prepaid_applied("rnt-p", "ctr-pre", "USD").code) == 0
    assert await balance_units(stack, chart.credit_balance("rnt-p", "USD").code) == 0
    assert await balance_units(stack, chart.receivable("rnt-p", "USD").code) == units(Fraction(21))
    await assert_ledger_sound(stack)


# --- R3 late correction ------------------------------------------------------------------------------------


async def test_late_charge_after_finalization_is_an_adjustment_on_the_next_invoice_naming_its_period(
    stack: Stack,
) -> None:
    """January is invoiced at 200.00 with full uptime. Then an outage hour of January arrives late:
    -2.00 of usage, and the uptime drops to 0.99 (10 % tier): both land on February's invoice as
    adjustment lines that name January; the SLA chargeback lands on February's statement."""
    story = Story()
    story.contract("ctr-1", renter="rnt-1", price="2", tax="0.1", tiers=[("0.995", "10")])
    for n in range(10):  # 10 hours x 10 GPUs = 200.00
        story.charge("ctr-1", "alloc-1", "sup-1", datetime(2026, 1, 7, n, tzinfo=UTC), billable=36_000)
    story.watermark(FEB[0])
    await story.publish(stack)
    async with running(stack, [INVOICING], relays=0):
        await wait_invoices(stack, 1)
        await wait_statements(stack, 1)  # January is closed for the supplier too
        # The correction of a January hour (rated after January's invoice) and February's usage.
        story.charge(
            "ctr-1",
            "alloc-1",
            "sup-1",
            datetime(2026, 1, 7, 3, tzinfo=UTC),
            billable=-3_600,
            outage=3_600,
            provisioned=0,
            revision=2,
        )
        story.charge("ctr-1", "alloc-1", "sup-1", datetime(2026, 2, 2, tzinfo=UTC), billable=90_000)  # 50.00
        story.watermark(MAR[0])
        await story.publish(stack)
        await wait_invoices(stack, 2)
        await wait_statements(stack, 2)
    jan, feb = await invoices_of(stack, "ctr-1")
    assert (jan["total"], jan["lines"]["sla_credit"]) == ("220.00", "0.00")

    usage_delta = Fraction(-3_600 * 2, HOUR_S)
    after_usage = Fraction(10 * 36_000 * 2, HOUR_S) + usage_delta
    uptime_after = 1 - Fraction(3_600, 10 * 36_000)  # 0.99 < 0.995 → 10 %
    assert uptime_after < Fraction("0.995")
    sla_delta = half_even(-after_usage / 10, 2)  # nothing was credited before
    january = {"period_start": "2026-01-01T00:00:00Z", "period_end": "2026-02-01T00:00:00Z"}
    assert feb["adjustment_lines"] == [
        {**january, "kind": "usage", "amount": shown(usage_delta, "USD")},
        {**january, "kind": "sla_credit", "amount": str(sla_delta)},
    ]
    adjustments = half_even(usage_delta, 2) + sla_delta
    assert feb["lines"] == {
        "usage": "50.00",
        "commitment_true_up": "0.00",
        "adjustments": str(adjustments),
        "sla_credit": "0.00",
    }
    subtotal = Decimal("50.00") + adjustments
    tax = half_even(Fraction(subtotal) * Fraction("0.1"), 2)
    assert (feb["subtotal"], feb["tax"], feb["total"]) == (str(subtotal), str(tax), str(subtotal + tax))
    assert await count(stack, "select count(*) from invoicing.charges where late") == 1

    # R12: January's statement has the original earnings; February's the late earnings correction
    # on the allocation's line, and the chargeback of January's credit (landing on February: the
    # month of the last second of the invoice that carried it).
    s_jan = await statement_of(stack, "sup-1", "2026-01")
    s_feb = await statement_of(stack, "sup-1", "2026-02")
    assert (s_jan["earnings"], s_jan["sla_chargebacks"]) == ({"alloc-1": "150.00"}, "0.00")
    assert s_feb["earnings"] == {"alloc-1": shown(Fraction((90_000 - 3_600) * 3, 2 * HOUR_S), "USD")}
    assert s_feb["sla_chargebacks"] == str(sla_delta)
    assert await balance_units(stack, chart.unbilled_receivable("rnt-1", "USD").code) == 0
    await assert_ledger_sound(stack)


async def test_a_late_charge_re_evaluates_the_commitment_true_up_of_its_period(stack: Stack) -> None:
    story = Story()
    story.contract("ctr-1", renter="rnt-1", price="2", commitment="100")
    story.charge("ctr-1", "alloc-1", "sup-1", datetime(2026, 1, 7, tzinfo=UTC), billable=72_000)  # 40.00
    story.watermark(FEB[0])
    await story.publish(stack)
    async with running(stack, [INVOICING], relays=0):
        await wait_invoices(stack, 1)
        story.charge("ctr-1", "alloc-1", "sup-1", datetime(2026, 1, 8, tzinfo=UTC), billable=18_001)  # 10.0005..
        story.watermark(MAR[0])
        await story.publish(stack)
        await wait_invoices(stack, 2)
    jan, feb = await invoices_of(stack, "ctr-1")
    assert jan["lines"]["commitment_true_up"] == "60.00"
    late = Fraction(18_001 * 2, HOUR_S)
    new_true_up = half_even(Fraction(100) - Fraction(40) - late, 2)
    kinds = {line["kind"]: line["amount"] for line in feb["adjustment_lines"]}
    assert kinds == {"usage": shown(late, "USD"), "commitment_true_up": str(new_true_up - Decimal("60.00"))}
    await assert_ledger_sound(stack)


# --- R12 statements ---------------------------------------------------------------------------------


async def test_statement_splits_a_chargeback_by_largest_remainder_and_carries_a_negative_net(
    stack: Stack,
) -> None:
    """A 0.10 credit over three allocations with equal outage: 3 + 3 + 3 and the leftover cent to the
    smallest allocation id (a tie). sup-2 earned nothing in January: its net -0.03 is carried to
    February (a month with only a carried balance still gets a statement) and March."""
    story = Story()
    story.contract("ctr-1", renter="rnt-1", price="2", rate="1.5", tiers=[("0.99", "10")])
    hour = datetime(2026, 1, 12, tzinfo=UTC)
    story.charge("ctr-1", "alloc-a", "sup-1", hour, billable=1_800, outage=3_600)  # usage 1.00 in all
    story.charge("ctr-1", "alloc-b", "sup-2", hour, billable=0, outage=3_600)
    story.charge("ctr-1", "alloc-c", "sup-1", hour, billable=0, outage=3_600)
    story.charge("ctr-1", "alloc-b", "sup-2", datetime(2026, 3, 2, tzinfo=UTC), billable=2_400)  # March: 1.00
    story.watermark(datetime(2026, 4, 1, tzinfo=UTC))
    await story.publish(stack)
    async with running(stack, [INVOICING], relays=0):
        await wait_invoices(stack, 3)
        await wait_statements(stack, 4)
    [jan, _, _] = await invoices_of(stack, "ctr-1")
    credit = half_even(-Fraction(1) / 10, 2)
    assert jan["lines"]["sla_credit"] == str(credit) == "-0.10"

    # Largest remainder by hand: 10 cents x 1/3 each = 3.33..: floors 3, 3, 3; one cent left; the
    # remainders tie, so the smallest allocation id (alloc-a) gets it.
    s1 = await statement_of(stack, "sup-1", "2026-01")
    s2 = await statement_of(stack, "sup-2", "2026-01")
    assert s1["earnings"] == {"alloc-a": "0.75"}  # alloc-c delivered no billable seconds: no line
    assert (s1["sla_chargebacks"], s1["net"]) == ("-0.07", "0.68")  # alloc-a 4 + alloc-c 3
    assert (s2["earnings"], s2["earnings_total"], s2["sla_chargebacks"]) == ({}, "0.00", "-0.03")
    assert (s2["carried"], s2["net"]) == ("0.00", "-0.03")

    s2_feb = await statement_of(stack, "sup-2", "2026-02")
    assert (s2_feb["earnings"], s2_feb["carried"], s2_feb["net"]) == ({}, "-0.03", "-0.03")
    s2_mar = await statement_of(stack, "sup-2", "2026-03")
    assert (s2_mar["earnings"], s2_mar["carried"], s2_mar["net"]) == ({"alloc-b": "1.00"}, "-0.03", "0.97")
    assert await count(stack, "select count(*) from invoicing.statements where supplier_id = 'sup-1'") == 1

    numbers = sorted(r["number"] for r in await stack.pool.fetch("select number from invoicing.statements"))
    assert numbers == [f"STM-2026-{n:06d}" for n in range(1, 5)]
    # Ledger: sup-2's payable shows what it owes after the chargeback, then what it is owed.
    assert await balance_units(stack, chart.payable("sup-2", "USD").code) == -units(Fraction(97, 100))
    assert await balance_units(stack, chart.sla_recovery("USD").code) == -units(Fraction(10, 100))
    await assert_ledger_sound(stack)


# --- R1 -----------------------------------------------------------------------------------------------------


async def test_a_contract_terminated_before_its_start_gets_no_invoice_and_holds_up_nothing(stack: Stack) -> None:
    """R1: only periods that overlap the term get an invoice. A termination effective before ``starts_at``
    (arriving after the contract) empties the term: no invoice, no number used, and the contract does not
    keep the month's statements waiting."""
    story = Story()
    story.contract("ctr-live", renter="rnt-1")
    story.charge("ctr-live", "alloc-1", "sup-1", JAN[0] + timedelta(hours=3), billable=2 * HOUR_S)
    story.contract("ctr-void", renter="rnt-2", starts_at=JAN[0] + timedelta(days=10, hours=7))
    story.terminate("ctr-void", JAN[0] + timedelta(days=4))
    story.watermark(FEB[1])
    await story.publish(stack)
    async with running(stack, [INVOICING], relays=0):
        await wait_statements(stack, 1)
        await wait_invoices(stack, 2)
    assert await invoices_of(stack, "ctr-void") == []
    live = await invoices_of(stack, "ctr-live")
    assert [i["number"] for i in live] == ["INV-2026-000001", "INV-2026-000002"]
    assert live[0]["lines"]["usage"] == "4.00"
    assert (await statement_of(stack, "sup-1", "2026-01"))["earnings_total"] == "3.00"
    waiting = await stack.pool.fetchval(
        "select next_period_start from invoicing.contract_state where contract_id = 'ctr-void'"
    )
    assert waiting is None
    await assert_ledger_sound(stack)
