"""NACHA writer and reader (R16): round trip, controls, determinism, and an independent field check.

The checker below is written from the NACHA record layouts (Operating Rules, Appendix Three), not
from services/payouts/rails/nacha.py: it slices each record at the published 1-based positions.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.payouts.rails.nacha import (
    REPRESENTABLE_RETURN_CODES,
    NachaOriginator,
    NachaRail,
    entry_hash,
    file_id_modifier,
    read_nacha,
)
from services.payouts.rails.port import (
    BankFileError,
    IbanAccount,
    InvalidBatchError,
    Payee,
    PayoutBatch,
    PayoutInstruction,
    UsBankAccount,
    with_payout_ids,
)

ORIGINATOR = NachaOriginator(
    immediate_destination="021000021",
    immediate_destination_name="JPMORGAN CHASE",
    immediate_origin="1123456789",
    immediate_origin_name="SETTLE MARKETPLACE",
    company_name="SETTLE",
    company_id="1123456789",
    odfi_routing="021000021",
    entry_description="PAYOUT",
)
ROUTINGS = ["011000015", "021000021", "026009593", "111000025", "121000248", "322271627"]
T = datetime(2026, 12, 7, 21, 30, tzinfo=UTC)

# (name, first position, last position) per record type, 1-based inclusive, from the published layouts.
LAYOUT: dict[str, list[tuple[str, int, int]]] = {
    "1": [
        ("record_type", 1, 1),
        ("priority", 2, 3),
        ("destination", 4, 13),
        ("origin", 14, 23),
        ("date", 24, 29),
        ("time", 30, 33),
        ("modifier", 34, 34),
        ("record_size", 35, 37),
        ("blocking", 38, 39),
        ("format", 40, 40),
        ("destination_name", 41, 63),
        ("origin_name", 64, 86),
        ("reference", 87, 94),
    ],
    "5": [
        ("record_type", 1, 1),
        ("service_class", 2, 4),
        ("company_name", 5, 20),
        ("discretionary", 21, 40),
        ("company_id", 41, 50),
        ("sec", 51, 53),
        ("description", 54, 63),
        ("descriptive_date", 64, 69),
        ("effective", 70, 75),
        ("settlement", 76, 78),
        ("status", 79, 79),
        ("odfi", 80, 87),
        ("batch", 88, 94),
    ],
    "6": [
        ("record_type", 1, 1),
        ("transaction_code", 2, 3),
        ("rdfi", 4, 11),
        ("check_digit", 12, 12),
        ("account", 13, 29),
        ("amount", 30, 39),
        ("individual_id", 40, 54),
        ("name", 55, 76),
        ("discretionary", 77, 78),
        ("addenda_indicator", 79, 79),
        ("trace", 80, 94),
    ],
    "7": [
        ("record_type", 1, 1),
        ("addenda_type", 2, 3),
        ("info", 4, 83),
        ("sequence", 84, 87),
        ("entry_sequence", 88, 94),
    ],
    "8": [
        ("record_type", 1, 1),
        ("service_class", 2, 4),
        ("count", 5, 10),
        ("hash", 11, 20),
        ("debit", 21, 32),
        ("credit", 33, 44),
        ("company_id", 45, 54),
        ("mac", 55, 73),
        ("reserved", 74, 79),
        ("odfi", 80, 87),
        ("batch", 88, 94),
    ],
    "9": [
        ("record_type", 1, 1),
        ("batches", 2, 7),
        ("blocks", 8, 13),
        ("count", 14, 21),
        ("hash", 22, 31),
        ("debit", 32, 43),
        ("credit", 44, 55),
        ("reserved", 56, 94),
    ],
}


def fields(record: str) -> dict[str, str]:
    return {name: record[a - 1 : b] for name, a, b in LAYOUT[record[0]]}


def place(values: dict[tuple[int, int], str]) -> str:
    """A record built by hand: each value at its published positions (space-filled elsewhere)."""
    chars = [" "] * 94
    for (a, b), value in values.items():
        assert len(value) == b - a + 1, (a, b, value)
        chars[a - 1 : b] = value
    return "".join(chars)


def payout(n: int, amount: int, *, day: int = 8, kind: str = "business", reference: str = "") -> PayoutInstruction:
    return PayoutInstruction(
        payout_id=f"po-{n:05d}",
        payee_name=f"Supplier {n}",
        account=UsBankAccount(ROUTINGS[n % len(ROUTINGS)], f"{1000 + n}", "savings" if n % 4 == 0 else "checking"),
        amount_minor=amount,
        currency="USD",
        effective_date=date(2026, 12, day),
        reference=reference,
        payee_kind=kind,  # type: ignore[arg-type]
    )


def build(*instructions: PayoutInstruction, sequence: int = 0) -> bytes:
    return NachaRail(ORIGINATOR).build(PayoutBatch("b-1", T, tuple(instructions), sequence)).content


def test_every_field_at_its_published_position() -> None:
    content = build(
        payout(1, 123_45, kind="individual", reference="Payout for November 2026"),
        payout(2, 99_00),
        payout(3, 1, day=9),
    ).decode("ascii")
    lines = content.split("\n")
    assert lines[-1] == ""  # one line end after each record, the last included
    records = lines[:-1]
    assert len(records) % 10 == 0 and all(len(r) == 94 for r in records)
    header = fields(records[0])
    assert header == {
        "record_type": "1",
        "priority": "01",
        "destination": " 021000021",
        "origin": "1123456789",
        "date": "261207",
        "time": "2130",
        "modifier": "A",
        "record_size": "094",
        "blocking": "10",
        "format": "1",
        "destination_name": "JPMORGAN CHASE".ljust(23),
        "origin_name": "SETTLE MARKETPLACE".ljust(23),
        "reference": " " * 8,
    }
    kinds = "".join(r[0] for r in records)
    # batches: (Dec 8, CCD) payout 2, (Dec 8, PPD) payout 1 + addenda, (Dec 9, CCD) payout 3; then padding
    assert kinds == "1" + "568" + "5678" + "568" + "9" + "9" * 8
    b1, e2, c1, b2, e1, a1, c2, b3, e3, c3, control = (fields(r) for r in records[1:12])
    assert (b1["sec"], b1["effective"], b1["batch"], b1["service_class"]) == ("CCD", "261208", "0000001", "220")
    assert (b2["sec"], b2["effective"], b2["batch"]) == ("PPD", "261208", "0000002")
    assert (b3["sec"], b3["effective"], b3["batch"]) == ("CCD", "261209", "0000003")
    assert b1["company_id"] == "1123456789" and b1["odfi"] == "02100002" and b1["status"] == "1"
    assert e1 == {
        "record_type": "6",
        "transaction_code": "22",
        "rdfi": "02100002",
        "check_digit": "1",
        "account": "1001".ljust(17),
        "amount": "0000012345",
        "individual_id": "PO-00001".ljust(15),
        "name": "SUPPLIER 1".ljust(22),
        "discretionary": "  ",
        "addenda_indicator": "1",
        "trace": "021000020000002",
    }
    assert a1 == {
        "record_type": "7",
        "addenda_type": "05",
        "info": "PAYOUT FOR NOVEMBER 2026".ljust(80),
        "sequence": "0001",
        "entry_sequence": "0000002",
    }
    assert e2["addenda_indicator"] == "0" and e2["amount"] == "0000009900" and e2["trace"] == "021000020000001"
    assert e3["trace"] == "021000020000003" and e3["rdfi"] == "11100002"
    assert c1 == {
        "record_type": "8",
        "service_class": "220",
        "count": "000001",
        "hash": "0002600959",
        "debit": "0" * 12,
        "credit": "000000009900",
        "company_id": "1123456789",
        "mac": " " * 19,
        "reserved": " " * 6,
        "odfi": "02100002",
        "batch": "0000001",
    }
    assert c2["count"] == "000002" and c2["hash"] == "0002100002" and c2["credit"] == "000000012345"
    assert c3["hash"] == "0011100002" and c3["credit"] == "000000000001"
    assert control == {
        "record_type": "9",
        "batches": "000003",
        "blocks": "000002",
        "count": "00000004",
        "hash": f"{2600959 + 2100002 + 11100002:010d}",
        "debit": "0" * 12,
        "credit": f"{123_45 + 99_00 + 1:012d}",
        "reserved": " " * 39,
    }


def test_a_nine_digit_immediate_origin_is_right_justified() -> None:
    originator = replace(ORIGINATOR, immediate_origin="021000021")
    built = NachaRail(originator).build(PayoutBatch("b-1", T, (payout(1, 100),)))
    assert fields(built.content.decode()[:94])["origin"] == " 021000021"


def test_balanced_file_with_an_offset_debit_per_batch() -> None:
    offset = UsBankAccount("021000021", "998877", "checking")
    rail = NachaRail(replace(ORIGINATOR, offset_account=offset))
    items = (payout(1, 100_00, kind="individual"), payout(2, 50_00), payout(3, 25_00))
    records = rail.build(PayoutBatch("b-1", T, items)).content.decode().split("\n")[:-1]
    # CCD: payouts 2 and 3 + offset; PPD: payout 1 + offset; file control; padding to 20 records
    assert "".join(r[0] for r in records) == "1" + "56668" + "5668" + "9" + "9" * 9
    headers = [fields(r) for r in records if r[0] == "5"]
    controls = [fields(r) for r in records if r[0] == "8"]
    assert {h["service_class"] for h in headers} | {c["service_class"] for c in controls} == {"200"}
    offsets = [fields(r) for r in records if r[0] == "6" and r[1:3] == "27"]
    assert [(o["rdfi"], o["account"].strip(), int(o["amount"]), o["individual_id"].strip()) for o in offsets] == [
        ("02100002", "998877", 75_00, "OFFSET"),
        ("02100002", "998877", 100_00, "OFFSET"),
    ]
    assert [(int(c["debit"]), int(c["credit"])) for c in controls] == [(75_00, 75_00), (100_00, 100_00)]
    control = fields(next(r for r in records if r[0] == "9"))
    assert int(control["debit"]) == int(control["credit"]) == 175_00
    assert int(control["hash"]) == (2600959 + 11100002 + 2100002) + (2100002 + 2100002)
    parsed = read_nacha("\n".join(records).encode())
    assert parsed.total_debit_minor == parsed.total_credit_minor == 175_00


def test_savings_accounts_get_transaction_code_32() -> None:
    record = build(payout(4, 500)).decode().split("\n")[2]
    assert fields(record)["transaction_code"] == "32"


def test_rebuild_is_byte_identical_whatever_the_input_order() -> None:
    items = [payout(n, 100 + n, day=8 + n % 3, kind="individual" if n % 2 else "business") for n in range(40)]
    first = NachaRail(ORIGINATOR).build(PayoutBatch("b-1", T, tuple(items)))
    again = NachaRail(ORIGINATOR).build(PayoutBatch("b-1", T, tuple(reversed(items))))
    assert first.content == again.content and first.file_id == again.file_id and first.digest == again.digest
    assert first.references == again.references
    assert first.file_id == "ach-1123456789-20261207-A"
    # a second file the same day differs in its header's modifier only
    second = NachaRail(ORIGINATOR).build(PayoutBatch("b-2", T, tuple(items), sequence=1))
    assert second.content[33:34] == b"B" and second.content[34:] == first.content[34:]
    assert second.file_id.endswith("-B")


def test_trace_numbers_continue_from_first_trace_and_wrap_after_seven_digits() -> None:
    offset = UsBankAccount("021000021", "998877", "checking")
    rail = NachaRail(replace(ORIGINATOR, offset_account=offset))
    items = (payout(1, 100_00, kind="individual"), payout(2, 50_00), payout(3, 25_00))
    built = rail.build(PayoutBatch("b-1", T, items, first_trace=41))
    traces = [fields(r)["trace"] for r in built.content.decode().split("\n") if r[:1] == "6"]
    # CCD 2, 3, its offset; PPD 1, its offset: one sequence through the file, from 41
    assert [t[8:] for t in traces] == [f"{n:07d}" for n in range(41, 46)]
    assert sorted(built.references.values()) == [traces[0], traces[1], traces[3]]
    addenda = [r for r in built.content.decode().split("\n") if r[:1] == "7"]
    assert {a[87:94] for a in addenda} <= {t[8:] for t in traces}  # an addenda names its entry's sequence
    wrapped = rail.build(PayoutBatch("b-2", T, items, first_trace=9_999_998))
    assert [fields(r)["trace"][8:] for r in wrapped.content.decode().split("\n") if r[:1] == "6"] == [
        "9999998",
        "9999999",
        "0000001",
        "0000002",
        "0000003",
    ]
    read_nacha(wrapped.content)  # still a valid file
    with pytest.raises(InvalidBatchError):
        PayoutBatch("b-3", T, items, first_trace=0)


def test_creation_time_is_written_in_utc() -> None:
    local = T.astimezone(__import__("zoneinfo").ZoneInfo("America/New_York"))
    built = NachaRail(ORIGINATOR).build(PayoutBatch("b-1", local, (payout(1, 100),)))
    assert built.content == build(payout(1, 100))


def test_file_id_modifiers_and_their_limit() -> None:
    assert [file_id_modifier(n) for n in (0, 25, 26, 35)] == ["A", "Z", "0", "9"]
    with pytest.raises(InvalidBatchError):
        file_id_modifier(36)


def test_entry_hash_keeps_rightmost_ten_digits() -> None:
    assert entry_hash(["99999999"] * 200) == (99999999 * 200) % 10**10
    assert entry_hash(["99999999"] * 200) < 10**10


def test_refusals() -> None:
    rail = NachaRail(ORIGINATOR)
    with pytest.raises(InvalidBatchError, match="USD only"):
        rail.build(PayoutBatch("b", T, (replace(payout(1, 100), currency="EUR"),)))
    with pytest.raises(InvalidBatchError, match="10 digits"):
        rail.build(PayoutBatch("b", T, (payout(1, 10_000_000_000),)))
    bad = replace(payout(1, 100), account=UsBankAccount("021000022", "1"))
    with pytest.raises(InvalidBatchError, match="routing number"):
        rail.build(PayoutBatch("b", T, (bad,)))
    with pytest.raises(InvalidBatchError, match="twice"):
        PayoutBatch("b", T, (payout(1, 100), payout(1, 200)))
    with pytest.raises(InvalidBatchError, match="positive"):
        payout(1, 0)
    assert rail.validate(Payee("X", IbanAccount("DE89370400440532013000"))) == [
        "ACH pays US bank accounts (routing + account number) only"
    ]
    assert rail.validate(Payee("X", UsBankAccount("021000021", "12345678"))) == []


def test_round_trip_through_our_reader() -> None:
    items = [payout(n, 1_000 * n + 7, day=8 + n % 2, reference=f"ref {n}" if n % 3 else "") for n in range(1, 30)]
    built = NachaRail(ORIGINATOR, line_ending="\r\n").build(PayoutBatch("b-1", T, tuple(items)))
    parsed = read_nacha(built.content)
    assert parsed.created == T.replace(second=0) and parsed.file_id_modifier == "A"
    assert parsed.immediate_destination == "021000021" and parsed.immediate_origin == "1123456789"
    assert parsed.total_credit_minor == sum(i.amount_minor for i in items) == built.total_minor
    assert parsed.total_debit_minor == 0
    entries = {e.trace_number: e for b in parsed.batches for e in b.entries}
    for item in items:
        entry = entries[built.references[item.payout_id]]
        assert entry.amount_minor == item.amount_minor
        assert isinstance(item.account, UsBankAccount)
        assert entry.routing_number == item.account.routing_number
        assert entry.account_number == item.account.account_number
        assert [a.raw for a in entry.addenda] == ([item.reference.upper()] if item.reference else [])
    assert {(b.effective_date, b.sec_code) for b in parsed.batches} == {
        (date(2026, 12, 8), "CCD"),
        (date(2026, 12, 9), "CCD"),
    }


def test_long_payout_ids_get_a_stable_digest_as_individual_id() -> None:
    item = replace(payout(1, 100), payout_id="payout-0b8c6f3e-2c5d-4a57-9d0e-4f6f0d1c2b3a")
    entry = read_nacha(build(item)).batches[0].entries[0]
    assert (
        len(entry.individual_id) == 15
        and entry.individual_id == read_nacha(build(item)).batches[0].entries[0].individual_id
    )


amounts = st.integers(min_value=1, max_value=99_999_999_99)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(amounts, st.integers(0, 5), st.sampled_from(["individual", "business"]), st.integers(0, 3)),
        min_size=1,
        max_size=40,
    ),
    st.integers(0, 35),
)
def test_property_controls_add_up(rows: list[tuple[int, int, str, int]], sequence: int) -> None:
    items = tuple(
        PayoutInstruction(
            payout_id=f"p{n}",
            payee_name="Ünïcode Näme & Co",
            account=UsBankAccount(ROUTINGS[r], str(n + 1)),
            amount_minor=amount,
            currency="USD",
            effective_date=date(2026, 12, 8) + timedelta(days=d),
            reference="x" * (n % 90),
            payee_kind=kind,  # type: ignore[arg-type]
        )
        for n, (amount, r, kind, d) in enumerate(rows)
    )
    built = NachaRail(ORIGINATOR).build(PayoutBatch("b", T, items, sequence))
    records = built.content.decode("ascii").split("\n")[:-1]
    assert all(len(r) == 94 for r in records) and len(records) % 10 == 0
    control = fields(next(r for r in records if r[0] == "9"))
    assert int(control["credit"]) == sum(i.amount_minor for i in items)
    assert int(control["hash"]) == sum(int(ROUTINGS[r][:8]) for _, r, _, _ in rows) % 10**10
    assert int(control["count"]) == len(items) + sum(1 for i in items if i.reference)
    assert int(control["blocks"]) * 10 == len(records)
    assert int(control["batches"]) == len({(i.effective_date, i.payee_kind) for i in items})
    # batch controls sum to the file control
    batch_controls = [fields(r) for r in records if r[0] == "8"]
    assert sum(int(c["credit"]) for c in batch_controls) == int(control["credit"])
    parsed = read_nacha(built.content)
    assert parsed.total_credit_minor == built.total_minor and len(parsed.batches) == int(control["batches"])
    assert sorted(e.amount_minor for b in parsed.batches for e in b.entries) == sorted(i.amount_minor for i in items)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 10**8), st.integers(0, 5), st.integers(0, 2)), min_size=1, max_size=40))
def test_property_offset_files_balance(rows: list[tuple[int, int, int]]) -> None:
    items = tuple(
        PayoutInstruction(
            f"p{n}", "N", UsBankAccount(ROUTINGS[r], "1"), a, "USD", date(2026, 12, 8) + timedelta(days=d), ""
        )
        for n, (a, r, d) in enumerate(rows)
    )
    offset = UsBankAccount("322271627", "42", "savings")
    built = NachaRail(replace(ORIGINATOR, offset_account=offset)).build(PayoutBatch("b", T, items))
    parsed = read_nacha(built.content)
    assert all(b.total_debit_minor == b.total_credit_minor for b in parsed.batches)
    assert parsed.total_debit_minor == parsed.total_credit_minor == sum(a for a, _, _ in rows)
    assert (
        parsed.entry_hash == (sum(int(ROUTINGS[r][:8]) for _, r, _ in rows) + 32227162 * len(parsed.batches)) % 10**10
    )
    assert all(b.entries[-1].transaction_code == "37" and b.service_class_code == "200" for b in parsed.batches)


def return_file() -> bytes:
    """A bank's return/NOC file built by hand from the published layouts (not by our writer):
    one batch of two returned credits (R01, R03), one COR batch with a NOC (C01)."""
    header = place(
        {
            (1, 1): "1",
            (2, 3): "01",
            (4, 13): " 021000021",
            (14, 23): " 011000015",
            (24, 29): "261210",
            (30, 33): "0600",
            (34, 34): "A",
            (35, 37): "094",
            (38, 39): "10",
            (40, 40): "1",
            (41, 63): "SETTLE MARKETPLACE".ljust(23),
            (64, 86): "RETURNING BANK".ljust(23),
        }
    )

    def batch_header(sec: str, number: int) -> str:
        return place(
            {
                (1, 1): "5",
                (2, 4): "220",
                (5, 20): "SETTLE".ljust(16),
                (41, 50): "1123456789",
                (51, 53): sec,
                (54, 63): "PAYOUT".ljust(10),
                (70, 75): "261208",
                (79, 79): "1",
                (80, 87): "01100001",
                (88, 94): f"{number:07d}",
            }
        )

    def entry(code: str, routing: str, account: str, amount: int, trace: str) -> str:
        return place(
            {
                (1, 1): "6",
                (2, 3): code,
                (4, 11): routing[:8],
                (12, 12): routing[8],
                (13, 29): account.ljust(17),
                (30, 39): f"{amount:010d}",
                (40, 54): "PO-00001".ljust(15),
                (55, 76): "SUPPLIER".ljust(22),
                (79, 79): "1",
                (80, 94): trace,
            }
        )

    def addenda(kind: str, code: str, original_trace: str, data: str, trace: str) -> str:
        return place(
            {
                (1, 1): "7",
                (2, 3): kind,
                (4, 6): code,
                (7, 21): original_trace,
                (28, 35): "01100001",
                (36, 64): data.ljust(29),
                (80, 94): trace,
            }
        )

    def batch_control(count: int, hash_: int, credit: int, number: int) -> str:
        return place(
            {
                (1, 1): "8",
                (2, 4): "220",
                (5, 10): f"{count:06d}",
                (11, 20): f"{hash_:010d}",
                (21, 32): "0" * 12,
                (33, 44): f"{credit:012d}",
                (45, 54): "1123456789",
                (80, 87): "01100001",
                (88, 94): f"{number:07d}",
            }
        )

    records = [
        header,
        batch_header("CCD", 1),
        entry("21", "011000015", "1001", 12_345, "011000010000001"),
        addenda("99", "R01", "021000020000002", "", "011000010000001"),
        entry("31", "026009593", "1004", 500, "011000010000002"),
        addenda("99", "R03", "021000020000007", "", "011000010000002"),
        batch_control(4, 1100001 + 2600959, 12_845, 1),
        batch_header("COR", 2),
        entry("21", "011000015", "1001", 0, "011000010000003"),
        addenda("98", "C01", "021000020000009", "99887766", "011000010000003"),
        batch_control(2, 1100001, 0, 2),
        place(
            {
                (1, 1): "9",
                (2, 7): "000002",
                (8, 13): "000002",
                (14, 21): "00000006",
                (22, 31): f"{1100001 + 2600959 + 1100001:010d}",
                (32, 43): "0" * 12,
                (44, 55): f"{12_845:012d}",
            }
        ),
    ]
    records += ["9" * 94] * (20 - len(records))
    return ("\r\n".join(records)).encode("ascii")  # CRLF, and no line end after the last record


def test_reads_returns_and_notifications_of_change() -> None:
    found = NachaRail(ORIGINATOR).parse_returns(return_file())
    assert [(r.kind, r.code, r.rail_reference, r.amount_minor) for r in found] == [
        ("return", "R01", "021000020000002", 12_345),
        ("return", "R03", "021000020000007", 500),
        ("notification_of_change", "C01", "021000020000009", None),
    ]
    assert found[0].reason == "insufficient funds"
    # the trace numbers we sent resolve to payout ids through the built file's references
    resolved = with_payout_ids(found, {"po-00002": "021000020000002", "po-00009": "021000020000009"})
    assert [r.payout_id for r in resolved] == ["po-00002", None, "po-00009"]
    assert found[2].corrected_data == "99887766"
    assert "R01" in REPRESENTABLE_RETURN_CODES and "R03" not in REPRESENTABLE_RETURN_CODES


def test_reader_refuses_bad_controls_and_lengths() -> None:
    good = return_file().decode()
    tampered = good.replace(f"{12_845:012d}", f"{12_846:012d}", 1)  # the first batch control's credit total
    with pytest.raises(BankFileError, match="batch 1 control: total credit"):
        read_nacha(tampered.encode())
    with pytest.raises(BankFileError, match="characters"):
        read_nacha(good.replace("SUPPLIER ", "SUPPLIER", 1).encode())
    with pytest.raises(BankFileError, match="file header"):
        read_nacha(b"")
    no_control = "\r\n".join(line for line in good.split("\r\n") if not line.startswith("9000"))
    with pytest.raises(BankFileError, match="no file control"):
        read_nacha(no_control.encode())
    with pytest.raises(BankFileError, match="ASCII"):
        read_nacha(good.replace("SUPPLIER", "SUPPLIÉR", 1).encode())
