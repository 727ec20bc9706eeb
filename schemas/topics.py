"""The topic registry: every topic Settle reads or writes, with its key, partition count and types.

Topic names are versioned; a breaking change of any event type is a new ``.vN``. Dead-letter
topics are derived (``<name>.dlq``). Topics whose consumers align partitions (usage.metered →
charges.rated) must have the same partition count: a watermark sent to partition *p* of one is
forwarded to partition *p* of the other, and both are keyed by ``contract_id`` (see README,
"Time and watermarks").

The :class:`~libs.messaging.topic.Topic` type is the kernel's; the composition root hands this registry
to the kernel with ``libs.messaging.topic.register_topics(REGISTRY)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from libs.messaging.topic import DLQ_PARTITIONS, Topic, physical_topics
from schemas import events, inputs

__all__ = ["BY_NAME", "DLQ_PARTITIONS", "REGISTRY", "Topic", "all_physical"]


PIPELINE_PARTITIONS = 6

INFRA_LIFECYCLE = Topic(
    "infra.lifecycle.v1",
    key="allocation_id",
    partitions=6,
    producer="platform",
    archive=True,
    description="Allocation lifecycle: provisioned, decommissioned, maintenance and outage windows.",
    types=MappingProxyType(
        {
            "gpu.allocation.provisioned": inputs.AllocationProvisioned,
            "gpu.allocation.decommissioned": inputs.AllocationDecommissioned,
            "gpu.maintenance.started": inputs.MaintenanceWindowEvent,
            "gpu.maintenance.ended": inputs.MaintenanceWindowEvent,
            "gpu.outage.started": inputs.OutageEvent,
            "gpu.outage.ended": inputs.OutageEvent,
        }
    ),
)
CONTRACTS = Topic(
    "contracts.v1",
    key="contract_id",
    partitions=6,
    producer="platform",
    archive=True,
    description="Contract created, amended (effective-dated priced fields) and terminated.",
    types=MappingProxyType(
        {
            "contract.created": inputs.ContractCreated,
            "contract.amended": inputs.ContractAmended,
            "contract.terminated": inputs.ContractTerminated,
        }
    ),
)
WALLETS = Topic(
    "wallets.v1",
    key="contract_id",
    partitions=6,
    producer="platform",
    archive=True,
    description="Prepaid wallet top-ups.",
    types=MappingProxyType({"wallet.topped_up": inputs.WalletToppedUp}),
)
USAGE_SAMPLES = Topic(
    "usage.samples.v1",
    key="allocation_id",
    partitions=6,
    producer="platform",
    archive=True,
    description="Telemetry samples (heartbeats, egress GB, energy kWh): the high-volume path.",
    types=MappingProxyType({"usage.sample.recorded": inputs.UsageSampleRecorded}),
)
CLOCK_TICKS = Topic(
    "clock.ticks.v1",
    key="clock",
    partitions=1,
    producer="settle clock",
    archive=True,
    description="Time advances: every hour and period ending at or before the tick closes.",
    types=MappingProxyType({"clock.ticked": inputs.ClockTicked}),
)
USAGE_METERED = Topic(
    "usage.metered.v1",
    key="contract_id",
    partitions=PIPELINE_PARTITIONS,
    producer="metering",
    description="GPU-seconds (and add-on meters) per allocation per UTC hour, with corrections.",
    types=MappingProxyType({"usage.metered": events.UsageMetered, "usage.watermark": events.Watermark}),
)
METERING_ANOMALY = Topic(
    "metering.anomaly.v1",
    key="allocation_id",
    partitions=3,
    producer="metering",
    description="Stale allocations, windows open too long, quarantined or held events.",
    types=MappingProxyType(
        {
            "metering.allocation_stale": events.MeteringAnomaly,
            "metering.window_open_too_long": events.MeteringAnomaly,
            "metering.event_quarantined": events.MeteringAnomaly,
            "metering.event_held": events.MeteringAnomaly,
        }
    ),
)
CHARGES_RATED = Topic(
    "charges.rated.v1",
    key="contract_id",
    partitions=PIPELINE_PARTITIONS,
    producer="rating",
    description="Exact charges and supplier earnings per allocation-hour, prepaid drawdowns, watermarks.",
    types=MappingProxyType(
        {
            "charge.rated": events.ChargeRated,
            "wallet.drawn": events.WalletDrawn,
            "charges.watermark": events.Watermark,
        }
    ),
)
BILLING_ALERTS = Topic(
    "billing.alerts.v1",
    key="contract_id",
    partitions=3,
    producer="rating",
    description="Wallet low-balance and exhausted, credit limit exceeded.",
    types=MappingProxyType(
        {
            "wallet.low_balance": events.WalletLowBalance,
            "wallet.exhausted": events.WalletExhausted,
            "credit.limit_exceeded": events.CreditLimitExceeded,
        }
    ),
)
PLATFORM_COMMANDS = Topic(
    "platform.commands.v1",
    key="contract_id",
    partitions=3,
    producer="rating",
    description="Requests for the platform to act (suspend, resume).",
    types=MappingProxyType(
        {
            "platform.suspend_requested": events.SuspendRequested,
            "platform.resume_requested": events.ResumeRequested,
        }
    ),
)
INVOICES_FINALIZED = Topic(
    "invoices.finalized.v1",
    key="contract_id",
    partitions=3,
    producer="invoicing",
    description=(
        "Finalized renter invoices (immutable, gapless numbers); `invoices.watermark` on every partition once"
        " every invoice of the periods ending by then is out."
    ),
    types=MappingProxyType({"invoice.finalized": events.InvoiceFinalized, "invoices.watermark": events.Watermark}),
)
CREDIT_NOTES_ISSUED = Topic(
    "credit_notes.issued.v1",
    key="contract_id",
    partitions=3,
    producer="invoicing",
    description="Credit notes correcting finalized invoices.",
    types=MappingProxyType({"credit_note.issued": events.CreditNoteIssued}),
)
STATEMENTS_FINALIZED = Topic(
    "statements.finalized.v1",
    key="supplier_id",
    partitions=3,
    producer="invoicing",
    description=(
        "Supplier earnings statements per currency per calendar month; then `statements.closed` on every"
        " partition once a month's statements are all out."
    ),
    types=MappingProxyType(
        {"statement.finalized": events.StatementFinalized, "statements.closed": events.StatementsClosed}
    ),
)
JOURNAL_REQUESTS = Topic(
    "journal.requests.v1",
    key="transfer_id",
    partitions=6,
    producer="operator",
    description="Manual ledger transfers requested by finance operators (also the kernel benchmark).",
    types=MappingProxyType({"journal.transfer_requested": events.TransferRequested}),
)
JOURNAL_POSTED = Topic(
    "journal.posted.v1",
    key="transfer_id",
    partitions=6,
    producer="journal",
    description="Manual transfers posted to (or refused by) the ledger.",
    types=MappingProxyType(
        {
            "journal.transfer_posted": events.TransferPosted,
            "journal.transfer_refused": events.TransferRefused,
        }
    ),
)
PROCESSOR_EVENTS = Topic(
    "processor.events.v1",
    key="payment_id",
    partitions=3,
    producer="webhooks",
    archive=True,
    description="Payment processors' webhooks, signature-checked and deduplicated (payments, refunds, disputes).",
    types=MappingProxyType(
        {
            "processor.payment_succeeded": events.ProcessorEventReceived,
            "processor.payment_failed": events.ProcessorEventReceived,
            "processor.charge_refunded": events.ProcessorEventReceived,
            "processor.dispute_opened": events.ProcessorEventReceived,
            "processor.dispute_closed": events.ProcessorEventReceived,
        }
    ),
)

PAYMENT_METHODS = Topic(
    "payments.methods.v1",
    key="renter_id",
    partitions=3,
    producer="platform",
    archive=True,
    description="Renters' payment methods (processor tokens only), attached and detached.",
    types=MappingProxyType(
        {
            "payment_method.attached": inputs.PaymentMethodEvent,
            "payment_method.detached": inputs.PaymentMethodEvent,
        }
    ),
)
PAYMENTS_RECEIVED = Topic(
    "payments.received.v1",
    key="renter_id",
    partitions=3,
    producer="platform",
    archive=True,
    description="Money received for renters: wires, ACH and SEPA credits, stablecoin receipts (R11).",
    types=MappingProxyType({"payment.received": inputs.PaymentReceived}),
)
INVOICE_PAYMENTS = Topic(
    "invoices.payments.v1",
    key="contract_id",
    partitions=3,
    producer="payments",
    description=(
        "What has been paid on each invoice (amount paid, remaining, status), per change; `payments.watermark`"
        " on every partition once payments handled a tick."
    ),
    types=MappingProxyType(
        {"invoice.payment_status": events.InvoicePaymentStatus, "payments.watermark": events.Watermark}
    ),
)
PAYMENT_COMMANDS = Topic(
    "payments.commands.v1",
    key="renter_id",
    partitions=3,
    producer="operator",
    archive=True,
    description="Operators' payment instructions: retry a collection, refund, apply a receipt to a renter, "
    "report a manual refund paid over the bank.",
    types=MappingProxyType(
        {
            name: events.PaymentCommand
            for name in (
                "payment.retry_requested",
                "payment.refund_requested",
                "receipt.apply_requested",
                "refund.mark_paid_requested",
            )
        }
    ),
)
PAYMENTS = Topic(
    "payments.v1",
    key="renter_id",
    partitions=3,
    producer="payments",
    description="Collections succeeded or failed, receipts, refunds, disputes, invoices past due; answers to "
    "the saga's inquiries about a collection.",
    types=MappingProxyType(
        {
            name: events.PaymentEvent
            for name in (
                "payment.succeeded",
                "payment.failed",
                "payment.refunded",
                "payment.disputed",
                "payment.dispute_closed",
                "receipt.recorded",
                "invoice.past_due",
            )
        }
        | {"collection.answered": events.CollectionAnswered}
    ),
)
SAGAS = Topic(
    "sagas.v1",
    key="saga_id",
    partitions=3,
    producer="saga",
    description="Billing-cycle sagas: started, steps and inquiries, compensation requests, completed, "
    "compensated or needs an operator (issue 11).",
    types=MappingProxyType(
        {
            name: events.SagaEvent
            for name in (
                "saga.started",
                "saga.step",
                "saga.compensation_requested",
                "saga.completed",
                "saga.compensated",
                "saga.needs_operator",
            )
        }
    ),
)
SUPPLIERS = Topic(
    "suppliers.v1",
    key="supplier_id",
    partitions=3,
    producer="platform",
    archive=True,
    description="Suppliers' payee settings: payout currency, rail and account, minimum, pay-when-paid, hold (R15).",
    types=MappingProxyType({"supplier.payee_updated": inputs.PayeeUpdated}),
)
FX_RATES = Topic(
    "fx.rates.v1",
    key="base/quote",
    partitions=3,
    producer="platform",
    archive=True,
    description="Exchange rates: 1 base = rate quote, as of a time (R15 converts with direct pairs only).",
    types=MappingProxyType({"fx.rate": inputs.FxRate}),
)
PAYOUTS = Topic(
    "payouts.v1",
    key="supplier_id",
    partitions=3,
    producer="payouts",
    description="Supplier payouts planned, held, released, or waiting with a reason (R15); sent, completed, "
    "returned or rejected (R16); clawbacks for the supplier's next statement and the answers to the saga's "
    "compensation requests and inquiries (issues 10, 11).",
    types=MappingProxyType(
        {
            **{
                name: events.PayoutEvent
                for name in (
                    "payout.planned",
                    "payout.held",
                    "payout.released",
                    "payout.waiting",
                    "payout.sent",
                    "payout.completed",
                    "payout.returned",
                    "payout.rejected",
                )
            },
            "payout.clawback": events.PayoutClawback,
            "payout.compensation_applied": events.CompensationAnswered,
            "payout.compensation_failed": events.CompensationAnswered,
            "payout.inquiry_answered": events.PayoutInquiryAnswered,
        }
    ),
)
PAYOUT_BANK_RESULTS = Topic(
    "payouts.bank_results.v1",
    key="file_id",
    partitions=1,
    producer="operator",
    archive=True,
    description="What the bank said about our payout files (acknowledged; returns, NOCs and rejects as the "
    "bank's file) and settlement confirmations of payouts from reconciliation (R16, R17).",
    types=MappingProxyType(
        {
            "payout_file.acknowledged": events.PayoutFileAcknowledged,
            "payout_returns.received": events.PayoutReturnsReceived,
            "payout.settlement_confirmed": events.PayoutSettlementConfirmed,
            "payout.settlements_confirmed": events.PayoutSettlementsConfirmed,
        }
    ),
)

REGISTRY: tuple[Topic, ...] = (
    INFRA_LIFECYCLE,
    CONTRACTS,
    WALLETS,
    USAGE_SAMPLES,
    CLOCK_TICKS,
    USAGE_METERED,
    METERING_ANOMALY,
    CHARGES_RATED,
    BILLING_ALERTS,
    PLATFORM_COMMANDS,
    INVOICES_FINALIZED,
    CREDIT_NOTES_ISSUED,
    STATEMENTS_FINALIZED,
    JOURNAL_REQUESTS,
    JOURNAL_POSTED,
    PAYMENT_METHODS,
    PAYMENTS_RECEIVED,
    INVOICE_PAYMENTS,
    PAYMENTS,
    PROCESSOR_EVENTS,
    PAYMENT_COMMANDS,
    SUPPLIERS,
    FX_RATES,
    PAYOUTS,
    PAYOUT_BANK_RESULTS,
    SAGAS,
)
BY_NAME: Mapping[str, Topic] = MappingProxyType({t.name: t for t in REGISTRY})


def all_physical(prefix: str = "") -> dict[str, int]:
    """Every topic to create (data topics and their dead-letter topics) → partition count."""
    return physical_topics(REGISTRY, prefix)


assert USAGE_METERED.partitions == CHARGES_RATED.partitions, "watermarks forward partition p to p"
assert len(BY_NAME) == len(REGISTRY), "topic names are unique"
