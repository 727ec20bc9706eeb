"""Rating stories (R4, R8, R9, R13 and the watermark protocol), end to end through Kafka and PostgreSQL.

Each story publishes what the platform and metering would publish, runs the rating service, and checks
what finance would ask about: the charges on ``charges.rated.v1``, the ledger, the alerts and the
commands. Expected amounts are worked out here from the rules — second by second for prices (R4),
with a running wallet balance for R8 — never read back from the service's code.
"""

from __future__ import annotations

from datetime import datetime
from fractions import Fraction

import pytest

from domain.contracts.store import contract_partition
from libs.ids import derive_id
from schemas import topics
from services.rating.main import SERVICE
from tests.conftest import Stack
from tests.fleet import publish, running, wait_until
from tests.integration.test_rating_service import (
    HOUR,
    SECOND,
    Hour,
    Out,
    account_units,
    assert_ledger_ok,
    at,
    contract_amended,
    contract_created,
    contract_terminated,
    exact_x3600,
    handled,
    ledger_units,
    outputs,
    per_second_charge,
    publish_watermark,
    topped_up,
    usage,
    wait_sent,
)

pytestmark = pytest.mark.integration

DEC_1 = at("2026-12-01T00:00:00")
PERIOD = ("2026-12-01T00:00:00Z", "2027-01-01T00:00:00Z")


def charge(o: Out) -> Fraction:
    return exact_x3600(o.data["charge_x3600"])


def earning(o: Out) -> Fraction:
    return exact_x3600(o.data["earning_x3600"])


def full_hour(start: datetime) -> list[tuple[datetime, datetime]]:
    return [(start, start + HOUR)]


async def charges_of(stack: Stack) -> list[Out]:
    return [o for o in await outputs(stack, topics.CHARGES_RATED) if o.type == "charge.rated"]


# --- R4: the price in force at each second -------------------------------------------------------------


async def test_a_price_amendment_at_14_30_splits_that_hour(stack: Stack) -> None:
    """8 GPUs run 14:00–15:00; the price goes from 2.00 to 3.00 (supplier rate 1.40 → 2.00) at 14:30."""
    cid = "c-split"
    h14 = DEC_1 + 14 * HOUR
    async with running(stack, [SERVICE]):
        await publish(
            stack,
            [
                contract_created(cid, starts_at=DEC_1, price="2.00", rate="1.40"),
                contract_amended(
                    cid,
                    h14 + 30 * 60 * SECOND,
                    event_id="amend-1430",
                    price_per_gpu_hour="3.00",
                    supplier_rate_per_gpu_hour="2.00",
                ),
            ],
        )
        await wait_until(lambda: handled(stack, 2), what="contract and amendment")
        await publish(stack, [usage(Hour(cid, "alloc-1", h14, gpu_count=8))])
        await wait_sent(stack, topics.CHARGES_RATED, 1, "charge.rated")

    [rated] = await charges_of(stack)
    # Half an hour of 8 GPUs at 2.00 (8.00) plus half an hour at 3.00 (12.00), second by second.
    expected_charge = per_second_charge(8, full_hour(h14), [(DEC_1, "2.00"), (h14 + 1800 * SECOND, "3.00")])
    expected_earning = per_second_charge(8, full_hour(h14), [(DEC_1, "1.40"), (h14 + 1800 * SECOND, "2.00")])
    assert expected_charge == 20
    assert charge(rated) == expected_charge
    assert earning(rated) == expected_earning
    assert rated.data["price_versions"] == [1, 2]
    assert (rated.data["period_start"], rated.data["period_end"]) == PERIOD
    units = await account_units(stack)
    assert units["renter:renter-1:unbilled_receivable:USD"] == ledger_units(expected_charge, "USD")
    await assert_ledger_ok(stack)


async def test_an_amendment_arriving_after_the_hour_was_rated_produces_a_correction_equal_to_the_difference(
    stack: Stack,
) -> None:
    """Hours 13, 14 and 15 (8 GPUs each) are rated at 2.00. Then the platform says the price became 3.00
    at 14:30 — and later that the contract ended at 15:15. Each late fact yields, per hour it touches,
    a correction equal to the new price of that hour minus what was charged."""
    cid = "c-late"
    hours = [DEC_1 + h * HOUR for h in (13, 14, 15)]
    change_at = hours[1] + 1800 * SECOND
    end_at = hours[2] + 900 * SECOND
    async with running(stack, [SERVICE]):
        await publish(stack, [contract_created(cid, starts_at=DEC_1, price="2.00", rate="1.40")])
        await wait_until(lambda: handled(stack, 1), what="contract")
        await publish(stack, [usage(Hour(cid, f"alloc-{n}", h, gpu_count=8)) for n, h in enumerate(hours)])
        await publish_watermark(stack, DEC_1 + 16 * HOUR)
        await wait_sent(stack, topics.CHARGES_RATED, 6, "charges.watermark")
        await publish(
            stack,
            [
                contract_amended(
                    cid,
                    change_at,
                    event_id="amend-late",
                    sent_at=DEC_1 + 17 * HOUR,
                    price_per_gpu_hour="3.00",
                )
            ],
        )
        await wait_sent(stack, topics.CHARGES_RATED, 5, "charge.rated")
        await publish(stack, [contract_terminated(cid, end_at, event_id="terminated")])
        await wait_sent(stack, topics.CHARGES_RATED, 6, "charge.rated")

    rated = await charges_of(stack)
    old = [(DEC_1, "2.00")]
    new = [(DEC_1, "2.00"), (change_at, "3.00")]
    originals = {o.data["hour_start"]: o for o in rated[:3]}
    for h in hours:
        assert charge(originals[h.isoformat().replace("+00:00", "Z")]) == per_second_charge(8, full_hour(h), old)
    repriced = [o for o in rated if o.data["charge_id"] != derive_id("charge", o.data["usage_id"])]
    by_cause = {(o.data["hour_start"], o.data["charge_id"]): o for o in repriced}
    assert len(repriced) == 3  # hour 14 and 15 for the amendment, hour 15 for the termination

    def correction(hour: datetime, event_id: str) -> Out:
        usage_id = Hour(cid, f"alloc-{hours.index(hour)}", hour, gpu_count=8).usage_id
        return by_cause[(hour.isoformat().replace("+00:00", "Z"), derive_id("charge", usage_id, "reprice", event_id))]

    # The amendment: hour 14 gains half an hour at +1.00 × 8 GPUs, hour 15 a full hour at +1.00 × 8.
    for h in hours[1:]:
        difference = per_second_charge(8, full_hour(h), new) - per_second_charge(8, full_hour(h), old)
        assert charge(correction(h, "amend-late")) == difference
    assert charge(correction(hours[1], "amend-late")) == 4
    # The termination: hour 15 keeps only 15:00–15:15 at 3.00.
    clipped = per_second_charge(8, [(hours[2], end_at)], new)
    assert charge(correction(hours[2], "terminated")) == clipped - per_second_charge(8, full_hour(hours[2]), new)
    # The ledger holds each hour at its final exact amount, rounded once.
    final = [
        per_second_charge(8, full_hour(hours[0]), new),
        per_second_charge(8, full_hour(hours[1]), new),
        clipped,
    ]
    units = await account_units(stack)
    assert units["renter:renter-1:unbilled_receivable:USD"] == sum(ledger_units(f, "USD") for f in final)
    await assert_ledger_ok(stack)


# --- R13: the platform's take --------------------------------------------------------------------------


async def test_renter_charge_minus_supplier_earning_is_platform_revenue_for_every_allocation_hour(
    stack: Stack,
) -> None:
    """Three suppliers' allocations for one renter over two hours. Every allocation-hour's ledger entry
    carries both sides; unbilled revenue − cost of revenue = Σ (charge − earning)."""
    cid = "c-take"
    # Seconds in multiples of 9 keep every amount exact at the ledger's 8 places (3600 = 16 × 25 × 9).
    hours = [
        Hour(cid, "alloc-a", DEC_1 + 9 * HOUR, gpu_count=8, supplier_id="sup-a"),
        Hour(cid, "alloc-a", DEC_1 + 10 * HOUR, gpu_count=8, segments=((0, 1233),), supplier_id="sup-a"),
        Hour(cid, "alloc-b", DEC_1 + 9 * HOUR, gpu_count=2, segments=((99, 3501),), supplier_id="sup-b"),
        Hour(
            cid,
            "alloc-c",
            DEC_1 + 10 * HOUR,
            gpu_count=5,
            segments=((9, 18), (1800, 3600)),
            supplier_id="sup-c",
        ),
    ]
    async with running(stack, [SERVICE]):
        await publish(stack, [contract_created(cid, starts_at=DEC_1, price="2.35", rate="1.65")])
        await wait_until(lambda: handled(stack, 1), what="contract")
        await publish(stack, [usage(h) for h in hours])
        await wait_sent(stack, topics.CHARGES_RATED, len(hours), "charge.rated")

    rated = await charges_of(stack)
    assert len(rated) == len(hours)
    take = Fraction(0)
    for h in hours:
        segments = [(h.hour_start + a * SECOND, h.hour_start + b * SECOND) for a, b in h.segments]
        exact_charge = per_second_charge(h.gpu_count, segments, [(DEC_1, "2.35")])
        exact_earning = per_second_charge(h.gpu_count, segments, [(DEC_1, "1.65")])
        [o] = [o for o in rated if o.data["usage_id"] == h.usage_id]
        assert (charge(o), earning(o)) == (exact_charge, exact_earning)
        take += exact_charge - exact_earning
        # One entry, both sides (R13).
        postings = await stack.pool.fetch(
            """select p.account, p.amount from ledger.postings p join ledger.entries e on e.id = p.entry_id
                where e.cause_id = $1 and e.kind = 'rating.charge' order by p.account""",
            o.data["charge_id"],
        )
        assert {r["account"]: int(r["amount"]) for r in postings} == {
            "renter:renter-1:unbilled_receivable:USD": ledger_units(exact_charge, "USD"),
            "platform:unbilled_revenue:USD": -ledger_units(exact_charge, "USD"),
            "platform:cost_of_revenue:USD": ledger_units(exact_earning, "USD"),
            f"supplier:{h.supplier_id}:payable_accrued:USD": -ledger_units(exact_earning, "USD"),
        }
    units = await account_units(stack)
    revenue_minus_cost = units["platform:unbilled_revenue:USD"] - units["platform:cost_of_revenue:USD"]
    assert revenue_minus_cost == take * 10**8  # exact: every amount here has at most 8 places
    await assert_ledger_ok(stack)


# --- Multi-currency ------------------------------------------------------------------------------------


async def test_a_jpy_contract_is_priced_in_yen(stack: Stack) -> None:
    """JPY has no minor unit (ISO 4217): 3 GPUs for 1234 s at ¥1500 (supplier ¥1100) per GPU-hour."""
    cid = "c-jpy"
    hour = Hour(cid, "alloc-jp", DEC_1 + 3 * HOUR, gpu_count=3, segments=((100, 1334),), renter_id="renter-jp")
    async with running(stack, [SERVICE]):
        await publish(
            stack,
            [contract_created(cid, renter_id="renter-jp", currency="JPY", starts_at=DEC_1, price="1500", rate="1100")],
        )
        await wait_until(lambda: handled(stack, 1), what="contract")
        await publish(stack, [usage(hour)])
        await wait_sent(stack, topics.CHARGES_RATED, 1, "charge.rated")

    [rated] = await charges_of(stack)
    segments = [(hour.hour_start + 100 * SECOND, hour.hour_start + 1334 * SECOND)]
    assert rated.data["currency"] == "JPY"
    assert charge(rated) == per_second_charge(3, segments, [(DEC_1, "1500")]) == Fraction(3085, 2)  # ¥1542.5
    assert earning(rated) == per_second_charge(3, segments, [(DEC_1, "1100")])  # ¥1131.1666…
    # The ledger keeps yen at 6 extra places (JPY/6); the accrual rounds once, half to even.
    units = await account_units(stack)
    assert units["renter:renter-jp:unbilled_receivable:JPY"] == 1_542_500_000
    assert units["supplier:supplier-1:payable_accrued:JPY"] == 1_131_166_667
    assets = await stack.pool.fetch("select distinct asset from ledger.accounts")
    assert {r["asset"] for r in assets} == {"JPY/6"}
    await assert_ledger_ok(stack)


# --- R8: prepaid wallets -------------------------------------------------------------------------------


async def test_a_prepaid_wallet_exhausted_mid_period_then_topped_up_settles_the_overage_first(
    stack: Stack,
) -> None:
    """A prepaid contract at 5.00 per GPU-hour runs 2 GPUs from 00:00 to 06:00: 10.00 an hour, 60.00 in all.
    The renter tops up 35.00 at 00:00 and 20.00 at 04:30 (that top-up is even published first).

    Event time, hour by hour (a charge counts when its hour ends):
      01:00 −10 → 25   02:00 −10 → 15   03:00 −10 → 5  (crosses 20 % of 35 = 7: low balance)
      04:00 −10: 5 drawn, 5 overage → 0 (exhausted: suspend)
      04:30 +20: settles the 5 overage first → 15 (resume)
      05:00 −10 → 5 (20 % of 20 = 4: not crossed)
      06:00 −10: 5 drawn, 5 overage → 0 (crosses 4: low balance; exhausted: suspend)
    Drawn = min(usage 60, balance at start 0 + top-ups 55) = 55; 5 is overage for the invoice."""
    cid = "c-prepaid"
    hours = [Hour(cid, "alloc-w", DEC_1 + h * HOUR, gpu_count=2) for h in range(6)]
    async with running(stack, [SERVICE]):
        await publish(
            stack, [contract_created(cid, billing_mode="prepaid", starts_at=DEC_1, price="5.00", rate="3.00")]
        )
        await wait_until(lambda: handled(stack, 1), what="contract")
        items = [
            topped_up(cid, "20.00", DEC_1 + 270 * 60 * SECOND, event_id="top-0430"),
            topped_up(cid, "35.00", DEC_1, event_id="top-0000"),
        ] + [usage(h) for h in hours]
        await publish(stack, items)
        await wait_until(lambda: handled(stack, 1 + len(items)), what="usage and top-ups")
        await publish_watermark(stack, DEC_1 + 6 * HOUR, [contract_partition(cid)])
        await wait_sent(stack, topics.CHARGES_RATED, 1, "charges.watermark")
        await wait_sent(stack, topics.PLATFORM_COMMANDS, 3)

    out = await outputs(stack, topics.CHARGES_RATED)
    drawn = [o for o in out if o.type == "wallet.drawn"]
    mark = next(o for o in out if o.type == "charges.watermark")
    assert all(d.offset < mark.offset and d.partition == mark.partition for d in drawn)  # draws precede it
    assert [(d.data["reason"], str(exact_x3600(d.data["drawn_x3600"])), d.data["at"]) for d in drawn] == [
        ("charge", "10", "2026-12-01T01:00:00Z"),
        ("charge", "10", "2026-12-01T02:00:00Z"),
        ("charge", "10", "2026-12-01T03:00:00Z"),
        ("charge", "5", "2026-12-01T04:00:00Z"),
        ("topup_settlement", "5", "2026-12-01T04:30:00Z"),
        ("charge", "10", "2026-12-01T05:00:00Z"),
        ("charge", "5", "2026-12-01T06:00:00Z"),
    ]
    usage_total, top_ups = Fraction(60), Fraction(55)
    assert sum(exact_x3600(d.data["drawn_x3600"]) for d in drawn) == min(usage_total, Fraction(0) + top_ups)
    assert all((d.data["period_start"], d.data["period_end"]) == PERIOD for d in drawn)

    alerts = [(o.type, o.data) for o in await outputs(stack, topics.BILLING_ALERTS)]
    assert [(t, d["at"]) for t, d in alerts] == [
        ("wallet.low_balance", "2026-12-01T03:00:00Z"),
        ("wallet.exhausted", "2026-12-01T04:00:00Z"),
        ("wallet.low_balance", "2026-12-01T06:00:00Z"),
        ("wallet.exhausted", "2026-12-01T06:00:00Z"),
    ]
    assert (alerts[0][1]["balance"], alerts[0][1]["threshold"]) == ("5", "7")
    assert alerts[1][1]["overage"] == "5"
    commands = [(o.type, o.data["reason"], o.data["at"]) for o in await outputs(stack, topics.PLATFORM_COMMANDS)]
    assert commands == [
        ("platform.suspend_requested", "wallet_exhausted", "2026-12-01T04:00:00Z"),
        ("platform.resume_requested", "wallet_topped_up", "2026-12-01T04:30:00Z"),
        ("platform.suspend_requested", "wallet_exhausted", "2026-12-01T06:00:00Z"),
    ]
    units = await account_units(stack)
    assert units["platform:cash_clearing:USD"] == ledger_units(top_ups, "USD")
    assert units[f"renter:renter-1:wallet:{cid}:USD"] == 0
    assert units[f"renter:renter-1:prepaid_applied:{cid}:USD"] == ledger_units(Fraction(55), "USD")
    assert units["renter:renter-1:unbilled_receivable:USD"] == ledger_units(usage_total, "USD")  # all rated
    overage = await stack.pool.fetchval("select overage_x3600 from rating.wallet_periods where contract_id = $1", cid)
    assert exact_x3600(str(overage)) == usage_total - top_ups
    await assert_ledger_ok(stack)


async def test_late_usage_corrections_of_december_draw_only_from_decembers_money(stack: Stack) -> None:
    """A prepaid contract at 5.00 per GPU-hour. December: a 100.00 top-up, ten hours of 2 GPUs (10.00 each):
    drawn 100.00. January: its own 50.00 top-up (made at 00:00), then 10.00 of usage: 40.00 left.

    Then metering revises December's last hour from 2 to 6 GPUs: +20.00 for December. R8: December draws
    min(120, 0 + 100) = 100 — the 20.00 is December overage, January's top-up was not there before
    December's end — so nothing is drawn and the wallet keeps 40.00.
    January uses 50.00 more: 50.00 drawn of its 60.00, 10.00 overage, 0 left.
    Then the same hour is revised down to 1 GPU: −25.00 for December. December's 20.00 overage goes first, the
    other 5.00 come back: December draws 95.00, so January starts with 5.00 and draws 55.00 (5.00 more, for
    its overage). The wallet stays at 0; 150.00 drawn in all = the top-ups."""
    cid = "c-late-wallet"
    jan_1 = at("2027-01-01T00:00:00")
    december = [Hour(cid, "alloc-d", DEC_1 + h * HOUR, gpu_count=2) for h in range(10)]
    last = december[-1]
    revised = Hour(cid, "alloc-d", last.hour_start, gpu_count=6, revision=2)
    revised_down = Hour(cid, "alloc-d", last.hour_start, gpu_count=1, revision=3)
    partition = contract_partition(cid)

    async def drawn_by_period() -> dict[str, tuple[Fraction, Fraction, Fraction]]:
        rows = await stack.pool.fetch(
            """select period_start, usage_x3600, drawn_x3600, overage_x3600 from rating.wallet_periods
                where contract_id = $1""",
            cid,
        )
        return {
            r["period_start"].strftime("%Y-%m"): tuple(
                exact_x3600(str(r[c])) for c in ("usage_x3600", "drawn_x3600", "overage_x3600")
            )
            for r in rows
        }

    async def draws() -> list[tuple[str, str, Fraction]]:
        out = await outputs(stack, topics.CHARGES_RATED)
        return [
            (o.data["period_start"][:7], o.data["reason"], exact_x3600(o.data["drawn_x3600"]))
            for o in out
            if o.type == "wallet.drawn"
        ]

    async with running(stack, [SERVICE]):
        await publish(
            stack, [contract_created(cid, billing_mode="prepaid", starts_at=DEC_1, price="5.00", rate="3.00")]
        )
        await wait_until(lambda: handled(stack, 1), what="contract")
        items = [
            topped_up(cid, "100.00", DEC_1, event_id="top-dec"),
            topped_up(cid, "50.00", jan_1, event_id="top-jan"),
            *[usage(h) for h in december],
            usage(Hour(cid, "alloc-j", jan_1, gpu_count=2)),
        ]
        await publish(stack, items)
        await wait_until(lambda: handled(stack, 1 + len(items)), what="usage and top-ups")
        await publish_watermark(stack, jan_1 + 2 * HOUR, [partition])
        await wait_sent(stack, topics.CHARGES_RATED, 1, "charges.watermark")
        assert await drawn_by_period() == {"2026-12": (100, 100, 0), "2027-01": (10, 10, 0)}
        assert (await account_units(stack))[f"renter:renter-1:wallet:{cid}:USD"] == ledger_units(Fraction(40), "USD")
        drawn_before = len(await draws())

        # Late: December's last hour revised from 2 to 6 GPUs (+20.00 for December).
        await publish(stack, [usage(revised, last)])
        await wait_sent(stack, topics.CHARGES_RATED, len(december) + 2, "charge.rated")
        await publish_watermark(stack, jan_1 + 3 * HOUR, [partition])
        await wait_sent(stack, topics.CHARGES_RATED, 2, "charges.watermark")
        assert await drawn_by_period() == {"2026-12": (120, 100, 20), "2027-01": (10, 10, 0)}
        assert (await account_units(stack))[f"renter:renter-1:wallet:{cid}:USD"] == ledger_units(Fraction(40), "USD")
        assert len(await draws()) == drawn_before  # nothing drawn: January's money stays January's

        # On time: 50.00 more in January; then, late, the hour revised down to 1 GPU (−25.00 for December).
        await publish(stack, [usage(Hour(cid, "alloc-j", jan_1 + 3 * HOUR, gpu_count=10))])
        await wait_sent(stack, topics.CHARGES_RATED, len(december) + 3, "charge.rated")
        await publish_watermark(stack, jan_1 + 4 * HOUR, [partition])
        await wait_sent(stack, topics.CHARGES_RATED, 3, "charges.watermark")
        assert await drawn_by_period() == {"2026-12": (120, 100, 20), "2027-01": (60, 50, 10)}
        await publish(stack, [usage(revised_down, revised)])
        await wait_sent(stack, topics.CHARGES_RATED, len(december) + 4, "charge.rated")
        await publish_watermark(stack, jan_1 + 5 * HOUR, [partition])
        await wait_sent(stack, topics.CHARGES_RATED, 4, "charges.watermark")

    assert await drawn_by_period() == {"2026-12": (95, 95, 0), "2027-01": (60, 55, 5)}
    assert (await draws())[-2:] == [("2026-12", "correction", Fraction(-5)), ("2027-01", "correction", Fraction(5))]
    assert sum(amount for *_, amount in await draws()) == 95 + 55
    units = await account_units(stack)
    assert units[f"renter:renter-1:wallet:{cid}:USD"] == 0
    assert units[f"renter:renter-1:prepaid_applied:{cid}:USD"] == ledger_units(Fraction(150), "USD")
    await assert_ledger_ok(stack)


# --- R9: credit limits ---------------------------------------------------------------------------------


async def test_a_postpaid_contract_crosses_its_credit_limit_and_every_charge_is_still_rated(
    stack: Stack,
) -> None:
    """Credit limit 25.00; 2 GPUs at 5.00 = 10.00 an hour, nothing invoiced yet. Exposure after each hour:
    10, 20, 30, 40 — it crosses 25 with the third hour: one alert, one suspend request, and the third and
    fourth hours are charged all the same."""
    cid = "c-credit"
    hours = [Hour(cid, "alloc-k", DEC_1 + h * HOUR, gpu_count=2) for h in range(4)]
    async with running(stack, [SERVICE]):
        await publish(stack, [contract_created(cid, starts_at=DEC_1, price="5.00", rate="3.00", credit_limit="25")])
        await wait_until(lambda: handled(stack, 1), what="contract")
        await publish(stack, [usage(h) for h in hours])
        await wait_sent(stack, topics.CHARGES_RATED, 4, "charge.rated")
        await wait_sent(stack, topics.PLATFORM_COMMANDS, 1)

    rated = await charges_of(stack)
    assert [charge(o) for o in rated] == [10, 10, 10, 10]
    alerts = await outputs(stack, topics.BILLING_ALERTS)
    assert [(a.type, a.data["credit_limit"], a.data["exposure"], a.data["at"]) for a in alerts] == [
        ("credit.limit_exceeded", "25", "30", "2026-12-01T03:00:00Z")
    ]
    commands = await outputs(stack, topics.PLATFORM_COMMANDS)
    assert [(c.type, c.data["reason"]) for c in commands] == [("platform.suspend_requested", "credit_limit_exceeded")]
    units = await account_units(stack)
    assert units["renter:renter-1:unbilled_receivable:USD"] == ledger_units(Fraction(40), "USD")
    await assert_ledger_ok(stack)


async def test_a_credit_limit_lowered_below_the_exposure_alerts_at_the_amendment_once(stack: Stack) -> None:
    """Credit limit 100.00; 2 GPUs at 5.00 = 10.00 an hour. After four hours the exposure is 40. The limit
    is amended to 25.00 from 04:00: the exposure is now over a limit it was under — a crossing (R9), so
    the amendment itself alerts and asks for a suspension, at its time, once; the next hours (50, 60) are
    still over and change nothing. (Comparing the exposures before and after one charge with one limit
    never fires here; checking only at the next charge would alert an hour late, and never for a contract
    with no more usage.)"""
    cid = "c-lowered"
    hours = [Hour(cid, "alloc-l", DEC_1 + h * HOUR, gpu_count=2) for h in range(6)]
    async with running(stack, [SERVICE]):
        await publish(stack, [contract_created(cid, starts_at=DEC_1, price="5.00", rate="3.00", credit_limit="100")])
        await wait_until(lambda: handled(stack, 1), what="contract")
        await publish(stack, [usage(h) for h in hours[:4]])
        await wait_sent(stack, topics.CHARGES_RATED, 4, "charge.rated")
        await publish(stack, [contract_amended(cid, DEC_1 + 4 * HOUR, event_id="limit-25", credit_limit="25")])
        await wait_until(lambda: handled(stack, 6), what="the amendment")
        await publish(stack, [usage(h) for h in hours[4:]])
        await wait_sent(stack, topics.CHARGES_RATED, 6, "charge.rated")
        await wait_sent(stack, topics.PLATFORM_COMMANDS, 1)

    assert [charge(o) for o in await charges_of(stack)] == [10] * 6
    alerts = await outputs(stack, topics.BILLING_ALERTS)
    assert [(a.type, a.data["credit_limit"], a.data["exposure"], a.data["at"]) for a in alerts] == [
        ("credit.limit_exceeded", "25", "40", "2026-12-01T04:00:00Z")
    ]
    commands = await outputs(stack, topics.PLATFORM_COMMANDS)
    assert [(c.type, c.data["reason"]) for c in commands] == [("platform.suspend_requested", "credit_limit_exceeded")]
    await assert_ledger_ok(stack)


# --- Watermarks ----------------------------------------------------------------------------------------


async def test_usage_for_an_unknown_contract_is_held_and_the_watermark_waits_for_it(stack: Stack) -> None:
    """Metering reports two hours of a contract rating has not heard of, then the 02:00 watermark. Rating
    forwards 02:00 on every other partition at once; on the contract's partition it waits until the
    contract arrives and its usage is rated, and then the watermark follows the charges."""
    cid = "c-unknown"
    partition = contract_partition(cid)
    hours = [Hour(cid, "alloc-u", DEC_1 + h * HOUR, gpu_count=1) for h in range(2)]
    async with running(stack, [SERVICE]):
        await publish(stack, [usage(h) for h in hours])
        await publish_watermark(stack, DEC_1 + 2 * HOUR)
        await wait_sent(stack, topics.CHARGES_RATED, 5, "charges.watermark")
        await wait_until(lambda: handled(stack, 2 + 6), what="usage and watermarks")
        before = await outputs(stack, topics.CHARGES_RATED)
        held = await stack.pool.fetchval("select count(*) from rating.usage_held")
        await publish(stack, [contract_created(cid, starts_at=DEC_1, price="4.00", rate="3.00")])
        await wait_sent(stack, topics.CHARGES_RATED, 6, "charges.watermark")

    assert held == 2
    assert all(o.type == "charges.watermark" for o in before)
    assert sorted(o.partition for o in before) == sorted(set(range(6)) - {partition})
    after = [o for o in await outputs(stack, topics.CHARGES_RATED) if o.partition == partition]
    assert [o.type for o in after] == ["charge.rated", "charge.rated", "charges.watermark"]
    assert [charge(o) for o in after[:2]] == [4, 4]
    assert after[2].data == {
        "through": "2026-12-01T02:00:00Z",
        "partition": partition,
        "source": "rating",
        "barrier": None,  # the watermark of a tick without a barrier carries none
    }
    await assert_ledger_ok(stack)


async def test_a_limit_lowered_on_a_contract_with_no_more_usage_still_alerts_and_a_raised_one_rearms(
    stack: Stack,
) -> None:
    """R9: three hours (exposure 30) under a 100.00 limit, then no more usage. Lowered to 20.00: the
    amendment alerts (nothing else would ever move this exposure). Raised to 50.00, then lowered to 10.00
    again: the raise re-arms the alert and the second lowering is a second crossing."""
    cid = "c-idle"
    async with running(stack, [SERVICE]):
        await _three_hours_under_a_100_limit(stack, cid, "alloc-i")
        await publish(
            stack,
            [
                contract_amended(cid, DEC_1 + 5 * HOUR, event_id="limit-20", credit_limit="20"),
                contract_amended(cid, DEC_1 + 6 * HOUR, event_id="limit-50", credit_limit="50"),
                contract_amended(cid, DEC_1 + 7 * HOUR, event_id="limit-10", credit_limit="10"),
            ],
        )
        await wait_sent(stack, topics.PLATFORM_COMMANDS, 2)
        await wait_until(lambda: handled(stack, 7), what="the amendments")

    alerts = await outputs(stack, topics.BILLING_ALERTS)
    assert [(a.data["credit_limit"], a.data["exposure"], a.data["at"]) for a in alerts] == [
        ("20", "30", "2026-12-01T05:00:00Z"),
        ("10", "30", "2026-12-01T07:00:00Z"),
    ]
    commands = await outputs(stack, topics.PLATFORM_COMMANDS)
    assert [c.data["reason"] for c in commands] == ["credit_limit_exceeded"] * 2
    await assert_ledger_ok(stack)


async def test_a_limit_amended_ahead_of_time_alerts_when_the_watermark_passes_the_moment_it_takes_effect(
    stack: Stack,
) -> None:
    """R9: three hours (exposure 30) under a 100.00 limit, then no more usage. At 04:00 an amendment says
    the limit is 20.00 from 10:00: nothing crosses at 04:00 (100.00 is in force), nor when the usage
    watermark passes 08:00. The watermark that passes 10:00 checks the exposure against the new limit as a
    movement of zero at 10:00: one alert and one suspend request, dated 10:00. A later watermark and a
    redelivered one fire nothing again. (Before: only the exposure's next movement would have checked it,
    and this contract has none.)"""
    cid = "c-ahead"
    part = contract_partition(cid)
    async with running(stack, [SERVICE]):
        await _three_hours_under_a_100_limit(stack, cid, "alloc-h")
        await publish(
            stack,
            [
                contract_amended(
                    cid, DEC_1 + 10 * HOUR, event_id="limit-20-at-10", credit_limit="20", sent_at=DEC_1 + 4 * HOUR
                )
            ],
        )
        await wait_until(lambda: handled(stack, 5), what="the amendment")
        await publish_watermark(stack, DEC_1 + 8 * HOUR, [part])
        await wait_sent(stack, topics.CHARGES_RATED, 4)  # the forwarded charges.watermark(08:00)
        assert await outputs(stack, topics.BILLING_ALERTS) == []
        await publish_watermark(stack, DEC_1 + 12 * HOUR, [part])
        await wait_sent(stack, topics.PLATFORM_COMMANDS, 1)
        await publish_watermark(stack, DEC_1 + 12 * HOUR, [part])  # redelivered: watermarks only move forward
        await publish_watermark(stack, DEC_1 + 16 * HOUR, [part])
        await wait_sent(stack, topics.CHARGES_RATED, 6)  # charges.watermark(12:00) and (16:00)

    alerts = await outputs(stack, topics.BILLING_ALERTS)
    assert [(a.data["credit_limit"], a.data["exposure"], a.data["at"]) for a in alerts] == [
        ("20", "30", "2026-12-01T10:00:00Z")
    ]
    commands = await outputs(stack, topics.PLATFORM_COMMANDS)
    assert [(c.data["reason"], c.data["at"]) for c in commands] == [("credit_limit_exceeded", "2026-12-01T10:00:00Z")]
    await assert_ledger_ok(stack)


async def _three_hours_under_a_100_limit(stack: Stack, cid: str, allocation: str) -> None:
    """A postpaid contract with a 100.00 credit limit and three rated hours of two GPUs (exposure 30.00)."""
    hours = [Hour(cid, allocation, DEC_1 + h * HOUR, gpu_count=2) for h in range(3)]
    await publish(stack, [contract_created(cid, starts_at=DEC_1, price="5.00", rate="3.00", credit_limit="100")])
    await wait_until(lambda: handled(stack, 1), what="contract")
    await publish(stack, [usage(h) for h in hours])
    await wait_sent(stack, topics.CHARGES_RATED, 3, "charge.rated")
