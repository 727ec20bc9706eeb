"""Issue 8: the billing workers SIGKILLed mid-batch and mid-close bill exactly what a calm run bills.

The same marketplace is billed twice, each on a fresh database and broker, by `settle run`
processes: calm, and with a random worker SIGKILLed (and restarted) every 2–6 s while the input is
published, the first month's closing tick arrives mid-publish, the second month's right after, and
both closes run (tools.demo.chaos). Every invoice and statement must be equal, the ledger must
verify, nothing may be left in a gap and every worker was really killed. `settle bench chaos` runs
the demo-sized version with a backlog beyond what the old mock broker kept per partition.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import Servers, fresh_stack
from tools.demo.chaos import differences, drive
from tools.demo.scenario import generate

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

SEED = 26
CONTRACTS = 8


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
            )
    calm, chaos = results[False], results[True]
    assert calm.kills == 0 and chaos.kills >= 5, (calm.kills, chaos.kills)
    assert calm.invoices and calm.statements, "the calm run billed something"
    assert differences(calm, chaos) == []
    assert chaos.ledger_ok and calm.ledger_ok
    assert chaos.open_gaps == 0
    assert chaos.dead_letters == calm.dead_letters, "no message was dead-lettered because of a kill"
