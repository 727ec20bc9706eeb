"""Payout files (R16), the pure parts: rail references of attempts, deterministic file identities, routing
with limits and a fallback, the retry rule over failed attempts, the directory transport, the ledger
entries of the rails, and how reconciliation reads them (nothing counted twice) and confirms payouts."""

from __future__ import annotations

import hashlib
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from schemas.inputs import PayeeUpdated
from services.payouts import entries
from services.payouts.domain.dispatch import (
    FailedAttempt,
    attempt_ref,
    file_identity,
    instruction_for,
    may_retry,
    route,
)
from services.payouts.files import RAILS, DirectoryTransport, TransportError
from services.payouts.rails.nacha import read_nacha
from services.payouts.rails.port import PayoutBatch
from services.reconcile.domain.matching import Match, Record
from services.reconcile.domain.sources import LedgerPosting, ledger_records, payout_confirmations

PAYOUT = "f018c51f-4062-5273-a0eb-5c7ead536bb5"
ACH = {"holder_name": "Ach Supplier Inc", "routing_number": "021000021", "account_number": "000123456789"}
TICK = datetime(2026, 2, 2, tzinfo=UTC)


def test_attempt_refs_fit_iso_and_differ_per_attempt() -> None:
    first, second, third = (attempt_ref(PAYOUT, n) for n in (1, 2, 3))
    assert first == PAYOUT.replace("-", "") and len(first) == 32
    assert (second, third) == (first + "R2", first + "R3")
    assert all(len(r) <= 35 and r.isascii() for r in (first, second, third))
    odd = attempt_ref("supplier payout with spaces and a long name", 1)
    assert (
        odd.startswith("P") and len(odd) == 32 and odd == attempt_ref("supplier payout with spaces and a long name", 1)
    )


def test_file_identity_derives_from_rail_tick_and_sequence_only() -> None:
    a = file_identity("ach", TICK, 0)
    assert a == file_identity("ach", TICK.astimezone(), 0)  # the same instant in another zone
    assert (a.file_id, a.name, a.batch_id) == (
        "ach-20260202T000000Z-000",
        "settle-ach-20260202T000000Z-000.ach",
        "ACH20260202000000S000",
    )
    assert file_identity("ach", TICK, 1).name != a.name and file_identity("sepa", TICK, 0).name.endswith(".xml")
    assert len(file_identity("stablecoin", TICK, 999).batch_id) <= 35


def test_route_prefers_the_payee_rail_then_its_fallback_then_an_operator() -> None:
    assert route(120_00, "USD", "ach", None).rail == "ach"
    over = 100_000_000_00
    assert route(over, "USD", "ach", "wire").rail == "wire"
    waiting = route(over, "USD", "ach", None)
    assert waiting.rail is None and "over its limit" in waiting.reason and "no fallback" in waiting.reason
    assert route(80_00, "EUR", "ach", None).rail is None  # ACH does not carry EUR


def test_may_retry_after_a_payee_change_or_twice_for_r01_r09() -> None:
    r03 = [FailedAttempt(1, "return", "R03", "payee-1")]
    assert not may_retry(r03, "payee-1") and may_retry(r03, "payee-2")
    rejected = [FailedAttempt(1, "reject", "AC04", "payee-1")]
    assert not may_retry(rejected, "payee-1") and may_retry(rejected, "payee-2")
    r01 = [FailedAttempt(1, "return", "R01", "p")]
    assert may_retry(r01, "p")
    assert may_retry([*r01, FailedAttempt(2, "return", "R09", "p")], "p")
    assert not may_retry([*r01, FailedAttempt(2, "return", "R01", "p"), FailedAttempt(3, "return", "R01", "p")], "p")
    assert not may_retry([], "p") and not may_retry(r01, None)


def test_a_built_nacha_file_reads_back_and_rebuilds_byte_identical() -> None:
    instructions = tuple(
        instruction_for(
            payout_id=pid,
            attempt=1,
            rail="ach",
            account=ACH,
            amount_minor=amount,
            currency="USD",
            effective_date=date(2026, 2, 3),
        )
        for pid, amount in ((PAYOUT, 120_00), ("958377c7-eea8-5361-af6d-dc817a4759ae", 7_25))
    )
    ident = file_identity("ach", TICK, 0)
    built = RAILS["ach"].build(PayoutBatch(ident.batch_id, TICK, instructions, sequence=0))
    again = RAILS["ach"].build(PayoutBatch(ident.batch_id, TICK, instructions[::-1], sequence=0))
    assert built.content == again.content and built.digest == hashlib.sha256(built.content).hexdigest()
    read = read_nacha(built.content)
    assert sorted(e.amount_minor for b in read.batches for e in b.entries) == [7_25, 120_00]
    created = read.created
    assert (created.year, created.month, created.day, created.hour, created.minute) == (2026, 2, 2, 0, 0)


def test_directory_transport_writes_once_and_recognises_a_resend(tmp_path: Path) -> None:
    transport = DirectoryTransport(tmp_path / "out")
    content = b"101 file"
    digest = hashlib.sha256(content).hexdigest()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / ".f.ach.tmp").write_bytes(b"half")  # a killed earlier attempt
    path = transport.send("f.ach", content, digest)
    assert path.read_bytes() == content
    assert transport.send("f.ach", content, digest) == path  # resend: same bytes, nothing changes
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["f.ach"]
    with pytest.raises(TransportError, match="different bytes"):
        transport.send("f.ach", b"other", hashlib.sha256(b"other").hexdigest())
    assert path.read_bytes() == content


@pytest.mark.parametrize("kind", ["payout.retried", "payout.rejected", "payout.returned", "payout.completed"])
def test_rail_entries_balance_and_derive_their_ids(kind: str) -> None:
    entry, specs = entries.rail_entry(
        kind, ledger_key=PAYOUT, supplier_id="sup-a", payout_currency="USD", amount_minor=120_00, at=TICK
    )
    assert sum(p.amount_units for p in entry.postings) == 0
    assert {p.account for p in entry.postings} == {s.code for s in specs}
    same, _ = entries.rail_entry(
        kind, ledger_key=PAYOUT, supplier_id="sup-a", payout_currency="USD", amount_minor=120_00, at=TICK
    )
    assert same.id == entry.id and entry.kind == kind


def _postings(kind: str, key: str, day: int, amount: int, account: str = "platform:payouts_in_transit:USD") -> list:
    entry, _ = entries.rail_entry(
        kind, ledger_key=key, supplier_id="sup-a", payout_currency="USD", amount_minor=amount, at=TICK
    )
    at = TICK + timedelta(days=day)
    return [
        LedgerPosting(entry.id, entry.cause_id, kind, at, p.account, "USD", p.amount_units, entry.description or "")
        for p in entry.postings
    ]


def test_reconciliation_reads_each_bank_movement_once() -> None:
    transit = "platform:payouts_in_transit:USD"
    planned = [LedgerPosting("e0", PAYOUT, "payout.planned", TICK, transit, "USD", -120_00 * 10**6)]
    retry_key = attempt_ref(PAYOUT, 2)
    # Rejected first attempt then a retry that completed: one movement out (the retry), nothing else.
    postings = (
        planned + _postings("payout.rejected", PAYOUT, 1, 120_00) + _postings("payout.retried", retry_key, 2, 120_00)
    )
    postings += _postings("payout.completed", retry_key, 3, 120_00)
    records = ledger_records(postings)
    assert [(r.source_id.split(":")[1], r.direction, r.amount_minor) for r in records] == [(retry_key, "out", 120_00)]
    # Returned first attempt (money went out and came back), then a retry: out, in, out.
    postings = (
        planned + _postings("payout.returned", PAYOUT, 1, 120_00) + _postings("payout.retried", retry_key, 2, 120_00)
    )
    records = sorted(ledger_records(postings), key=lambda r: (r.on, r.direction))
    assert [(r.direction, r.amount_minor) for r in records] == [("out", 120_00), ("in", 120_00), ("out", 120_00)]
    first = next(r for r in records if r.source_id.startswith("payout:" + PAYOUT))
    assert PAYOUT.replace("-", "") in first.references  # what the rails carry as end-to-end id


def test_payout_confirmations_come_from_bank_matches_of_netted_payouts() -> None:
    on = date(2026, 2, 3)
    ledger = Record("ledger", f"payout:{PAYOUT}:platform:payouts_in_transit:USD", 120_00, "USD", on, "out")
    bank = Record("bank", "line-1", 120_00, "USD", on, "out")
    other = Record("ledger", "e9:platform:cash_clearing:USD", 5_00, "USD", on, "in")
    found = payout_confirmations([Match("bank", "reference", (ledger, bank)), Match("bank", "amount", (other, bank))])
    assert [(c.reference, c.amount_minor, c.currency, c.booked_on, c.bank_record) for c in found] == [
        (PAYOUT, 120_00, "USD", on, "line-1")
    ]
    assert payout_confirmations([Match("processor", "reference", (ledger,))]) == []


def test_a_fallback_rail_must_reach_the_same_account() -> None:
    base = {
        "supplier_id": "s",
        "payout_currency": "USD",
        "minimum_payout": "0",
        "pay_when_paid": False,
        "on_hold": False,
    }
    assert PayeeUpdated(**base, rail="ach", account=ACH, fallback_rail="wire").fallback_rail == "wire"
    assert PayeeUpdated(**base, rail="ach", account=ACH, fallback_rail="rtp").fallback_rail == "rtp"
    with pytest.raises(ValidationError, match="fallback"):
        PayeeUpdated(**base, rail="ach", account=ACH, fallback_rail="sepa")
    with pytest.raises(ValidationError, match="fallback_rail is the payee's rail"):
        PayeeUpdated(**base, rail="ach", account=ACH, fallback_rail="ach")


@given(st.integers(min_value=1, max_value=10**12), st.sampled_from(["ach", "wire", "rtp", "fednow", "sepa"]))
def test_property_routing_never_exceeds_a_limit(amount: int, preferred: str) -> None:
    from services.payouts.rails.calendar import DEFAULT_RAILS

    chosen = route(amount, "USD", preferred, "wire")
    if chosen.rail is not None:
        config = DEFAULT_RAILS[chosen.rail]
        assert config.carries("USD") and (config.limit_minor is None or amount <= config.limit_minor)
    else:
        assert chosen.reason.startswith("wait_for_operator")
