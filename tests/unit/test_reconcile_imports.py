"""Reconciliation imports (bank files, processor reports) and gauges — no database."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime

import pytest
from prometheus_client import REGISTRY

from libs.errors import ConfigurationError
from services.payments.gateways.port import BalanceTransaction
from services.payouts.rails.statements import BankLine
from services.reconcile.domain.matching import Record, reconcile
from services.reconcile.imports import bank_entries, detect_format, line_of_transaction, read_processor_file
from services.reconcile.metrics import observe


def _line(amount: int, ref: str | None = None) -> BankLine:
    return BankLine("acct", "USD", amount, "credit", "booked", date(2026, 12, 1), None, "195", end_to_end_id=ref)


def test_format_is_detected_from_the_first_bytes() -> None:
    assert detect_format(b'  <?xml version="1.0"?><Document/>') == "camt053"
    assert detect_format(b"01,BANK,SETTLE,261203,0600,1,,,2/\n") == "bai2"
    with pytest.raises(ConfigurationError, match="not a bank statement"):
        detect_format(b"date,amount\n")


def test_line_identity_keeps_equal_payments_apart_and_finds_a_line_again_in_another_file() -> None:
    first = bank_entries([_line(500), _line(500), _line(700, "po-1")], "file-a")
    assert len({e.line_hash for e in first}) == 3  # two equal payments on one statement are two lines
    overlap = bank_entries([_line(700, "po-1"), _line(500)], "file-b")  # an end-of-day file repeats them
    assert {e.line_hash for e in overlap} <= {e.line_hash for e in first}
    assert all(e.file_id == "file-b" for e in overlap)


def test_processor_report_file_in_stripes_list_shape() -> None:
    report = {
        "object": "list",
        "data": [
            {
                "id": "txn_1",
                "type": "charge",
                "source": "pi_1",
                "amount": 10_000,
                "fee": 320,
                "net": 9_680,
                "currency": "usd",
                "created": 1_764_590_400,
                "available_on": 1_764_763_200,
                "metadata": {"attempt_id": "att-1"},
            },
            {
                "id": "txn_2",
                "type": "payout",
                "source": "po_1",
                "amount": -9_680,
                "fee": 0,
                "currency": "USD",
                "created": "2026-12-02T00:00:00Z",
            },
        ],
    }
    charge, payout = read_processor_file(json.dumps(report).encode(), "stripe")
    assert (charge.reference, charge.currency, charge.net_minor, charge.fee_minor) == ("att-1", "USD", 9_680, 320)
    assert (payout.net_minor, payout.created_at) == (-9_680, datetime(2026, 12, 2, tzinfo=UTC))
    with pytest.raises(ConfigurationError, match="line 1"):
        read_processor_file(b'[{"id": "t", "type": "charge", "amount": "10.00", "currency": "USD", "created": 1}]', "x")
    with pytest.raises(ConfigurationError, match="line 1"):  # net must be amount − fee
        read_processor_file(
            b'[{"id": "t", "type": "charge", "amount": 10, "fee": 1, "net": 10, "currency": "USD", "created": 1}]', "x"
        )


def test_gateway_balance_transactions_become_lines() -> None:
    at = datetime(2026, 12, 1, tzinfo=UTC)
    line = line_of_transaction(
        "ledgerpay", BalanceTransaction("t1", "charge", "ch_1", 500, 38, 462, "usd", at, at, "att")
    )
    assert (line.gateway, line.currency, line.reference) == ("ledgerpay", "USD", "att")


def test_gauges_count_breaks_by_reason_and_age_bucket() -> None:
    result = reconcile(
        [Record("ledger", "L1", 100, "USD", date(2026, 11, 1), "in")],
        [],
        [Record("bank", "B1", 5, "USD", date(2026, 12, 3), "in")],
        as_of=date(2026, 12, 4),
    )
    observe(result)

    def value(name: str, **labels: str) -> float | None:
        return REGISTRY.get_sample_value(name, labels)

    assert value("settle_reconcile_breaks", reason="missing_in_bank", age_bucket="31d+") == 1
    assert value("settle_reconcile_breaks", reason="timing", age_bucket="0-3d") == 1
    assert value("settle_reconcile_breaks", reason="duplicate", age_bucket="4-7d") == 0
    assert value("settle_reconcile_overdue_breaks") == 1
