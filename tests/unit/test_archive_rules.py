"""Pure rules of the input archive and of the state comparison."""

from __future__ import annotations

from datetime import UTC, datetime

from libs.messaging.archive import MonthPartition, dated, expired_months, month_of, next_month, partition_name
from services.operations.compare import Snapshot, differences, naming_corrected_invoice


def months(*pairs: tuple[int, int]) -> list[MonthPartition]:
    return [
        MonthPartition(partition_name(datetime(y, m, 1, tzinfo=UTC)), datetime(y, m, 1, tzinfo=UTC), 0)
        for y, m in pairs
    ]


def test_retention_drops_only_months_that_ended_before_the_kept_window() -> None:
    kept = months((2025, 11), (2025, 12), (2026, 1), (2026, 2), (2026, 3))
    now = datetime(2026, 3, 31, 23, 59, tzinfo=UTC)
    # 2 months kept: January (2 months before March) onwards; Nov and Dec 2025 go.
    assert [m.name for m in expired_months(kept, now, 2)] == ["input_archive_y2025m11", "input_archive_y2025m12"]
    assert [m.name for m in expired_months(kept, now, 3)] == ["input_archive_y2025m11"]
    assert expired_months(kept, now, 0) == []
    assert [m.name for m in expired_months(kept, now, 1)] == [m.name for m in kept[:3]]


def test_months_and_undated_times() -> None:
    assert next_month(datetime(2026, 12, 1, tzinfo=UTC)) == datetime(2027, 1, 1, tzinfo=UTC)
    assert month_of(datetime(2026, 7, 31, 23, tzinfo=UTC)) == datetime(2026, 7, 1, tzinfo=UTC)
    assert dated(datetime(1970, 1, 1, tzinfo=UTC)) is None
    assert dated(datetime(2999, 1, 1, tzinfo=UTC)) is None
    assert dated(None) is None
    at = datetime(2026, 5, 5, tzinfo=UTC)
    assert dated(at) == at


def test_differences_name_every_kind_and_ignore_document_numbers_only_per_document() -> None:
    a, b = Snapshot(), Snapshot()
    a.invoices["c1|2026-12-01"] = {"total": "10.00"}
    b.invoices["c1|2026-12-01"] = {"total": "10.00"}
    a.numbers["INV-2026"] = ["INV-2026-000001"]
    b.numbers["INV-2026"] = ["INV-2026-000001"]
    assert differences(a, b) == []
    b.invoices["c1|2026-12-01"] = {"total": "10.01"}
    b.balances["renter:c1:receivable"] = 5
    b.entries["ev-1|charge"] = "{}"
    b.numbers["INV-2026"] = ["INV-2026-000002"]
    found = differences(a, b)
    assert found[0] == "invoice c1|2026-12-01: total: 10.00 → 10.01"
    assert any(line.startswith("numbers INV-2026") for line in found)
    assert "balance renter:c1:receivable: only in rebuilt: 5" in found
    assert "entry ev-1|charge: only in rebuilt: {}" in found
    assert a.entries_digest() != b.entries_digest()


def test_a_credit_note_names_the_invoice_it_corrects_by_contract_and_period_not_by_number() -> None:
    calm = {"INV-2027-000026": "c5|2026-12-01", "INV-2027-000010": "c1|2026-12-01"}
    killed = {"INV-2027-000010": "c5|2026-12-01", "INV-2027-000026": "c1|2026-12-01"}  # closed in another order
    note = {"contract_id": "c5", "total": "-3.00"}
    a = naming_corrected_invoice({**note, "invoice_number": "INV-2027-000026"}, calm)
    b = naming_corrected_invoice({**note, "invoice_number": "INV-2027-000010"}, killed)
    assert a == b == {**note, "invoice_number": "c5|2026-12-01"}
    other = naming_corrected_invoice({**note, "invoice_number": "INV-2027-000026"}, killed)
    assert other["invoice_number"] == "c1|2026-12-01" != a["invoice_number"]  # another invoice still differs
    lost = naming_corrected_invoice({**note, "invoice_number": "INV-2027-000099"}, calm)
    assert lost["invoice_number"] == "unknown invoice INV-2027-000099"
