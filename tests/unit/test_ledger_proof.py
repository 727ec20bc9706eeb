"""The journal's canonical form, ledger hash and chain links (libs/ledger/proof.py) — pure."""

from __future__ import annotations

import dataclasses
import hashlib
import random
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from libs.ledger import Entry, credit, debit
from libs.ledger.proof import (
    GENESIS,
    EntryRecord,
    LedgerHasher,
    canonical_line,
    chain_line,
    chain_of,
    ledger_hash,
    link,
    record_of,
)

T0 = datetime(2026, 12, 1, tzinfo=UTC)


def _record(n: int, **changes: object) -> EntryRecord:
    base = EntryRecord(
        id=f"e-{n}",
        cause_id=f"c-{n}",
        kind="charge",
        occurred_at=T0 + timedelta(hours=n % 5),
        reverses=None,
        description="hour",
        correlation_id=f"corr-{n}",
        postings=(("renter:unbilled", "USD/8", 1_000 + n), ("platform:revenue", "USD/8", -1_000 - n)),
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_canonical_line_is_the_documented_bytes() -> None:
    record = _record(
        1,
        description="caf\u00e9 \u20ac",
        reverses="e-0",
        postings=(("b", "USD/8", -5), ("a", "USD/8", 5)),
    )
    assert canonical_line(record) == (
        b'["settle.entry.v1","e-1","2026-12-01T01:00:00.000000Z","charge","c-1","e-0",'
        b'"caf\\u00e9 \\u20ac",[["a","USD/8","5"],["b","USD/8","-5"]]]'
    )
    assert chain_line(record) == canonical_line(record)[:-1] + b',"corr-1"]'


def test_times_are_normalised_to_utc() -> None:
    plus_two = timezone(timedelta(hours=2))
    assert canonical_line(_record(0, occurred_at=T0.astimezone(plus_two))) == canonical_line(_record(0))


def test_the_hash_does_not_depend_on_row_order_or_posting_order() -> None:
    records = [_record(n) for n in range(40)]
    shuffled = records[:]
    random.Random(7).shuffle(shuffled)
    flipped = [dataclasses.replace(r, postings=tuple(reversed(r.postings))) for r in shuffled]
    assert ledger_hash(records) == ledger_hash(shuffled) == ledger_hash(flipped)
    # Tracing metadata is not part of the ledger hash (it is part of the chain).
    traced = [dataclasses.replace(r, correlation_id="other") for r in records]
    assert ledger_hash(traced) == ledger_hash(records)
    assert link(GENESIS, traced[0]) != link(GENESIS, records[0])


@pytest.mark.parametrize(
    "change",
    [
        {"id": "e-x"},
        {"cause_id": "c-x"},
        {"kind": "earning"},
        {"occurred_at": T0 + timedelta(microseconds=1)},
        {"reverses": "e-0"},
        {"description": "hour "},
        {"postings": (("renter:unbilled", "USD/8", 1_004), ("platform:revenue", "USD/8", -1_004))},
        {"postings": (("renter:other", "USD/8", 1_003), ("platform:revenue", "USD/8", -1_003))},
        {"postings": (("renter:unbilled", "EUR/8", 1_003), ("platform:revenue", "EUR/8", -1_003))},
    ],
)
def test_every_field_that_says_what_happened_changes_the_hash(change: dict[str, object]) -> None:
    records = [_record(n) for n in range(5)]
    edited = [*records[:3], dataclasses.replace(records[3], **change), *records[4:]]  # type: ignore[arg-type]
    assert ledger_hash(edited) != ledger_hash(records)
    assert link(GENESIS, edited[3]) != link(GENESIS, records[3])


def test_a_streamed_hasher_refuses_entries_out_of_order() -> None:
    hasher = LedgerHasher()
    hasher.add(_record(1))
    with pytest.raises(ValueError, match="out of canonical order"):
        hasher.add(_record(0))
    with pytest.raises(ValueError, match="out of canonical order"):
        hasher.add(_record(1))  # a repeated entry is not canonical either


def test_a_chain_link_covers_its_predecessor() -> None:
    first = link(GENESIS, _record(1))
    assert first == hashlib.sha256(GENESIS + chain_line(_record(1))).digest()
    second = link(first, _record(2))
    assert second != link(GENESIS, _record(2))
    with pytest.raises(AssertionError):
        link(b"short", _record(2))


def test_record_of_an_entry_and_its_chain() -> None:
    entry = Entry(
        id="e-1",
        cause_id="c-1",
        kind="transfer",
        occurred_at=T0,
        postings=(debit("a", 5, "USD"), credit("b", 5, "USD"), debit("c", 7, "JPY"), credit("d", 7, "JPY")),
        correlation_id="k",
    )
    record = record_of(entry)
    assert record.postings == (("a", "USD/8", 5), ("b", "USD/8", -5), ("c", "JPY/6", 7), ("d", "JPY/6", -7))
    assert chain_of(record) == "JPY/6+USD/8"


@given(
    st.lists(
        st.tuples(st.integers(0, 10**6), st.text(max_size=8), st.integers(-(10**30), 10**30).filter(bool)),
        min_size=1,
        max_size=30,
        unique_by=lambda t: t[0],
    )
)
def test_hash_is_a_function_of_the_set_of_entries(items: list[tuple[int, str, int]]) -> None:
    records = [
        _record(n, description=text, postings=(("a", "USD/8", amount), ("b", "USD/8", -amount)))
        for n, text, amount in items
    ]
    assert ledger_hash(records) == ledger_hash(list(reversed(records)))
    assert ledger_hash(records[1:]) != ledger_hash(records)
