"""The ``settle`` Typer app and its command groups: a leaf (imports nothing of Settle).

Command modules decorate their commands onto these; :func:`services.cli.main.build_app` — the one
composition root — imports every command module and mounts every group, explicitly.
"""

from __future__ import annotations

import typer

app = typer.Typer(
    help="Settle: billing and settlement for GPU marketplaces.", no_args_is_help=True, pretty_exceptions_enable=False
)
stack_app = typer.Typer(help="The local development stack (PostgreSQL + Kafka-protocol broker).", no_args_is_help=True)
topics_app = typer.Typer(help="Kafka topics of the registry.", no_args_is_help=True)
dlq_app = typer.Typer(help="Dead letters: list, show, redrive.", no_args_is_help=True)
ledger_app = typer.Typer(help="The double-entry ledger.", no_args_is_help=True)
clock_app = typer.Typer(help="Time: the fleet's only clock is clock.ticks.v1.", no_args_is_help=True)
invoices_app = typer.Typer(help="Finalized renter invoices and credit notes.", no_args_is_help=True)
statements_app = typer.Typer(help="Finalized supplier earnings statements.", no_args_is_help=True)
held_app = typer.Typer(
    help="Data metering, rating and invoicing hold until something else arrives: list, release, drop.",
    no_args_is_help=True,
)
quarantine_app = typer.Typer(help="Contracts whose invoice close is set aside: list, retry.", no_args_is_help=True)
gaps_app = typer.Typer(help="Partitions stopped because the broker deleted records a consumer had not read.")
payments_app = typer.Typer(
    help="Collections, refunds and disputes; retry and refund (operator commands).", no_args_is_help=True
)
receipts_app = typer.Typer(help="Money received for renters: list, apply to another renter.", no_args_is_help=True)
outbox_app = typer.Typer(help="The transactional outbox.", no_args_is_help=True)
sagas_app = typer.Typer(
    help="Billing-cycle sagas: list (--stuck), show (steps, the event behind each, what it waits for), retry.",
    no_args_is_help=True,
)
payouts_app = typer.Typer(
    help="Supplier payouts (R15): list, show, plan --dry-run, hold, release.", no_args_is_help=True
)
breaks_app = typer.Typer(
    help="Reconciliation breaks (R17): explain one, post a bank fee the ledger does not know.", no_args_is_help=True
)
bank_app = typer.Typer(help="Bank statements (camt.053, BAI2) for reconciliation (R17).", no_args_is_help=True)
processor_app = typer.Typer(
    help="Processor reports (balance transactions) for reconciliation (R17).", no_args_is_help=True
)
