"""Issue 8 (and wave two): the whole fleet SIGKILLed mid-batch and mid-close bills, collects and pays out
exactly what a calm run does.

The same marketplace is billed twice, each on a fresh database and broker, by `settle run`
processes — metering, rating, invoicing, payments, payouts and saga: calm, and with a random worker
SIGKILLed (and restarted) every 2–6 s while the input is published, the first month's closing tick
arrives mid-publish, the second month's right after, and both closes run (tools.demo.chaos). The money
inputs are payees (ACH in USD: one pay-when-paid, one with an unreachable minimum), FX rates and wires
from half of the postpaid renters. Every invoice and statement must be equal, and so must every
invoice's payment status, every payout and every saga with its compensations; the ledger must verify,
nothing may be left in a gap and every worker was really killed. The payment statuses are also checked
against an independent R11 walk of the wires over the invoices (:mod:`tests.scenarios.money_oracle`).
`settle bench chaos [--settle]` runs the demo-sized version with a backlog beyond what the old mock broker
kept per partition.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import orjson
import pytest

from schemas import topics
from tests.conftest import Servers, fresh_stack
from tests.scenarios import money_oracle
from tools.demo.chaos import differences, drive, settlement_inputs, settlement_roles
from tools.demo.scenario import generate

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

SEED = 26
CONTRACTS = 8


def _invoice_key(key: str) -> tuple[str, datetime]:
    """``payment|contract|period start`` → (contract, period start), whatever the time's spelling."""
    _, contract_id, start = key.split("|")
    return contract_id, datetime.fromisoformat(start.replace("Z", "+00:00"))


async def test_killed_billing_workers_bill_exactly_what_a_calm_fleet_bills(
    servers: Servers, template_db: str, tmp_path: Path
) -> None:
    scenario = generate(seed=SEED, contracts=CONTRACTS)
    results = {}
    for kill in (False, True):
        folder = tmp_path / ("chaos" if kill else "calm")
        async with fresh_stack(servers, template_db, folder) as stack:
            results[kill] = await drive(
                stack.settings,
                stack.pool,
                stack.database_url,
                stack.bootstrap_servers,
                scenario,
                kill=kill,
                seed=SEED,
                log_dir=folder / "logs",
                chaos_after_publish_s=15.0,
                settle=True,
            )
    calm, chaos = results[False], results[True]
    assert calm.kills == 0 and chaos.kills >= 5, (calm.kills, chaos.kills)
    assert calm.invoices and calm.statements, "the calm run billed something"
    assert differences(calm, chaos) == []
    kinds = {key.split("|")[0] for key in calm.settlement}
    assert kinds == {"payment", "credit", "payout", "saga"}, kinds
    payouts = [v for k, v in calm.settlement.items() if k.startswith("payout|")]
    assert any(v[-3] == "planned" for v in payouts), payouts
    _, minimum = settlement_roles(scenario)
    below = [v for v in payouts if v[0] == minimum]  # the minimum nobody reaches
    assert below and all(v[-3] == "waiting" and v[-2] == "below_minimum" for v in below), [
        (v[0], v[1], v[-3], v[-2]) for v in payouts
    ]
    paid = [v for k, v in calm.settlement.items() if k.startswith("payment|") and v[0] in ("paid", "partially_paid")]
    assert paid, "the wires were applied"
    # R11 checked independently: what every wire paid, walked by the money oracle over the calm run's
    # invoices and credit notes, is each invoice's payment status in both runs (equal above).
    wires = [
        orjson.loads(d.value)["data"] for d in settlement_inputs(scenario) if d.topic == topics.PAYMENTS_RECEIVED.name
    ]
    documents = {k: v for k, v in calm.invoices.items() if not k.startswith("credit-note|")}
    notes = [v for k, v in calm.invoices.items() if k.startswith("credit-note|")]
    walked = money_oracle.walk(documents, notes, wires)
    statuses = {
        _invoice_key(k): (v[0], int(v[1]), int(v[2])) for k, v in calm.settlement.items() if k.startswith("payment|")
    }
    expected = {
        _invoice_key(f"payment|{k}"): (i.status, i.paid_minor, i.remaining_minor) for k, i in walked.invoices.items()
    }
    assert statuses == expected, sorted(set(statuses.items()) ^ set(expected.items()))
    assert any(walked.credit_minor.values()), "one wire leaves a credit balance"
    books = {tuple(k.split("|")[1:]): int(v[1]) for k, v in calm.settlement.items() if k.startswith("credit|")}
    assert {book: credit for book, credit in books.items() if credit} == {
        book: credit for book, credit in walked.credit_minor.items() if credit
    }, (books, walked.credit_minor)
    assert any(i.status == "partially_paid" for i in walked.invoices.values()), "a wire left an invoice open"
    assert chaos.ledger_ok and calm.ledger_ok
    # issue 11's invariant on both runs: every saga's state matches payments, payouts and the ledger
    assert calm.saga_violations == [] and chaos.saga_violations == [], (calm.saga_violations, chaos.saga_violations)
    assert chaos.open_gaps == 0
    assert chaos.dead_letters == calm.dead_letters, "no message was dead-lettered because of a kill"
