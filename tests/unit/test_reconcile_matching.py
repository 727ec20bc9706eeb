"""R17 matching (services/reconcile/domain): references first, then amount + currency + date within the
window; breaks with one reason each and an age; three-way groups; deterministic under shuffles."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from services.reconcile.domain.entries import FEE_KIND, PAYOUT_KIND, ProcessorLine, report_entries
from services.reconcile.domain.matching import (
    REASONS,
    Record,
    age_bucket,
    business_days_between,
    explain,
    normalize_references,
    reconcile,
)
from services.reconcile.domain.sources import (
    BankEntry,
    LedgerPosting,
    bank_record,
    ledger_records,
    processor_record,
)

AS_OF = date(2026, 12, 4)  # a Friday


def ledger(sid: str, amount: int, on: date, direction: str = "in", refs: tuple[str, ...] = (), **kw: object) -> Record:
    return Record("ledger", sid, amount, str(kw.pop("currency", "USD")), on, direction, refs, **kw)  # type: ignore[arg-type]


def bank(
    sid: str, amount: int, on: date, direction: str = "in", refs: tuple[str, ...] = (), currency: str = "USD"
) -> Record:
    return Record("bank", sid, amount, currency, on, direction, refs)  # type: ignore[arg-type]


def processor(
    sid: str, amount: int, on: date, refs: tuple[str, ...] = (), kind: str = "charge", direction: str = "in"
) -> Record:
    return Record("processor", sid, amount, "USD", on, direction, refs, kind=kind)  # type: ignore[arg-type]


def reasons(result: object) -> list[tuple[str, tuple[str, ...]]]:
    return [(b.reason, tuple(r.source_id for r in b.records)) for b in result.breaks]  # type: ignore[attr-defined]


def test_business_days_count_weekends_as_the_next_monday() -> None:
    assert business_days_between(date(2026, 12, 4), date(2026, 12, 7)) == 1  # Friday → Monday
    assert business_days_between(date(2026, 12, 5), date(2026, 12, 7)) == 0  # Saturday = Monday
    assert business_days_between(date(2026, 12, 1), date(2026, 12, 8)) == 5
    assert [age_bucket(d) for d in (0, 3, 4, 7, 8, 30, 31)] == [
        "0-3d",
        "0-3d",
        "4-7d",
        "4-7d",
        "8-30d",
        "8-30d",
        "31d+",
    ]


def test_reference_beats_amount_and_a_reference_pair_that_disagrees_is_a_break() -> None:
    on = date(2026, 12, 1)
    result = reconcile(
        [
            ledger("L1", 10_000, on, refs=("po-1",)),
            ledger("L2", 5_000, on, refs=("po-2",)),
            ledger("L3", 7_000, on, refs=("po-3",)),
        ],
        [],
        [
            bank("B1", 10_000, on, refs=("po-1",)),
            bank("B2", 5_001, on, refs=("po-2",)),  # same reference, other amount
            bank("B3", 7_000, on, refs=("po-3",), currency="EUR"),
            bank("B4", 5_000, on),  # would match L2 by amount, but L2 already paired by reference
        ],
        as_of=date(2026, 12, 15),
    )
    assert [(m.how, [r.source_id for r in m.records]) for m in result.matches] == [("reference", ["L1", "B1"])]
    assert sorted(reasons(result)) == [
        ("amount_mismatch", ("L2", "B2")),
        ("currency_mismatch", ("L3", "B3")),
        ("missing_in_ledger", ("B4",)),
    ]


def test_amount_currency_and_date_within_the_window_match_without_a_reference() -> None:
    result = reconcile(
        [ledger("L1", 2_500, date(2026, 11, 27)), ledger("L2", 2_500, date(2026, 11, 2))],
        [],
        [bank("B1", 2_500, date(2026, 12, 2)), bank("B2", 2_500, date(2026, 12, 3), direction="out")],
        as_of=date(2026, 12, 4),
        window_days=3,
    )
    # Friday 27 → Wednesday 2 is 3 business days; the other direction never matches
    assert [[r.source_id for r in m.records] for m in result.matches] == [["L1", "B1"]]
    assert sorted(reasons(result)) == [("missing_in_bank", ("L2",)), ("timing", ("B2",))]
    tight = reconcile(
        [ledger("L1", 2_500, date(2026, 11, 27))],
        [],
        [bank("B1", 2_500, date(2026, 12, 2))],
        as_of=AS_OF,
        window_days=2,
    )
    assert not tight.matches and sorted(reasons(tight)) == [("missing_in_bank", ("L1",)), ("timing", ("B1",))]


def test_young_leftovers_are_timing_old_ones_are_missing_and_overdue() -> None:
    result = reconcile(
        [ledger("L-old", 100, date(2026, 11, 20)), ledger("L-new", 100, date(2026, 12, 3), direction="out")],
        [],
        [bank("B-old", 300, date(2026, 11, 1))],
        as_of=AS_OF,
    )
    by_id = {b.records[0].source_id: b for b in result.breaks}
    assert (by_id["L-old"].reason, by_id["L-old"].age_days, by_id["L-old"].overdue) == ("missing_in_bank", 14, True)
    assert (by_id["L-new"].reason, by_id["L-new"].age_days, by_id["L-new"].overdue) == ("timing", 1, False)
    assert (by_id["B-old"].reason, by_id["B-old"].age_days) == ("missing_in_ledger", 33)
    assert len(result.overdue_breaks) == 2


def test_an_explained_break_keeps_its_records_and_reason_but_is_never_overdue() -> None:
    result = reconcile(
        [ledger("L-old", 100, date(2026, 11, 20)), ledger("L-mis", 500, date(2026, 11, 2), refs=("inv-000123",))],
        [],
        [bank("B-old", 300, date(2026, 11, 1)), bank("B-mis", 600, date(2026, 11, 2), refs=("inv-000123",))],
        as_of=AS_OF,
    )
    assert len(result.overdue_breaks) == 3  # two missing, one amount mismatch holding L-mis and B-mis
    done = explain(result, {("bank", "B-old"): "interest (ops)", ("ledger", "L-mis"): "being checked (ops)"})
    by_id = {b.records[0].source_id: b for b in done.breaks}
    old = by_id["B-old"]
    assert (old.reason, old.age_days, old.overdue, old.explanation) == (
        "missing_in_ledger",
        33,
        False,
        "interest (ops)",
    )
    # one record of the mismatch is explained, not the other: still overdue, still unexplained
    [mismatch] = [b for b in done.breaks if b.reason == "amount_mismatch"]
    assert (mismatch.overdue, mismatch.explanation) == (True, "")
    assert {b.records[0].source_id for b in done.overdue_breaks} == {"L-old", mismatch.records[0].source_id}
    assert [b.records for b in done.explained_breaks] == [old.records]
    # explanations change nothing else: matches, totals and every break's records stay
    assert (done.matches, done.totals, [b.records for b in done.breaks]) == (
        result.matches,
        result.totals,
        [b.records for b in result.breaks],
    )
    assert explain(result, {}) is result


def test_a_repeated_line_with_a_matched_reference_is_a_duplicate() -> None:
    on = date(2026, 11, 2)
    result = reconcile(
        [ledger("L1", 900, on, refs=("inv-7",))],
        [],
        [bank("B1", 900, on, refs=("inv-7",)), bank("B2", 900, on + timedelta(days=1), refs=("inv-7",))],
        as_of=AS_OF,
    )
    assert len(result.matches) == 1
    assert reasons(result) == [("duplicate", ("B2",))]
    assert result.breaks[0].overdue


def test_processor_leg_and_the_three_way_payout() -> None:
    """Collections match the processor by attempt id; the processor's payout (net of fees), the ledger's
    payout entry (from the report) and the bank credit are one match."""
    on = date(2026, 11, 30)
    result = reconcile(
        [
            ledger("collect-1", 10_000, on, refs=("att-1",), counterpart="processor"),
            ledger("collect-2", 5_000, on, refs=("att-2",), counterpart="processor"),
            ledger("payout-entry", 14_180, date(2026, 12, 1), refs=("stripe:po_1", "po_1")),
        ],
        [
            processor("txn_1", 10_000, on, refs=("att-1", "pi_1")),
            processor("txn_3", 14_180, date(2026, 12, 1), refs=("po_1",), kind="payout"),
            processor("txn_4", 800, on, refs=("pi_9",)),
        ],
        [bank("B1", 14_180, date(2026, 12, 2), refs=("stripe", "po_1"))],
        as_of=date(2026, 12, 14),
    )
    groups = {tuple(r.source_id for r in m.records) for m in result.matches}
    assert groups == {("collect-1", "txn_1"), ("payout-entry", "B1", "txn_3")}
    assert sorted(reasons(result)) == [("missing_at_processor", ("collect-2",)), ("missing_in_ledger", ("txn_4",))]


def test_a_processor_payout_not_yet_ledgered_is_a_break_of_its_own() -> None:
    result = reconcile([], [processor("txn_p", 500, date(2026, 11, 2), refs=("po_2",), kind="payout")], [], as_of=AS_OF)
    assert reasons(result) == [("missing_in_ledger", ("txn_p",))]


def test_report_entries_ledger_fees_and_payouts_once_per_line() -> None:
    at = datetime(2026, 12, 1, 10, tzinfo=UTC)
    lines = [
        ProcessorLine("stripe", "txn_1", "charge", "pi_1", 10_000, 320, 9_680, "USD", at, at, "att-1"),
        ProcessorLine("stripe", "txn_2", "payout", "po_1", -9_680, 0, -9_680, "USD", at, at),
        ProcessorLine("stripe", "txn_3", "refund", "re_1", -1_000, 0, -1_000, "USD", at, at),
    ]
    entries, specs = report_entries(reversed(lines))
    assert [(e.kind, e.cause_id) for e in entries] == [(FEE_KIND, "stripe:txn_1"), (PAYOUT_KIND, "stripe:po_1")]
    fee, payout = entries
    assert {p.account: p.amount_units for p in fee.postings} == {
        "platform:processor_fees:stripe:USD": 320_000_000,
        "platform:processor_clearing:stripe:USD": -320_000_000,
    }
    assert {p.account: p.amount_units for p in payout.postings} == {
        "platform:cash_clearing:USD": 9_680_000_000,
        "platform:processor_clearing:stripe:USD": -9_680_000_000,
    }
    assert report_entries(lines)[0] == entries  # same lines, same entries (ids derived from the lines)
    assert {s.code for s in specs} >= {"platform:cash_clearing:USD", "platform:processor_fees:stripe:USD"}
    # the payout entry's cash side is a bank-leg ledger record carrying the payout id
    records = ledger_records(
        LedgerPosting(e.id, e.cause_id, e.kind, e.occurred_at, p.account, p.currency, p.amount_units)
        for e in entries
        for p in e.postings
    )
    assert [(r.counterpart, r.direction, r.amount_minor, r.references) for r in records] == [
        ("bank", "in", 9_680, ("po_1", "stripe:po_1"))
    ]
    payout_record = processor_record(lines[1])
    assert payout_record is not None and payout_record.direction == "in" and payout_record.kind == "payout"


def test_ledger_records_net_payouts_over_hold_and_release_and_keep_returns_apart() -> None:
    at = datetime(2026, 12, 1, tzinfo=UTC)
    transit = "platform:payouts_in_transit:USD"
    postings = [
        LedgerPosting("e1", "po-A", "payout.planned", at, transit, "USD", -5_000_000_000),
        LedgerPosting("e2", "po-A:1", "payout.held", at + timedelta(days=1), transit, "USD", 5_000_000_000),
        LedgerPosting("e3", "po-A:2", "payout.released", at + timedelta(days=2), transit, "USD", -5_000_000_000),
        LedgerPosting("e4", "po-B", "payout.planned", at, transit, "USD", -700_000_000),
        LedgerPosting("e5", "po-B:1", "payout.held", at, transit, "USD", 700_000_000),
        LedgerPosting("e6", "ret-A", "reversal:payout.planned", at + timedelta(days=5), transit, "USD", 5_000_000_000),
        LedgerPosting("e7", "x", "rating.accrual", at, "renter:r1:receivable:USD", "USD", 1),
    ]
    records = sorted(ledger_records(postings), key=lambda r: r.source_id)
    assert [(r.source_id, r.direction, r.amount_minor, r.on, r.references) for r in records] == [
        ("e6:" + transit, "in", 5_000, date(2026, 12, 6), ("ret-a",)),
        ("payout:po-A:" + transit, "out", 5_000, date(2026, 12, 3), ("po-a",)),
    ]


def test_bank_lines_become_records_only_when_booked() -> None:
    line = BankEntry(
        "h1",
        "f1",
        "acct",
        "USD",
        1_234,
        "credit",
        "booked",
        date(2026, 12, 1),
        None,
        "195",
        end_to_end_id="PO-9",
        description="STRIPE PAYOUT po_fake00000001 thanks",
    )
    record = bank_record(line)
    assert record is not None and record.direction == "in"
    assert record.references == ("po-9", "po_fake00000001")
    assert bank_record(BankEntry("h2", "f1", "acct", "USD", 5, "debit", "pending", date(2026, 12, 1), None)) is None
    assert normalize_references([" A ", None, "", "NOTPROVIDED", "a"]) == ("a",)


# ------------------------------------------------------------------------------------------ properties

_days = st.integers(min_value=0, max_value=40).map(lambda n: date(2026, 11, 1) + timedelta(days=n))
_amounts = st.sampled_from([100, 250, 999, 10_000, 12_345])
_refs = st.lists(st.sampled_from(["po-1", "po-2", "att-1", "att-2", "inv-9"]), max_size=2).map(tuple)


@st.composite
def _records(draw: st.DrawFn, source: str, n_max: int) -> list[Record]:
    n = draw(st.integers(0, n_max))
    out = []
    for i in range(n):
        out.append(
            Record(
                source=source,  # type: ignore[arg-type]
                source_id=f"{source}-{i}",
                amount_minor=draw(_amounts),
                currency=draw(st.sampled_from(["USD", "EUR"])),
                on=draw(_days),
                direction=draw(st.sampled_from(["in", "out"])),
                references=draw(_refs),
                counterpart=draw(st.sampled_from(["bank", "processor"])) if source == "ledger" else "bank",
                kind=draw(st.sampled_from(["charge", "payout"])) if source == "processor" else "",
            )
        )
    return out


@settings(max_examples=200, deadline=None)
@given(
    _records("ledger", 12),
    _records("processor", 8),
    _records("bank", 12),
    st.integers(0, 5),
    st.randoms(use_true_random=False),
)
def test_every_record_lands_once_and_shuffles_change_nothing(
    ledger_in: list[Record], processor_in: list[Record], bank_in: list[Record], window: int, rnd: random.Random
) -> None:
    result = reconcile(ledger_in, processor_in, bank_in, as_of=date(2026, 12, 20), window_days=window)
    placed = [r for m in result.matches for r in m.records] + [r for b in result.breaks for r in b.records]
    assert sorted(placed, key=lambda r: r.sort_key) == sorted(
        ledger_in + processor_in + bank_in, key=lambda r: r.sort_key
    )
    assert all(b.reason in REASONS for b in result.breaks)
    for m in result.matches:
        assert len({r.currency for r in m.records}) == 1 and len({r.amount_minor for r in m.records}) == 1
        assert len({r.source for r in m.records}) == len(m.records) >= 2
    for b in result.breaks:
        assert b.age_days == (date(2026, 12, 20) - min(r.on for r in b.records)).days
        assert not (b.overdue and b.reason == "timing")
    for items in (ledger_in, processor_in, bank_in):
        rnd.shuffle(items)
    again = reconcile(ledger_in, processor_in, bank_in, as_of=date(2026, 12, 20), window_days=window)
    assert again == result


@st.composite
def _matched_sets(draw: st.DrawFn) -> tuple[list[Record], list[Record], int]:
    """Ledger movements and the bank lines that confirm them: same amount, currency and direction, a
    date within the window; some share a unique reference, the others only the amount."""
    window = draw(st.integers(0, 4))
    ledger_side, bank_side = [], []
    for i in range(draw(st.integers(1, 25))):
        on = draw(_days)
        shift = draw(st.integers(-6, 6))
        seen = on + timedelta(days=shift)
        if business_days_between(on, seen) > window:
            seen = on
        amount, currency = draw(_amounts), draw(st.sampled_from(["USD", "EUR"]))
        direction = draw(st.sampled_from(["in", "out"]))
        refs = (f"ref-{i}",) if draw(st.booleans()) else ()
        ledger_side.append(Record("ledger", f"L{i}", amount, currency, on, direction, refs))  # type: ignore[arg-type]
        bank_side.append(Record("bank", f"B{i}", amount, currency, seen, direction, refs))  # type: ignore[arg-type]
    return ledger_side, bank_side, window


@settings(max_examples=200, deadline=None)
@given(_matched_sets(), st.randoms(use_true_random=False))
def test_a_matched_set_stays_matched_under_shuffles(
    matched: tuple[list[Record], list[Record], int], rnd: random.Random
) -> None:
    ledger_side, bank_side, window = matched
    as_of = date(2026, 12, 31)
    result = reconcile(ledger_side, [], bank_side, as_of=as_of, window_days=window)
    assert result.breaks == ()
    assert len(result.matches) == len(ledger_side)
    for _ in range(3):
        rnd.shuffle(ledger_side)
        rnd.shuffle(bank_side)
        assert reconcile(ledger_side, [], bank_side, as_of=as_of, window_days=window) == result


def test_a_dispute_matches_by_the_processor_dispute_id_in_the_entry_and_its_fee_is_not_posted_twice() -> None:
    at = datetime(2026, 12, 2, 9, tzinfo=UTC)
    clearing = "platform:processor_clearing:stripe:USD"
    text = "dispute dp_fake00000003 on INV-2026-000001 (fraudulent)"
    postings = [
        LedgerPosting("e-w", "evt-9", "payments.dispute_withdrawn", at, clearing, "USD", -10_000_000_000, text),
        LedgerPosting("e-f", "evt-9", "payments.dispute_fee", at, clearing, "USD", -1_500_000_000, text + ": fee"),
    ]
    line = ProcessorLine("stripe", "txn_9", "dispute", "dp_fake00000003", -10_000, 1_500, -11_500, "USD", at, at)
    processor_side = processor_record(line)
    assert processor_side is not None
    result = reconcile(ledger_records(postings), [processor_side], [], as_of=date(2026, 12, 20))
    assert [(m.how, [r.source_id for r in m.records]) for m in result.matches] == [
        ("reference", ["e-w:" + clearing, "stripe:txn_9"])
    ]
    assert result.breaks == ()
    assert report_entries([line]) == ([], [])  # payments posted the dispute fee from the webhook
