"""``settle``: run the fleet, operate it, inspect what it did — the CLI's one composition root.

Commands that change things resolve PostgreSQL and Kafka by the local stack's rules (README,
"Configuration"): ``SETTLE_DATABASE_URL`` / ``SETTLE_KAFKA_BOOTSTRAP_SERVERS`` when set, else the local
server and the local mock-cluster broker (started on demand). Read commands use
:func:`services.cli.runtime.read_only`: they start nothing and migrate nothing.

:func:`build_app` imports every command module and mounts every command group on the leaf app
(:mod:`services.cli.app`) here, explicitly — including the tools' ``settle demo`` and ``settle bench``
(:mod:`tools`); :func:`main` also hands the product's topic registry to the kernel.
"""

from __future__ import annotations

import functools

import typer


@functools.cache
def build_app() -> typer.Typer:
    """The ``settle`` app with every command and group mounted (once per process)."""
    # Each command module's decorators put its commands on the app and the groups mounted below; they are
    # imported in the order `settle --help` lists their commands.
    from services.cli import commands, documents, kernel, ledger_proof, payments, sagas  # noqa: F401
    from services.cli.app import (
        app,
        clock_app,
        dlq_app,
        gaps_app,
        held_app,
        invoices_app,
        ledger_app,
        outbox_app,
        payments_app,
        payouts_app,
        quarantine_app,
        receipts_app,
        sagas_app,
        stack_app,
        statements_app,
        topics_app,
    )
    from tools import bench, replay
    from tools.demo import command as demo_command
    from tools.fakepsp import command as fakepsp_command

    app.add_typer(stack_app, name="stack")
    app.add_typer(topics_app, name="topics")
    app.add_typer(dlq_app, name="dlq")
    app.add_typer(ledger_app, name="ledger")
    app.add_typer(bench.bench_app, name="bench")
    app.add_typer(invoices_app, name="invoices")
    app.add_typer(statements_app, name="statements")
    app.add_typer(clock_app, name="clock")
    app.add_typer(payments_app, name="payments")
    app.add_typer(receipts_app, name="receipts")
    app.add_typer(sagas_app, name="sagas")
    app.command("demo")(demo_command.demo)
    app.command("fakepsp")(fakepsp_command.fakepsp)
    from services.cli import operations, recovery  # noqa: F401

    app.add_typer(held_app, name="held")
    invoices_app.add_typer(quarantine_app, name="quarantine")
    app.add_typer(gaps_app, name="gaps")
    app.add_typer(outbox_app, name="outbox")
    from services.cli import payouts  # noqa: F401

    app.add_typer(payouts_app, name="payouts")
    app.command("replay")(replay.replay)
    app.command("rebuild")(replay.rebuild)
    app.add_typer(replay.archive_app, name="archive")
    from services.cli import reconcile  # noqa: F401
    from services.cli.app import bank_app, breaks_app, processor_app

    app.add_typer(bank_app, name="bank")
    app.add_typer(breaks_app, name="breaks")
    app.add_typer(processor_app, name="processor")
    return app


def main() -> None:
    from libs.messaging.topic import register_topics
    from schemas.topics import REGISTRY

    register_topics(REGISTRY)  # the kernel creates, checks and redrives the product's topics
    build_app()()


if __name__ == "__main__":
    main()
