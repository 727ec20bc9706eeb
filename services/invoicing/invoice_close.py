"""Closing a contract's periods (R1, R3, R5-R7, R10): plan each contract of a chunk (claim what its
invoices and credit note carry, assemble them with :mod:`services.invoicing.domain`), then number,
record, post and emit every document of the chunk in one transaction. Ledger shapes:
:mod:`services.invoicing.entries`.

Finalization instant (document ``issued_at``, event time, number year): for a period, the first
watermark of its partition that reached the period's end (or the contract's arrival, when it came
later); for a month's statements, the instant the last partition's watermark reached the month's end;
for a credit note, the watermark that the late charge found. All of them are recorded facts, so a
replay yields the same documents whatever the closer's timing.

A contract whose close breaks a billing rule (or hits a bug) is set aside with the reason in
``contract_state.blocked_reason`` (it then holds back the month's statements, on purpose: a month is
not final while one of its invoices is missing); the rest of its chunk closes without it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

import asyncpg

from domain.contracts.periods import period_containing, periods_overlapping
from domain.contracts.terms import ContractTerms
from libs.ids import derive_id
from libs.ledger import AccountSpec, Entry, ensure_accounts, post
from libs.messaging.outbox import Emitter, write_outbox
from libs.times import format_utc
from schemas import topics
from services.invoicing import domain, statements, store
from services.invoicing.entries import credit_note_amounts, invoice_amounts, period_adjustment_changes, renter_entry

PRODUCER = "invoicing"
"""The outbox producer of every document event (invoices, credit notes, statements)."""


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
    if candidate is None or (term_end is not None and (candidate[0] >= term_end or term_end <= terms.starts_at)):
        return None  # past the term, or the term is empty (terminated at or before its start)
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
            sums = await store.claim_invoice_charges(conn, cid, period_start, invoice_id)
            drawn_x3600 = await store.claim_invoice_draws(conn, cid, period_start, invoice_id)
            found = await store.find_late_corrections(conn, cid, periods_ending_by=period_start)
            corrections = await _corrections(conn, terms, found)
            await store.claim_late_corrections(conn, found, invoice_id)
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
        found = await store.find_late_corrections(conn, cid, periods_ending_by=plan.invoiced_through)
        if not found.empty and domain.needs_credit_note(terms, plan.invoiced_through):
            issued_at = late_through or watermark
            if issued_at is not None:
                corrections = await _corrections(conn, terms, found)
                note = domain.assemble_credit_note(domain.CreditNoteInputs(terms, corrections, issued_at))
                if not note.is_empty:
                    note_id = derive_id("credit_note", cid, state.credit_notes_issued + 1)
                    await store.claim_late_corrections(conn, found, note_id)
                    plan.credit_note = PendingCreditNote(
                        note_id, note, sum(c.accrued_units for c in found.charges), len(found.charge_ids)
                    )
    return plan


def number_series(prefix: str, issued_at: datetime) -> str:
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
            wanted[number_series("INV", inv.draft.issued_at)] += 1
        if plan.credit_note is not None:
            wanted[number_series("CN", plan.credit_note.draft.issued_at)] += 1
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
            number = take_number(number_series("INV", draft.issued_at))
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
            period_changes.append((draft.contract_id, period_adjustment_changes(draft.adjustments)))
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
            number = take_number(number_series("CN", note.draft.issued_at))
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
            period_changes.append((note.draft.contract_id, period_adjustment_changes(note.draft.adjustments)))
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
    await write_outbox(conn, emitter.drain())
    await post(conn, entries)  # last: it holds the ledger's chain heads until commit
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
