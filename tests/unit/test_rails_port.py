"""One contract every rail passes (STYLE: one suite over every implementation of a port)."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from services.payouts.rails.iso20022 import Debtor, InstantRail, Pain001Rail
from services.payouts.rails.nacha import NachaOriginator, NachaRail
from services.payouts.rails.port import (
    BankFileError,
    IbanAccount,
    InvalidBatchError,
    Payee,
    PayoutBatch,
    PayoutInstruction,
    Rail,
    RailReturn,
    UsBankAccount,
    file_digest,
    retry_allowed,
)

T = datetime(2026, 12, 7, 20, 0, tzinfo=UTC)


def us(n: int) -> PayoutInstruction:
    return PayoutInstruction(
        f"po-{n}",
        f"Payee {n}",
        UsBankAccount("021000021", str(1000 + n)),
        100 + n,
        "USD",
        date(2026, 12, 8),
        f"ref {n}",
    )


def eu(n: int) -> PayoutInstruction:
    return PayoutInstruction(
        f"po-{n}",
        f"Payee {n}",
        IbanAccount("NL91ABNA0417164300", "ABNANL2A"),
        100 + n,
        "EUR",
        date(2026, 12, 8),
        f"ref {n}",
    )


CASES: list[tuple[Rail, list[PayoutInstruction]]] = [
    (
        NachaRail(NachaOriginator("021000021", "BANK", "1123456789", "SETTLE", "SETTLE", "1123456789", "021000021")),
        [us(n) for n in range(5)],
    ),
    (
        Pain001Rail(Debtor("Settle", IbanAccount("DE89370400440532013000", "COBADEFFXXX")), scheme="sepa"),
        [eu(n) for n in range(5)],
    ),
    (Pain001Rail(Debtor("Settle", UsBankAccount("021000021", "1")), scheme="wire"), [eu(1), us(2)]),
    (
        InstantRail(Debtor("Settle", UsBankAccount("021000021", "1")), name="rtp", max_per_message=5),
        [us(n) for n in range(5)],
    ),
]


@pytest.mark.parametrize(("rail", "items"), CASES, ids=[f"{r.name}-{k}" for k, (r, _) in enumerate(CASES)])
def test_rail_contract(rail: Rail, items: list[PayoutInstruction]) -> None:
    built = rail.build(PayoutBatch("contract-1", T, tuple(items)))
    again = rail.build(PayoutBatch("contract-1", T, tuple(reversed(items))))
    assert built.content == again.content and built.file_id == again.file_id  # deterministic, order-free
    assert built.digest == file_digest(built.content)
    assert set(built.references) == {i.payout_id for i in items} and built.count == len(items)
    assert len(set(built.references.values())) == len(items)  # one rail reference per payout
    assert all(rail.validate(i.payee) == [] for i in items)
    assert rail.validate(Payee("", items[0].account)) != []  # a problem in words, never an exception
    other = rail.build(PayoutBatch("contract-2", T, tuple(items), sequence=1))
    assert other.file_id != built.file_id and other.content != built.content
    with pytest.raises(BankFileError):
        rail.parse_returns(b"\x00 not a bank file")
    bad = PayoutInstruction("po-bad", "X", UsBankAccount("021000022", "1"), 1, items[0].currency, date(2026, 12, 8), "")
    with pytest.raises(InvalidBatchError):
        rail.build(PayoutBatch("contract-3", T, (bad,)))


def test_retry_policy_r16() -> None:
    r01 = RailReturn("return", "R01", "t", "insufficient funds")
    r03 = RailReturn("return", "R03", "t", "no account")
    reject = RailReturn("reject", "AC04", "p", "closed account")
    noc = RailReturn("notification_of_change", "C01", "t", "incorrect account")
    assert [retry_allowed(r01, represented=n, payee_changed=False) for n in range(4)] == [True, True, False, False]
    assert not retry_allowed(r03, represented=0, payee_changed=False)
    assert retry_allowed(r03, represented=0, payee_changed=True)
    assert not retry_allowed(reject, represented=0, payee_changed=False)
    assert retry_allowed(reject, represented=5, payee_changed=True)
    assert not retry_allowed(noc, represented=0, payee_changed=True)  # not a failure: nothing to retry
