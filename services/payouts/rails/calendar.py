"""Business days, cut-offs, effective dates and per-rail limits (R16) — configuration with defaults.

Calendars come from the ``holidays`` package's financial calendars, never a hand-written list:
``FED`` (the Federal Reserve's holidays: a holiday on a Saturday is *not* moved to Friday, one on a
Sunday is observed on Monday) for ACH and USD wires, ``TAR`` (TARGET2 closing days: 1 January, Good
Friday, Easter Monday, 1 May, 25 and 26 December) for SEPA. Instant rails (RTP, FedNow) and
stablecoins run every day of the year.

Everything is pure: the caller passes the moment a batch is cut (``submitted_at``, timezone-aware);
nothing here reads the clock.

Defaults (:data:`DEFAULT_RAILS`; override any field with :func:`rail_configs`) — they are what a
bank typically offers and must be checked against the agreement with ours:

======== ========== =================== ============ =================== ===============================
rail     calendar   cut-off (local)     offset       limit per payout    currencies
======== ========== =================== ============ =================== ===============================
ach      FED        16:00 America/NY    +1 bus. day  $99,999,999.99 [1]  USD
wire     FED        17:00 America/NY    same day     none                any ISO 4217
sepa     TARGET     15:00 Europe/Berlin same day     none                EUR
rtp      every day  none                same day     $10,000,000 [2]     USD
fednow   every day  none                same day     $1,000,000 [3]      USD
stablec. every day  none                same day     $1,000,000          USD (USDC)
======== ========== =================== ============ =================== ===============================

[1] the NACHA entry's 10-digit amount field (Same Day ACH would be $1,000,000 per entry).
[2] The Clearing House's RTP network limit. [3] FedNow's network limit; banks often set lower ones.

The *offset* is the number of business days from the (rolled) submission day to the date written in
the artefact: NACHA's effective entry date (next-day ACH), pain.001's requested execution date,
pacs.008's interbank settlement date.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import date, datetime, time, timedelta
from functools import lru_cache
from typing import Literal
from zoneinfo import ZoneInfo

import holidays

__all__ = [
    "CALENDARS",
    "DEFAULT_RAILS",
    "MAX_ROLL_DAYS",
    "BusinessCalendar",
    "RailChoice",
    "RailConfig",
    "choose_rail",
    "effective_date",
    "rail_configs",
]

MAX_ROLL_DAYS = 31
"""No calendar closes for a month: rolling further is a configuration error, asserted."""

CalendarName = Literal["FED", "TARGET", "ALWAYS"]


@dataclass(frozen=True, slots=True)
class BusinessCalendar:
    """Open days of a settlement system. ``ALWAYS`` is open every day (instant rails, chains)."""

    name: CalendarName

    def is_business_day(self, day: date) -> bool:
        if self.name == "ALWAYS":
            return True
        if day.weekday() >= 5:
            return False
        return day not in _closed_days(self.name, day.year)

    def next_business_day(self, day: date) -> date:
        """``day`` itself when open, else the next open day."""
        for offset in range(MAX_ROLL_DAYS):
            candidate = day + timedelta(days=offset)
            if self.is_business_day(candidate):
                return candidate
        raise AssertionError(f"{self.name}: no business day within {MAX_ROLL_DAYS} days of {day}")

    def add_business_days(self, day: date, count: int) -> date:
        """``count`` business days after the business day ``day`` (``count`` ≥ 0)."""
        assert count >= 0
        current = self.next_business_day(day)
        for _ in range(count):
            current = self.next_business_day(current + timedelta(days=1))
        return current


@lru_cache(maxsize=64)
def _closed_days(name: str, year: int) -> frozenset[date]:
    market = {"FED": "FED", "TARGET": "TAR"}[name]
    return frozenset(holidays.financial_holidays(market, years=year).keys())


CALENDARS: dict[str, BusinessCalendar] = {n: BusinessCalendar(n) for n in ("FED", "TARGET", "ALWAYS")}


@dataclass(frozen=True, slots=True)
class RailConfig:
    """One rail's operating terms. ``cutoff`` None: no cut-off (open around the clock);
    ``limit_minor`` None: no per-payout limit; ``currencies`` None: any currency."""

    name: str
    calendar: CalendarName
    timezone: str
    cutoff: time | None
    offset_days: int
    limit_minor: int | None
    currencies: frozenset[str] | None

    def __post_init__(self) -> None:
        assert self.offset_days >= 0 and (self.limit_minor is None or self.limit_minor > 0)
        ZoneInfo(self.timezone)  # raises for an unknown zone

    def carries(self, currency: str) -> bool:
        return self.currencies is None or currency in self.currencies


DEFAULT_RAILS: dict[str, RailConfig] = {
    "ach": RailConfig("ach", "FED", "America/New_York", time(16, 0), 1, 99_999_999_99, frozenset({"USD"})),
    "wire": RailConfig("wire", "FED", "America/New_York", time(17, 0), 0, None, None),
    "sepa": RailConfig("sepa", "TARGET", "Europe/Berlin", time(15, 0), 0, None, frozenset({"EUR"})),
    "rtp": RailConfig("rtp", "ALWAYS", "America/New_York", None, 0, 10_000_000_00, frozenset({"USD"})),
    "fednow": RailConfig("fednow", "ALWAYS", "America/New_York", None, 0, 1_000_000_00, frozenset({"USD"})),
    "stablecoin": RailConfig("stablecoin", "ALWAYS", "UTC", None, 0, 1_000_000_00, frozenset({"USD"})),
}


def rail_configs(overrides: Mapping[str, Mapping[str, object]] | None = None) -> dict[str, RailConfig]:
    """The defaults with per-rail overrides from configuration, e.g.
    ``{"ach": {"cutoff": "14:30", "limit_minor": 25_000_000}, "sepa": {"limit_minor": None}}``.
    ``cutoff`` is ``"HH:MM"`` or None; ``currencies`` a list or None. Raises ValueError on anything else."""
    configs = dict(DEFAULT_RAILS)
    for rail, values in (overrides or {}).items():
        if rail not in configs:
            raise ValueError(f"unknown rail {rail!r}; known: {', '.join(sorted(configs))}")
        config = configs[rail]
        for key, value in values.items():
            if key == "calendar" and value in ("FED", "TARGET", "ALWAYS"):
                config = replace(config, calendar=value)
            elif key == "timezone" and isinstance(value, str):
                config = replace(config, timezone=value)
            elif key == "cutoff" and (value is None or isinstance(value, str)):
                config = replace(config, cutoff=time.fromisoformat(value) if value is not None else None)
            elif key == "offset_days" and isinstance(value, int) and not isinstance(value, bool):
                config = replace(config, offset_days=value)
            elif key == "limit_minor" and (value is None or (isinstance(value, int) and not isinstance(value, bool))):
                config = replace(config, limit_minor=value)
            elif key == "currencies" and (value is None or isinstance(value, (list, tuple, set, frozenset))):
                config = replace(config, currencies=frozenset(str(c) for c in value) if value is not None else None)
            else:
                raise ValueError(f"rail {rail}: bad setting {key}={value!r}")
        configs[rail] = config
    return configs


def effective_date(config: RailConfig, submitted_at: datetime) -> date:
    """The date a payout submitted at ``submitted_at`` carries in the rail's artefact.

    The submission counts on its local day in the rail's time zone if that day is a business day and
    the time is before the cut-off; otherwise on the next business day. Then ``offset_days`` business
    days are added.
    """
    assert submitted_at.tzinfo is not None, "submitted_at must be timezone-aware"
    calendar = CALENDARS[config.calendar]
    local = submitted_at.astimezone(ZoneInfo(config.timezone))
    day = local.date()
    if config.cutoff is not None and local.time() >= config.cutoff:
        day += timedelta(days=1)
    return calendar.add_business_days(day, config.offset_days)


@dataclass(frozen=True, slots=True)
class RailChoice:
    """``rail`` is the rail to send by, or None when the payout waits for an operator (``reason`` says why)."""

    rail: str | None
    reason: str

    @property
    def wait_for_operator(self) -> bool:
        return self.rail is None


def choose_rail(
    amount_minor: int,
    currency: str,
    preferred: str,
    fallback: str | None,
    configs: Mapping[str, RailConfig] = DEFAULT_RAILS,
) -> RailChoice:
    """R16: the payee's preferred rail when it carries the currency and the amount is within its
    limit; else the payee's fallback rail under the same two tests; else wait for an operator.
    The amount is never split across rails or payouts."""
    assert amount_minor > 0
    refusals: list[str] = []
    for rail in (preferred, fallback):
        if rail is None:
            continue
        config = configs.get(rail)
        if config is None:
            refusals.append(f"{rail}: not a configured rail")
        elif not config.carries(currency):
            refusals.append(f"{rail}: does not carry {currency}")
        elif config.limit_minor is not None and amount_minor > config.limit_minor:
            refusals.append(f"{rail}: {amount_minor} over its limit of {config.limit_minor} minor units")
        else:
            reason = "preferred rail" if rail == preferred else "fallback: " + refusals[0]
            return RailChoice(rail, reason)
    if fallback is None:
        refusals.append("no fallback rail")
    return RailChoice(None, "wait_for_operator: " + "; ".join(refusals))
