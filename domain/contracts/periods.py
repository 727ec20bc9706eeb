"""R1: billing periods. All times UTC; a period runs from the anchor day 00:00 to the same day of
the next month 00:00; the first period starts at the boundary on or before ``starts_at``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


def _anchor(year: int, month: int, day: int) -> datetime:
    return datetime(year, month, day, tzinfo=UTC)


def _next_month(year: int, month: int) -> tuple[int, int]:
    return (year + 1, 1) if month == 12 else (year, month + 1)


def _prev_month(year: int, month: int) -> tuple[int, int]:
    return (year - 1, 12) if month == 1 else (year, month - 1)


def period_containing(anchor_day: int, at: datetime) -> tuple[datetime, datetime]:
    """The billing period ``[start, end)`` that contains the instant ``at``."""
    assert 1 <= anchor_day <= 28, "anchor days are 1..28 so every month has one"
    assert at.tzinfo is not None
    start = _anchor(at.year, at.month, anchor_day)
    if at < start:
        start = _anchor(*_prev_month(at.year, at.month), anchor_day)
    end = _anchor(*_next_month(start.year, start.month), anchor_day)
    assert start <= at < end
    return start, end


def next_period(anchor_day: int, period_start: datetime) -> tuple[datetime, datetime]:
    _, end = period_containing(anchor_day, period_start)
    return period_containing(anchor_day, end)


def periods_overlapping(
    anchor_day: int, term_start: datetime, term_end: datetime | None, until: datetime
) -> list[tuple[datetime, datetime]]:
    """Every period that overlaps the term ``[term_start, term_end)`` and ends at or before ``until``.

    These are the periods that get an invoice by time ``until`` (R1: even all-zero ones; the last
    period keeps its normal end).
    """
    periods: list[tuple[datetime, datetime]] = []
    if term_end is not None and term_end <= term_start:
        return periods  # an empty term (terminated at or before its start) overlaps no period
    start, end = period_containing(anchor_day, term_start)
    while end <= until and (term_end is None or start < term_end):
        periods.append((start, end))
        start, end = period_containing(anchor_day, end)
    return periods


def last_second(period_end: datetime) -> datetime:
    """ "At the period's end" means at the last second inside the period (R1)."""
    return period_end - timedelta(seconds=1)
