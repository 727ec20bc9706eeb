"""The operator's payment commands as real `settle` processes: each publishes one command on
payments.commands.v1 with its idempotency key, who asked and why (applied by the payments worker:
tests/payments/test_refund_dispute_stories.py)."""

from __future__ import annotations

import subprocess

import orjson
import pytest

from schemas import topics
from tests.chaos.test_kill_workers import _env
from tests.conftest import Stack
from tests.fleet import read_topic, settle_in_process

pytestmark = pytest.mark.integration


def settle(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return settle_in_process(_env(stack), *args)


async def test_retry_refund_and_apply_publish_audited_commands(stack: Stack) -> None:
    who = ("--by", "finance@test", "--reason", "renter asked")
    async with stack.pool.acquire() as conn:  # a command the worker applied before: a re-run sends nothing
        await conn.execute(
            """insert into payments.commands (command_id, type, renter_id, requested_by, reason, at, outcome, event_id)
               values ('c-done', 'payment.refund_requested', 'r1', 'finance@test', 'x', now(),
                       'refund rf-9 of 5.00 USD', 'cmd-c-done')"""
        )
    rerun = settle(stack, "payments", "refund", "INV-2026-000001", "--amount", "5.00", "--renter", "r1",
                   "--currency", "USD", *who, "--command-id", "c-done")  # fmt: skip
    assert rerun.returncode == 0 and "already applied" in rerun.stdout and "rf-9" in rerun.stdout, rerun
    runs = [
        settle(stack, "payments", "retry", "INV-2026-000001", "--renter", "r1", "--currency", "USD", *who,
               "--command-id", "c-retry"),
        settle(stack, "payments", "refund", "INV-2026-000001", "--amount", "12.50", "--renter", "r1",
               "--currency", "USD", *who, "--command-id", "c-refund"),
        settle(stack, "receipts", "apply", "w-9", "--renter", "r1", "--to", "r2", "--currency", "EUR", *who,
               "--reference", "INV-2026-000002", "--command-id", "c-apply"),
        settle(stack, "payments", "refund", "INV-2026-000001", "--amount", "twelve", "--renter", "r1",
               "--currency", "USD", *who),
        settle(stack, "payments", "refund-paid", "rf-1", "--renter", "r1", "--currency", "USD",
               "--reference", "BANK-1", "--paid-on", "2026-03-04", *who, "--command-id", "c-paid"),
        settle(stack, "payments", "refund-paid", "rf-1", "--renter", "r1", "--currency", "USD",
               "--reference", "BANK-1", "--paid-on", "March 4th", *who),
    ]  # fmt: skip
    assert [r.returncode for r in (*runs[:3], runs[4])] == [0, 0, 0, 0], [r.stderr for r in runs]
    assert runs[3].returncode != 0 and "not a decimal amount" in runs[3].stderr + runs[3].stdout
    assert runs[5].returncode != 0 and "not a YYYY-MM-DD day" in runs[5].stderr + runs[5].stdout
    sent = {
        (e := orjson.loads(r.value))["data"]["command_id"]: e for r in await read_topic(stack, topics.PAYMENT_COMMANDS)
    }
    assert set(sent) == {"c-retry", "c-refund", "c-apply", "c-paid"}, "a refused amount or day publishes nothing"
    assert sent["c-retry"]["type"] == "payment.retry_requested"
    assert (sent["c-refund"]["type"], sent["c-refund"]["data"]["amount"]) == ("payment.refund_requested", "12.50")
    apply = sent["c-apply"]["data"]
    assert (apply["receipt_id"], apply["to_renter_id"], apply["reference"]) == ("w-9", "r2", "INV-2026-000002")
    paid = sent["c-paid"]
    assert (paid["type"], paid["data"]["refund_id"], paid["data"]["reference"], paid["data"]["paid_at"]) == (
        "refund.mark_paid_requested",
        "rf-1",
        "BANK-1",
        "2026-03-04T12:00:00Z",
    )
    assert all(e["data"]["requested_by"] == "finance@test" for e in sent.values())
