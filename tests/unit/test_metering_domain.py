"""Metering domain as billing stories (R2, R3, R7), plus properties against a brute-force model.

Expected numbers are worked out by hand from the rules in each story, or by the independent
per-minute model at the bottom (every generated time is a whole minute, so counting minutes and
multiplying by 60 is exact).
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from libs.errors import InvalidEventError
from libs.times import floor_hour, seconds_between
from schemas import inputs
from services.metering.domain import (
    AllocationState,
    HourUsage,
    LifecycleFact,
    ProvisionData,
    UsageDelta,
    affected_range,
    anomaly_id,
    correction_range,
    deferred_from,
    diff_usage,
    evaluate_allocation,
    fact_from_event,
    find_anomalies,
    find_fact_anomalies,
    sample_hour,
    usage_by_hour,
)

DAY = datetime(2026, 12, 1, tzinfo=UTC)
GPU_H100_X8 = ProvisionData("ctr-1", "renter-1", "sup-1", "srv-1", "H100", 8)
MIN = 60  # seconds in a minute, to write expectations as "minutes x 60"


def at(hhmm: str, day: datetime = DAY) -> datetime:
    hours, minutes = hhmm.split(":")
    return day + timedelta(hours=int(hours), minutes=int(minutes))


def provisioned(event_id: str, when: datetime, data: ProvisionData = GPU_H100_X8) -> LifecycleFact:
    return LifecycleFact(event_id, "provisioned", when, None, data, 0)


def decommissioned(event_id: str, when: datetime) -> LifecycleFact:
    return LifecycleFact(event_id, "decommissioned", when, None, None, 0)


def maintenance(
    window_id: str, start_id: str, start: datetime | None, end_id: str, end: datetime | None
) -> list[LifecycleFact]:
    facts = []
    if start is not None:
        facts.append(LifecycleFact(start_id, "maintenance_started", start, window_id, None, 0))
    if end is not None:
        facts.append(LifecycleFact(end_id, "maintenance_ended", end, window_id, None, 0))
    return facts


def outage(
    incident_id: str, start_id: str, start: datetime | None, end_id: str, end: datetime | None
) -> list[LifecycleFact]:
    facts = []
    if start is not None:
        facts.append(LifecycleFact(start_id, "outage_started", start, incident_id, None, 0))
    if end is not None:
        facts.append(LifecycleFact(end_id, "outage_ended", end, incident_id, None, 0))
    return facts


def arrive(*facts: LifecycleFact | list[LifecycleFact]) -> list[LifecycleFact]:
    """Facts in the order they reach metering (arrival_seq = position)."""
    flat: list[LifecycleFact] = []
    for item in facts:
        flat.extend(item if isinstance(item, list) else [item])
    return [dataclasses.replace(f, arrival_seq=i) for i, f in enumerate(flat)]


def usage(
    state: AllocationState,
    through: datetime,
    term_start: datetime = DAY - timedelta(days=30),
    term_end: datetime | None = None,
) -> dict[datetime, HourUsage]:
    return usage_by_hour(state, term_start, term_end, through)


def split_minutes(u: HourUsage) -> tuple[int, int, int]:
    """(billable, maintenance, outage) in minutes of the whole allocation (not per GPU)."""
    return (
        u.billable_gpu_seconds // (u.gpu_count * MIN),
        u.maintenance_gpu_seconds // (u.gpu_count * MIN),
        u.outage_gpu_seconds // (u.gpu_count * MIN),
    )


# --- stories -------------------------------------------------------------------------------------------


def test_an_outage_inside_a_maintenance_window_counts_once_as_maintenance() -> None:
    state = evaluate_allocation(
        arrive(
            provisioned("p", at("00:00")),
            maintenance("mw-1", "m1s", at("10:00"), "m1e", at("11:00")),
            outage("inc-1", "o1s", at("10:15"), "o1e", at("10:45")),
            # An outage that begins before a maintenance window and runs into it.
            outage("inc-2", "o2s", at("11:30"), "o2e", at("12:00")),
            maintenance("mw-2", "m2s", at("11:45"), "m2e", at("12:15")),
        )
    )
    hours = usage(state, through=at("13:00"))

    ten = hours[at("10:00")]
    assert (ten.billable_gpu_seconds, ten.maintenance_gpu_seconds, ten.outage_gpu_seconds) == (0, 8 * 3600, 0)
    assert ten.provisioned_gpu_seconds == 8 * 3600
    assert ten.billable_segments == ()
    # 11:00-11:30 billable, 11:30-11:45 outage, 11:45-12:00 maintenance (the outage inside it counts as it)
    assert split_minutes(hours[at("11:00")]) == (30, 15, 15)
    assert hours[at("11:00")].billable_segments == ((at("11:00"), at("11:30")),)
    assert split_minutes(hours[at("12:00")]) == (45, 15, 0)
    assert hours[at("12:00")].billable_segments == ((at("12:15"), at("13:00")),)


def test_overlapping_maintenance_windows_count_once() -> None:
    state = evaluate_allocation(
        arrive(
            provisioned("p", at("00:00")),
            maintenance("mw-1", "a1", at("10:00"), "a2", at("10:40")),
            maintenance("mw-2", "b1", at("10:20"), "b2", at("11:10")),
        )
    )
    hours = usage(state, through=at("12:00"))
    assert split_minutes(hours[at("10:00")]) == (0, 60, 0)
    assert split_minutes(hours[at("11:00")]) == (50, 10, 0)
    assert hours[at("11:00")].provisioned_gpu_seconds == 8 * 3600


@pytest.mark.parametrize("decommission_first", [True, False])
def test_an_8_gpu_allocation_decommissioned_before_its_provisioning_event_arrives(
    decommission_first: bool,
) -> None:
    prov, decom = provisioned("p", at("09:30")), decommissioned("d", at("11:15"))
    order = (decom, prov) if decommission_first else (prov, decom)
    facts = arrive(*order)

    if decommission_first:
        alone = evaluate_allocation(facts[:1])
        assert alone.held == ("d",), "a decommission without its provisioning waits"
        assert usage(alone, through=at("12:00")) == {}

    state = evaluate_allocation(facts)
    assert state.held == ()
    assert state.quarantined == ()
    hours = usage(state, through=at("13:00"))
    assert sorted(hours) == [at("09:00"), at("10:00"), at("11:00")]
    assert [h.billable_gpu_seconds for h in hours.values()] == [8 * 30 * MIN, 8 * 3600, 8 * 15 * MIN]
    assert all(h.gpu_count == 8 for h in hours.values())
    # Same facts in the other order: the very same state and usage.
    reversed_state = evaluate_allocation(arrive(*reversed(order)))
    assert reversed_state == state
    assert usage(reversed_state, through=at("13:00")) == hours


def test_an_open_maintenance_window_extends_to_now_and_continues_after() -> None:
    facts = arrive(provisioned("p", at("00:00")), maintenance("mw-1", "ms", at("10:30"), "me", None))
    state = evaluate_allocation(facts)
    first_tick = usage(state, through=at("12:00"))
    assert split_minutes(first_tick[at("10:00")]) == (30, 30, 0)
    assert split_minutes(first_tick[at("11:00")]) == (0, 60, 0)
    assert at("12:00") not in first_tick, "an hour is reported only once it is closed"

    second_tick = usage(state, through=at("14:00"))
    assert split_minutes(second_tick[at("12:00")]) == (0, 60, 0)
    assert split_minutes(second_tick[at("13:00")]) == (0, 60, 0)
    for hour, emitted in first_tick.items():
        assert second_tick[hour] == emitted, "closed hours do not move when time advances"

    # The end arrives late (13:20): only hour 13 changes; its correction is a signed delta.
    ended = evaluate_allocation(arrive(*facts, maintenance("mw-1", "", None, "me", at("13:20"))))
    assert affected_range(state, ended) == (at("13:00"), None)
    corrected = usage_by_hour(ended, DAY, None, at("14:00"), hours_from=at("13:00"))
    assert list(corrected) == [at("13:00")]
    assert split_minutes(corrected[at("13:00")]) == (40, 20, 0)
    assert diff_usage(second_tick[at("13:00")], corrected[at("13:00")]) == UsageDelta(
        delta_provisioned_gpu_seconds=0,
        delta_billable_gpu_seconds=8 * 40 * MIN,
        delta_maintenance_gpu_seconds=-8 * 40 * MIN,
        delta_outage_gpu_seconds=0,
    )


def test_an_end_with_no_start_is_held_and_applied_when_the_start_arrives() -> None:
    end_first = arrive(provisioned("p", at("00:00")), outage("inc-7", "os", None, "oe", at("10:45")))
    held = evaluate_allocation(end_first)
    assert held.held == ("oe",)
    assert held.outage_windows[0].start_at is None
    assert split_minutes(usage(held, through=at("11:00"))[at("10:00")]) == (60, 0, 0), "held: no effect"
    assert [a.kind for a in find_fact_anomalies(held)] == ["event_held"]

    applied = evaluate_allocation(arrive(*end_first, outage("inc-7", "os", at("10:15"), "", None)))
    assert applied.held == ()
    assert split_minutes(usage(applied, through=at("11:00"))[at("10:00")]) == (30, 0, 30)


@pytest.mark.parametrize("end_first", [True, False])
def test_a_window_that_ends_before_it_starts_quarantines_both_events(end_first: bool) -> None:
    start, end = maintenance("mw-9", "ms", at("11:00"), "me", at("10:00"))
    window_facts = [end, start] if end_first else [start, end]
    state = evaluate_allocation(arrive(provisioned("p", at("00:00")), *window_facts))
    assert len(state.quarantined) == 1
    assert state.quarantined[0].event_ids == ("me", "ms")
    assert "mw-9" in state.quarantined[0].reason
    assert "before it starts" in state.quarantined[0].reason
    assert state.maintenance_windows == ()
    assert state.held == ()
    hours = usage(state, through=at("12:00"))
    assert all(h.billable_gpu_seconds == h.provisioned_gpu_seconds for h in hours.values()), "no effect"
    anomalies = find_fact_anomalies(state)
    assert [(a.kind, a.event_ids) for a in anomalies] == [("event_quarantined", ("me", "ms"))]


def test_a_zero_length_window_is_valid_and_has_no_effect() -> None:
    state = evaluate_allocation(
        arrive(provisioned("p", at("00:00")), maintenance("mw", "ms", at("10:10"), "me", at("10:10")))
    )
    assert state.quarantined == ()
    assert split_minutes(usage(state, through=at("11:00"))[at("10:00")]) == (60, 0, 0)


@pytest.mark.parametrize("decommission_first", [True, False])
def test_a_decommission_before_the_provisioning_is_quarantined(decommission_first: bool) -> None:
    prov, decom = provisioned("p", at("10:00")), decommissioned("d", at("09:00"))
    state = evaluate_allocation(arrive(*((decom, prov) if decommission_first else (prov, decom))))
    assert [q.event_ids for q in state.quarantined] == [("d",)]
    assert "before the provisioning" in state.quarantined[0].reason
    assert state.decommissioned_at is None
    assert state.is_open
    assert state.held == ()
    hours = usage(state, through=at("12:00"))
    assert sorted(hours) == [at("10:00"), at("11:00")], "still provisioned: it bills on"


def test_a_second_provisioning_with_other_data_is_quarantined_and_the_same_data_again_is_not() -> None:
    other = dataclasses.replace(GPU_H100_X8, gpu_count=4)
    state = evaluate_allocation(
        arrive(
            provisioned("p-2", at("10:00")),
            provisioned("p-1", at("10:00")),  # same data, another id: no effect
            provisioned("p-3", at("10:00"), other),  # different data: quarantined
            provisioned("p-4", at("10:30")),  # same data, different time: quarantined
        )
    )
    assert [q.event_ids for q in state.quarantined] == [("p-3",), ("p-4",)]
    assert state.provision == GPU_H100_X8
    assert state.provision_event_id == "p-1", "the smallest id among equivalent facts"
    assert usage(state, through=at("11:00"))[at("10:00")].gpu_count == 8


def test_a_second_decommission_or_window_start_with_another_time_is_quarantined() -> None:
    state = evaluate_allocation(
        arrive(
            provisioned("p", at("08:00")),
            decommissioned("d-1", at("12:00")),
            decommissioned("d-0", at("12:00")),
            decommissioned("d-2", at("11:00")),
            outage("inc", "s-1", at("09:00"), "e-1", at("09:30")),
            outage("inc", "s-2", at("09:10"), "e-2", at("09:40")),
        )
    )
    assert [q.event_ids for q in state.quarantined] == [("d-2",), ("s-2",), ("e-2",)]
    assert state.decommissioned_at == at("12:00")
    assert state.decommission_event_id == "d-0"
    assert (state.outage_windows[0].start_at, state.outage_windows[0].end_at) == (at("09:00"), at("09:30"))


def test_maintenance_and_outage_ids_are_separate_name_spaces() -> None:
    state = evaluate_allocation(
        arrive(
            provisioned("p", at("00:00")),
            maintenance("w-1", "ms", at("10:00"), "me", at("10:20")),
            outage("w-1", "os", at("10:30"), "oe", at("10:40")),
        )
    )
    assert state.quarantined == ()
    assert split_minutes(usage(state, through=at("11:00"))[at("10:00")]) == (30, 20, 10)


def test_the_term_clips_usage_at_its_start_and_end_mid_hour() -> None:
    state = evaluate_allocation(arrive(provisioned("p", at("08:00"))))
    hours = usage(state, through=at("13:00"), term_start=at("09:20"), term_end=at("11:40"))
    assert sorted(hours) == [at("09:00"), at("10:00"), at("11:00")]
    assert hours[at("09:00")].billable_segments == ((at("09:20"), at("10:00")),)
    assert hours[at("09:00")].provisioned_gpu_seconds == 8 * 40 * MIN
    assert hours[at("10:00")].provisioned_gpu_seconds == 8 * 3600
    assert hours[at("11:00")].billable_segments == ((at("11:00"), at("11:40")),)


def test_hours_are_bucketed_across_a_day_and_year_boundary() -> None:
    new_year = datetime(2027, 1, 1, tzinfo=UTC)
    state = evaluate_allocation(
        arrive(
            provisioned("p", new_year - timedelta(minutes=30)),
            decommissioned("d", new_year + timedelta(minutes=45)),
            outage("inc", "os", new_year - timedelta(minutes=10), "oe", new_year + timedelta(minutes=10)),
        )
    )
    hours = usage(state, through=new_year + timedelta(hours=3))
    assert sorted(hours) == [new_year - timedelta(hours=1), new_year]
    assert split_minutes(hours[new_year - timedelta(hours=1)]) == (20, 0, 10)
    assert split_minutes(hours[new_year]) == (35, 0, 10)
    assert hours[new_year].billable_segments == ((new_year + timedelta(minutes=10), new_year + timedelta(minutes=45)),)


def test_no_provisioning_means_no_usage() -> None:
    state = evaluate_allocation(arrive(maintenance("mw", "ms", at("10:00"), "me", at("11:00"))))
    assert state.provision is None
    assert usage(state, through=at("23:00")) == {}


def test_the_same_fact_twice_has_no_effect() -> None:
    facts = arrive(provisioned("p", at("09:00")), outage("i", "os", at("09:10"), "oe", at("09:20")))
    twice = evaluate_allocation([*facts, *facts, dataclasses.replace(facts[1], arrival_seq=99)])
    assert twice == evaluate_allocation(facts)


# --- corrections -----------------------------------------------------------------------------------------


def hour_usage(
    billable_min: int,
    maintenance_min: int,
    outage_min: int,
    segments: tuple[tuple[str, str], ...],
    gpu_count: int = 2,
) -> HourUsage:
    return HourUsage(
        gpu_count=gpu_count,
        provisioned_gpu_seconds=gpu_count * MIN * (billable_min + maintenance_min + outage_min),
        billable_gpu_seconds=gpu_count * MIN * billable_min,
        maintenance_gpu_seconds=gpu_count * MIN * maintenance_min,
        outage_gpu_seconds=gpu_count * MIN * outage_min,
        billable_segments=tuple((at(a), at(b)) for a, b in segments),
    )


def test_a_correction_is_a_signed_delta_and_nothing_changed_is_none() -> None:
    before = hour_usage(60, 0, 0, (("10:00", "11:00"),))
    after = hour_usage(40, 0, 20, (("10:00", "10:40"),))
    assert diff_usage(before, before) is None
    assert diff_usage(None, None) is None
    assert diff_usage(before, after) == UsageDelta(0, -2 * 20 * MIN, 0, 2 * 20 * MIN)
    assert diff_usage(None, after) == UsageDelta(2 * 60 * MIN, 2 * 40 * MIN, 0, 2 * 20 * MIN)
    assert diff_usage(after, None) == UsageDelta(-2 * 60 * MIN, -2 * 40 * MIN, 0, -2 * 20 * MIN)


def test_a_moved_segment_with_the_same_totals_is_still_a_correction() -> None:
    early = hour_usage(40, 0, 20, (("10:00", "10:40"),))
    late = hour_usage(40, 0, 20, (("10:20", "11:00"),))
    assert diff_usage(early, late) == UsageDelta(0, 0, 0, 0)


def test_affected_range_is_none_when_nothing_changed_and_bounded_by_a_late_closed_outage() -> None:
    base = arrive(provisioned("p", at("00:00")), decommissioned("d", at("20:00")))
    old = evaluate_allocation(base)
    assert affected_range(old, evaluate_allocation([*base, dataclasses.replace(base[0], event_id="p-again")])) is None
    new = evaluate_allocation(arrive(*base, outage("inc", "os", at("10:50"), "oe", at("12:10"))))
    assert affected_range(old, new) == (at("10:00"), at("13:00"))


def test_the_hours_after_a_late_open_window_start_wait_for_its_end_or_the_next_close() -> None:
    base = arrive(provisioned("p", at("00:00")))
    before = evaluate_allocation(base)
    started = evaluate_allocation(arrive(*base, outage("inc", "os", at("10:50"), "oe", None)))
    assert deferred_from(started, at("20:00")) == at("10:00")
    assert deferred_from(started, at("10:50")) is None, "a start at or after the close is not late"
    assert deferred_from(before, at("20:00")) is None
    # The late start alone corrects nothing now: every hour it changes waits.
    assert correction_range(before, started, at("20:00")) is None
    # Its end, in a later batch, corrects the hours that waited, up to the close.
    ended = evaluate_allocation(arrive(*base, outage("inc", "os", at("10:50"), "oe", at("12:10"))))
    assert correction_range(started, ended, at("20:00")) == (at("10:00"), at("20:00"))
    # Both in one batch: exactly the hours the closed window touches.
    assert correction_range(before, ended, at("20:00")) == (at("10:00"), at("13:00"))
    # A closed late window before the open one is corrected now (the range is one span: hour 09:00,
    # unchanged, costs no record); the open one's hours still wait.
    both = evaluate_allocation(
        arrive(
            *base, maintenance("mw", "ms", at("08:10"), "me", at("08:20")), outage("inc", "os", at("10:50"), "oe", None)
        )
    )
    assert correction_range(before, both, at("20:00")) == (at("08:00"), at("10:00"))


def _emit(
    emitted: dict[datetime, HourUsage],
    state: AllocationState,
    hours_from: datetime | None,
    hours_to: datetime | None,
    through: datetime,
) -> int:
    """What ``handlers.reconcile_hours`` does, in memory: returns the records emitted."""
    current = usage_by_hour(state, DAY, None, through, hours_from=hours_from, hours_to=hours_to)
    low = hours_from or DAY
    high = min(hours_to or through, through)
    records = 0
    for hour in sorted(set(current) | {h for h in emitted if low <= h < high}):
        now = current.get(hour)
        if diff_usage(emitted.get(hour), now) is None or (hour not in emitted and now is None):
            continue
        emitted[hour] = now or HourUsage(8, 0, 0, 0, 0, ())
        records += 1
    return records


@settings(max_examples=200, deadline=None)
@given(
    start_m=st.integers(0, 20 * 60),
    length_m=st.integers(0, 6 * 60),
    kind=st.sampled_from(["outage", "maintenance"]),
    tick_between=st.booleans(),
    same_batch=st.booleans(),
)
def test_a_late_window_is_corrected_once_per_hour_it_changes_and_every_close_is_exact(
    start_m: int, length_m: int, kind: str, tick_between: bool, same_batch: bool
) -> None:
    """The shell's protocol (lifecycle batches correct ``correction_range``, the closer reconciles
    from ``deferred_from``), replayed in memory: after every close the emitted hours are the facts'
    usage; without a close between start and end, one record per hour whose usage changed."""
    start = DAY + timedelta(minutes=start_m)
    end = start + timedelta(minutes=length_m)
    window = outage if kind == "outage" else maintenance
    facts = arrive(provisioned("p", DAY))
    state = evaluate_allocation(facts)
    emitted: dict[datetime, HourUsage] = {}
    closed = at("23:00")
    _emit(emitted, state, None, None, closed)
    first = dict(emitted)
    batches = [window("w", "ws", start, "we", end)] if same_batch else [window("w", "ws", start, "", None)]
    if not same_batch:
        batches.append(window("w", "", None, "we", end))
    records = 0
    for n, batch in enumerate(batches):
        old, facts = state, arrive(*facts, batch)
        state = evaluate_allocation(facts)
        hours = correction_range(old, state, closed)
        if hours is not None:
            records += _emit(emitted, state, hours[0], hours[1], closed)
        if tick_between and n == 0 and not same_batch:
            waiting = deferred_from(state, closed)
            target = closed + timedelta(hours=2)
            records += _emit(emitted, state, min(filter(None, (closed, waiting))), None, target)
            assert emitted == usage(state, target, DAY), "a close with the window open bills it open (R2)"
            closed = target
    target = closed + timedelta(hours=1)
    waiting = deferred_from(state, closed)
    records += _emit(emitted, state, min(filter(None, (closed, waiting))), None, target)
    truth = usage(state, target, DAY)
    assert emitted == truth
    changed = sum(1 for hour, u in first.items() if truth[hour] != u)
    new_hours = sum(1 for hour in truth if hour not in first)
    if not tick_between or same_batch:
        assert records == changed + new_hours
    else:
        # The close in between bills the window open from its start's hour (R2); the end then
        # corrects those hours again: at most two records per such hour, plus the last close's hour.
        open_hours = seconds_between(floor_hour(start), at("23:00") + timedelta(hours=2)) // 3600
        assert changed + new_hours <= records <= 2 * open_hours + 1


# --- anomalies -------------------------------------------------------------------------------------------


def test_a_silent_open_allocation_and_a_long_open_window_are_reported() -> None:
    state = evaluate_allocation(
        arrive(
            provisioned("p", at("00:00")),
            maintenance("mw-1", "ms", at("01:00"), "", None),
            outage("inc-1", "os", at("02:00"), "oe", at("02:30")),
        )
    )
    quiet = find_anomalies(
        state, None, at("05:00"), stale_after=timedelta(hours=3), window_open_limit=timedelta(hours=4)
    )
    assert quiet == [], "last event 02:30, 2h30 of silence; window open 4h exactly is not longer than 4h"

    late = find_anomalies(
        state, None, at("06:00"), stale_after=timedelta(hours=3), window_open_limit=timedelta(hours=4)
    )
    assert [(a.kind, a.event_ids) for a in late] == [
        ("allocation_stale", ("p",)),
        ("window_open_too_long", ("ms",)),
    ]
    ids = {anomaly_id("alloc-1", a.kind, a.key) for a in late}
    assert len(ids) == 2
    assert ids == {
        anomaly_id("alloc-1", a.kind, a.key)
        for a in find_anomalies(state, None, at("07:00"), timedelta(hours=3), timedelta(hours=4))
    }, "the same anomaly keeps its id on later ticks, so it is emitted once"

    decommissioned_state = evaluate_allocation(arrive(provisioned("p", at("00:00")), decommissioned("d", at("01:00"))))
    assert find_anomalies(decommissioned_state, None, at("23:00"), timedelta(hours=1), timedelta(hours=1)) == []


# --- events and samples ------------------------------------------------------------------------------------


def test_facts_come_from_lifecycle_events() -> None:
    data = inputs.AllocationProvisioned.model_validate(
        {
            "allocation_id": "a-1",
            "contract_id": "c-1",
            "renter_id": "r-1",
            "supplier_id": "s-1",
            "server_id": "srv-1",
            "gpu_model": "H100",
            "gpu_count": 8,
        }
    )
    fact = fact_from_event("gpu.allocation.provisioned", "e-1", at("10:00") + timedelta(microseconds=7), data, 3)
    assert fact == LifecycleFact(
        "e-1", "provisioned", at("10:00"), None, ProvisionData("c-1", "r-1", "s-1", "srv-1", "H100", 8), 3
    )

    incident = inputs.OutageEvent.model_validate({"allocation_id": "a-1", "incident_id": "inc-5"})
    assert fact_from_event("gpu.outage.ended", "e-2", at("11:00"), incident, 4).window_id == "inc-5"
    window = inputs.MaintenanceWindowEvent.model_validate({"allocation_id": "a-1", "window_id": "mw-5"})
    started = fact_from_event("gpu.maintenance.started", "e-3", at("11:00"), window, 5)
    assert (started.kind, started.window_id) == ("maintenance_started", "mw-5")

    with pytest.raises(InvalidEventError):
        fact_from_event("gpu.outage.started", "e-4", at("11:00"), window, 6)
    with pytest.raises(InvalidEventError):
        fact_from_event("gpu.allocation.reassigned", "e-5", at("11:00"), window, 7)


def test_a_sample_belongs_to_the_hour_it_was_measured_in() -> None:
    assert sample_hour(at("10:59") + timedelta(seconds=59)) == at("10:00")
    assert sample_hour(at("11:00")) == at("11:00")
    with pytest.raises(ValueError, match="UTC"):
        sample_hour(datetime(2026, 12, 1, 10, 0))


# --- properties against a brute-force per-minute model ---------------------------------------------

BASE = datetime(2026, 12, 31, 20, 0, tzinfo=UTC)  # the generated day crosses midnight and new year
SPAN_MIN = 600  # generated event times lie in [BASE, BASE + 10 h]


@dataclasses.dataclass(frozen=True)
class Story:
    """A valid lifecycle stream of one allocation in whole minutes after BASE."""

    provisioned_min: int
    decommissioned_min: int | None
    gpu_count: int
    windows: tuple[tuple[str, int | None, int | None], ...]
    """(kind, start, end); start None = only the end arrives (held, no effect)."""
    term_start_min: int
    term_end_min: int | None
    through_min: int


def minute(offset: int) -> datetime:
    return BASE + timedelta(minutes=offset)


@st.composite
def stories(draw: st.DrawFn) -> Story:
    provisioned_min = draw(st.integers(0, 300))
    decommissioned_min = draw(st.none() | st.integers(provisioned_min, SPAN_MIN))
    windows = []
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["maintenance", "outage"]))
        start = draw(st.none() | st.integers(0, SPAN_MIN))
        if start is None:
            end: int | None = draw(st.integers(0, SPAN_MIN))
        else:
            end = draw(st.none() | st.integers(start, SPAN_MIN))
        windows.append((kind, start, end))
    term_start_min = draw(st.integers(-60, 300))
    term_end_min = draw(st.none() | st.integers(term_start_min + 1, SPAN_MIN + 60))
    through_min = draw(st.integers(0, SPAN_MIN + 120))
    return Story(
        provisioned_min,
        decommissioned_min,
        draw(st.integers(1, 8)),
        tuple(windows),
        term_start_min,
        term_end_min,
        through_min,
    )


def facts_of(story: Story) -> list[LifecycleFact]:
    data = dataclasses.replace(GPU_H100_X8, gpu_count=story.gpu_count)
    facts = [provisioned("prov", minute(story.provisioned_min), data)]
    if story.decommissioned_min is not None:
        facts.append(decommissioned("decom", minute(story.decommissioned_min)))
    for i, (kind, start, end) in enumerate(story.windows):
        build = maintenance if kind == "maintenance" else outage
        facts.extend(
            build(
                f"w{i}",
                f"w{i}-start",
                None if start is None else minute(start),
                f"w{i}-end",
                None if end is None else minute(end),
            )
        )
    return facts


@st.composite
def with_resends(draw: st.DrawFn, facts: list[LifecycleFact]) -> list[LifecycleFact]:
    """The facts plus re-deliveries (same id) and equivalent re-sends (another id, same content)."""
    extra = []
    for fact in draw(st.lists(st.sampled_from(facts), max_size=4)):
        same_id = draw(st.booleans())
        extra.append(fact if same_id else dataclasses.replace(fact, event_id=fact.event_id + "-resent"))
    return [*facts, *extra]


@st.composite
def shuffled(draw: st.DrawFn, facts: list[LifecycleFact]) -> list[LifecycleFact]:
    """One arrival order of the facts (arrival_seq = position)."""
    order = draw(st.permutations(facts))
    return [dataclasses.replace(f, arrival_seq=i) for i, f in enumerate(order)]


@st.composite
def arrivals(draw: st.DrawFn, facts: list[LifecycleFact]) -> list[LifecycleFact]:
    return draw(shuffled(draw(with_resends(facts))))


def brute_force(
    story: Story,
) -> dict[datetime, tuple[int, int, int, int, tuple[tuple[datetime, datetime], ...]]]:
    """Per hour: (provisioned, billable, maintenance, outage) GPU-seconds and billable segments,
    by classifying every minute on its own (R2, R7)."""

    def inside(m: int, start: int | None, end: int | None) -> bool:
        return start is not None and start <= m and (end is None or m < end)

    closed_until = (story.through_min // 60) * 60  # BASE is on an hour: hours are 60-minute blocks
    minutes_by_hour: dict[int, dict[str, list[int]]] = {}
    for m in range(-120, closed_until):
        in_term = story.term_start_min <= m and (story.term_end_min is None or m < story.term_end_min)
        if not (in_term and inside(m, story.provisioned_min, story.decommissioned_min)):
            continue
        in_maintenance = any(inside(m, s, e) for k, s, e in story.windows if k == "maintenance")
        in_outage = any(inside(m, s, e) for k, s, e in story.windows if k == "outage")
        label = "maintenance" if in_maintenance else "outage" if in_outage else "billable"
        minutes_by_hour.setdefault(m // 60, {}).setdefault(label, []).append(m)
    expected = {}
    for hour, labelled in minutes_by_hour.items():
        billable = labelled.get("billable", [])
        segments: list[list[int]] = []
        for m in billable:  # ascending: runs of consecutive minutes are segments
            if segments and segments[-1][1] == m:
                segments[-1][1] = m + 1
            else:
                segments.append([m, m + 1])
        gpu_s = {k: story.gpu_count * 60 * len(v) for k, v in labelled.items()}
        expected[minute(hour * 60)] = (
            sum(gpu_s.values()),
            gpu_s.get("billable", 0),
            gpu_s.get("maintenance", 0),
            gpu_s.get("outage", 0),
            tuple((minute(a), minute(b)) for a, b in segments),
        )
    return expected


def usage_of(story: Story, state: AllocationState, through_min: int | None = None) -> dict[datetime, HourUsage]:
    term_end = None if story.term_end_min is None else minute(story.term_end_min)
    through = minute(story.through_min if through_min is None else through_min)
    return usage_by_hour(state, minute(story.term_start_min), term_end, through)


@settings(max_examples=250, deadline=None)
@given(data=st.data(), story=stories())
def test_usage_matches_a_per_minute_count_whatever_the_arrival_order(data: st.DataObject, story: Story) -> None:
    facts = data.draw(with_resends(facts_of(story)))
    first = evaluate_allocation(data.draw(shuffled(facts)))
    second = evaluate_allocation(data.draw(shuffled(facts)))
    assert first.quarantined == ()
    assert first == second, "a valid stream's state depends only on its facts"

    actual = usage_of(story, first)
    assert actual == usage_of(story, second)
    got = {
        h: (
            u.provisioned_gpu_seconds,
            u.billable_gpu_seconds,
            u.maintenance_gpu_seconds,
            u.outage_gpu_seconds,
            u.billable_segments,
        )
        for h, u in actual.items()
    }
    assert got == brute_force(story)
    for u in actual.values():
        assert u.provisioned_gpu_seconds == u.billable_gpu_seconds + u.maintenance_gpu_seconds + u.outage_gpu_seconds
        assert u.gpu_count == story.gpu_count


@settings(max_examples=100, deadline=None)
@given(data=st.data(), story=stories())
def test_closed_hours_do_not_change_as_time_advances_and_hour_ranges_slice(data: st.DataObject, story: Story) -> None:
    state = evaluate_allocation(data.draw(arrivals(facts_of(story))))
    now = usage_of(story, state)
    later = usage_of(story, state, through_min=story.through_min + data.draw(st.integers(0, 600)))
    assert {h: later[h] for h in now} == now
    assert all(h in now for h in later if h + timedelta(hours=1) <= minute(story.through_min))

    start = minute(data.draw(st.integers(-120, SPAN_MIN)))
    stop = start + timedelta(minutes=data.draw(st.integers(0, 600)))
    term_end = None if story.term_end_min is None else minute(story.term_end_min)
    sliced = usage_by_hour(
        state,
        minute(story.term_start_min),
        term_end,
        minute(story.through_min),
        hours_from=start,
        hours_to=stop,
    )
    # An hour h is asked for when start <= h < stop; hours are whole, so compare against hour starts.
    assert sliced == {h: u for h, u in now.items() if start <= h < stop}


@settings(max_examples=150, deadline=None)
@given(data=st.data(), story=stories())
def test_hours_outside_the_affected_range_keep_their_usage(data: st.DataObject, story: Story) -> None:
    arrived = data.draw(arrivals(facts_of(story)))
    known = data.draw(st.integers(0, len(arrived)))
    old, new = evaluate_allocation(arrived[:known]), evaluate_allocation(arrived)
    old_usage, new_usage = usage_of(story, old), usage_of(story, new)
    changed = {h for h in old_usage.keys() | new_usage.keys() if old_usage.get(h) != new_usage.get(h)}
    span = affected_range(old, new)
    if span is None:
        assert changed == set()
    else:
        hours_from, hours_to = span
        assert all(hours_from <= h and (hours_to is None or h < hours_to) for h in changed)
        assert hours_from.minute == 0
        assert hours_to is None or hours_to.minute == 0
    for h in changed:
        assert diff_usage(old_usage.get(h), new_usage.get(h)) is not None
