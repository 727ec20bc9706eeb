"""An independent billing oracle for the end-to-end test: invoices and supplier statements computed
from the raw bytes the platform published, straight from docs/billing-rules.md (R1-R8, R10, R12)
and its Settle extensions — never by calling Settle's code.

What it uses: the standard library (``json``, ``re``, ``calendar``, ``fractions``) and ``iso4217`` for
currency exponents. Nothing from ``schemas`` or ``libs``: the CloudEvents envelope, every input
type's payload, decimal strings and RFC 3339 times are read here again from the input contract (a
bug in the product's parsing would otherwise hide in both the fleet and its check). Everything else —
R2 allocation state, R1 periods, R4 pricing, R5 commitment, R6 rounding, R7 SLA, R8 wallet, R10
invoice arithmetic, R3 adjustments, R12 statements — is written here again too.

Units
-----
* Times are ``int`` epoch seconds (UTC) inside the oracle; the scenario's times are whole seconds
  (billing time has 1-second resolution), so interval arithmetic on integers is exact.
* Exact amounts are :class:`fractions.Fraction` in major units; shown amounts are ``int`` minor
  units, produced only by :func:`round_minor` (half to even, once per line).
* GPU-seconds are ``gpu_count x seconds``.

How the late events are handled (R3): the demo publishes ``scenario.initial`` before the clock
moves and ``scenario.late`` after the tick ``late_after``. A period whose end is at or before
``late_after`` was invoiced on the initial facts alone; the difference the late facts make to it
(usage, GPU-seconds, SLA credit and — when the shell re-evaluates it — commitment true-up) lands as
adjustment lines on the contract's first invoice of a period ending after ``late_after``. The same
goes for supplier statements: the late earnings of a month whose statement was final land on the
allocation's line of the first month ending after ``late_after`` (extension in
``services/invoicing/statements.py``, stated in its docstring; the implementation is not used).
"""

from __future__ import annotations

import calendar
import json
import re
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fractions import Fraction
from itertools import pairwise
from typing import Any, Protocol

import iso4217

INF = 2**62
"""Epoch seconds standing for "no end" (an open allocation or window, an open-ended term)."""

HOUR_S = 3600
Span = tuple[int, int]
"""A half-open interval ``[start, end)`` of epoch seconds."""


# --- money (R6), written here on purpose instead of importing libs.money --------------------------------


def exponent_of(currency: str) -> int:
    """Minor-unit digits of an ISO 4217 currency (USD 2, JPY 0)."""
    exponent = iso4217.Currency(currency).exponent
    assert exponent is not None, currency
    return int(exponent)


def round_half_even_int(value: Fraction) -> int:
    """Nearest integer, ties to the even one (symmetric for negative values)."""
    if value < 0:
        return -round_half_even_int(-value)
    whole, rest = divmod(value.numerator, value.denominator)
    twice = 2 * rest
    if twice > value.denominator or (twice == value.denominator and whole % 2 == 1):
        return whole + 1
    return whole


def round_minor(amount: Fraction, currency: str) -> int:
    """R6: exact major units → minor units, rounded once, half to even."""
    return round_half_even_int(Fraction(amount) * 10 ** exponent_of(currency))


def minor_exact(amount_minor: int, currency: str) -> Fraction:
    return Fraction(amount_minor, 10 ** exponent_of(currency))


def show_minor(amount_minor: int, currency: str) -> str:
    """Minor units → the decimal string a document shows (``15340`` USD → ``"153.40"``, JPY → ``"1534"``)."""
    places = exponent_of(currency)
    sign = "-" if amount_minor < 0 else ""
    digits = str(abs(amount_minor))
    if places == 0:
        return sign + digits
    digits = digits.rjust(places + 1, "0")
    return f"{sign}{digits[:-places]}.{digits[-places:]}"


# --- intervals ------------------------------------------------------------------------------------------


def union(spans: Iterable[Span]) -> list[Span]:
    """Sorted, disjoint, non-empty spans covering the same seconds (touching spans joined)."""
    out: list[Span] = []
    for start, end in sorted(s for s in spans if s[0] < s[1]):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def intersect(a: Sequence[Span], b: Sequence[Span]) -> list[Span]:
    out: list[Span] = []
    for s1, e1 in a:
        for s2, e2 in b:
            start, end = max(s1, s2), min(e1, e2)
            if start < end:
                out.append((start, end))
    return union(out)


def subtract(a: Sequence[Span], b: Sequence[Span]) -> list[Span]:
    out: list[Span] = []
    for start, end in a:
        pieces = [(start, end)]
        for s2, e2 in b:
            next_pieces: list[Span] = []
            for s1, e1 in pieces:
                if e2 <= s1 or s2 >= e1:
                    next_pieces.append((s1, e1))
                    continue
                if s1 < s2:
                    next_pieces.append((s1, s2))
                if e2 < e1:
                    next_pieces.append((e2, e1))
            pieces = next_pieces
        out += pieces
    return union(out)


def seconds_of(spans: Iterable[Span]) -> int:
    return sum(end - start for start, end in spans)


def epoch(moment: datetime) -> int:
    assert moment.tzinfo is not None, moment
    assert moment.microsecond == 0, moment
    return int(moment.timestamp())


def instant(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


# --- periods (R1) and months ----------------------------------------------------------------------------


def _month_shift(year: int, month: int, by: int) -> tuple[int, int]:
    index = year * 12 + (month - 1) + by
    return index // 12, index % 12 + 1


def period_of(anchor_day: int, at: int) -> Span:
    """R1: the period ``[anchor 00:00, same day next month 00:00)`` that contains ``at``."""
    moment = instant(at)
    year, month = moment.year, moment.month
    if moment < datetime(year, month, anchor_day, tzinfo=UTC):
        year, month = _month_shift(year, month, -1)
    next_year, next_month = _month_shift(year, month, 1)
    start = epoch(datetime(year, month, anchor_day, tzinfo=UTC))
    end = epoch(datetime(next_year, next_month, anchor_day, tzinfo=UTC))
    assert start <= at < end
    return start, end


def month_key(at: int) -> str:
    moment = instant(at)
    return f"{moment.year:04d}-{moment.month:02d}"


def month_span(key: str) -> Span:
    year, month = int(key[:4]), int(key[5:])
    next_year, next_month = _month_shift(year, month, 1)
    return epoch(datetime(year, month, 1, tzinfo=UTC)), epoch(datetime(next_year, next_month, 1, tzinfo=UTC))


# --- decoding the deliveries: the oracle's own reading of the input contract ------------------------------
#
# Written from docs/billing-rules.md ("Input contract" and the input limits) with the standard library
# only: ``json`` for the bytes, a regular expression and ``Fraction`` for decimal strings, ``calendar``
# for times. Nothing here calls ``schemas`` or ``libs``, so a parsing bug there cannot hide in both.

MAX_EVENT_BYTES = 64 * 1024
MAX_ID_CHARS = 128
MAX_TEXT_CHARS = 256
MAX_GPU_COUNT = 4096
MAX_SLA_TIERS = 16
MAX_METERS = 32

_ID = re.compile(rf"[!-~]{{1,{MAX_ID_CHARS}}}")
_DECIMAL = re.compile(r"-?[0-9]{1,18}(?:\.([0-9]+))?")
_TIME = re.compile(r"([0-9]{4}-[0-9]{2}-[0-9]{2})[Tt]([0-9]{2}:[0-9]{2}:[0-9]{2})(?:\.[0-9]+)?(?:[Zz]|[+-]00:00)")
_METER = re.compile(r"[a-z][a-z0-9_]{0,31}")


class Refused(ValueError):
    """A delivery the contract does not accept (the fleet must dead-letter it)."""


Parser = Callable[[Any], Any]


def parse_id(value: Any) -> str:
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise Refused(f"not an id (1-{MAX_ID_CHARS} printable characters): {value!r}")
    return value


def parse_text(value: Any) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_TEXT_CHARS:
        raise Refused(f"not a text of 1-{MAX_TEXT_CHARS} characters: {value!r}")
    return value


def parse_decimal(value: Any, *, places: int = 12, low: Fraction | None = None, low_open: bool = False) -> Fraction:
    """A decimal string (never a JSON number) with at most ``places`` decimals, as an exact Fraction;
    at least ``low`` (more than ``low`` when ``low_open``)."""
    if not isinstance(value, str):
        raise Refused(f"a decimal must be a JSON string, got {value!r}")
    match = _DECIMAL.fullmatch(value)
    if match is None or len(match.group(1) or "") > places:
        raise Refused(f"not a decimal string with at most {places} places: {value!r}")
    exact = Fraction(value)
    if low is not None and (exact < low or (low_open and exact == low)):
        raise Refused(f"{value!r} is out of range")
    return exact


def parse_amount(value: Any) -> Fraction:
    """A non-negative decimal string."""
    return parse_decimal(value, low=Fraction(0))


def parse_time(value: Any) -> int:
    """RFC 3339 in UTC (``Z`` or ``+00:00``) → epoch seconds, a fraction of a second floored."""
    match = _TIME.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise Refused(f"not an RFC 3339 UTC time: {value!r}")
    try:
        moment = time.strptime(f"{match.group(1)} {match.group(2)}", "%Y-%m-%d %H:%M:%S")
    except ValueError:
        raise Refused(f"not a calendar time: {value!r}") from None
    return calendar.timegm(moment)


def parse_int(value: Any, low: int, high: int) -> int:
    if type(value) is not int or not low <= value <= high:
        raise Refused(f"not an integer in [{low}, {high}]: {value!r}")
    return value


def parse_currency(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Z]{3}", value):
        raise Refused(f"not a currency code: {value!r}")
    try:
        exponent = iso4217.Currency(value).exponent
    except ValueError:
        raise Refused(f"not an ISO 4217 currency: {value!r}") from None
    if exponent is None:
        raise Refused(f"{value} has no minor unit (not money)")
    return value


def parse_choice(*allowed: str) -> Parser:
    def parse(value: Any) -> str:
        if value not in allowed:
            raise Refused(f"{value!r} is not one of {allowed}")
        return str(value)

    return parse


def parse_tax_rate(value: Any) -> Fraction:
    rate = parse_amount(value)
    if rate > 1:
        raise Refused(f"tax_rate is a fraction in [0, 1]: {value!r}")
    return rate


def parse_sla_tiers(value: Any) -> tuple[tuple[Fraction, Fraction], ...]:
    """(below_uptime in (0, 1], credit_percent in [0, 100]) per tier."""
    if not isinstance(value, list) or len(value) > MAX_SLA_TIERS:
        raise Refused(f"sla_tiers is a list of at most {MAX_SLA_TIERS} tiers")
    tiers = []
    for tier in value:
        if not isinstance(tier, dict):
            raise Refused(f"an SLA tier is an object: {tier!r}")
        below = parse_decimal(tier.get("below_uptime"), low=Fraction(0), low_open=True)
        percent = parse_amount(tier.get("credit_percent"))
        if below > 1 or percent > 100:
            raise Refused(f"SLA tier out of range: {tier!r}")
        tiers.append((below, percent))
    return tuple(tiers)


def parse_meter(value: Any) -> str:
    if not isinstance(value, str) or not _METER.fullmatch(value):
        raise Refused(f"not a meter name: {value!r}")
    return value


def parse_meter_prices(value: Any) -> dict[str, Fraction]:
    if not isinstance(value, dict) or len(value) > MAX_METERS:
        raise Refused(f"meter_prices is an object of at most {MAX_METERS} meters")
    return {parse_meter(k): parse_decimal(v, places=6, low=Fraction(0)) for k, v in value.items()}


def optional(parse: Parser) -> Parser:
    """``null`` allowed (kept as None)."""

    def parse_or_none(value: Any) -> Any:
        return None if value is None else parse(value)

    return parse_or_none


REQUIRED = object()
"""Marks a field without a default."""

Fields = dict[str, tuple[Parser, Any]]
"""Field name → (parser, default or REQUIRED). A field absent from the JSON takes its default."""

_PRICED_FIELDS: Fields = {
    "price_per_gpu_hour": (optional(parse_amount), None),
    "supplier_rate_per_gpu_hour": (optional(parse_amount), None),
    "commitment_per_period": (optional(parse_amount), None),
    "credit_limit": (optional(parse_amount), None),
    "sla_tiers": (optional(parse_sla_tiers), None),
    "tax_rate": (optional(parse_tax_rate), None),
    "meter_prices": (optional(parse_meter_prices), None),
}

INPUT_TYPES: dict[str, dict[str, Fields]] = {
    "infra.lifecycle.v1": {
        "gpu.allocation.provisioned": {
            "allocation_id": (parse_id, REQUIRED),
            "contract_id": (parse_id, REQUIRED),
            "renter_id": (parse_id, REQUIRED),
            "supplier_id": (parse_id, REQUIRED),
            "server_id": (parse_id, REQUIRED),
            "gpu_model": (parse_text, REQUIRED),
            "gpu_count": (lambda v: parse_int(v, 1, MAX_GPU_COUNT), REQUIRED),
        },
        "gpu.allocation.decommissioned": {"allocation_id": (parse_id, REQUIRED)},
        "gpu.maintenance.started": {"allocation_id": (parse_id, REQUIRED), "window_id": (parse_id, REQUIRED)},
        "gpu.maintenance.ended": {"allocation_id": (parse_id, REQUIRED), "window_id": (parse_id, REQUIRED)},
        "gpu.outage.started": {"allocation_id": (parse_id, REQUIRED), "incident_id": (parse_id, REQUIRED)},
        "gpu.outage.ended": {"allocation_id": (parse_id, REQUIRED), "incident_id": (parse_id, REQUIRED)},
    },
    "contracts.v1": {
        "contract.created": {
            "contract_id": (parse_id, REQUIRED),
            "renter_id": (parse_id, REQUIRED),
            "currency": (parse_currency, REQUIRED),
            "billing_mode": (parse_choice("prepaid", "postpaid"), REQUIRED),
            "price_per_gpu_hour": (parse_amount, REQUIRED),
            "supplier_rate_per_gpu_hour": (parse_amount, REQUIRED),
            "commitment_per_period": (parse_amount, REQUIRED),
            "credit_limit": (optional(parse_amount), None),
            "sla_tiers": (parse_sla_tiers, ()),
            "tax_rate": (parse_tax_rate, REQUIRED),
            "starts_at": (parse_time, REQUIRED),
            "ends_at": (optional(parse_time), None),
            "billing_anchor_day": (lambda v: parse_int(v, 1, 28), REQUIRED),
            "payment_terms_days": (lambda v: parse_int(v, 0, 365), 30),
            "meter_prices": (parse_meter_prices, {}),
        },
        "contract.amended": {
            "contract_id": (parse_id, REQUIRED),
            "effective_at": (parse_time, REQUIRED),
            **_PRICED_FIELDS,
        },
        "contract.terminated": {"contract_id": (parse_id, REQUIRED), "effective_at": (parse_time, REQUIRED)},
    },
    "wallets.v1": {
        "wallet.topped_up": {
            "contract_id": (parse_id, REQUIRED),
            "amount": (lambda v: parse_decimal(v, low=Fraction(0), low_open=True), REQUIRED),
            "currency": (parse_currency, REQUIRED),
            "payment_ref": (parse_id, REQUIRED),
        }
    },
    "usage.samples.v1": {
        "usage.sample.recorded": {
            "allocation_id": (parse_id, REQUIRED),
            "meter": (parse_meter, REQUIRED),
            "quantity": (lambda v: parse_decimal(v, places=6, low=Fraction(0)), REQUIRED),
        }
    },
}
"""Topic → event type → the fields of its ``data`` (unknown fields are ignored: the contract is the
platform's, and it may add fields)."""


def parse_data(type_: str, fields: Fields, data: dict[str, Any]) -> dict[str, Any]:
    """``data`` of an event of ``type_``: every known field parsed, absent ones defaulted, and the
    rules that tie fields together checked."""
    out: dict[str, Any] = {}
    for name, (parse, default) in fields.items():
        if name not in data:
            if default is REQUIRED:
                raise Refused(f"{type_}: {name} is missing")
            out[name] = default
            continue
        try:
            out[name] = parse(data[name])
        except Refused as exc:
            raise Refused(f"{type_}: {name}: {exc}") from None
    if type_ == "contract.created":
        if out["ends_at"] is not None and out["ends_at"] <= out["starts_at"]:
            raise Refused("contract.created: ends_at must be after starts_at")
        if out["billing_mode"] == "prepaid":
            out["credit_limit"] = None  # R9: postpaid only; ignored on a prepaid contract
    if type_ == "contract.amended":
        changed = [n for n in _PRICED_FIELDS if out[n] is not None or (n == "credit_limit" and n in data)]
        if not changed:
            raise Refused("contract.amended: changes no priced field")
    return out


def parse_envelope(value: bytes) -> tuple[str, str, int, dict[str, Any]]:
    """CloudEvents 1.0, structured JSON mode → (id, type, time in epoch seconds, data object)."""
    if len(value) > MAX_EVENT_BYTES:
        raise Refused(f"{len(value)} bytes; at most {MAX_EVENT_BYTES}")
    try:
        document = json.loads(value.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise Refused("not JSON") from None
    if not isinstance(document, dict):
        raise Refused("not an object")
    if document.get("specversion") != "1.0":
        raise Refused("not a CloudEvents 1.0 envelope")
    if document.get("datacontenttype", "application/json") != "application/json":
        raise Refused("data is not application/json")
    optional_attributes = {
        "subject": MAX_TEXT_CHARS,
        "dataschema": MAX_TEXT_CHARS,
        "correlationid": MAX_ID_CHARS,
        "causationid": MAX_ID_CHARS,
    }
    for name, limit in optional_attributes.items():
        attribute = document.get(name)
        if attribute is not None and (not isinstance(attribute, str) or len(attribute) > limit):
            raise Refused(f"envelope: {name} is not a string of at most {limit} characters")
    if "schemaversion" in document:
        parse_int(document["schemaversion"], 1, 1000)
    event_id = parse_id(document.get("id"))
    parse_text(document.get("source"))
    type_ = parse_text(document.get("type"))
    at = parse_time(document.get("time"))
    data = document.get("data")
    if not isinstance(data, dict):
        raise Refused("envelope: data is not an object")
    return event_id, type_, at, data


def _no_constant(name: str) -> Any:
    raise Refused(f"{name} is not JSON")


class DeliveryLike(Protocol):
    @property
    def topic(self) -> str: ...

    @property
    def value(self) -> bytes: ...


@dataclass(frozen=True)
class InputEvent:
    """One accepted input event (valid envelope and payload, first arrival of its id)."""

    seq: int
    """Arrival index among everything decoded (initial deliveries first, then the late ones)."""
    topic: str
    id: str
    type: str
    at: int
    """Epoch seconds of the envelope's ``time``."""
    data: dict[str, Any]
    """The payload as :func:`parse_data` reads it: decimals as Fractions, times as epoch seconds."""


@dataclass
class Decoded:
    accepted: list[InputEvent] = field(default_factory=list)
    rejected: list[tuple[str, bytes, str]] = field(default_factory=list)
    """(topic, bytes, why) of every delivery the system must refuse (dead letters)."""
    duplicates: int = 0


def decode(deliveries: Iterable[DeliveryLike], into: Decoded | None = None) -> Decoded:
    """Read each delivery against the input contract, refuse what breaks it, drop duplicate ids."""
    out = into if into is not None else Decoded()
    seen = {e.id for e in out.accepted}
    seq = len(out.accepted) + len(out.rejected) + out.duplicates
    for delivery in deliveries:
        seq += 1
        try:
            event_id, type_, at, raw = parse_envelope(delivery.value)
            fields = INPUT_TYPES.get(delivery.topic, {}).get(type_)
            if fields is None:
                raise Refused(f"{type_} is not an event type of {delivery.topic}")
            data = parse_data(type_, fields, raw)
        except Refused as exc:
            out.rejected.append((delivery.topic, delivery.value, str(exc)))
            continue
        if event_id in seen:
            out.duplicates += 1
            continue
        seen.add(event_id)
        out.accepted.append(InputEvent(seq, delivery.topic, event_id, type_, at, data))
    return out


# --- contracts (effective-dated terms) ------------------------------------------------------------------

PRICED = (
    "price_per_gpu_hour",
    "supplier_rate_per_gpu_hour",
    "commitment_per_period",
    "sla_tiers",
    "tax_rate",
    "meter_prices",
)


@dataclass
class Contract:
    contract_id: str
    renter_id: str
    currency: str
    prepaid: bool
    anchor_day: int
    starts_at: int
    payment_terms_days: int
    ends_at: int | None
    base: dict[str, Any]
    amendments: list[tuple[int, int, dict[str, Any]]] = field(default_factory=list)
    """(effective_at, arrival seq, the fields it sets)."""
    terminations: list[int] = field(default_factory=list)

    @property
    def term_end(self) -> int:
        """End of term (INF when open): the earliest of ``ends_at`` and every termination."""
        return min([self.ends_at if self.ends_at is not None else INF, *self.terminations])

    @property
    def term(self) -> Span:
        return self.starts_at, self.term_end

    def fields_at(self, at: int) -> dict[str, Any]:
        """R4: each field from the latest version with ``effective_at <= at`` (ties: later arrival)."""
        fields = dict(self.base)
        for effective, _seq, changes in sorted(self.amendments, key=lambda a: (a[0], a[1])):
            if effective <= at:
                fields.update(changes)
        return fields

    def pieces(self, span: Span) -> list[tuple[int, int, dict[str, Any]]]:
        """``span`` cut at every amendment's effective instant: (start, end, fields in force)."""
        start, end = span
        cuts = sorted({start, end, *(a[0] for a in self.amendments if start < a[0] < end)})
        return [(a, b, self.fields_at(a)) for a, b in pairwise(cuts) if a < b]

    def periods(self, until: int) -> list[Span]:
        """R1: every period overlapping the term that ends at or before ``until``."""
        out: list[Span] = []
        if self.term_end <= self.starts_at:
            return out  # terminated at or before its start: an empty term overlaps no period
        start, end = period_of(self.anchor_day, self.starts_at)
        while end <= until and start < self.term_end:
            out.append((start, end))
            start, end = period_of(self.anchor_day, end)
        return out


def _priced_changes(data: dict[str, Any]) -> dict[str, Any]:
    """The priced fields an amendment sets (an absent or null field changes nothing here; a null
    ``credit_limit`` matters to rating only)."""
    return {name: data[name] for name in PRICED if data.get(name) is not None}


# --- allocations (R2) -----------------------------------------------------------------------------------


@dataclass
class Allocation:
    allocation_id: str
    contract_id: str
    supplier_id: str
    gpu_count: int
    provisioned_at: int
    decommissioned_at: int
    """INF when not decommissioned (or the decommission was quarantined)."""
    maintenance: list[Span]
    outage: list[Span]
    """Both as the union of the accepted windows (an open window runs to INF)."""


def _fold_allocations(events: Sequence[InputEvent]) -> dict[str, Allocation]:
    """R2: allocation state from event times (arrival order only decides which contradicting fact is
    "the second"). Quarantined: a window that ends before it starts (both events), a decommission
    before the provisioning, a second provisioning with different data. An end without a start has no
    effect; a start without an end is open."""
    provisions: dict[str, tuple[int, dict[str, Any]]] = {}
    decommissions: dict[str, int] = {}
    starts: dict[tuple[str, str, str], int] = {}
    ends: dict[tuple[str, str, str], int] = {}
    for event in sorted((e for e in events if e.topic == "infra.lifecycle.v1"), key=lambda e: e.seq):
        allocation_id = event.data["allocation_id"]
        if event.type == "gpu.allocation.provisioned":
            if allocation_id not in provisions:
                provisions[allocation_id] = (event.at, event.data)
            # a second provisioning (equal or not) has no effect
        elif event.type == "gpu.allocation.decommissioned":
            decommissions.setdefault(allocation_id, event.at)
        else:
            kind = "maintenance" if event.type.startswith("gpu.maintenance") else "outage"
            window = event.data["window_id"] if kind == "maintenance" else event.data["incident_id"]
            key = (allocation_id, kind, window)
            (starts if event.type.endswith(".started") else ends).setdefault(key, event.at)
    out: dict[str, Allocation] = {}
    for allocation_id, (provisioned_at, data) in provisions.items():
        decommissioned_at = decommissions.get(allocation_id, INF)
        if decommissioned_at < provisioned_at:
            decommissioned_at = INF  # quarantined: as if never decommissioned
        windows: dict[str, list[Span]] = {"maintenance": [], "outage": []}
        for key, start in starts.items():
            if key[0] != allocation_id:
                continue
            end = ends.get(key, INF)
            if end < start:
                continue  # quarantined, both events
            windows[key[1]].append((start, end))
        out[allocation_id] = Allocation(
            allocation_id=allocation_id,
            contract_id=data["contract_id"],
            supplier_id=data["supplier_id"],
            gpu_count=data["gpu_count"],
            provisioned_at=provisioned_at,
            decommissioned_at=decommissioned_at,
            maintenance=union(windows["maintenance"]),
            outage=union(windows["outage"]),
        )
    return out


@dataclass(frozen=True)
class Classified:
    """An allocation's seconds inside the term, in three disjoint classes (R2, R7), without the GPU factor."""

    provisioned: list[Span]
    maintenance: list[Span]
    outage: list[Span]
    """Outage outside every maintenance window (inside one it is maintenance, R7)."""
    billable: list[Span]


def classify(allocation: Allocation, term: Span) -> Classified:
    provisioned = intersect([(allocation.provisioned_at, allocation.decommissioned_at)], [term])
    maintenance = intersect(provisioned, allocation.maintenance)
    outage = subtract(intersect(provisioned, allocation.outage), maintenance)
    billable = subtract(subtract(provisioned, maintenance), outage)
    assert seconds_of(billable) + seconds_of(maintenance) + seconds_of(outage) == seconds_of(provisioned)
    return Classified(provisioned, maintenance, outage, billable)


# --- the marketplace ------------------------------------------------------------------------------------


@dataclass
class Market:
    """Everything the accepted events say."""

    contracts: dict[str, Contract]
    allocations: dict[str, Allocation]
    samples: dict[tuple[str, str, int], Fraction]
    """(allocation_id, meter, hour start) → summed quantity."""
    topups: dict[str, list[tuple[int, Fraction]]]
    """contract_id → (at, amount) of its top-ups."""


def build_market(events: Sequence[InputEvent]) -> Market:
    contracts: dict[str, Contract] = {}
    ordered = sorted(events, key=lambda e: e.seq)
    for event in ordered:
        if event.type == "contract.created" and event.data["contract_id"] not in contracts:
            d = event.data
            contracts[d["contract_id"]] = Contract(
                contract_id=d["contract_id"],
                renter_id=d["renter_id"],
                currency=d["currency"],
                prepaid=d["billing_mode"] == "prepaid",
                anchor_day=d["billing_anchor_day"],
                payment_terms_days=d["payment_terms_days"],
                starts_at=d["starts_at"],
                ends_at=d["ends_at"],
                base={name: d[name] for name in PRICED},
            )
    topups: dict[str, list[tuple[int, Fraction]]] = defaultdict(list)
    samples: dict[tuple[str, str, int], Fraction] = defaultdict(Fraction)
    for event in ordered:
        d = event.data
        if event.type == "contract.amended" and d["contract_id"] in contracts:
            contracts[d["contract_id"]].amendments.append((d["effective_at"], event.seq, _priced_changes(d)))
        elif event.type == "contract.terminated" and d["contract_id"] in contracts:
            contracts[d["contract_id"]].terminations.append(d["effective_at"])
        elif event.type == "wallet.topped_up" and d["contract_id"] in contracts:
            assert d["currency"] == contracts[d["contract_id"]].currency
            topups[d["contract_id"]].append((event.at, d["amount"]))
        elif event.type == "usage.sample.recorded":
            hour = event.at - event.at % HOUR_S
            samples[(d["allocation_id"], d["meter"], hour)] += d["quantity"]
    folded = _fold_allocations(ordered)
    allocations = {a: alloc for a, alloc in folded.items() if alloc.contract_id in contracts}
    return Market(contracts, allocations, dict(samples), dict(topups))


# --- usage per contract period and per allocation month (R3, R4, R7) ------------------------------------


@dataclass
class Totals:
    """A contract period's usage: exact charges (all meters) and GPU-seconds, inside period and term."""

    usage: Fraction = Fraction(0)
    provisioned: int = 0
    maintenance: int = 0
    outage: int = 0
    outage_by_allocation: dict[str, int] = field(default_factory=dict)

    def minus(self, other: Totals) -> Totals:
        allocations = set(self.outage_by_allocation) | set(other.outage_by_allocation)
        return Totals(
            self.usage - other.usage,
            self.provisioned - other.provisioned,
            self.maintenance - other.maintenance,
            self.outage - other.outage,
            {a: self.outage_by_allocation.get(a, 0) - other.outage_by_allocation.get(a, 0) for a in allocations},
        )

    @property
    def changed(self) -> bool:
        return bool(self.usage or self.provisioned or self.maintenance or self.outage)


def _priced(contract: Contract, spans: Sequence[Span], gpu_count: int, field_name: str) -> Fraction:
    """R4: Σ gpu_seconds x price in force at each second, divided by 3600 once."""
    total_x3600 = Fraction(0)
    for start, end in spans:
        for a, b, fields in contract.pieces((start, end)):
            total_x3600 += (b - a) * gpu_count * fields[field_name]
    return total_x3600 / HOUR_S


def period_totals(market: Market, contract: Contract, period: Span) -> Totals:
    totals = Totals()
    window = [period]
    for allocation in market.allocations.values():
        if allocation.contract_id != contract.contract_id:
            continue
        classes = classify(allocation, contract.term)
        n = allocation.gpu_count
        billable = intersect(classes.billable, window)
        totals.usage += _priced(contract, billable, n, "price_per_gpu_hour")
        totals.provisioned += n * seconds_of(intersect(classes.provisioned, window))
        totals.maintenance += n * seconds_of(intersect(classes.maintenance, window))
        outage = n * seconds_of(intersect(classes.outage, window))
        totals.outage += outage
        totals.outage_by_allocation[allocation.allocation_id] = outage
    # Add-on meters (extension): quantity x meter price in force at the hour's first in-term instant;
    # an hour wholly outside the term is charged nothing; no supplier earning.
    start_term, end_term = contract.term
    for (allocation_id, meter, hour), quantity in market.samples.items():
        owner = market.allocations.get(allocation_id)
        if owner is None or owner.contract_id != contract.contract_id:
            continue
        if not (period[0] <= hour < period[1]):
            continue
        if max(hour, start_term) >= min(hour + HOUR_S, end_term):
            continue
        price = contract.fields_at(max(hour, start_term))["meter_prices"].get(meter, Fraction(0))
        totals.usage += quantity * price
    return totals


def earnings_within(market: Market, allocation: Allocation, spans: Sequence[Span]) -> tuple[Fraction, int]:
    """R12: (exact earnings, billable GPU-seconds) the allocation delivered within ``spans`` (sorted, disjoint)."""
    contract = market.contracts[allocation.contract_id]
    billable = intersect(classify(allocation, contract.term).billable, spans)
    earning = _priced(contract, billable, allocation.gpu_count, "supplier_rate_per_gpu_hour")
    return earning, allocation.gpu_count * seconds_of(billable)


def month_earnings(market: Market, allocation: Allocation, month: str) -> tuple[Fraction, int]:
    """R12: (exact earnings, billable GPU-seconds) the allocation delivered in the month."""
    return earnings_within(market, allocation, [month_span(month)])


# --- invoices (R5, R6, R7, R8, R10, R3) -----------------------------------------------------------------


@dataclass(frozen=True)
class ExpectedAdjustment:
    period_start: datetime
    period_end: datetime
    kind: str
    amount_minor: int


@dataclass
class ExpectedInvoice:
    contract_id: str
    currency: str
    period_start: datetime
    period_end: datetime
    usage_minor: int
    true_up_minor: int
    adjustments: list[ExpectedAdjustment]
    sla_credit_minor: int
    sla_credit_percent: Fraction
    uptime: Fraction | None
    """``None``: no provisioned - maintenance GPU-seconds in the period (R7)."""
    tax_rate: Fraction
    payment_terms_days: int
    subtotal_minor: int
    tax_minor: int
    total_minor: int
    prepaid_applied_minor: int
    credit_applied_minor: int
    amount_due_minor: int
    credit_carried_forward_minor: int

    @property
    def adjustments_minor(self) -> int:
        return sum(a.amount_minor for a in self.adjustments)

    def shown(self) -> dict[str, str]:
        """The document's amounts as strings with the currency's digits."""
        c = self.currency
        return {
            "lines.usage": show_minor(self.usage_minor, c),
            "lines.commitment_true_up": show_minor(self.true_up_minor, c),
            "lines.adjustments": show_minor(self.adjustments_minor, c),
            "lines.sla_credit": show_minor(self.sla_credit_minor, c),
            "subtotal": show_minor(self.subtotal_minor, c),
            "tax": show_minor(self.tax_minor, c),
            "total": show_minor(self.total_minor, c),
            "prepaid_applied": show_minor(self.prepaid_applied_minor, c),
            "credit_applied": show_minor(self.credit_applied_minor, c),
            "amount_due": show_minor(self.amount_due_minor, c),
            "credit_carried_forward": show_minor(self.credit_carried_forward_minor, c),
        }


def rates_at(period: Span) -> int:
    """R7: the instant whose SLA tiers and tax rate apply to the whole period: its last second, also when
    the term ended earlier."""
    return period[1] - 1


def prorated_commitment(contract: Contract, period: Span) -> Fraction:
    """R5: Σ commitment x seconds in force inside period ∩ term / period seconds."""
    inside = intersect([period], [contract.term])
    total = Fraction(0)
    for start, end in inside:
        for a, b, fields in contract.pieces((start, end)):
            total += fields["commitment_per_period"] * (b - a) / (period[1] - period[0])
    return total


def uptime_of(totals: Totals) -> Fraction | None:
    """R7: ``1 - outage / (provisioned - maintenance)``; None without such seconds."""
    available = totals.provisioned - totals.maintenance
    return None if available <= 0 else 1 - Fraction(totals.outage, available)


def sla_credit(contract: Contract, period: Span, totals: Totals) -> tuple[Fraction, Fraction]:
    """R7: (credit percent, exact credit ≤ 0) of a period with these totals."""
    uptime = uptime_of(totals)
    if uptime is None:
        return Fraction(0), Fraction(0)
    tiers = contract.fields_at(rates_at(period))["sla_tiers"]
    above = [t for t in tiers if t[0] > uptime]
    if not above:
        return Fraction(0), Fraction(0)
    percent = min(above, key=lambda t: (t[0], -t[1]))[1]
    return percent, -percent / 100 * totals.usage


def true_up_of(contract: Contract, period: Span, usage: Fraction) -> Fraction:
    committed = prorated_commitment(contract, period)
    return committed - usage if usage < committed else Fraction(0)


def split_largest_remainder(credit_minor: int, shares: dict[str, int]) -> dict[str, int]:
    """R12: ``credit_minor`` (≥ 0) split by shares: floors first, then one more unit to the largest
    remainders (ties: smallest allocation id)."""
    total = sum(shares.values())
    if credit_minor == 0 or total == 0:
        assert credit_minor == 0 or total > 0, "a credit with no outage seconds"
        return {a: 0 for a in shares}
    parts = {a: credit_minor * s // total for a, s in shares.items()}
    remainders = {a: Fraction(credit_minor * s, total) - parts[a] for a, s in shares.items()}
    left = credit_minor - sum(parts.values())
    for allocation_id in sorted(shares, key=lambda a: (-remainders[a], a))[:left]:
        parts[allocation_id] += 1
    assert sum(parts.values()) == credit_minor
    return parts


@dataclass(frozen=True)
class Chargeback:
    supplier_id: str
    allocation_id: str
    currency: str
    month: str
    amount_minor: int
    """≤ 0 normally (a credit passed on); positive when a late correction reduces a credit."""


@dataclass
class Expectations:
    invoices: dict[tuple[str, datetime], ExpectedInvoice]
    """(contract_id, period_start) → the invoice."""
    statements: dict[tuple[str, str, str], ExpectedStatement]
    """(supplier_id, currency, month) → the statement."""
    periods: dict[str, list[Span]]
    market: Market


@dataclass
class ExpectedStatement:
    supplier_id: str
    currency: str
    month: str
    earnings_minor: dict[str, int]
    chargebacks_minor: int
    carried_minor: int

    @property
    def earnings_total_minor(self) -> int:
        return sum(self.earnings_minor.values())

    @property
    def net_minor(self) -> int:
        return self.earnings_total_minor + self.chargebacks_minor + self.carried_minor

    def shown(self) -> dict[str, Any]:
        c = self.currency
        return {
            "earnings": {a: show_minor(v, c) for a, v in sorted(self.earnings_minor.items())},
            "earnings_total": show_minor(self.earnings_total_minor, c),
            "sla_chargebacks": show_minor(self.chargebacks_minor, c),
            "carried": show_minor(self.carried_minor, c),
            "net": show_minor(self.net_minor, c),
        }


def _chargebacks(
    market: Market, contract: Contract, credit_minor: int, outages: dict[str, int], prior: dict[str, int], month: str
) -> dict[str, int]:
    """Per allocation: what changes against ``prior`` (signed as on statements) when the period's
    rounded credit ``credit_minor`` (≤ 0) is split by outage shares."""
    parts = split_largest_remainder(-credit_minor, outages) if credit_minor < 0 else {a: 0 for a in outages}
    changes: dict[str, int] = {}
    for allocation_id in sorted(set(parts) | set(prior)):
        change = -parts.get(allocation_id, 0) - prior.get(allocation_id, 0)
        if change:
            changes[allocation_id] = change
    return changes


def expected(
    initial: Sequence[InputEvent],
    everything: Sequence[InputEvent],
    *,
    late_after: datetime,
    demo_end: datetime,
    true_up_adjustments: bool,
) -> Expectations:
    """The invoices and statements the fleet must have produced once the demo clock reached ``demo_end``.

    ``initial``: the events accepted before the clock moved; ``everything``: plus the late ones,
    published after the tick ``late_after``. ``true_up_adjustments``: whether late corrections
    re-evaluate the commitment true-up (a ``commitment_true_up`` adjustment line; extension).
    """
    before = build_market(initial)
    after = build_market(everything)
    late_s, end_s = epoch(late_after), epoch(demo_end)
    invoices: dict[tuple[str, datetime], ExpectedInvoice] = {}
    chargebacks: list[Chargeback] = []
    periods_of: dict[str, list[Span]] = {}

    for contract_id, contract in sorted(after.contracts.items()):
        currency = contract.currency
        periods = contract.periods(end_s)
        periods_of[contract_id] = periods
        # What documents said about already-invoiced periods: (totals, true-up minor, credit minor, parts).
        billed: dict[Span, tuple[Totals, int, int, dict[str, int]]] = {}
        pending: list[Span] = []
        carried = 0
        balance = Fraction(0)
        topups = sorted(after.topups.get(contract_id, []))
        for index, period in enumerate(periods):
            final_early = period[1] <= late_s
            market = before if final_early else after
            c_now = market.contracts[contract_id]
            totals = period_totals(market, c_now, period)

            # Adjustments (R3) for earlier periods whose documents missed late facts.
            adjustments: list[ExpectedAdjustment] = []
            if not final_early:
                for old in list(pending):
                    pending.remove(old)
                    old_totals, old_true_up, old_credit, old_parts = billed[old]
                    new_totals = period_totals(after, contract, old)
                    delta = new_totals.minus(old_totals)
                    if not delta.changed:
                        continue
                    assert not contract.prepaid, "the oracle does not model late corrections of prepaid draws"
                    p_start, p_end = instant(old[0]), instant(old[1])
                    if delta.usage:
                        usage_change = round_minor(delta.usage, currency)
                        adjustments.append(ExpectedAdjustment(p_start, p_end, "usage", usage_change))
                    if true_up_adjustments:
                        new_true_up = round_minor(true_up_of(contract, old, new_totals.usage), currency)
                        if new_true_up != old_true_up:
                            adjustments.append(
                                ExpectedAdjustment(p_start, p_end, "commitment_true_up", new_true_up - old_true_up)
                            )
                    _, credit_exact = sla_credit(contract, old, new_totals)
                    new_credit = round_minor(credit_exact, currency)
                    if new_credit != old_credit:
                        credit_change = new_credit - old_credit
                        adjustments.append(ExpectedAdjustment(p_start, p_end, "sla_credit", credit_change))
                    month = month_key(period[1] - 1)  # lands with the invoice that carries it
                    for allocation_id, change in _chargebacks(
                        after, contract, new_credit, new_totals.outage_by_allocation, old_parts, month
                    ).items():
                        supplier = after.allocations[allocation_id].supplier_id
                        chargebacks.append(Chargeback(supplier, allocation_id, currency, month, change))

            usage_minor = round_minor(totals.usage, currency)
            true_up_minor = round_minor(true_up_of(c_now, period, totals.usage), currency)
            percent, credit_exact = sla_credit(c_now, period, totals)
            credit_minor = round_minor(credit_exact, currency)
            subtotal = usage_minor + true_up_minor + sum(a.amount_minor for a in adjustments) + credit_minor
            tax_rate = c_now.fields_at(rates_at(period))["tax_rate"]
            tax = round_minor(minor_exact(subtotal, currency) * tax_rate, currency) if subtotal > 0 else 0
            total = subtotal + tax

            # R8: drawn = min(usage charges, balance at the period's start + top-ups before its end).
            applied = 0
            if contract.prepaid:
                first = index == 0
                arriving = sum(
                    (amount for at, amount in topups if at < period[1] and (first or at >= period[0])), Fraction(0)
                )
                drawn = min(totals.usage, balance + arriving)
                balance = balance + arriving - drawn
                applied = round_minor(drawn, currency)
            due = total - applied - carried
            amount_due, carried_forward = (due, 0) if due >= 0 else (0, -due)
            key = (contract_id, instant(period[0]))
            invoices[key] = ExpectedInvoice(
                contract_id=contract_id,
                currency=currency,
                period_start=instant(period[0]),
                period_end=instant(period[1]),
                usage_minor=usage_minor,
                true_up_minor=true_up_minor,
                adjustments=adjustments,
                sla_credit_minor=credit_minor,
                sla_credit_percent=percent,
                uptime=uptime_of(totals),
                tax_rate=tax_rate,
                payment_terms_days=contract.payment_terms_days,
                subtotal_minor=subtotal,
                tax_minor=tax,
                total_minor=total,
                prepaid_applied_minor=applied,
                credit_applied_minor=carried,
                amount_due_minor=amount_due,
                credit_carried_forward_minor=carried_forward,
            )
            carried = carried_forward

            month = month_key(period[1] - 1)  # R12: the month of the period's last second
            parts = _chargebacks(market, c_now, credit_minor, totals.outage_by_allocation, {}, month)
            for allocation_id, change in parts.items():
                supplier = market.allocations[allocation_id].supplier_id
                chargebacks.append(Chargeback(supplier, allocation_id, currency, month, change))
            if final_early:
                billed[period] = (totals, true_up_minor, credit_minor, {a: v for a, v in parts.items()})
                pending.append(period)
        assert not [p for p in pending if period_totals(after, contract, p).minus(billed[p][0]).changed], (
            f"{contract_id}: a late correction with no later invoice (a credit note; not modelled)"
        )

    statements = _statements(before, after, late_s, end_s, chargebacks)
    return Expectations(invoices, statements, periods_of, after)


def _statements(
    before: Market, after: Market, late_s: int, end_s: int, chargebacks: Sequence[Chargeback]
) -> dict[tuple[str, str, str], ExpectedStatement]:
    """R12 per supplier, currency and calendar month that ended by ``end_s``."""
    months: list[str] = []
    cursor = min([c.starts_at for c in after.contracts.values()], default=end_s)
    while cursor < end_s:
        name = month_key(cursor)
        if month_span(name)[1] <= end_s:
            months.append(name)
        cursor = month_span(name)[1]
    lines: dict[tuple[str, str, str], dict[str, int]] = defaultdict(dict)
    for allocation_id, allocation in sorted(after.allocations.items()):
        currency = after.contracts[allocation.contract_id].currency
        late_delta = Fraction(0)
        for month in months:
            final_early = month_span(month)[1] <= late_s
            market = before if final_early else after
            own, seconds = (
                month_earnings(market, market.allocations[allocation_id], month)
                if allocation_id in market.allocations
                else (Fraction(0), 0)
            )
            late = Fraction(0)
            if final_early:
                after_own, _ = month_earnings(after, allocation, month)
                late_delta += after_own - own
            else:
                late, late_delta = late_delta, Fraction(0)
            if seconds != 0 or late != 0:
                key = (allocation.supplier_id, currency, month)
                lines[key][allocation_id] = round_minor(own + late, currency)
    landed: dict[tuple[str, str, str], int] = defaultdict(int)
    for part in chargebacks:
        landed[(part.supplier_id, part.currency, part.month)] += part.amount_minor
    has_part = {(p.supplier_id, p.currency, p.month) for p in chargebacks}
    out: dict[tuple[str, str, str], ExpectedStatement] = {}
    pairs = sorted({(s, c) for s, c, _ in [*lines, *landed]})
    for supplier_id, currency in pairs:
        carried = 0
        for month in months:
            key = (supplier_id, currency, month)
            if key not in lines and key not in has_part and carried == 0:
                continue
            statement = ExpectedStatement(
                supplier_id, currency, month, dict(lines.get(key, {})), landed.get(key, 0), carried
            )
            out[key] = statement
            carried = min(statement.net_minor, 0)
    return out


__all__ = [
    "INF",
    "Allocation",
    "Chargeback",
    "Contract",
    "Decoded",
    "Expectations",
    "ExpectedAdjustment",
    "ExpectedInvoice",
    "ExpectedStatement",
    "InputEvent",
    "Market",
    "Totals",
    "build_market",
    "classify",
    "decode",
    "earnings_within",
    "epoch",
    "expected",
    "exponent_of",
    "instant",
    "intersect",
    "month_earnings",
    "month_key",
    "month_span",
    "period_of",
    "period_totals",
    "prorated_commitment",
    "round_half_even_int",
    "round_minor",
    "show_minor",
    "split_largest_remainder",
    "subtract",
    "union",
    "uptime_of",
]
