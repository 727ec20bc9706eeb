"""Membership rules, one test each: which charges, draws, earnings and chargebacks a document claims
(:mod:`services.invoicing.store.membership`; docs/billing-rules.md R3, R10, R12).

Rows are inserted directly into invoicing's tables; each test calls the rule, asserts exactly which
rows it claimed (and which it left alone, with the reason in the row's name), then calls it again and
asserts it claims nothing.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import asyncpg
import pytest

from services.invoicing import store
from tests.conftest import Stack

pytestmark = pytest.mark.integration

JAN = (datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC))
FEB = (datetime(2026, 2, 1, tzinfo=UTC), datetime(2026, 3, 1, tzinfo=UTC))
MAR = (datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC))


async def add_charge(
    conn: asyncpg.Connection,
    charge_id: str,
    *,
    contract_id: str = "c1",
    supplier_id: str = "s1",
    allocation_id: str = "a1",
    currency: str = "USD",
    period: tuple[datetime, datetime] = JAN,
    hour_start: datetime | None = None,
    charge_x3600: str = "36000",
    earning_x3600: str = "18000",
    document_id: str | None = None,
    stated_month: str | None = None,
) -> None:
    await conn.execute(
        """insert into invoicing.charges (charge_id, event_id, contract_id, renter_id, supplier_id,
               allocation_id, currency, meter, hour_start, period_start, period_end, charge_x3600,
               earning_x3600, accrued_units, earning_units, provisioned_gpu_seconds, billable_gpu_seconds,
               maintenance_gpu_seconds, outage_gpu_seconds, late, document_id, stated_month)
           values ($1, $1, $2, 'r1', $3, $4, $5, 'gpu_seconds', $6, $7, $8, $9, $10, 1000, 500,
                   3600, 3000, 400, 200, false, $11, $12)""",
        charge_id,
        contract_id,
        supplier_id,
        allocation_id,
        currency,
        hour_start or period[0],
        period[0],
        period[1],
        Decimal(charge_x3600),
        Decimal(earning_x3600),
        document_id,
        stated_month,
    )


async def add_draw(
    conn: asyncpg.Connection,
    draw_id: str,
    *,
    contract_id: str = "c1",
    period: tuple[datetime, datetime] = JAN,
    drawn_x3600: str = "3600",
    document_id: str | None = None,
) -> None:
    await conn.execute(
        """insert into invoicing.draws (draw_id, event_id, contract_id, currency, period_start, period_end,
               drawn_x3600, reason, at, late, document_id)
           values ($1, $1, $2, 'USD', $3, $4, $5, 'charge', $3, false, $6)""",
        draw_id,
        contract_id,
        period[0],
        period[1],
        Decimal(drawn_x3600),
        document_id,
    )


async def add_chargeback(
    conn: asyncpg.Connection,
    document_id: str,
    *,
    month: str,
    supplier_id: str = "s1",
    currency: str = "USD",
    allocation_id: str = "a1",
    stated_month: str | None = None,
) -> None:
    await conn.execute(
        """insert into invoicing.chargebacks (document_id, contract_id, period_start, period_end,
               allocation_id, supplier_id, currency, month, amount_minor, stated_month)
           values ($1, 'c1', $2, $3, $4, $5, $6, $7, -100, $8)""",
        document_id,
        JAN[0],
        JAN[1],
        allocation_id,
        supplier_id,
        currency,
        month,
        stated_month,
    )


async def carried_by(conn: asyncpg.Connection, table: str, key: str, document_id: str) -> list[str]:
    rows = await conn.fetch(f"select {key} from invoicing.{table} where document_id = $1 order by 1", document_id)
    return [r[key] for r in rows]


async def test_claim_invoice_charges_takes_the_periods_open_charges(stack: Stack) -> None:
    """R10: the period's invoice carries the contract's open charges of that period, and only those."""
    async with stack.pool.acquire() as conn, conn.transaction():
        await add_charge(conn, "jan-a1", allocation_id="a1", charge_x3600="36000")
        await add_charge(conn, "jan-a1-b", allocation_id="a1", charge_x3600="7200")
        await add_charge(conn, "jan-a2", allocation_id="a2", supplier_id="s2", charge_x3600="1800")
        await add_charge(conn, "jan-carried", document_id="inv-old")
        await add_charge(conn, "feb-other-period", period=FEB)
        await add_charge(conn, "jan-other-contract", contract_id="c2")

        sums = await store.claim_invoice_charges(conn, "c1", JAN[0], "inv-jan")

        assert await carried_by(conn, "charges", "charge_id", "inv-jan") == ["jan-a1", "jan-a1-b", "jan-a2"]
        assert [(s.allocation_id, s.supplier_id, s.charge_x3600, s.charges) for s in sums] == [
            ("a1", "s1", Decimal(43200), 2),
            ("a2", "s2", Decimal(1800), 1),
        ]
        assert sums[0].accrued_units == 2000 and sums[0].outage_gpu_seconds == 400
        assert await carried_by(conn, "charges", "charge_id", "inv-old") == ["jan-carried"]

        assert await store.claim_invoice_charges(conn, "c1", JAN[0], "inv-jan-again") == []
        assert await carried_by(conn, "charges", "charge_id", "inv-jan-again") == []


async def test_claim_invoice_draws_takes_the_periods_open_draws(stack: Stack) -> None:
    """R10 with R8: the period's invoice applies the contract's open prepaid draws of that period."""
    async with stack.pool.acquire() as conn, conn.transaction():
        await add_draw(conn, "jan-1", drawn_x3600="3600")
        await add_draw(conn, "jan-2", drawn_x3600="1.5")
        await add_draw(conn, "jan-carried", document_id="inv-old")
        await add_draw(conn, "feb-other-period", period=FEB)
        await add_draw(conn, "jan-other-contract", contract_id="c2")

        drawn = await store.claim_invoice_draws(conn, "c1", JAN[0], "inv-jan")

        assert drawn == Decimal("3601.5")
        assert await carried_by(conn, "draws", "draw_id", "inv-jan") == ["jan-1", "jan-2"]

        assert await store.claim_invoice_draws(conn, "c1", JAN[0], "inv-jan-again") == Decimal(0)
        assert await carried_by(conn, "draws", "draw_id", "inv-jan-again") == []


async def test_late_corrections_of_invoiced_periods_go_on_the_next_document(stack: Stack) -> None:
    """R3: open charges and draws of periods ending by the boundary (already invoiced) are found, and
    claimed by the document that carries them; the open period and carried rows are not."""
    async with stack.pool.acquire() as conn, conn.transaction():
        await add_charge(conn, "jan-late", charge_x3600="-3600")
        await add_charge(conn, "feb-late", period=FEB, allocation_id="a2")
        await add_charge(conn, "jan-carried", document_id="inv-jan")
        await add_charge(conn, "mar-open-period", period=MAR)
        await add_charge(conn, "jan-other-contract", contract_id="c2")
        await add_draw(conn, "jan-late-draw", drawn_x3600="-7.5")
        await add_draw(conn, "mar-open-draw", period=MAR)

        found = await store.find_late_corrections(conn, "c1", periods_ending_by=MAR[0])

        assert found.charge_ids == ["feb-late", "jan-late"]
        assert found.draw_ids == ["jan-late-draw"]
        assert found.periods == [JAN, FEB]
        assert found.drawn_x3600 == {JAN[0]: Decimal("-7.5")}
        assert [(c.period_start, c.allocation_id, c.charge_x3600) for c in found.charges] == [
            (JAN[0], "a1", Decimal(-3600)),
            (FEB[0], "a2", Decimal(36000)),
        ]
        # Reading claims nothing.
        assert await carried_by(conn, "charges", "charge_id", "inv-mar") == []

        claimed = await store.claim_late_corrections(conn, found, "inv-mar")

        assert claimed == (["feb-late", "jan-late"], ["jan-late-draw"])
        assert await carried_by(conn, "charges", "charge_id", "inv-mar") == ["feb-late", "jan-late"]
        assert await carried_by(conn, "draws", "draw_id", "inv-mar") == ["jan-late-draw"]
        assert await carried_by(conn, "charges", "charge_id", "inv-jan") == ["jan-carried"]

        assert await store.claim_late_corrections(conn, found, "cn-1") == ([], [])
        again = await store.find_late_corrections(conn, "c1", periods_ending_by=MAR[0])
        assert again.empty


async def test_claim_statement_earnings_takes_the_pairs_unstated_earnings_before_the_months_end(
    stack: Stack,
) -> None:
    """R12: the month's statement of a (supplier, currency) carries its unstated earnings of hours
    before the month's end — earlier months' late earnings apart — and nothing of later hours."""
    feb_start, feb_end = FEB
    async with stack.pool.acquire() as conn, conn.transaction():
        await add_charge(conn, "feb-a1", period=FEB, hour_start=datetime(2026, 2, 3, 10, tzinfo=UTC))
        await add_charge(conn, "feb-a1-b", period=FEB, hour_start=datetime(2026, 2, 28, 23, tzinfo=UTC))
        await add_charge(conn, "jan-late-a1", hour_start=datetime(2026, 1, 31, 23, tzinfo=UTC), earning_x3600="-900")
        await add_charge(conn, "jan-stated", stated_month="2026-01")
        await add_charge(conn, "mar-next-month", period=MAR, hour_start=MAR[0])
        await add_charge(conn, "feb-other-currency", period=FEB, currency="EUR")
        await add_charge(conn, "feb-other-supplier", period=FEB, supplier_id="s9")

        sums = await store.claim_statement_earnings(conn, [("s1", "USD")], "2026-02", feb_start, feb_end)

        stated = await conn.fetch("select charge_id from invoicing.charges where stated_month = '2026-02' order by 1")
        assert [r["charge_id"] for r in stated] == ["feb-a1", "feb-a1-b", "jan-late-a1"]
        assert [
            (s.supplier_id, s.currency, s.allocation_id, s.earning_x3600, s.late_earning_x3600, s.charges) for s in sums
        ] == [("s1", "USD", "a1", Decimal(36000), Decimal(-900), 3)]
        assert sums[0].billable_gpu_seconds == 6000 and sums[0].earning_units == 1500

        assert await store.claim_statement_earnings(conn, [("s1", "USD")], "2026-02", feb_start, feb_end) == []


async def test_claim_statement_chargebacks_takes_the_pairs_unstated_chargebacks_up_to_the_month(
    stack: Stack,
) -> None:
    """R12 with R7: the month's statement carries the pair's unstated chargebacks landing in that month
    or earlier; later months and stated ones stay."""
    async with stack.pool.acquire() as conn, conn.transaction():
        await add_chargeback(conn, "inv-feb", month="2026-02", allocation_id="a2")
        await add_chargeback(conn, "inv-jan-late", month="2026-01", allocation_id="a1")
        await add_chargeback(conn, "inv-jan-stated", month="2026-01", stated_month="2026-01")
        await add_chargeback(conn, "inv-mar", month="2026-03")
        await add_chargeback(conn, "inv-feb-eur", month="2026-02", currency="EUR")

        taken = await store.claim_statement_chargebacks(conn, [("s1", "USD")], "2026-02")

        assert [(c.document_id, c.allocation_id, c.month, c.amount_minor) for c in taken] == [
            ("inv-jan-late", "a1", "2026-01", -100),
            ("inv-feb", "a2", "2026-02", -100),
        ]
        stated = await conn.fetch(
            "select document_id from invoicing.chargebacks where stated_month = '2026-02' order by 1"
        )
        assert [r["document_id"] for r in stated] == ["inv-feb", "inv-jan-late"]

        assert await store.claim_statement_chargebacks(conn, [("s1", "USD")], "2026-02") == []
