"""Metering's pure domain: allocation state from lifecycle facts, usage per UTC hour (R2, R3, R7).

Why over 500 lines: one state model (facts → intervals → hours) serves R2, R3 and R7; its parts are
small pure functions that share private types, and splitting them would scatter one rule over files.

No I/O, no clock, no logging: time comes from arguments ("now" is the clock tick's ``through``).

Flow
----
1. :func:`fact_from_event` turns one ``infra.lifecycle.v1`` event into a :class:`LifecycleFact`.
2. :func:`evaluate_allocation` folds *every* known fact of one allocation into an
   :class:`AllocationState` (provisioning, decommission, maintenance and outage windows, what is
   quarantined and what is held).
3. :func:`usage_by_hour` cuts the state into closed UTC hours inside the contract term
   (:class:`HourUsage`: provisioned = billable + maintenance + outage, in GPU-seconds).
4. After late events, :func:`affected_range` says which hours can have changed,
   :func:`correction_range` which of them are corrected now (the hours after the start of a
   window still open wait for its end or the next close: :func:`deferred_from`), and
   :func:`diff_usage` gives the signed correction of one hour (R3).
5. :func:`find_anomalies` / :func:`find_fact_anomalies` list what a human should look at;
   :func:`anomaly_id` makes each one's id deterministic so the shell emits it once.

Time model
----------
All times are tz-aware UTC with whole seconds. Intervals are half-open ``[start, end)``.
Provisioned time is ``[provisioned_at, decommissioned_at)``; without a decommission, and for a
window without an end, the interval is open: it extends to ``through`` (the clock tick), and since
only hours ending at or before ``through`` are ever reported, an open interval is the same as one
that never ends. Consequence: the usage of a closed hour does not depend on ``through``, only on
the facts known — it changes only when a fact arrives, which is what a correction (R3) reports.

Usage of one instant inside the provisioned interval and the term is exactly one of:
maintenance (inside any maintenance window), outage (inside an outage window and no maintenance
window: R7, "outage seconds inside a maintenance window count as maintenance"), billable (neither).
Overlapping windows of the same kind count once (their union, R2).

Fold rules (R2, in this module's words)
---------------------------------------
Facts are folded in ``arrival_seq`` order (ties: ``event_id``). A fact whose ``event_id`` was seen
already has no effect (the first arrival of an id is kept). A fact that is *equivalent* to an
accepted one (another id, same time and, for a provisioning, same data) has no effect either and
is not quarantined; among equivalent facts the state names the smallest ``event_id``, so that for
a valid stream the whole state — ids included — is a function of the fact set, not of arrival
order. Arrival order matters only to decide which of two contradicting facts is "the second".

Quarantined facts have no effect and are listed with a reason a human can act on:

* Q1 (R2) A window that ends before it starts (``end_at < start_at``): both of its events, whichever
  arrived first. ``end_at == start_at`` is a valid empty window (no effect on usage).
* Q2 (R2) A second provisioning with different data than the accepted one: the later-arriving one.
  *Extension*: a different provisioning **time** with the same data counts as different data.
* Q3 (R2) A decommission before the accepted provisioning time: the decommission, whichever
  arrived first. ``decommissioned_at == provisioned_at`` is valid (nothing is provisioned).
* Q4 (extension) A second decommission with a different time than the accepted one: the
  later-arriving one.
* Q5 (extension) A second start, or a second end, of the same window with a different time than
  the accepted one: the later-arriving one.

Extensions beyond R2, decided here:

* E1 Maintenance ``window_id`` and outage ``incident_id`` are separate name spaces: a maintenance
  window and an outage with the same id are two windows.
* E2 Quarantined facts leave the fold: a fact arriving later is compared only with what is still
  accepted. E.g. after Q1 removed a window's start and end, a new start for that window id opens
  it again; after Q3 removed a decommission, a later valid decommission is accepted. Conversely a
  fact quarantined by Q4/Q5 stays quarantined even if the fact it contradicted is later
  quarantined itself (the stream contradicts itself twice; a human sorts it out).
* E3 Held (R2, "an end with no start yet is held"): a window end whose start has not arrived and
  a decommission whose provisioning has not arrived. Held facts take part in the contradiction
  checks as soon as their start arrives (Q1, Q3) and otherwise have no effect on usage until then.
* E4 Windows are not clipped or checked against the provisioned interval: a window outside
  ``[provisioned_at, decommissioned_at)`` or outside the term simply has no effect there.
* E5 A fact with the same ``event_id`` as an earlier one but different content is ignored like
  any duplicate (the shell's inbox refuses it earlier as an idempotency conflict).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Literal

from libs import limits
from libs.errors import InvalidEventError
from libs.ids import derive_id
from libs.times import ceil_hour, floor_hour, format_utc, seconds_between
from schemas import inputs

FactKind = Literal[
    "provisioned",
    "decommissioned",
    "maintenance_started",
    "maintenance_ended",
    "outage_started",
    "outage_ended",
]
WindowKind = Literal["maintenance", "outage"]
AnomalyKind = Literal["allocation_stale", "window_open_too_long", "event_quarantined", "event_held"]

EVENT_KINDS: dict[str, FactKind] = {
    "gpu.allocation.provisioned": "provisioned",
    "gpu.allocation.decommissioned": "decommissioned",
    "gpu.maintenance.started": "maintenance_started",
    "gpu.maintenance.ended": "maintenance_ended",
    "gpu.outage.started": "outage_started",
    "gpu.outage.ended": "outage_ended",
}
"""``infra.lifecycle.v1`` event type → fact kind."""

_WINDOW_FACTS: dict[FactKind, tuple[WindowKind, bool]] = {
    "maintenance_started": ("maintenance", True),
    "maintenance_ended": ("maintenance", False),
    "outage_started": ("outage", True),
    "outage_ended": ("outage", False),
}
"""Window fact kind → (window kind, is a start)."""

MAX_ANOMALY_EVENT_IDS = 16
"""Event ids one anomaly names (``MeteringAnomaly.event_ids`` holds at most 16)."""

HOUR_S = 3600
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_FOREVER_S = 2**62
"""Epoch seconds standing for "no end yet" (open intervals); never turned back into a datetime."""


def _check_instant(value: datetime, name: str) -> None:
    if value.tzinfo is None or value.utcoffset() != timedelta(0):
        raise ValueError(f"{name} must be a tz-aware UTC datetime, got {value!r}")
    if value.microsecond != 0:
        raise ValueError(f"{name} must have whole seconds (billing resolution), got {value!r}")


def _epoch_s(value: datetime) -> int:
    return seconds_between(_EPOCH, value)


def _instant(epoch_s: int) -> datetime:
    assert epoch_s < _FOREVER_S, "an open end is never turned into a datetime"
    return _EPOCH + timedelta(seconds=epoch_s)


def _clip_text(text: str) -> str:
    """Reasons travel as ``Text`` (bounded); long ids must not make an event invalid."""
    if len(text) <= limits.MAX_TEXT_CHARS:
        return text
    return text[: limits.MAX_TEXT_CHARS - 1] + "…"


# --- facts ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProvisionData:
    """What a ``gpu.allocation.provisioned`` event says besides its time."""

    contract_id: str
    renter_id: str
    supplier_id: str
    server_id: str
    gpu_model: str
    gpu_count: int

    def __post_init__(self) -> None:
        if not 0 < self.gpu_count <= limits.MAX_GPU_COUNT:
            raise ValueError(f"gpu_count must be in 1..{limits.MAX_GPU_COUNT}, got {self.gpu_count}")


@dataclass(frozen=True)
class LifecycleFact:
    """One lifecycle event of one allocation, as the fold needs it.

    ``at`` is the event's ``time`` (when it happened); ``arrival_seq`` is the order in which the
    shell received it (only used to decide which of two contradicting facts is the second).
    ``window_id`` is the maintenance ``window_id`` or the outage ``incident_id`` (None otherwise);
    ``provision`` is set exactly for ``provisioned`` facts.
    """

    event_id: str
    kind: FactKind
    at: datetime
    window_id: str | None
    provision: ProvisionData | None
    arrival_seq: int

    def __post_init__(self) -> None:
        _check_instant(self.at, "at")
        if not self.event_id:
            raise ValueError("event_id must not be empty")
        if self.kind not in EVENT_KINDS.values():
            raise ValueError(f"unknown fact kind {self.kind!r}")
        if (self.provision is not None) != (self.kind == "provisioned"):
            raise ValueError("provision data is given exactly for 'provisioned' facts")
        if (self.window_id is not None) != (self.kind in _WINDOW_FACTS):
            raise ValueError("window_id is given exactly for maintenance and outage facts")


LifecycleData = (
    inputs.AllocationProvisioned | inputs.AllocationDecommissioned | inputs.MaintenanceWindowEvent | inputs.OutageEvent
)


def fact_from_event(
    event_type: str, event_id: str, at: datetime, data: LifecycleData, arrival_seq: int
) -> LifecycleFact:
    """The fact of one ``infra.lifecycle.v1`` event (``at`` = the envelope's ``time``).

    Sub-second parts of ``at`` are floored (billing resolution is one second, as the schemas do).
    Raises :class:`InvalidEventError` for an unknown type or ``data`` of the wrong model.
    """
    kind = EVENT_KINDS.get(event_type)
    if kind is None:
        raise InvalidEventError(f"{event_type!r} is not an infra.lifecycle.v1 event type")
    if at.tzinfo is None or at.utcoffset() != timedelta(0):
        raise InvalidEventError(f"event time {at!r} is not UTC")
    at = at.astimezone(UTC).replace(microsecond=0)
    wrong = InvalidEventError(f"{event_type!r} does not carry {type(data).__name__}")
    if kind == "provisioned":
        if not isinstance(data, inputs.AllocationProvisioned):
            raise wrong
        provision = ProvisionData(
            contract_id=data.contract_id,
            renter_id=data.renter_id,
            supplier_id=data.supplier_id,
            server_id=data.server_id,
            gpu_model=data.gpu_model,
            gpu_count=data.gpu_count,
        )
        return LifecycleFact(event_id, kind, at, None, provision, arrival_seq)
    if kind == "decommissioned":
        if not isinstance(data, inputs.AllocationDecommissioned):
            raise wrong
        return LifecycleFact(event_id, kind, at, None, None, arrival_seq)
    if kind in ("maintenance_started", "maintenance_ended"):
        if not isinstance(data, inputs.MaintenanceWindowEvent):
            raise wrong
        return LifecycleFact(event_id, kind, at, data.window_id, None, arrival_seq)
    if not isinstance(data, inputs.OutageEvent):
        raise wrong
    return LifecycleFact(event_id, kind, at, data.incident_id, None, arrival_seq)


# --- state ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """A maintenance window or an outage, from its accepted start and end.

    ``start_at is None``: only the end has arrived (held, no effect). ``end_at is None``: open,
    extends to "now". Event ids are the smallest id among equivalent facts.
    """

    window_id: str
    kind: WindowKind
    start_at: datetime | None
    end_at: datetime | None
    start_event_id: str | None
    end_event_id: str | None

    def __post_init__(self) -> None:
        assert (self.start_at is None) == (self.start_event_id is None)
        assert (self.end_at is None) == (self.end_event_id is None)
        assert self.start_at is not None or self.end_at is not None, "a window has a start or an end"
        if self.start_at is not None and self.end_at is not None:
            assert self.start_at <= self.end_at, "contradicting windows are quarantined (Q1)"


@dataclass(frozen=True)
class Quarantine:
    """Facts that contradict each other or the accepted state; they have no effect."""

    event_ids: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class AllocationState:
    """Everything the facts of one allocation say, after the fold (see the module docstring).

    ``provision``/``provisioned_at``/``provision_event_id`` are all set or all None, as are
    ``decommissioned_at``/``decommission_event_id``. A decommission without a provisioning is held
    (its id is in ``held``). ``latest_event_at`` is the latest ``at`` of any fact, quarantined ones
    included (a sign of life for the staleness check).
    """

    provision: ProvisionData | None
    provisioned_at: datetime | None
    provision_event_id: str | None
    decommissioned_at: datetime | None
    decommission_event_id: str | None
    maintenance_windows: tuple[Window, ...]
    outage_windows: tuple[Window, ...]
    quarantined: tuple[Quarantine, ...]
    held: tuple[str, ...]
    latest_event_at: datetime | None

    def __post_init__(self) -> None:
        assert (self.provision is None) == (self.provisioned_at is None) == (self.provision_event_id is None)
        assert (self.decommissioned_at is None) == (self.decommission_event_id is None)
        if self.provisioned_at is not None and self.decommissioned_at is not None:
            assert self.provisioned_at <= self.decommissioned_at, "Q3 quarantines the decommission"
        assert all(w.kind == "maintenance" for w in self.maintenance_windows)
        assert all(w.kind == "outage" for w in self.outage_windows)

    @property
    def is_open(self) -> bool:
        """Provisioned and not decommissioned: it accrues time as the clock advances."""
        return self.provision is not None and self.decommissioned_at is None


@dataclass
class _Slot:
    """An accepted value and every event id that asserted it (equivalent facts)."""

    at: datetime
    event_ids: list[str]
    provision: ProvisionData | None = None

    @property
    def event_id(self) -> str:
        return min(self.event_ids)

    def same_as(self, fact: LifecycleFact) -> bool:
        return self.at == fact.at and self.provision == fact.provision


@dataclass
class _Fold:
    provision: _Slot | None = None
    decommission: _Slot | None = None
    starts: dict[tuple[WindowKind, str], _Slot] = field(default_factory=dict)
    ends: dict[tuple[WindowKind, str], _Slot] = field(default_factory=dict)
    quarantined: list[Quarantine] = field(default_factory=list)

    def quarantine(self, event_ids: Iterable[str], reason: str) -> None:
        self.quarantined.append(Quarantine(tuple(sorted(event_ids)), _clip_text(reason)))

    def add(self, fact: LifecycleFact) -> None:
        if fact.kind == "provisioned":
            self._add_provisioning(fact)
        elif fact.kind == "decommissioned":
            self._add_decommission(fact)
        else:
            self._add_window_fact(fact)

    def _add_provisioning(self, fact: LifecycleFact) -> None:
        current = self.provision
        if current is not None:
            if current.same_as(fact):
                current.event_ids.append(fact.event_id)
            else:
                self.quarantine(
                    [fact.event_id],
                    f"second provisioning at {format_utc(fact.at)} with different data or time than the "
                    f"accepted one ({current.event_id} at {format_utc(current.at)}); if it is the "
                    "correct one, correct the allocation manually",
                )
            return
        decommission = self.decommission
        if decommission is not None and decommission.at < fact.at:
            # Q3 whichever arrived first: the held decommission goes, the provisioning stays.
            self.quarantine(
                decommission.event_ids,
                f"decommissioned at {format_utc(decommission.at)}, before the provisioning at "
                f"{format_utc(fact.at)}; re-send the decommission with its correct time",
            )
            self.decommission = None
        self.provision = _Slot(fact.at, [fact.event_id], fact.provision)

    def _add_decommission(self, fact: LifecycleFact) -> None:
        current = self.decommission
        if current is not None:
            if current.same_as(fact):
                current.event_ids.append(fact.event_id)
            else:
                self.quarantine(
                    [fact.event_id],
                    f"second decommission at {format_utc(fact.at)}, the accepted one "
                    f"({current.event_id}) says {format_utc(current.at)}; correct the allocation manually",
                )
            return
        provision = self.provision
        if provision is not None and fact.at < provision.at:
            self.quarantine(
                [fact.event_id],
                f"decommissioned at {format_utc(fact.at)}, before the provisioning at "
                f"{format_utc(provision.at)}; re-send the decommission with its correct time",
            )
            return
        self.decommission = _Slot(fact.at, [fact.event_id])

    def _add_window_fact(self, fact: LifecycleFact) -> None:
        assert fact.window_id is not None
        window_kind, is_start = _WINDOW_FACTS[fact.kind]
        key = (window_kind, fact.window_id)
        own, other = (self.starts, self.ends) if is_start else (self.ends, self.starts)
        edge = "start" if is_start else "end"
        label = f"{window_kind} window {fact.window_id!r}"
        current = own.get(key)
        if current is not None:
            if current.same_as(fact):
                current.event_ids.append(fact.event_id)
            else:
                self.quarantine(
                    [fact.event_id],
                    f"second {edge} of {label} at {format_utc(fact.at)}, the accepted one "
                    f"({current.event_id}) says {format_utc(current.at)}; correct the window manually",
                )
            return
        counterpart = other.get(key)
        if counterpart is not None:
            start_at, end_at = (fact.at, counterpart.at) if is_start else (counterpart.at, fact.at)
            if end_at < start_at:
                # Q1: both events of the window, whichever arrived first.
                self.quarantine(
                    [fact.event_id, *counterpart.event_ids],
                    f"{label} ends at {format_utc(end_at)}, before it starts at {format_utc(start_at)}; "
                    "re-send its start and end with correct times",
                )
                del other[key]
                return
        own[key] = _Slot(fact.at, [fact.event_id])

    def to_state(self, latest_event_at: datetime | None) -> AllocationState:
        held: list[str] = []
        provision, decommission = self.provision, self.decommission
        if decommission is not None and provision is None:
            held.extend(decommission.event_ids)
        windows: dict[WindowKind, list[Window]] = {"maintenance": [], "outage": []}
        for key in sorted(self.starts.keys() | self.ends.keys()):
            window_kind, window_id = key
            start, end = self.starts.get(key), self.ends.get(key)
            if start is None and end is not None:
                held.extend(end.event_ids)
            windows[window_kind].append(
                Window(
                    window_id=window_id,
                    kind=window_kind,
                    start_at=start.at if start else None,
                    end_at=end.at if end else None,
                    start_event_id=start.event_id if start else None,
                    end_event_id=end.event_id if end else None,
                )
            )
        return AllocationState(
            provision=provision.provision if provision else None,
            provisioned_at=provision.at if provision else None,
            provision_event_id=provision.event_id if provision else None,
            decommissioned_at=decommission.at if decommission else None,
            decommission_event_id=decommission.event_id if decommission else None,
            maintenance_windows=tuple(windows["maintenance"]),
            outage_windows=tuple(windows["outage"]),
            quarantined=tuple(self.quarantined),
            held=tuple(sorted(held)),
            latest_event_at=latest_event_at,
        )


def evaluate_allocation(facts: Sequence[LifecycleFact]) -> AllocationState:
    """Fold all known facts of one allocation into its state (R2; rules Q1-Q5, E1-E5 above).

    Facts may be given in any order and more than once; they are folded by ``arrival_seq``
    (ties: ``event_id``). For a stream without contradictions the result is a function of the set
    of facts alone. Quarantines are listed in the order they were found.
    """
    seen: set[str] = set()
    fold = _Fold()
    latest_event_at: datetime | None = None
    for fact in sorted(facts, key=lambda f: (f.arrival_seq, f.event_id)):
        if fact.event_id in seen:
            continue  # R2: an id already seen has no effect (E5: whatever its content)
        seen.add(fact.event_id)
        latest_event_at = fact.at if latest_event_at is None else max(latest_event_at, fact.at)
        fold.add(fact)
    return fold.to_state(latest_event_at)


# --- intervals (epoch seconds, half-open, sorted, disjoint) -------------------------------------------

Span = tuple[int, int]


def _merge_spans(spans: Iterable[Span]) -> list[Span]:
    """Union of spans: sorted, disjoint, touching spans joined, empty ones dropped."""
    merged: list[Span] = []
    for start, end in sorted(s for s in spans if s[0] < s[1]):
        if merged and start <= merged[-1][1]:
            if end > merged[-1][1]:
                merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


def _intersect_spans(xs: Sequence[Span], ys: Sequence[Span]) -> list[Span]:
    out: list[Span] = []
    i = j = 0
    while i < len(xs) and j < len(ys):
        start, end = max(xs[i][0], ys[j][0]), min(xs[i][1], ys[j][1])
        if start < end:
            out.append((start, end))
        if xs[i][1] < ys[j][1]:
            i += 1
        else:
            j += 1
    return out


def _subtract_spans(xs: Sequence[Span], ys: Sequence[Span]) -> list[Span]:
    out: list[Span] = []
    j = 0
    for start, end in xs:
        cursor = start
        while j < len(ys) and ys[j][1] <= cursor:
            j += 1
        k = j
        while k < len(ys) and ys[k][0] < end and cursor < end:
            if ys[k][0] > cursor:
                out.append((cursor, ys[k][0]))
            cursor = max(cursor, ys[k][1])
            k += 1
        if cursor < end:
            out.append((cursor, end))
    return out


def _window_spans(windows: Iterable[Window]) -> list[Span]:
    """Union of the windows that have a start; an open window never ends (see "Time model")."""
    return _merge_spans(
        (_epoch_s(w.start_at), _FOREVER_S if w.end_at is None else _epoch_s(w.end_at))
        for w in windows
        if w.start_at is not None
    )


@dataclass(frozen=True)
class _Timeline:
    """The provisioned interval split into its three classes (epoch seconds, open end = forever)."""

    provision: ProvisionData
    billable: list[Span]
    maintenance: list[Span]
    outage: list[Span]


def _timeline_of(state: AllocationState) -> _Timeline | None:
    if state.provision is None or state.provisioned_at is None:
        return None
    end_s = _FOREVER_S if state.decommissioned_at is None else _epoch_s(state.decommissioned_at)
    provisioned = _merge_spans([(_epoch_s(state.provisioned_at), end_s)])
    maintenance_all = _window_spans(state.maintenance_windows)
    outage_all = _window_spans(state.outage_windows)
    maintenance = _intersect_spans(provisioned, maintenance_all)
    # R7: outage seconds inside a maintenance window count as maintenance.
    outage = _subtract_spans(_intersect_spans(provisioned, outage_all), maintenance_all)
    billable = _subtract_spans(_subtract_spans(provisioned, maintenance_all), outage_all)
    return _Timeline(state.provision, billable, maintenance, outage)


# --- usage --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HourUsage:
    """Usage of one allocation in one UTC hour ``[h, h + 1h)``, inside the contract term.

    GPU-seconds are ``gpu_count * seconds``; provisioned = billable + maintenance + outage (R7).
    ``billable_segments`` are the billable seconds of the hour as merged, sorted half-open
    ``(start, end)`` pairs, without the GPU factor (rating splits them at price changes, R4).
    """

    gpu_count: int
    provisioned_gpu_seconds: int
    billable_gpu_seconds: int
    maintenance_gpu_seconds: int
    outage_gpu_seconds: int
    billable_segments: tuple[tuple[datetime, datetime], ...]

    def __post_init__(self) -> None:
        parts = (self.billable_gpu_seconds, self.maintenance_gpu_seconds, self.outage_gpu_seconds)
        assert all(p >= 0 for p in parts), parts
        assert self.provisioned_gpu_seconds == sum(parts), "provisioned = billable + maintenance + outage"
        assert 0 <= self.provisioned_gpu_seconds <= self.gpu_count * HOUR_S
        segment_s = sum(seconds_between(start, end) for start, end in self.billable_segments)
        assert self.billable_gpu_seconds == self.gpu_count * segment_s, "segments carry the billable seconds"
        assert all(a < b for a, b in self.billable_segments)
        assert all(prev[1] < nxt[0] for prev, nxt in pairwise(self.billable_segments)), "segments are merged and sorted"


def _spans_by_hour(spans: Iterable[Span]) -> dict[int, list[Span]]:
    """Cut spans at UTC hour boundaries (epoch seconds are hour-aligned in UTC)."""
    by_hour: dict[int, list[Span]] = {}
    for start, end in spans:
        assert end < _FOREVER_S, "spans are clipped before they are bucketed"
        hour = start - start % HOUR_S
        while hour < end:
            by_hour.setdefault(hour, []).append((max(start, hour), min(end, hour + HOUR_S)))
            hour += HOUR_S
    return by_hour


def _span_seconds(spans: Iterable[Span]) -> int:
    return sum(end - start for start, end in spans)


def usage_by_hour(
    state: AllocationState,
    term_start: datetime,
    term_end: datetime | None,
    through: datetime,
    hours_from: datetime | None = None,
    hours_to: datetime | None = None,
) -> dict[datetime, HourUsage]:
    """Usage of every closed UTC hour with provisioned seconds inside the term ``[term_start, term_end)``.

    An hour ``[h, h + 1h)`` is closed when ``h + 1h <= through``; only hours with
    ``hours_from <= h < hours_to`` are computed (each bound optional), so the shell can ask for the
    hours a tick closes or the hours :func:`affected_range` names. Hours without provisioned seconds
    are absent (an hour that had usage before is then corrected to zero with ``diff_usage(old, None)``).
    Work is proportional to the number of hours asked for plus the number of windows.
    """
    for name, value in (("term_start", term_start), ("through", through)):
        _check_instant(value, name)
    if term_end is not None:
        _check_instant(term_end, "term_end")
    timeline = _timeline_of(state)
    if timeline is None:
        return {}
    low_s = _epoch_s(term_start)
    if hours_from is not None:
        low_s = max(low_s, _epoch_s(ceil_hour(hours_from)))
    high_s = _epoch_s(floor_hour(through))
    if term_end is not None:
        high_s = min(high_s, _epoch_s(term_end))
    if hours_to is not None:
        high_s = min(high_s, _epoch_s(ceil_hour(hours_to)))
    if low_s >= high_s:
        return {}
    bounds = [(low_s, high_s)]
    billable = _spans_by_hour(_intersect_spans(timeline.billable, bounds))
    maintenance = _spans_by_hour(_intersect_spans(timeline.maintenance, bounds))
    outage = _spans_by_hour(_intersect_spans(timeline.outage, bounds))
    gpu_count = timeline.provision.gpu_count
    usage: dict[datetime, HourUsage] = {}
    for hour_s in sorted(billable.keys() | maintenance.keys() | outage.keys()):
        segments = _merge_spans(billable.get(hour_s, []))
        billable_s = _span_seconds(segments)
        maintenance_s = _span_seconds(maintenance.get(hour_s, []))
        outage_s = _span_seconds(outage.get(hour_s, []))
        usage[_instant(hour_s)] = HourUsage(
            gpu_count=gpu_count,
            provisioned_gpu_seconds=gpu_count * (billable_s + maintenance_s + outage_s),
            billable_gpu_seconds=gpu_count * billable_s,
            maintenance_gpu_seconds=gpu_count * maintenance_s,
            outage_gpu_seconds=gpu_count * outage_s,
            billable_segments=tuple((_instant(a), _instant(b)) for a, b in segments),
        )
    return usage


_Label = tuple[str, ProvisionData]
_Piece = tuple[int, int, _Label]


def _labelled_pieces(state: AllocationState) -> list[_Piece]:
    timeline = _timeline_of(state)
    if timeline is None:
        return []
    pieces: list[_Piece] = []
    for name, spans in (
        ("billable", timeline.billable),
        ("maintenance", timeline.maintenance),
        ("outage", timeline.outage),
    ):
        pieces.extend((start, end, (name, timeline.provision)) for start, end in spans)
    pieces.sort()
    return pieces


def _label_at(pieces: Sequence[_Piece], starts: Sequence[int], at_s: int) -> _Label | None:
    index = bisect_right(starts, at_s) - 1
    if index >= 0 and pieces[index][0] <= at_s < pieces[index][1]:
        return pieces[index][2]
    return None


def affected_range(old_state: AllocationState, new_state: AllocationState) -> tuple[datetime, datetime | None] | None:
    """Hours whose usage can differ between two states: ``(hours_from, hours_to)`` or None.

    ``hours_from`` and ``hours_to`` are hour starts (``hours_to`` exclusive, None = no end), ready
    for :func:`usage_by_hour`. Every hour outside the range has identical usage in both states, for
    any term and ``through``; None means no hour can differ. Pass the range to ``usage_by_hour`` with
    the new state and diff each hour against what was emitted (hours missing now → ``None``).
    """
    old_pieces, new_pieces = _labelled_pieces(old_state), _labelled_pieces(new_state)
    old_starts, new_starts = [p[0] for p in old_pieces], [p[0] for p in new_pieces]
    cuts = sorted({s for p in (*old_pieces, *new_pieces) for s in (p[0], p[1])})
    first_s: int | None = None
    last_s: int | None = None
    for start_s, end_s in pairwise(cuts):
        # Labels are constant between consecutive cuts: one probe per elementary piece suffices.
        if _label_at(old_pieces, old_starts, start_s) != _label_at(new_pieces, new_starts, start_s):
            first_s = start_s if first_s is None else first_s
            last_s = end_s
    if first_s is None or last_s is None:
        return None
    hours_to = None if last_s >= _FOREVER_S else ceil_hour(_instant(last_s))
    return floor_hour(_instant(first_s)), hours_to


def deferred_from(state: AllocationState, closed_through: datetime) -> datetime | None:
    """First emitted hour whose correction waits for the next close, or None (nothing waits).

    That is the hour holding the earliest start of an *open* window (started, not ended) that
    starts before ``closed_through``. Such a window extends to "now" (R2), so correcting the
    emitted hours after its start at once, as if it never ended, would be undone by its end,
    hour by hour, if that end arrives before the next close (the common case of a late outage
    or maintenance window: its start and end come together, or close behind each other). So
    those hours are left as emitted until either the end arrives (the lifecycle consumer then
    corrects them with the final window) or the next close (the closer corrects them with the
    window still open, as R2 says, before the watermark that lets anyone bill them). A function
    of the facts and ``closed_through`` only: no state says which hours wait.
    """
    _check_instant(closed_through, "closed_through")
    starts = [
        w.start_at
        for w in (*state.maintenance_windows, *state.outage_windows)
        if w.start_at is not None and w.end_at is None and w.start_at < closed_through
    ]
    return floor_hour(min(starts)) if starts else None


def correction_range(
    old_state: AllocationState, new_state: AllocationState, closed_through: datetime
) -> tuple[datetime | None, datetime | None] | None:
    """Emitted hours the lifecycle consumer corrects now, after facts changed from ``old_state``
    to ``new_state`` (hours ending at or before ``closed_through`` are emitted): ``(hours_from,
    hours_to)`` for :func:`usage_by_hour` (``hours_to`` exclusive, None = up to ``closed_through``),
    or None when nothing is to be corrected now.

    It covers every hour :func:`affected_range` names and every hour that waited under
    ``old_state`` (see :func:`deferred_from`), except the hours that wait under ``new_state``,
    which the next close corrects. Invariant (with the closer reconciling from
    ``deferred_from`` too): when a watermark is sent, every emitted hour matches the facts.
    """
    old_wait = deferred_from(old_state, closed_through)
    new_wait = deferred_from(new_state, closed_through)
    changed = affected_range(old_state, new_state)
    lows: list[datetime] = []
    high: datetime | None = None
    if changed is not None:
        lows.append(changed[0])
        high = changed[1]
    if old_wait is not None and old_wait != new_wait:
        lows.append(old_wait)  # the hours that waited are corrected now (their window ended)
        high = None
    if not lows:
        return None
    low = min(lows)
    for bound in (new_wait, closed_through):
        if bound is not None:
            high = bound if high is None else min(high, bound)
    assert high is not None
    if low >= high:
        return None
    return low, high


@dataclass(frozen=True)
class UsageDelta:
    """Signed change of one allocation-hour between two revisions (R3): current - previous."""

    delta_provisioned_gpu_seconds: int
    delta_billable_gpu_seconds: int
    delta_maintenance_gpu_seconds: int
    delta_outage_gpu_seconds: int


_NO_USAGE = HourUsage(0, 0, 0, 0, 0, ())


def diff_usage(previous: HourUsage | None, current: HourUsage | None) -> UsageDelta | None:
    """The correction from ``previous`` (last emitted; None = never) to ``current`` (None = none now).

    None when nothing changed, segments and GPU count included. A change of segments alone (a window
    moved inside the hour) is a delta of zeros: it still needs a new revision, since rating prices
    segments by the second (R4).
    """
    before = previous or _NO_USAGE
    after = current or _NO_USAGE
    if before == after:
        return None
    return UsageDelta(
        delta_provisioned_gpu_seconds=after.provisioned_gpu_seconds - before.provisioned_gpu_seconds,
        delta_billable_gpu_seconds=after.billable_gpu_seconds - before.billable_gpu_seconds,
        delta_maintenance_gpu_seconds=after.maintenance_gpu_seconds - before.maintenance_gpu_seconds,
        delta_outage_gpu_seconds=after.outage_gpu_seconds - before.outage_gpu_seconds,
    )


# --- anomalies ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Anomaly:
    """Something a human should look at; billing goes on. ``key`` makes it unique per allocation and
    kind (see :func:`anomaly_id`); ``event_ids`` name at most ``MAX_ANOMALY_EVENT_IDS`` events."""

    kind: AnomalyKind
    reason: str
    event_ids: tuple[str, ...]
    key: str


def _anomaly(kind: AnomalyKind, reason: str, event_ids: Iterable[str | None], key: str) -> Anomaly:
    ids = tuple(sorted({i for i in event_ids if i is not None}))[:MAX_ANOMALY_EVENT_IDS]
    return Anomaly(kind, _clip_text(reason), ids, key)


def anomaly_id(allocation_id: str, kind: str, key: str) -> str:
    """Deterministic id of an anomaly, so the shell emits each one once (dedup by id)."""
    return derive_id("metering.anomaly", allocation_id, kind, key)


def find_anomalies(
    state: AllocationState,
    last_event_at: datetime | None,
    through: datetime,
    stale_after: timedelta,
    window_open_limit: timedelta,
) -> list[Anomaly]:
    """Open allocations and windows that look forgotten at ``through`` (a missing "ended").

    * ``allocation_stale``: provisioned, not decommissioned, and no event for longer than
      ``stale_after`` (``through - last_event_at > stale_after``; ``last_event_at`` None → the
      state's ``latest_event_at``). Key: the last event time, so a new silence is a new anomaly.
    * ``window_open_too_long``: a window started and not ended with ``through - start_at >
      window_open_limit``. Key: window kind and id (once per window).

    The open intervals keep extending to "now" (R2); these only alert.
    """
    _check_instant(through, "through")
    anomalies: list[Anomaly] = []
    last_at = last_event_at or state.latest_event_at or state.provisioned_at
    if state.is_open and last_at is not None and through - last_at > stale_after:
        anomalies.append(
            _anomaly(
                "allocation_stale",
                f"allocation provisioned and not decommissioned; no lifecycle event since "
                f"{format_utc(last_at)} ({through - last_at} before {format_utc(through)}); "
                "check whether it still runs or its decommission was lost",
                [state.provision_event_id],
                format_utc(last_at),
            )
        )
    for window in (*state.maintenance_windows, *state.outage_windows):
        if window.start_at is None or window.end_at is not None:
            continue
        if through - window.start_at > window_open_limit:
            anomalies.append(
                _anomaly(
                    "window_open_too_long",
                    f"{window.kind} window {window.window_id!r} open since {format_utc(window.start_at)} "
                    f"({through - window.start_at}); its time is not billed until it ends: "
                    "check whether its end was lost",
                    [window.start_event_id],
                    f"{window.kind}/{window.window_id}",
                )
            )
    return anomalies


def find_fact_anomalies(state: AllocationState) -> list[Anomaly]:
    """One ``event_quarantined`` anomaly per quarantine and one ``event_held`` per held event.

    Keys are the event ids involved, so re-evaluating the same facts yields the same anomaly ids.
    """
    anomalies = [_anomaly("event_quarantined", q.reason, q.event_ids, ",".join(q.event_ids)) for q in state.quarantined]
    anomalies.extend(
        _anomaly(
            "event_held",
            "an end whose start has not arrived (window end, or decommission before any provisioning); "
            "it has no effect until its start arrives",
            [event_id],
            event_id,
        )
        for event_id in state.held
    )
    return anomalies


# --- telemetry samples --------------------------------------------------------------------------------


def sample_hour(at: datetime) -> datetime:
    """The UTC hour a telemetry sample measured at ``at`` belongs to (aggregation is SQL)."""
    if at.tzinfo is None or at.utcoffset() != timedelta(0):
        raise ValueError(f"sample time must be a tz-aware UTC datetime, got {at!r}")
    return floor_hour(at.astimezone(UTC))


__all__ = [
    "EVENT_KINDS",
    "MAX_ANOMALY_EVENT_IDS",
    "AllocationState",
    "Anomaly",
    "AnomalyKind",
    "FactKind",
    "HourUsage",
    "LifecycleData",
    "LifecycleFact",
    "ProvisionData",
    "Quarantine",
    "UsageDelta",
    "Window",
    "WindowKind",
    "affected_range",
    "anomaly_id",
    "correction_range",
    "deferred_from",
    "diff_usage",
    "evaluate_allocation",
    "fact_from_event",
    "find_anomalies",
    "find_fact_anomalies",
    "sample_hour",
    "usage_by_hour",
]
