"""The background close: invoices per contract period (R1, R3, R5-R7, R10), credit notes, supplier
statements per month (R12) — in chunks, each chunk one transaction.

How work is found (the consumer only records; see :mod:`services.invoicing.handlers`):

* a contract is due when the next period to invoice ends at or before its partition's watermark
  (``contract_state.next_close_at``), or when late charges arrived for it (``late_work``). Up to
  :data:`libs.limits.CLOSE_CHUNK_CONTRACTS` contracts are locked ``for update skip locked`` per
  transaction, so two invoicing workers share the work and a first-of-month close of 100,000
  contracts is 200 short transactions, never one giant one, while the consumer keeps flowing;
* month M's statements close when every partition's watermark reached the first instant of M+1 and
  every known contract's periods ending by then are invoiced (invoices first, then statements).

Idempotent and crash-safe: a chunk commits its documents, their numbers, the charges they carry,
the close progress, the ledger entries and the outbox rows together; a killed worker leaves nothing
half-done and the next one resumes where the last commit left off. ``unique (contract_id,
period_start)`` and ``unique (supplier_id, currency, month)`` hold even against a bug.

Finalization instant (document ``issued_at``, event time, number year): for a period, the first
watermark of its partition that reached the period's end (or the contract's arrival, when it came
later); for a month's statements, the instant the last partition's watermark reached the month's end;
for a credit note, the watermark that the late charge found. All of them are recorded facts, so a
replay yields the same documents whatever the closer's timing.

A contract whose close breaks a billing rule (or hits a bug) is set aside with the reason in
``contract_state.blocked_reason`` (it then holds back the month's statements, on purpose: a month is
not final while one of its invoices is missing); the rest of its chunk closes without it.

Ledger (all amounts in ledger units; ``L(x)`` = minor units × 10^6, exact). Invoice, ONE entry::

    Cr renter unbilled_receivable   A (what rating accrued for every charge the invoice carries)
    Dr platform unbilled_revenue     A     Cr platform revenue_usage   A
    Dr renter receivable             L(total)
    Cr platform revenue_commitment   round_ledger(exact true-up, incl. true-up adjustments)
    Dr platform sla_contra_revenue   round_ledger(-exact SLA credit, incl. SLA adjustments)
    Cr platform tax_payable          L(tax)
    Dr renter prepaid_applied        round_ledger(exact drawn)   Cr renter receivable  L(prepaid applied)
    Dr renter credit_balance         L(credit applied)           Cr renter receivable  L(credit applied)
    Dr renter receivable             L(credit carried forward)   Cr renter credit_balance  L(carried)
    platform rounding                the balance: (invoiced - accrued) per line, credit = gained (R6)

A credit note posts the same shape (its lines are adjustments; its tax may be negative). Statement::

    Dr supplier payable_accrued   E (what rating accrued for the earnings carried)
    Cr supplier payable           L(earnings_total)
    Dr supplier payable           L(-chargebacks)   Cr platform sla_recovery  L(-chargebacks)
    platform rounding             the balance (R6)

Prepaid decision: rating posts ``wallet → prepaid_applied`` per draw with telescoping ledger deltas,
which invoicing cannot see per draw; the invoice clears ``round_ledger(exact Σ drawn)`` — within a
few ledger units of what was posted — and leaves any residue of micro-units in the contract's
``prepaid_applied`` account. The rounding account takes exact-vs-shown differences only.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from fractions import Fraction

import asyncpg
import structlog

from domain.contracts import chart
from domain.contracts.periods import period_containing, periods_overlapping
from domain.contracts.store import load_many
from domain.contracts.terms import ContractTerms
from libs import limits
from libs.db.pool import transaction
from libs.errors import InfrastructureError, RetryableError, SettleError
from libs.ids import derive_id
from libs.ledger import AccountSpec, Entry, Posting, build_entry, credit, debit, ensure_accounts, post
from libs.messaging.outbox import Emitter, write_outbox
from libs.messaging.worker import Runtime
from libs.money import Exact, minor_to_ledger, round_ledger
from libs.times import format_utc
from schemas import topics
from services.invoicing import domain, statements, store

log = structlog.get_logger("settle.invoicing.closer")

PRODUCER = "invoicing"
IDLE_WAIT_S = 0.2
"""How long the closer sleeps when it found nothing to do (it also wakes on stop)."""

"""Late corrections re-evaluate the commitment true-up (R5) once the event schema carries the kind."""


# --- ledger entries (pure) ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RenterAmounts:
    """What one invoice or credit note moves in the ledger (see the module docstring)."""

    contract_id: str
    renter_id: str
    currency: str
    accrued_units: int
    """Σ ``round_ledger(charge)`` over the charges the document carries (what rating accrued)."""
    charges: int
    usage_minor: int
    """Usage line + usage adjustments, as shown."""
    true_up_exact: Exact
    sla_credit_exact: Exact
    """Signed like the line (≤ 0 for a credit)."""
    tax_minor: int
    total_minor: int
    drawn_exact: Exact
    prepaid_minor: int
    credit_applied_minor: int
    credit_carried_forward_minor: int
    lines: int


def renter_entry(
    amounts: RenterAmounts, *, entry_id: str, cause_id: str, kind: str, occurred_at: datetime
) -> tuple[Entry | None, list[AccountSpec]]:
    """The one journal entry of an invoice or credit note, and the accounts it needs."""
    cur = amounts.currency
    renter, contract = amounts.renter_id, amounts.contract_id
    accounts = {
        "unbilled_receivable": chart.unbilled_receivable(renter, cur),
        "unbilled_revenue": chart.unbilled_revenue(cur),
        "revenue_usage": chart.revenue_usage(cur),
        "receivable": chart.receivable(renter, cur),
        "revenue_commitment": chart.revenue_commitment(cur),
        "sla_contra_revenue": chart.sla_contra_revenue(cur),
        "tax_payable": chart.tax_payable(cur),
        "prepaid_applied": chart.prepaid_applied(renter, contract, cur),
        "credit_balance": chart.credit_balance(renter, cur),
        "rounding": chart.rounding(cur),
    }
    code = {name: spec.code for name, spec in accounts.items()}

    def shown(amount_minor: int) -> int:
        return minor_to_ledger(amount_minor, cur)

    accrued = amounts.accrued_units
    postings: list[Posting] = [
        credit(code["unbilled_receivable"], accrued, cur),
        debit(code["unbilled_revenue"], accrued, cur),
        credit(code["revenue_usage"], accrued, cur),
        debit(code["receivable"], shown(amounts.total_minor), cur),
        credit(code["revenue_commitment"], round_ledger(amounts.true_up_exact, cur), cur),
        debit(code["sla_contra_revenue"], round_ledger(-amounts.sla_credit_exact, cur), cur),
        credit(code["tax_payable"], shown(amounts.tax_minor), cur),
        debit(code["prepaid_applied"], round_ledger(amounts.drawn_exact, cur), cur),
        credit(code["receivable"], shown(amounts.prepaid_minor), cur),
        debit(code["credit_balance"], shown(amounts.credit_applied_minor), cur),
        credit(code["receivable"], shown(amounts.credit_applied_minor), cur),
        debit(code["receivable"], shown(amounts.credit_carried_forward_minor), cur),
        credit(code["credit_balance"], shown(amounts.credit_carried_forward_minor), cur),
    ]
    residual = sum(p.amount_units for p in postings)
    # Each shown line is within half a minor unit of its exact amount, each accrual within half a
    # ledger unit of its charge: anything larger is a bug, not rounding.
    bound = minor_to_ledger(amounts.lines + 3, cur) + amounts.charges + 1
    assert abs(residual) <= bound, f"{kind} {cause_id}: rounding residual {residual} exceeds {bound}"
    postings.append(Posting(code["rounding"], cur, -residual))
    entry = build_entry(id=entry_id, cause_id=cause_id, kind=kind, occurred_at=occurred_at, postings=postings)
    return entry, _used(entry, accounts.values())


def _used(entry: Entry | None, specs: Iterable[AccountSpec]) -> list[AccountSpec]:
    """The accounts the entry posts to (an empty prepaid or credit account is never created)."""
    codes = {p.account for p in entry.postings} if entry is not None else set()
    return [spec for spec in specs if spec.code in codes]


def statement_entry(
    draft: statements.StatementDraft, *, accrued_units: int, charges: int, entry_id: str, cause_id: str
) -> tuple[Entry | None, list[AccountSpec]]:
    """The journal entry of a statement: accrued earnings → payable (rounded lines), chargebacks."""
    cur, supplier = draft.currency, draft.supplier_id
    accounts = [
        chart.payable_accrued(supplier, cur),
        chart.payable(supplier, cur),
        chart.sla_recovery(cur),
        chart.rounding(cur),
    ]
    accrued_code, payable_code, recovery_code, rounding_code = (a.code for a in accounts)
    chargeback_units = minor_to_ledger(-draft.sla_chargebacks_minor, cur)
    postings = [
        debit(accrued_code, accrued_units, cur),
        credit(payable_code, minor_to_ledger(draft.earnings_total_minor, cur), cur),
        debit(payable_code, chargeback_units, cur),
        credit(recovery_code, chargeback_units, cur),
    ]
    residual = sum(p.amount_units for p in postings)
    bound = minor_to_ledger(len(draft.lines) + 1, cur) + charges + 1
    assert abs(residual) <= bound, f"statement {cause_id}: rounding residual {residual} exceeds {bound}"
    postings.append(Posting(rounding_code, cur, -residual))
    entry = build_entry(
        id=entry_id,
        cause_id=cause_id,
        kind="statement.finalized",
        occurred_at=draft.issued_at,
        postings=postings,
    )
    return entry, _used(entry, accounts)


def _adjustment_sums(adjustments: Sequence[domain.AdjustmentDraft], kind: str) -> tuple[Exact, int]:
    chosen = [a.amount for a in adjustments if a.kind == kind]
    return sum((a.exact for a in chosen), Fraction(0)), sum(a.amount_minor for a in chosen)


def invoice_amounts(draft: domain.InvoiceDraft, accrued_units: int, charges: int) -> RenterAmounts:
    _, usage_adj_minor = _adjustment_sums(draft.adjustments, "usage")
    true_up_adj, _ = _adjustment_sums(draft.adjustments, "commitment_true_up")
    sla_adj, _ = _adjustment_sums(draft.adjustments, "sla_credit")
    return RenterAmounts(
        contract_id=draft.contract_id,
        renter_id=draft.renter_id,
        currency=draft.currency,
        accrued_units=accrued_units,
        charges=charges,
        usage_minor=draft.usage.amount_minor + usage_adj_minor,
        true_up_exact=draft.commitment_true_up.exact + true_up_adj,
        sla_credit_exact=draft.sla_credit.exact + sla_adj,
        tax_minor=draft.tax.amount_minor,
        total_minor=draft.total_minor,
        drawn_exact=draft.prepaid_applied.exact,
        prepaid_minor=draft.prepaid_applied.amount_minor,
        credit_applied_minor=draft.credit_applied_minor,
        credit_carried_forward_minor=draft.credit_carried_forward_minor,
        lines=4 + len(draft.adjustments),
    )


def credit_note_amounts(draft: domain.CreditNoteDraft, accrued_units: int, charges: int) -> RenterAmounts:
    _, usage_minor = _adjustment_sums(draft.adjustments, "usage")
    true_up, _ = _adjustment_sums(draft.adjustments, "commitment_true_up")
    sla, _ = _adjustment_sums(draft.adjustments, "sla_credit")
    return RenterAmounts(
        contract_id=draft.contract_id,
        renter_id=draft.renter_id,
        currency=draft.currency,
        accrued_units=accrued_units,
        charges=charges,
        usage_minor=usage_minor,
        true_up_exact=true_up,
        sla_credit_exact=sla,
        tax_minor=draft.tax_minor,
        total_minor=draft.total_minor,
        drawn_exact=draft.prepaid_applied.exact,
        prepaid_minor=draft.prepaid_applied.amount_minor,
        credit_applied_minor=0,
        credit_carried_forward_minor=0,
        lines=1 + len(draft.adjustments) + len(draft.taxes),
    )


def _period_changes(adjustments: Sequence[domain.AdjustmentDraft]) -> dict[datetime, tuple[int, int]]:
    """Per corrected period: (true-up, SLA credit) the adjustments add to what was billed."""
    changes: dict[datetime, tuple[int, int]] = {}
    for a in adjustments:
        true_up, sla = changes.get(a.period_start, (0, 0))
        if a.kind == "commitment_true_up":
            true_up += a.amount.amount_minor
        elif a.kind == "sla_credit":
            sla += a.amount.amount_minor
        changes[a.period_start] = (true_up, sla)
    return changes


# --- planning one contract -------------------------------------------------------------------------------


@dataclass
class PendingInvoice:
    invoice_id: str
    draft: domain.InvoiceDraft
    accrued_units: int
    charges: int


@dataclass
class PendingCreditNote:
    credit_note_id: str
    draft: domain.CreditNoteDraft
    accrued_units: int
    charges: int


@dataclass
class ContractPlan:
    state: store.ContractState
    terms: ContractTerms
    invoices: list[PendingInvoice] = field(default_factory=list)
    credit_note: PendingCreditNote | None = None
    next_period: tuple[datetime, datetime] | None = None
    invoiced_through: datetime | None = None
    credit_carried_minor: int = 0


def _next_period(
    terms: ContractTerms, after_start: datetime | None, current: tuple[datetime, datetime] | None
) -> tuple[datetime, datetime] | None:
    """The period to invoice after ``after_start`` (else ``current``); None past the term."""
    candidate = current
    if after_start is not None:
        _, end = period_containing(terms.billing_anchor_day, after_start)
        candidate = period_containing(terms.billing_anchor_day, end)
    term_end = terms.term_end
    if candidate is None or (term_end is not None and candidate[0] >= term_end):
        return None
    return candidate


async def _corrections(
    conn: asyncpg.Connection, terms: ContractTerms, found: store.OpenCorrections
) -> tuple[domain.LateCorrection, ...]:
    """One :class:`LateCorrection` per invoiced period with open charges or draws (R3)."""
    carried = await store.carried_periods(
        conn, terms.contract_id, [start for start, _ in found.periods], found.charge_ids
    )
    corrections: list[domain.LateCorrection] = []
    for start, end in found.periods:
        mine = [c for c in found.charges if c.period_start == start]
        delta = domain.PeriodTotals(
            usage_x3600=sum((c.charge_x3600 for c in mine), Decimal(0)),
            provisioned_gpu_seconds=sum(c.provisioned_gpu_seconds for c in mine),
            maintenance_gpu_seconds=sum(c.maintenance_gpu_seconds for c in mine),
            outage_gpu_seconds=sum(c.outage_gpu_seconds for c in mine),
        )
        base = carried[start]
        corrections.append(
            domain.LateCorrection(
                period_start=start,
                period_end=end,
                delta=delta,
                before=domain.PeriodTotals(
                    base.usage_x3600,
                    base.provisioned_gpu_seconds,
                    base.maintenance_gpu_seconds,
                    base.outage_gpu_seconds,
                ),
                credited_minor=base.sla_credit_minor,
                allocation_outages=tuple(
                    domain.AllocationOutage(allocation, supplier, seconds)
                    for (allocation, supplier), seconds in sorted(base.allocation_outages.items())
                    if seconds != 0
                ),
                charged_back=tuple(
                    domain.PriorChargeback(allocation, supplier, amount)
                    for (allocation, supplier), amount in sorted(base.charged_back.items())
                    if amount != 0
                ),
                drawn_delta_x3600=found.drawn_x3600.get(start, Decimal(0)),
                true_up_billed_minor=base.true_up_minor,
            )
        )
    return tuple(corrections)


async def plan_contract(
    conn: asyncpg.Connection,
    state: store.ContractState,
    terms: ContractTerms,
    watermark: datetime | None,
    late_through: datetime | None,
) -> ContractPlan:
    """Close every period of the contract that ended by ``watermark`` and, when no later invoice will
    come, put late corrections on a credit note. Assigns the charges and draws it carries."""
    cid = terms.contract_id
    current = (
        (state.next_period_start, state.next_close_at)
        if (state.next_period_start is not None and state.next_close_at is not None)
        else None
    )
    plan = ContractPlan(
        state,
        terms,
        next_period=current,
        invoiced_through=state.invoiced_through,
        credit_carried_minor=state.credit_carried_minor,
    )
    closed_start: datetime | None = None
    if current is not None and watermark is not None:
        due = [
            p
            for p in periods_overlapping(terms.billing_anchor_day, terms.starts_at, terms.term_end, watermark)
            if p[0] >= current[0]
        ]
        for period_start, period_end in due:
            invoice_id = derive_id("invoice", cid, format_utc(period_start))
            sums = await store.take_period_charges(conn, cid, period_start, invoice_id)
            drawn_x3600 = await store.take_period_draws(conn, cid, period_start, invoice_id)
            found = await store.open_corrections(conn, cid, periods_ending_by=period_start)
            corrections = await _corrections(conn, terms, found)
            await store.assign_corrections(conn, found, invoice_id)
            issued_at = await store.finalization_instant(conn, state.partition, period_end, state.arrived_through)
            assert issued_at is not None, "a watermark reached the period's end, so one is recorded"
            totals = domain.PeriodTotals(
                usage_x3600=sum((s.charge_x3600 for s in sums), Decimal(0)),
                provisioned_gpu_seconds=sum(s.provisioned_gpu_seconds for s in sums),
                maintenance_gpu_seconds=sum(s.maintenance_gpu_seconds for s in sums),
                outage_gpu_seconds=sum(s.outage_gpu_seconds for s in sums),
            )
            outages: dict[str, tuple[str, int]] = {}
            for s in sums:
                if s.outage_gpu_seconds != 0:
                    previous = outages.get(s.allocation_id, (s.supplier_id, 0))
                    outages[s.allocation_id] = (s.supplier_id, previous[1] + s.outage_gpu_seconds)
            draft = domain.assemble_invoice(
                domain.InvoiceInputs(
                    terms=terms,
                    period_start=period_start,
                    period_end=period_end,
                    totals=totals,
                    allocation_outages=tuple(
                        domain.AllocationOutage(a, sup, sec) for a, (sup, sec) in sorted(outages.items())
                    ),
                    drawn_x3600=drawn_x3600,
                    corrections=corrections,
                    credit_carried_in_minor=plan.credit_carried_minor,
                    issued_at=issued_at,
                )
            )
            accrued = sum(s.accrued_units for s in sums) + sum(c.accrued_units for c in found.charges)
            count = sum(s.charges for s in sums) + len(found.charge_ids)
            plan.invoices.append(PendingInvoice(invoice_id, draft, accrued, count))
            plan.credit_carried_minor = draft.credit_carried_forward_minor
            plan.invoiced_through = period_end
            closed_start = period_start
    plan.next_period = _next_period(terms, closed_start, current)

    # No later invoice will come (the term ended, or a termination cut the next period off): late
    # corrections of invoiced periods go on a credit note now.
    if plan.next_period is None and plan.invoiced_through is not None:
        found = await store.open_corrections(conn, cid, periods_ending_by=plan.invoiced_through)
        if not found.empty and domain.needs_credit_note(terms, plan.invoiced_through):
            issued_at = late_through or watermark
            if issued_at is not None:
                corrections = await _corrections(conn, terms, found)
                note = domain.assemble_credit_note(domain.CreditNoteInputs(terms, corrections, issued_at))
                if not note.is_empty:
                    note_id = derive_id("credit_note", cid, state.credit_notes_issued + 1)
                    await store.assign_corrections(conn, found, note_id)
                    plan.credit_note = PendingCreditNote(
                        note_id, note, sum(c.accrued_units for c in found.charges), len(found.charge_ids)
                    )
    return plan


# --- finalizing a chunk -----------------------------------------------------------------------------------


def _series(prefix: str, issued_at: datetime) -> str:
    return f"{prefix}-{issued_at.year:04d}"


async def finalize_plans(conn: asyncpg.Connection, plans: Sequence[ContractPlan]) -> int:
    """Number, record, post and emit every document of the chunk (one transaction). Returns how many."""
    chargebacks: list[store.ChargebackRow] = []
    for plan in plans:
        for inv in plan.invoices:
            chargebacks += [_chargeback_row(inv.invoice_id, c) for c in inv.draft.chargebacks]
        if plan.credit_note is not None:
            chargebacks += [
                _chargeback_row(plan.credit_note.credit_note_id, c) for c in plan.credit_note.draft.chargebacks
            ]
    # Lock order: supplier_pending rows, then number series, then ledger accounts.
    await store.mark_supplier_pending(conn, {(c.supplier_id, c.currency, c.month) for c in chargebacks})

    wanted: dict[str, int] = defaultdict(int)
    for plan in plans:
        for inv in plan.invoices:
            wanted[_series("INV", inv.draft.issued_at)] += 1
        if plan.credit_note is not None:
            wanted[_series("CN", plan.credit_note.draft.issued_at)] += 1
    numbers: dict[str, list[int]] = {}
    for series in sorted(wanted):
        numbers[series] = await store.allocate_numbers(conn, series, wanted[series])

    def take_number(series: str) -> str:
        return f"{series}-{numbers[series].pop(0):06d}"

    emitter = Emitter(PRODUCER)
    entries: list[Entry] = []
    specs: list[AccountSpec] = []
    invoice_rows: list[store.InvoiceRow] = []
    note_rows: list[store.CreditNoteRow] = []
    period_changes: list[tuple[str, dict[datetime, tuple[int, int]]]] = []
    for plan in plans:
        last_number = plan.state.last_invoice_number
        for inv in plan.invoices:
            draft = inv.draft
            number = take_number(_series("INV", draft.issued_at))
            event = domain.to_event(draft, number, inv.invoice_id)
            emitter.emit(
                topics.INVOICES_FINALIZED,
                key=draft.contract_id,
                type="invoice.finalized",
                data=event,
                time=draft.issued_at,
                cause=None,
                event_id=derive_id("event", "invoice.finalized", inv.invoice_id),
                correlation_id=inv.invoice_id,
            )
            invoice_rows.append(
                store.InvoiceRow(
                    invoice_id=inv.invoice_id,
                    number=number,
                    contract_id=draft.contract_id,
                    renter_id=draft.renter_id,
                    currency=draft.currency,
                    period_start=draft.period_start,
                    period_end=draft.period_end,
                    issued_at=draft.issued_at,
                    total_minor=draft.total_minor,
                    amount_due_minor=draft.amount_due_minor,
                    document=event.model_dump(mode="json"),
                    true_up_minor=draft.commitment_true_up.amount_minor,
                    sla_credit_minor=draft.sla_credit.amount_minor,
                )
            )
            period_changes.append((draft.contract_id, _period_changes(draft.adjustments)))
            entry, accounts = renter_entry(
                invoice_amounts(draft, inv.accrued_units, inv.charges),
                entry_id=derive_id("entry", "invoice", inv.invoice_id),
                cause_id=inv.invoice_id,
                kind="invoice.finalized",
                occurred_at=draft.issued_at,
            )
            specs += accounts
            if entry is not None:
                entries.append(entry)
            last_number = number
        note = plan.credit_note
        if note is not None:
            assert last_number is not None, "a credit note corrects an invoice"
            number = take_number(_series("CN", note.draft.issued_at))
            event_cn = domain.credit_note_to_event(note.draft, number, note.credit_note_id, last_number)
            emitter.emit(
                topics.CREDIT_NOTES_ISSUED,
                key=note.draft.contract_id,
                type="credit_note.issued",
                data=event_cn,
                time=note.draft.issued_at,
                cause=None,
                event_id=derive_id("event", "credit_note.issued", note.credit_note_id),
                correlation_id=note.credit_note_id,
            )
            note_rows.append(
                store.CreditNoteRow(
                    credit_note_id=note.credit_note_id,
                    number=number,
                    contract_id=note.draft.contract_id,
                    renter_id=note.draft.renter_id,
                    currency=note.draft.currency,
                    invoice_number=last_number,
                    issued_at=note.draft.issued_at,
                    document=event_cn.model_dump(mode="json"),
                )
            )
            period_changes.append((note.draft.contract_id, _period_changes(note.draft.adjustments)))
            entry, accounts = renter_entry(
                credit_note_amounts(note.draft, note.accrued_units, note.charges),
                entry_id=derive_id("entry", "credit_note", note.credit_note_id),
                cause_id=note.credit_note_id,
                kind="credit_note.issued",
                occurred_at=note.draft.issued_at,
            )
            specs += accounts
            if entry is not None:
                entries.append(entry)
        await store.save_progress(
            conn,
            plan.state.contract_id,
            next_period=plan.next_period,
            invoiced_through=plan.invoiced_through,
            last_invoice_number=last_number,
            credit_carried_minor=plan.credit_carried_minor,
            credit_notes_issued=plan.state.credit_notes_issued + (1 if note is not None else 0),
        )
    await store.insert_invoices(conn, invoice_rows)
    await store.insert_credit_notes(conn, note_rows)
    for contract_id, changes in period_changes:
        await store.add_period_adjustments(conn, contract_id, changes)
    await store.insert_chargebacks(conn, chargebacks)
    await ensure_accounts(conn, specs)
    await post(conn, entries)
    await write_outbox(conn, emitter.drain())
    assert all(not left for left in numbers.values()), "every allocated number is used (no gaps)"
    return len(invoice_rows) + len(note_rows)


def _chargeback_row(document_id: str, part: statements.ChargebackPart) -> store.ChargebackRow:
    return store.ChargebackRow(
        document_id=document_id,
        contract_id=part.contract_id,
        period_start=part.period_start,
        period_end=part.period_end,
        allocation_id=part.allocation_id,
        supplier_id=part.supplier_id,
        currency=part.currency,
        month=part.month,
        amount_minor=part.amount_minor,
    )


# --- statements ---------------------------------------------------------------------------------------


def _next_month(month: str) -> str:
    _, end = statements.month_bounds(month)
    return statements.month_of(end)


async def close_statement_chunk(
    conn: asyncpg.Connection, limit: int, only: Sequence[tuple[str, str]] | None = None
) -> bool:
    """Close up to ``limit`` (supplier, currency) statements of the next month when it may close.
    Returns whether anything moved (statements written or the month advanced)."""
    locked, month = await store.lock_statement_progress(conn)
    if not locked:
        return False
    first = month is None
    if month is None:
        # The first month is chosen only once it may close: by then every partition's watermark has
        # passed it, so every earlier month's earnings have arrived too.
        month = await store.earliest_pending_month(conn)
        if month is None:
            return False
    month_start, month_end = statements.month_bounds(month)
    marks = await store.current_watermarks(conn)
    if len(marks) < topics.CHARGES_RATED.partitions or min(marks.values()) < month_end:
        return False
    if await store.unclosed_contracts(conn, month_end) > 0:
        return False  # invoices first: their chargebacks land on this month
    if first:
        await store.set_statement_month(conn, month)
    pairs = await store.statement_pairs(conn, month, limit, only=only)
    if not pairs:
        if only is None:
            await store.set_statement_month(conn, _next_month(month))
            log.info("statements closed", month=month)
        return only is None
    issued_at = await store.statement_issue_instant(conn, month_end)
    assert issued_at is not None
    await store.take_pending(conn, pairs, month)
    earnings = await store.take_earnings(conn, pairs, month, month_start, month_end)
    parts = await store.take_chargebacks(conn, pairs, month)
    previous = await store.previous_nets(conn, pairs)
    drafts: list[tuple[statements.StatementDraft, int, int]] = []
    for supplier_id, currency in pairs:
        mine = [e for e in earnings if (e.supplier_id, e.currency) == (supplier_id, currency)]
        inputs = statements.StatementInputs(
            supplier_id=supplier_id,
            currency=currency,
            month=month,
            earnings=tuple(
                statements.AllocationEarnings(
                    e.allocation_id, e.earning_x3600, e.billable_gpu_seconds, e.late_earning_x3600
                )
                for e in mine
            ),
            chargebacks=tuple(
                # A part whose month was already stated (a late credit note) lands on this one.
                statements.ChargebackPart(
                    c.supplier_id,
                    c.allocation_id,
                    c.contract_id,
                    c.currency,
                    c.period_start,
                    c.period_end,
                    month,
                    c.amount_minor,
                )
                for c in parts
                if (c.supplier_id, c.currency) == (supplier_id, currency)
            ),
            previous_net_minor=previous.get((supplier_id, currency)),
            issued_at=issued_at,
        )
        if not statements.statement_due(inputs):
            continue
        accrued_units = sum(e.earning_units for e in mine)
        drafts.append((statements.assemble_statement(inputs), accrued_units, sum(e.charges for e in mine)))
    if not drafts:
        return True
    series = _series("STM", issued_at)
    numbers = await store.allocate_numbers(conn, series, len(drafts))
    emitter = Emitter(PRODUCER)
    rows: list[store.StatementRow] = []
    entries: list[Entry] = []
    specs: list[AccountSpec] = []
    for (draft, accrued_units, count), n in zip(drafts, numbers, strict=True):
        statement_id = derive_id("statement", draft.supplier_id, draft.currency, draft.month)
        number = f"{series}-{n:06d}"
        event = statements.to_event(draft, number, statement_id)
        emitter.emit(
            topics.STATEMENTS_FINALIZED,
            key=draft.supplier_id,
            type="statement.finalized",
            data=event,
            time=issued_at,
            cause=None,
            event_id=derive_id("event", "statement.finalized", statement_id),
            correlation_id=statement_id,
        )
        rows.append(
            store.StatementRow(
                statement_id,
                number,
                draft.supplier_id,
                draft.currency,
                draft.month,
                issued_at,
                draft.net_minor,
                event.model_dump(mode="json"),
            )
        )
        entry, accounts = statement_entry(
            draft,
            accrued_units=accrued_units,
            charges=count,
            entry_id=derive_id("entry", "statement", statement_id),
            cause_id=statement_id,
        )
        specs += accounts
        if entry is not None:
            entries.append(entry)
    await store.insert_statements(conn, rows)
    await ensure_accounts(conn, specs)
    await post(conn, entries)
    await write_outbox(conn, emitter.drain())
    return True


# --- the task ----------------------------------------------------------------------------------------------


def _reason(error: BaseException) -> str:
    if isinstance(error, SettleError):
        return error.reason
    return f"unexpected {type(error).__name__}: {error}"


class Closer:
    """One invoicing worker's closer. Several may run (one per worker): they share the work."""

    def __init__(self, pool: asyncpg.Pool, *, chunk: int | None = None) -> None:
        limit = limits.CLOSE_CHUNK_CONTRACTS  # read now, not at import: a setting may lower it
        self.chunk = limit if chunk is None else chunk
        assert 0 < self.chunk <= limit, f"close chunk {self.chunk} outside 1..{limit}"
        self.pool = pool

    async def step(self) -> bool:
        """One unit of work (a chunk of contracts, else a chunk of statements). False: nothing to do."""
        if await self.close_invoices():
            return True
        return await self.close_statements()

    async def close_invoices(self) -> bool:
        picked: list[str] = []
        try:
            async with transaction(self.pool) as conn:
                marks = await store.current_watermarks(conn)
                states = await store.pick_contracts(conn, marks, self.chunk)
                if not states:
                    return False
                picked = [s.contract_id for s in states]
                await self._close(conn, states, marks)
            return True
        except (InfrastructureError, RetryableError):
            raise
        except Exception as error:
            if not picked:
                raise
            log.info(
                "close chunk failed; closing its contracts one by one",
                error=_reason(error)[:300],
                contracts=len(picked),
            )
        for contract_id in picked:
            await self._close_alone(contract_id)
        return True

    async def _close(
        self, conn: asyncpg.Connection, states: Sequence[store.ContractState], marks: dict[int, datetime]
    ) -> int:
        ids = [s.contract_id for s in states]
        terms = await load_many(conn, store.SCHEMA, ids)
        late = await store.take_late_work(conn, ids)  # before reading charges (store.mark_late)
        plans = []
        for state in states:
            contract_terms = terms.get(state.contract_id)
            assert contract_terms is not None, f"contract {state.contract_id} has progress but no terms"
            plans.append(
                await plan_contract(
                    conn, state, contract_terms, marks.get(state.partition), late.get(state.contract_id)
                )
            )
        return await finalize_plans(conn, plans)

    async def _close_alone(self, contract_id: str) -> None:
        try:
            async with transaction(self.pool) as conn:
                marks = await store.current_watermarks(conn)
                states = await store.pick_contracts(conn, marks, 1, only=[contract_id])
                if states:
                    await self._close(conn, states, marks)
        except (InfrastructureError, RetryableError):
            raise
        except Exception as error:
            reason = _reason(error)
            log.error(
                "contract close blocked",
                contract_id=contract_id,
                reason=reason[:500],
                exc_info=not isinstance(error, SettleError),
            )
            async with transaction(self.pool) as conn:
                await store.block_contract(conn, contract_id, reason)

    async def close_statements(self) -> bool:
        try:
            async with transaction(self.pool) as conn:
                return await close_statement_chunk(conn, self.chunk)
        except (InfrastructureError, RetryableError):
            raise
        except Exception as error:
            log.info("statement chunk failed; closing one by one", error=_reason(error)[:300])
        async with transaction(self.pool) as conn:
            locked, month = await store.lock_statement_progress(conn)
            pairs = await store.statement_pairs(conn, month, self.chunk) if locked and month else []
        for pair in pairs:
            try:
                async with transaction(self.pool) as conn:
                    await close_statement_chunk(conn, 1, only=[pair])
            except (InfrastructureError, RetryableError):
                raise
            except Exception as error:
                reason = _reason(error)
                log.error(
                    "statement blocked",
                    supplier_id=pair[0],
                    currency=pair[1],
                    month=month,
                    reason=reason[:500],
                    exc_info=not isinstance(error, SettleError),
                )
                async with transaction(self.pool) as conn:
                    assert month is not None
                    await store.block_statement(conn, pair[0], pair[1], month, reason)
        return True


async def run_closer(rt: Runtime) -> None:
    """The invoicing worker's background task: close until stopped; never blocks the consumer."""
    # ``close_chunk_contracts`` (when the settings have it) may lower the chunk, never raise it.
    configured = getattr(rt.settings, "close_chunk_contracts", None)
    limit = limits.CLOSE_CHUNK_CONTRACTS
    closer = Closer(rt.pool, chunk=limit if configured is None else max(1, min(int(configured), limit)))
    backoff_s = IDLE_WAIT_S
    while not rt.stop.is_set():
        worked = False
        try:
            worked = await closer.step()
            backoff_s = IDLE_WAIT_S
        except RetryableError as error:
            log.info("close step will be retried", error=str(error)[:300])
            worked = True
        except InfrastructureError as error:
            log.warning("database unavailable; close paused", error=str(error)[:300])
            backoff_s = min(backoff_s * 2, limits.INFRA_BACKOFF_MAX_S)
        except Exception:  # a bug outside one contract's close: keep the worker alive, say it loudly
            log.exception("close step failed")
            backoff_s = min(backoff_s * 2, limits.INFRA_BACKOFF_MAX_S)
        if not worked:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(rt.stop.wait(), backoff_s)


__all__ = [
    "Closer",
    "ContractPlan",
    "RenterAmounts",
    "close_statement_chunk",
    "finalize_plans",
    "invoice_amounts",
    "plan_contract",
    "renter_entry",
    "run_closer",
    "statement_entry",
]
