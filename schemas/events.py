"""Events Settle's services emit to each other and to downstream subscribers.

We own these, so they are strict (``extra="forbid"``) and frozen. A breaking change is a new topic
version and an upcaster, never an edit in place.

Exact amounts travel as ``*_x3600`` decimal strings: the exact amount times 3600, which is always a
terminating decimal for usage (R4: ``gpu_seconds × price``). The exact amount is ``x3600 / 3600``;
consumers divide once per line, as R4 asks. Document amounts (invoices, statements) are decimal
strings with exactly the currency's minor digits (``"153.40"``, JPY ``"1500"``).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from libs import limits
from schemas.types import Barrier, Currency, DecimalStr, Id, NonNegativeDecimalStr, Text, UtcTime


class EventModel(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Segment(EventModel):
    """A half-open billable interval ``[start_at, end_at)`` inside one hour."""

    start_at: UtcTime
    end_at: UtcTime


# --- usage.metered.v1 (key: contract_id) -----------------------------------------------------------


class UsageMetered(EventModel):
    """One allocation-hour of one meter at revision ``revision`` (type ``usage.metered``).

    Carries the full state at this revision and the signed delta against the previous revision of
    the same (allocation, meter, hour); revision 1 is the original and its delta equals its state.
    A correction (R3) is a later revision: never an edit of an emitted record.

    For ``meter == "gpu_seconds"``: ``*_gpu_seconds`` are gpu_count × seconds inside the contract
    term; outage seconds inside a maintenance window count as maintenance (R7), so
    provisioned = billable + maintenance + outage. ``billable_segments`` are the billable seconds
    (without the GPU factor) so that rating can split the hour at a price change (R4).
    For add-on meters: ``quantity``/``delta_quantity`` (e.g. egress GB); the GPU fields are zero.
    """

    usage_id: Id
    allocation_id: Id
    contract_id: Id
    renter_id: Id
    supplier_id: Id
    gpu_model: Text
    meter: str = Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")
    hour_start: UtcTime
    revision: int = Field(ge=1)
    gpu_count: int = Field(ge=0, le=limits.MAX_GPU_COUNT)
    provisioned_gpu_seconds: int = Field(ge=0)
    billable_gpu_seconds: int = Field(ge=0)
    maintenance_gpu_seconds: int = Field(ge=0)
    outage_gpu_seconds: int = Field(ge=0)
    billable_segments: list[Segment] = Field(max_length=limits.MAX_SEGMENTS_PER_HOUR)
    delta_provisioned_gpu_seconds: int
    delta_billable_gpu_seconds: int
    delta_maintenance_gpu_seconds: int
    delta_outage_gpu_seconds: int
    quantity: DecimalStr = Decimal(0)
    delta_quantity: DecimalStr = Decimal(0)


class Watermark(EventModel):
    """Type ``usage.watermark`` / ``charges.watermark``: everything on this partition for hours ending
    at or before ``through`` has been emitted before this record. Sent to every partition.
    ``payments.watermark`` (invoices.payments.v1): payments has handled the tick ``through`` — every
    receipt published before it applied — and every payment status before this record was published
    before that tick was handled. ``invoices.watermark`` (invoices.finalized.v1, invoicing): every invoice
    of a contract period ending at or before ``through`` was published on this partition before this
    record (a contract whose close is quarantined excepted: it waits for an operator)."""

    through: UtcTime
    partition: int = Field(ge=0)
    source: Literal["metering", "rating", "invoicing", "payments"]
    barrier: Barrier | None = None
    """From the tick that closed ``through``: end offsets of the input topics a downstream consumer
    must have read before it acts on this watermark (rating: contracts and wallets)."""


class StatementsClosed(EventModel):
    """Type ``statements.closed`` on statements.finalized.v1, sent to every partition once every
    statement of ``month`` is published there (a Settle marker, like the watermarks): a consumer that
    has it from every partition knows each statement issued at or before ``issued_at``."""

    month: str = Field(pattern=r"^\d{4}-(0[1-9]|1[0-2])$")
    issued_at: UtcTime
    partition: int = Field(ge=0)


# --- charges.rated.v1 (key: contract_id) -----------------------------------------------------------


class ChargeRated(EventModel):
    """Type ``charge.rated``: the priced delta of one usage revision (R4, R13).

    ``charge_x3600`` (renter) and ``earning_x3600`` (supplier) are exact; platform take for this
    allocation-hour = (charge_x3600 − earning_x3600) / 3600. Corrections are signed deltas.
    ``period_start``/``period_end`` name the contract billing period the hour belongs to (R1).
    """

    charge_id: Id
    usage_id: Id
    allocation_id: Id
    contract_id: Id
    renter_id: Id
    supplier_id: Id
    meter: str
    hour_start: UtcTime
    revision: int = Field(ge=1)
    currency: Currency
    billing_mode: Literal["prepaid", "postpaid"]
    period_start: UtcTime
    period_end: UtcTime
    delta_provisioned_gpu_seconds: int
    delta_billable_gpu_seconds: int
    delta_maintenance_gpu_seconds: int
    delta_outage_gpu_seconds: int
    delta_quantity: DecimalStr
    charge_x3600: DecimalStr
    earning_x3600: DecimalStr
    price_versions: list[int] = Field(max_length=64)
    """Contract version numbers whose prices were in force over this hour (audit trail)."""


class WalletDrawn(EventModel):
    """Type ``wallet.drawn``: prepaid wallet money applied to a period's usage (R8).

    ``reason`` is ``charge`` (drawn as usage was rated), ``topup_settlement`` (a top-up settled the
    period's overage) or ``correction`` (R8's closed form after a late usage correction: negative when the
    period's draw falls — a negative correction returned money, or a late charge of an older period took
    the money this period had drawn — positive when returned money pays this period's overage).
    Invoicing sums ``drawn_x3600`` per period and rounds once (R10).
    """

    draw_id: Id
    contract_id: Id
    renter_id: Id
    currency: Currency
    period_start: UtcTime
    period_end: UtcTime
    drawn_x3600: DecimalStr
    reason: Literal["charge", "topup_settlement", "correction"]
    at: UtcTime


# --- billing.alerts.v1 (key: contract_id) ------------------------------------------------------------


class WalletLowBalance(EventModel):
    """Type ``wallet.low_balance``: the balance crossed below 20 % of the last top-up (R8)."""

    contract_id: Id
    renter_id: Id
    currency: Currency
    balance: DecimalStr
    threshold: DecimalStr
    at: UtcTime


class WalletExhausted(EventModel):
    """Type ``wallet.exhausted``: the balance reached zero; overage accrues from here (R8)."""

    contract_id: Id
    renter_id: Id
    currency: Currency
    overage: DecimalStr
    at: UtcTime


class CreditLimitExceeded(EventModel):
    """Type ``credit.limit_exceeded``: exposure crossed the credit limit (R9). No charge is dropped."""

    contract_id: Id
    renter_id: Id
    currency: Currency
    credit_limit: DecimalStr
    exposure: DecimalStr
    at: UtcTime


# --- platform.commands.v1 (key: contract_id) -----------------------------------------------------------


class SuspendRequested(EventModel):
    """Type ``platform.suspend_requested``: a request for the platform to act; Settle bills on."""

    contract_id: Id
    renter_id: Id
    reason: Literal["wallet_exhausted", "credit_limit_exceeded", "payment_past_due"]
    at: UtcTime


class ResumeRequested(EventModel):
    """Type ``platform.resume_requested``: the reason for a suspension is gone (wallet topped up)."""

    contract_id: Id
    renter_id: Id
    reason: Literal["wallet_topped_up"]
    at: UtcTime


# --- metering.anomaly.v1 (key: allocation_id) ----------------------------------------------------------


class MeteringAnomaly(EventModel):
    """Types ``metering.allocation_stale``, ``metering.window_open_too_long``,
    ``metering.event_quarantined``, ``metering.event_held``: billing goes on, a human looks."""

    anomaly_id: Id
    allocation_id: Id
    kind: Literal["allocation_stale", "window_open_too_long", "event_quarantined", "event_held"]
    reason: Text
    event_ids: list[Id] = Field(max_length=16)
    at: UtcTime


# --- invoices.finalized.v1 / credit_notes.issued.v1 / statements.finalized.v1 -------------------------


class InvoiceLines(EventModel):
    usage: DecimalStr
    commitment_true_up: DecimalStr
    adjustments: DecimalStr
    sla_credit: DecimalStr


class AdjustmentLine(EventModel):
    """A late correction of an already finalized period (R3), rounded once per period (R6)."""

    period_start: UtcTime
    period_end: UtcTime
    kind: Literal["usage", "commitment_true_up", "sla_credit"]
    amount: DecimalStr


class InvoiceFinalized(EventModel):
    """Type ``invoice.finalized``. Amounts: decimal strings with the currency's minor digits."""

    invoice_id: Id
    number: str = Field(pattern=r"^INV-[0-9]{4}-[0-9]{6}$")
    contract_id: Id
    renter_id: Id
    currency: Currency
    billing_mode: Literal["prepaid", "postpaid"]
    period_start: UtcTime
    period_end: UtcTime
    issued_at: UtcTime
    due_at: UtcTime
    lines: InvoiceLines
    adjustment_lines: list[AdjustmentLine] = Field(max_length=256)
    subtotal: DecimalStr
    tax_rate: DecimalStr
    tax: DecimalStr
    total: DecimalStr
    prepaid_applied: DecimalStr
    credit_applied: DecimalStr
    amount_due: DecimalStr
    credit_carried_forward: DecimalStr
    uptime: DecimalStr | None
    sla_credit_percent: DecimalStr


class CreditNoteIssued(EventModel):
    """Type ``credit_note.issued``: a correction of a finalized invoice when no later invoice of the
    contract can carry it (the contract has ended). Number series ``CN-YYYY-NNNNNN``."""

    credit_note_id: Id
    number: str = Field(pattern=r"^CN-[0-9]{4}-[0-9]{6}$")
    contract_id: Id
    renter_id: Id
    currency: Currency
    invoice_number: str
    adjustment_lines: list[AdjustmentLine] = Field(max_length=256)
    subtotal: DecimalStr
    tax: DecimalStr
    total: DecimalStr
    issued_at: UtcTime
    prepaid_applied: DecimalStr = Decimal(0)
    """Prepaid: the wallet draws of the corrected charges, rounded once (R10: applied against the total;
    negative: returned to the wallet). What the renter owes or is owed is ``total − prepaid_applied``."""


class StatementFinalized(EventModel):
    """Type ``statement.finalized``: a supplier's earnings statement for a calendar month (R12)."""

    statement_id: Id
    number: str = Field(pattern=r"^STM-[0-9]{4}-[0-9]{6}$")
    supplier_id: Id
    currency: Currency
    month: str = Field(pattern=r"^[0-9]{4}-(0[1-9]|1[0-2])$")
    earnings: dict[str, DecimalStr]
    earnings_total: DecimalStr
    sla_chargebacks: DecimalStr
    carried: DecimalStr
    net: DecimalStr
    issued_at: UtcTime
    clawbacks: DecimalStr = Decimal(0)
    """≤ 0: earnings clawed back after they were released or paid out (``payout.clawback`` landing on this
    month or an earlier, already stated one; R15, extension of R12): net = earnings_total + sla_chargebacks
    + clawbacks + carried. Statements written before clawbacks existed read as 0."""


# --- journal.requests.v1 / journal.posted.v1 (key: transfer_id) ----------------------------------------


class TransferRequested(EventModel):
    """Type ``journal.transfer_requested``: an operator's manual transfer between two ledger accounts.

    Like a Formance posting (source → destination): ``from_account`` is credited and ``to_account``
    debited by ``amount`` (major units, at most the currency's minor digits). Accounts are created on
    first use with the given types; ``from_floor`` puts a floor on the source's normal-side balance,
    and a transfer that would cross it is refused (``journal.transfer_refused``), never half-posted.
    """

    transfer_id: Id
    from_account: Id
    to_account: Id
    amount: DecimalStr
    currency: Currency
    memo: str = Field(default="", max_length=limits.MAX_TEXT_CHARS)
    from_type: Literal["asset", "liability", "equity", "revenue", "expense"] = "asset"
    to_type: Literal["asset", "liability", "equity", "revenue", "expense"] = "asset"
    from_floor: DecimalStr | None = None


class TransferPosted(EventModel):
    """Type ``journal.transfer_posted``: the entry is in the ledger."""

    transfer_id: Id
    entry_id: Id
    from_account: Id
    to_account: Id
    amount: DecimalStr
    currency: Currency


class TransferRefused(EventModel):
    """Type ``journal.transfer_refused``: the ledger refused it (a floor would be crossed)."""

    transfer_id: Id
    reason: Text


# --- payments (R11, R14) ----------------------------------------------------------------------------


PaymentStatus = Literal["open", "partially_paid", "paid", "past_due"]


class InvoicePaymentStatus(EventModel):
    """Type ``invoice.payment_status`` on ``invoices.payments.v1``: what has been paid on an invoice.

    Sent whenever ``amount_paid`` or the status of an invoice changes; ``revision`` grows by one per
    change of the invoice, so a reader keeps the highest. ``amount_due`` is the invoice's amount due
    after credit notes; ``amount_paid`` counts credit balance applied (R11)."""

    invoice_id: Id
    number: str
    contract_id: Id
    renter_id: Id
    currency: Currency
    amount_due: DecimalStr
    amount_paid: DecimalStr
    amount_remaining: DecimalStr
    status: PaymentStatus
    revision: int = Field(ge=1)
    as_of: UtcTime
    latest: bool = True
    """False for a status payments publishes about an earlier instant (one per instant that changed the
    invoice, so a reader asking "what remained at T" finds it): readers that follow the invoice's current
    state (credit exposure, the saga, holds) skip it; the next one with ``latest`` true is the current state.
    Events before 2026-12-08 (second session) were all latest."""


class PaymentEvent(EventModel):
    """Types on ``payments.v1``: ``payment.succeeded``, ``payment.failed``, ``payment.refunded``,
    ``payment.disputed``, ``payment.dispute_closed``, ``receipt.recorded`` and ``invoice.past_due``
    (dunning exhausted: the billing cycle's saga compensates)."""

    payment_id: Id
    """An attempt id (collections), a receipt id (money received), a refund or dispute id."""
    renter_id: Id
    currency: Currency
    amount: DecimalStr
    invoice_number: str | None = None
    contract_id: Id | None = None
    gateway: str | None = None
    code: str | None = None
    reason: str = ""
    at: UtcTime
    outcome: Literal["won", "lost"] | None = None
    """``payment.dispute_closed`` only: how the dispute ended (events before 2026-12-07 said it only at the
    end of ``reason``)."""
    credit_note_id: Id | None = None
    """``payment.refunded`` only: the credit note this refund carries back to the renter (R11: a credit note on
    a paid invoice becomes a refund). None for an operator's or a processor's refund, and on events before
    2026-12-08."""


class CollectionAnswered(EventModel):
    """Type ``collection.answered`` on ``payments.v1``: payments' answer to a saga's inquiry about an invoice's
    collection (a ``saga.step`` with ``inquiry`` = ``collection``), from payments' own records when it read
    the question: what is paid and remaining, how the collection stands (``detail``, for an operator), or
    that payments has no such invoice (``known`` false). Informational: the payment status events stay the
    only source of "paid" and "past due"."""

    saga_id: Id
    invoice_number: str
    renter_id: Id
    known: bool
    status: PaymentStatus | None = None
    currency: Currency | None = None
    amount_paid: DecimalStr | None = None
    amount_remaining: DecimalStr | None = None
    collection: str | None = Field(default=None, max_length=40)
    """The collection intent's state (``collecting``, ``waiting_retry``, ``hard_declined``, ``no_method`` …)."""
    detail: str = Field(max_length=2000)
    asked_at: UtcTime
    """Event time of the inquiry (the answer carries it: it is the answer to that question)."""


# --- payments.commands.v1 (key: renter_id) --------------------------------------------------------------


class PaymentCommand(EventModel):
    """An operator's instruction to the payments service (``settle payments retry|refund``,
    ``settle receipts apply``, ``settle payments refund-paid``), types ``payment.retry_requested``,
    ``payment.refund_requested``, ``receipt.apply_requested`` and ``refund.mark_paid_requested``.
    ``command_id`` is the operator's idempotency key: a repeated command has no effect. ``requested_by``
    and ``reason`` are kept with the effect for the audit trail.

    * retry: ``invoice_number`` — a new try now for an intent that waits, stopped or went past due;
    * refund: ``invoice_number``, ``amount`` — money paid on the invoice given back (never more than
      paid, R11), to the card charge that paid it, else as a manual (bank) refund;
    * apply: ``receipt_id``, ``to_renter_id`` (and ``reference``) — a receipt recorded for the wrong
      renter moves to the right one; both renters' allocations are recomputed (R11);
    * mark paid: ``refund_id``, ``reference`` (the bank's), ``paid_at`` — a ``manual`` refund (the
      invoice was paid by a bank receipt) was paid back over the bank by finance."""

    command_id: Id
    renter_id: Id
    currency: Currency
    invoice_number: str | None = None
    amount: DecimalStr | None = None
    receipt_id: Id | None = None
    to_renter_id: Id | None = None
    refund_id: Id | None = None
    paid_at: UtcTime | None = None
    reference: str = Field(default="", max_length=limits.MAX_TEXT_CHARS)
    requested_by: Text
    reason: Text


# --- payouts.bank_results.v1 (key: file_id, else the payout reference) ---------------------------------


class PayoutFileAcknowledged(EventModel):
    """``payout_file.acknowledged``: the bank accepted a payout file we sent (``settle payouts files ack``)."""

    file_id: Id
    acknowledged_by: Text = "bank"


class PayoutReturnsReceived(EventModel):
    """``payout_returns.received``: a file from the bank about our payouts — a NACHA return/NOC file or a
    pacs.002/pain.002 status report — as sent, base64 (``settle payouts returns import PATH --rail R``).
    The payouts worker reads it with the rail's ``parse_returns``."""

    rail: Literal["ach", "wire", "sepa", "rtp", "fednow", "stablecoin"]
    name: Text
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    content_b64: str = Field(max_length=700_000)


class PayoutSettlementConfirmed(EventModel):
    """``payout.settlement_confirmed``: reconciliation (R17) matched a supplier payout in the ledger to a
    posted bank transaction. ``reference`` is the ledger's payout key: the payout id (first attempt) or
    the attempt's rail reference (a retry)."""

    reference: Id
    amount_minor: int = Field(gt=0)
    currency: Currency
    booked_on: str = Field(pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
    bank_record: Text
    run_id: int | None = None


CONFIRMATIONS_PER_EVENT = 200
"""At most this many confirmations per ``payout.settlements_confirmed`` (≈ 30 KiB of JSON, under the event limit)."""


class PayoutSettlementsConfirmed(EventModel):
    """``payout.settlements_confirmed``: a run's new settlement confirmations, in batches (a daily run of a
    large marketplace confirms hundreds of thousands of payouts; one event each cost most of the run).
    Each item means what a ``payout.settlement_confirmed`` means, dated by its own ``booked_on``."""

    confirmations: list[PayoutSettlementConfirmed] = Field(min_length=1, max_length=CONFIRMATIONS_PER_EVENT)
    run_id: int | None = None


# --- processor.events.v1 (key: payment_id, else attempt_id, else object_id) -----------------------------


class ProcessorEventReceived(EventModel):
    """A payment processor's webhook, verified and deduplicated by the webhooks worker (types
    ``processor.payment_succeeded``, ``processor.payment_failed``, ``processor.charge_refunded``,
    ``processor.dispute_opened``, ``processor.dispute_closed``).

    What the processor said, normalized, not what it means for an invoice (the payments service
    decides that). Amounts are integers in the currency's minor unit. ``payment_id`` is the processor's
    id of the payment (Stripe: the PaymentIntent) — the key of every event of one payment, so they
    keep their order on one partition; ``attempt_id`` is ours, echoed from the payment's metadata
    when the processor sends it (not on disputes).
    """

    gateway: Id
    processor_event_id: Id
    processor_type: Text
    """The processor's own event type (``charge.dispute.closed``)."""
    object_type: Text
    object_id: Id
    payment_id: Id | None = None
    charge_id: Id | None = None
    attempt_id: Id | None = None
    invoice_number: Text | None = None
    amount_minor: int = Field(ge=0)
    amount_refunded_minor: int | None = Field(default=None, ge=0)
    currency: Currency
    status: Text
    """Of the object: ``succeeded``, ``requires_payment_method``, ``needs_response``, ``won``, ``lost`` …"""
    decline_code: Text | None = None
    """Of a failed payment, as the Stripe adapter spells it (``card_declined/insufficient_funds``)."""
    dispute_id: Id | None = None
    dispute_reason: Text | None = None
    dispute_status: Text | None = None
    occurred_at: UtcTime


# --- sagas.v1 (key: saga_id) ------------------------------------------------------------------------------


CompensationKind = Literal["hold_earnings", "clawback", "reverse_revenue", "reverse_supplier_share"]
SagaState = Literal[
    "pending",
    "collecting",
    "inquiring",
    "compensating",
    "compensation_failed",
    "awaiting_payout",
    "payout_sent",
    "payout_returned",
    "completed",
    "compensated",
    "needs_operator",
]


class SagaEvent(EventModel):
    """Types on ``sagas.v1`` (issue 11): ``saga.started``, ``saga.step`` (a change of state, or an inquiry:
    ``inquiry`` names the step asked about), ``saga.compensation_requested`` (``compensation`` and ``ref``,
    ``attempt`` counts from 1), ``saga.completed``, ``saga.compensated``, ``saga.needs_operator``.

    One saga per contract billing period (its renter invoice); ``cause_event_id``/``cause_type`` name the
    event that moved it. Consumers act on a compensation request once per (``saga_id``, ``compensation``,
    ``ref``, ``attempt``)."""

    saga_id: Id
    invoice_number: str
    contract_id: Id | None
    renter_id: Id | None
    currency: Currency | None
    period_start: UtcTime | None
    state: SagaState
    reason: str = Field(max_length=2000)
    waits_for: str = Field(max_length=500)
    deadline: UtcTime | None = None
    inquiry: str | None = None
    compensation: CompensationKind | None = None
    ref: str | None = None
    attempt: int | None = Field(default=None, ge=1)
    cause_event_id: Id
    cause_type: str
    at: UtcTime
    amount: NonNegativeDecimalStr | None = None
    """On ``clawback`` / ``reverse_*`` requests: the refunded, credited or disputed amount (invoice currency),
    what the acting side shares out (payouts: each supplier's share of it)."""


# --- payouts.v1 (key: supplier_id) ----------------------------------------------------------------------


PayoutState = Literal["planned", "on_hold", "sent", "completed", "returned", "rejected", "waiting_operator"]
PayoutReason = Literal["below_minimum", "no_payee", "no_fx_rate", "nothing_payable", "on_hold", "rail_limit"]


class PayoutEvent(EventModel):
    """Types on ``payouts.v1`` (R15): ``payout.planned`` (to be sent by its rail), ``payout.held`` (planned
    on hold: never sent until an operator releases it), ``payout.released`` (an operator released a
    held payout), ``payout.waiting`` (statement months final and unpaid, no payout: ``reason``); R16:
    ``payout.sent`` (in a rail file handed to the bank: ``file_id``), ``payout.completed`` (matched to a
    posted bank transaction, R17), ``payout.returned`` / ``payout.rejected`` (``return_code``; reversed).

    ``amount`` is in the statement ``currency``; ``payout_amount`` in ``payout_currency``, converted at
    ``rate`` (``rate_id``) when the two differ. ``months`` are the statement months it pays. Account
    details never travel here: the rail reads them from the payee the payout names (``payee_event_id``).
    """

    payout_id: Id
    supplier_id: Id
    currency: Currency
    months: list[str] = Field(max_length=240)
    amount: DecimalStr
    payout_currency: Currency | None
    payout_amount: DecimalStr | None
    rate_id: Id | None = None
    rate: DecimalStr | None = None
    rail: str | None
    payee_event_id: Id | None
    state: PayoutState | None
    reason: PayoutReason | None = None
    held_minor: int = Field(ge=0)
    """Pay-when-paid earnings held at planning (statement currency, minor units)."""
    planned_at: UtcTime
    file_id: Id | None = None
    """The rail file the payout (its latest attempt) went out in: ``payout.sent`` and after (R16)."""
    return_code: str | None = Field(default=None, max_length=16)
    """The bank's code of a ``payout.returned`` (ACH R-code) or ``payout.rejected`` (pacs.002 reason)."""
    invoices: list[Id] = Field(default_factory=list, max_length=10_000)
    """The renter invoices whose supplier earnings this payout pays (from the per-invoice earnings)."""
    invoice_numbers: list[str] = Field(default_factory=list, max_length=10_000)
    """The same invoices' numbers, in the same order (the saga follows a cycle by its invoice number)."""


ClawbackKind = Literal["clawback", "reverse_supplier_share"]


class PayoutClawback(EventModel):
    """Type ``payout.clawback`` on ``payouts.v1`` (key ``supplier_id``): a supplier's share of a refund,
    credit note (``clawback``) or lost dispute (``reverse_supplier_share``) on a renter invoice whose earnings
    were released, taken back as a negative line on the supplier's statement of ``month`` (the month of the
    saga request's event time), or of the next open month when that one is already stated (R15; extension
    of R12). ``amount`` is negative, as on the statement, in the statement ``currency``. One per
    (supplier, invoice, kind, ref): ``clawback_id`` derives from them."""

    clawback_id: Id
    supplier_id: Id
    currency: Currency
    amount: DecimalStr = Field(lt=0)
    month: str = Field(pattern=r"^[0-9]{4}-(0[1-9]|1[0-2])$")
    invoice_number: str
    kind: ClawbackKind
    ref: str
    earnings: DecimalStr
    """E: the supplier's earnings tied to the invoice (statement currency) the share was taken of."""
    saga_id: Id
    request_id: Id
    at: UtcTime


class CompensationLine(EventModel):
    """What a compensation did for one supplier: ``held`` (earnings held from payouts until the invoice is
    paid), ``clawed_back`` (a ``payout.clawback``), or ``nothing`` (no earnings to act on)."""

    supplier_id: Id
    currency: Currency
    action: Literal["held", "clawed_back", "nothing"]
    amount: DecimalStr
    """≥ 0, statement currency: held or clawed back."""


class PayoutInquiryLine(EventModel):
    supplier_id: Id
    payout_id: Id
    state: str = Field(max_length=40)
    """The payout's state at payouts (``waiting``, ``planned``, ``on_hold``, ``sent``, ``completed`` …)."""
    reason: str | None = Field(default=None, max_length=200)
    file: str | None = Field(default=None, max_length=200)
    """The file of its latest attempt and that file's state (``name (acknowledged)``), when it was sent."""


class PayoutInquiryAnswered(EventModel):
    """Type ``payout.inquiry_answered`` on ``payouts.v1`` (key ``saga_id``): payouts' answer to a saga's
    inquiry about the payouts of an invoice's earnings (a ``saga.step`` with ``inquiry`` = ``payout`` or
    ``settlement``): every payout whose plan named the invoice, with its state, reason and file, as payouts'
    records stand when it read the question — or ``known`` false: no payout names the invoice. Informational:
    sent, settled and returned still come only from the payout events."""

    saga_id: Id
    invoice_number: str
    inquiry: Literal["payout", "settlement"]
    known: bool
    payouts: list[PayoutInquiryLine] = Field(default_factory=list, max_length=1000)
    detail: str = Field(max_length=2000)
    asked_at: UtcTime


class CompensationAnswered(EventModel):
    """Types ``payout.compensation_applied`` / ``payout.compensation_failed`` on ``payouts.v1`` (key
    ``saga_id``): payouts' answer to one ``saga.compensation_requested`` (``request_id`` is the request's
    event id; ``attempt`` is the request's). A request whose (kind, ref) was already applied under another
    attempt is answered ``applied`` again with ``duplicate`` set and the first application's lines; it
    applies nothing twice. ``failed`` carries the ``reason``; the saga retries it with a new attempt."""

    request_id: Id
    saga_id: Id
    invoice_number: str
    compensation: CompensationKind
    ref: str
    attempt: int = Field(ge=1)
    ok: bool
    duplicate: bool = False
    reason: str = Field(default="", max_length=2000)
    lines: list[CompensationLine] = Field(default_factory=list, max_length=10_000)
    at: UtcTime
