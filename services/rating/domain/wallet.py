"""R8: prepaid wallets — charges drawn as they are rated, top-ups, overage settlement, late corrections and
late top-ups (R8's closed form per period), low-balance, exhaustion and resume signals, event-time ordering,
telescoping ledger deltas. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from fractions import Fraction
from types import MappingProxyType
from typing import Literal

from libs.errors import DomainRuleError, InvalidAmountError
from libs.money import Exact, round_ledger
from services.rating.domain.pricing import require_exact

LOW_BALANCE_FRACTION = Fraction(1, 5)
"""R8: the low-balance alert fires when the balance crosses below 20 % of the last top-up."""


DrawReason = Literal["charge", "topup_settlement", "correction"]


@dataclass(frozen=True)
class Drawn:
    """Wallet money applied to (positive) or returned from (negative) a period's usage."""

    period_start: datetime
    amount: Exact
    reason: DrawReason
    at: datetime


@dataclass(frozen=True)
class LowBalance:
    """The balance crossed from at least ``threshold`` (20 % of the last top-up) to below it."""

    balance: Exact
    threshold: Exact
    at: datetime


@dataclass(frozen=True)
class Exhausted:
    """The balance reached zero: a suspend request; ``overage`` is the period's overage so far."""

    period_start: datetime
    overage: Exact
    at: datetime


@dataclass(frozen=True)
class Resume:
    """A top-up brought an exhausted wallet above zero: a resume request."""

    balance: Exact
    at: datetime


WalletSignal = Drawn | LowBalance | Exhausted | Resume


def _frozen(values: Mapping[datetime, Exact]) -> Mapping[datetime, Exact]:
    return MappingProxyType(dict(values))


def _empty() -> Mapping[datetime, Exact]:
    return MappingProxyType({})


@dataclass(frozen=True)
class WalletState:
    """A prepaid contract's wallet, in exact major units.

    Per period (keyed by ``period_start``): ``usage`` = the usage charges rated into the wallet,
    ``topups`` = the top-ups made in the period, ``drawn`` = what the wallet paid of the usage,
    ``overage`` = the rest, invoiced at period end.
    Invariants (checked on construction): ``balance ≥ 0``; ``balance = Σ topups − Σ drawn`` over all
    periods (the wallet's money is what came in minus what was drawn); per period ``topups ≥ 0``,
    ``drawn ≥ 0``, ``overage ≥ 0`` and ``drawn + overage = usage`` (hence ``drawn ≤ usage``). The
    operations also keep R8's closed form, period by period, oldest first: ``drawn = min(usage, balance
    at the period's start + topups)``, the balance at a period's start being ``Σ (topups − drawn)`` of
    the periods before it.
    ``low_balance_armed``: a top-up happened since the last low-balance alert.
    ``exhausted``: the balance reached zero and no top-up has lifted it above zero since.
    """

    balance: Exact = Fraction(0)
    last_topup: Exact | None = None
    overage_by_period: Mapping[datetime, Exact] = field(default_factory=_empty)
    drawn_by_period: Mapping[datetime, Exact] = field(default_factory=_empty)
    low_balance_armed: bool = False
    exhausted: bool = False
    usage_by_period: Mapping[datetime, Exact] = field(default_factory=_empty)
    topups_by_period: Mapping[datetime, Exact] = field(default_factory=_empty)

    def __post_init__(self) -> None:
        assert self.balance >= 0, f"wallet balance {self.balance} below zero"
        assert self.last_topup is None or self.last_topup > 0
        for period_start, topups in self.topups_by_period.items():
            assert topups >= 0, f"period {period_start}: top-ups {topups} below zero"
        periods = set(self.usage_by_period) | set(self.drawn_by_period) | set(self.overage_by_period)
        for period_start in periods:
            usage = self.usage_by_period.get(period_start, Fraction(0))
            drawn = self.drawn_by_period.get(period_start, Fraction(0))
            overage = self.overage_by_period.get(period_start, Fraction(0))
            assert drawn >= 0, f"period {period_start}: drawn {drawn} below zero"
            assert overage >= 0, f"period {period_start}: overage {overage} below zero"
            assert drawn + overage == usage, f"period {period_start}: {drawn} + {overage} != usage {usage}"
        topped_up = sum(self.topups_by_period.values(), Fraction(0))
        spent = sum(self.drawn_by_period.values(), Fraction(0))
        assert self.balance == topped_up - spent, (
            f"wallet balance {self.balance} != top-ups {topped_up} − drawn {spent}"
        )

    @property
    def low_balance_threshold(self) -> Exact | None:
        return None if self.last_topup is None else self.last_topup * LOW_BALANCE_FRACTION

    @property
    def periods(self) -> list[datetime]:
        """Every period with usage, draws or top-ups, oldest first."""
        keys = set(self.usage_by_period) | set(self.drawn_by_period) | set(self.overage_by_period)
        return sorted(keys | set(self.topups_by_period))

    def drawn(self, period_start: datetime) -> Exact:
        return self.drawn_by_period.get(period_start, Fraction(0))

    def overage(self, period_start: datetime) -> Exact:
        return self.overage_by_period.get(period_start, Fraction(0))

    def usage(self, period_start: datetime) -> Exact:
        return self.usage_by_period.get(period_start, Fraction(0))

    def topups(self, period_start: datetime) -> Exact:
        return self.topups_by_period.get(period_start, Fraction(0))


def _settle(
    state: WalletState,
    since: datetime,
    usage_by_period: Mapping[datetime, Exact],
    reasons: tuple[DrawReason, DrawReason],
    at: datetime,
) -> tuple[WalletState, tuple[Drawn, ...]]:
    """R8's closed form over ``since``'s period and every later one, with these usage charges per period
    and ``state``'s top-ups.

    The balance at ``since``'s start is what the wallet held before those periods were topped up or drew:
    ``balance − Σ (topups − drawn)`` over them (= ``Σ (topups − drawn)`` of the earlier periods, which
    are not touched). Then, oldest first, each period draws ``min(usage, balance at its start + its
    top-ups)`` and leaves the rest to the next; the last period's rest is the balance. On time (no later
    period has activity) this is one period. Late, the change flows on: money a late charge takes from
    an older period's start balance is money the later periods did not have, and money a late negative
    correction returns was there for them — whatever order the operations arrived in, each period ends
    up with the same drawn.

    Returns the new state (flags unchanged) and a :class:`Drawn` per period whose drawn changed, oldest
    first: ``reasons[0]`` for ``since``'s period, ``reasons[1]`` for later ones.
    """
    keys = set(usage_by_period) | set(state.drawn_by_period) | set(state.topups_by_period)
    affected = sorted(p for p in keys if p >= since)
    balance = state.balance - sum((state.topups(p) - state.drawn(p) for p in affected), Fraction(0))
    assert balance >= 0, f"wallet balance at {since} would be {balance}: drawn off R8 before it"
    usage = dict(usage_by_period)
    drawn = dict(state.drawn_by_period)
    overage = dict(state.overage_by_period)
    signals: list[Drawn] = []
    for period in affected:
        available = balance + state.topups(period)
        period_usage = usage.get(period, Fraction(0))
        assert period_usage >= 0, f"period {period}: usage {period_usage} below zero"
        period_drawn = min(period_usage, available)
        if period_drawn != state.drawn(period):
            reason = reasons[0] if period == since else reasons[1]
            signals.append(Drawn(period, period_drawn - state.drawn(period), reason, at))
        usage[period], drawn[period], overage[period] = period_usage, period_drawn, period_usage - period_drawn
        balance = available - period_drawn
    new_state = replace(
        state,
        balance=balance,
        usage_by_period=_frozen(usage),
        drawn_by_period=_frozen(drawn),
        overage_by_period=_frozen(overage),
    )
    # Paired assertion: the wallet's money and the periods' split moved by the same amount.
    assert state.balance - new_state.balance == sum((d.amount for d in signals), Fraction(0))
    return new_state, tuple(signals)


def resettle_wallet(state: WalletState, at: datetime) -> tuple[WalletState, tuple[WalletSignal, ...]]:
    """``state`` brought back to R8's closed form over all its periods; each change a :class:`Drawn`
    with reason ``correction`` (dated ``at``).

    A no-op for every state :func:`apply_charge` and :func:`apply_topup` produce. A state saved before
    2026-12-08 may be off the rule where a late correction ran against the balance of the time: an older
    period drew later periods' top-ups, or money it returned was not passed on to later periods'
    overage. The wallet run calls this once, before applying anything. Balance flags are left as they
    are (money returned this way does not lift a suspension; only a top-up does).
    """
    periods = state.periods
    if not periods:
        return state, ()
    new_state, signals = _settle(state, periods[0], state.usage_by_period, ("correction", "correction"), at)
    return new_state, signals


def apply_charge(
    state: WalletState, period_start: datetime, amount: Exact, at: datetime
) -> tuple[WalletState, tuple[WalletSignal, ...]]:
    """Apply a rated usage charge delta of ``period_start``'s period to the wallet (R8).

    The period's usage changes by ``amount``; then R8's closed form is applied from that period on
    (:func:`_settle`): each period draws ``min(usage, balance at its start + its top-ups)``.
    On time (the latest period with activity), a positive charge draws ``min(amount, balance)``, the rest
    is overage of the period; a negative one (a correction that lowered usage) first reduces the
    period's overage, the rest is returned from the period's drawn amount to the balance. Late (later
    periods already drew): the period draws only from the money it had — never from later periods'
    top-ups — and what it takes or returns changes the balance at the start of every later period,
    whose drawn is recomputed too (a later period's change is a :class:`Drawn` with reason
    ``correction``: negative when it loses money to the late charge, positive when returned money
    pays its overage).

    Signals: :class:`Drawn` for every change of drawn (the charge's period first, reason ``charge``
    for a positive amount, ``correction`` for a negative one), :class:`LowBalance` when the balance
    crosses below 20 % of the last top-up (once until the next top-up), :class:`Exhausted` when a
    charge leaves the balance at zero and the wallet was not exhausted yet (with the overage of the
    wallet's latest period: the charge's own unless it is late). A negative amount never
    raises an alert nor lifts a suspension (only a top-up does).

    Raises DomainRuleError when a negative amount exceeds the period's usage charges so far.
    """
    amount = require_exact(amount, "charge")
    if amount == 0:
        return state, ()
    usage = state.usage(period_start) + amount
    if usage < 0:
        raise DomainRuleError(
            f"correction {amount} exceeds the usage charges {state.usage(period_start)} of period {period_start}"
        )
    new_state, drawn = _settle(
        state,
        period_start,
        {**state.usage_by_period, period_start: usage},
        ("charge" if amount > 0 else "correction", "correction"),
        at,
    )
    signals: list[WalletSignal] = list(drawn)
    if amount > 0:
        # More usage never returns money: the balance can only fall (or stay).
        assert new_state.balance <= state.balance
        threshold = state.low_balance_threshold
        if state.low_balance_armed and threshold is not None and state.balance >= threshold > new_state.balance:
            signals.append(LowBalance(new_state.balance, threshold, at))
            new_state = replace(new_state, low_balance_armed=False)
        if not state.exhausted and new_state.balance == 0:
            # The period running now (the charge's own, unless the charge is late): where the overage grows.
            latest = new_state.periods[-1]
            signals.append(Exhausted(latest, new_state.overage(latest), at))
            new_state = replace(new_state, exhausted=True)
    else:
        # Less usage never takes money: the balance can only rise (or stay).
        assert new_state.balance >= state.balance
    assert new_state.usage(period_start) == usage
    return new_state, tuple(signals)


def apply_topup(
    state: WalletState, period_start: datetime, amount: Exact, at: datetime
) -> tuple[WalletState, tuple[WalletSignal, ...]]:
    """Credit a top-up made at ``at`` (in the period starting ``period_start``) to the wallet (R8).

    The balance and the period's top-ups grow by ``amount``, which becomes the last top-up (the
    low-balance threshold is 20 % of it, and the alert is re-armed); then R8's closed form is applied
    from the top-up's period on (:func:`_settle`): the overage of the top-up's own period is
    settled first, counting as drawn (:class:`Drawn` with reason ``topup_settlement``). A top-up that
    arrives late — after charges of later periods already ran into overage — then settles those
    periods' overage too, oldest first, with only its own money (a balance left by later top-ups was not
    there before them): in event time the money was there before them, so each later period's drawn is
    min(its usage, the balance at its start + its top-ups), as R8 says. (On time, no later period has
    been charged yet.) A wallet that was exhausted and is above zero afterwards emits :class:`Resume`.

    Raises InvalidAmountError when ``amount`` is not positive.
    """
    amount = require_exact(amount, "top-up")
    if amount <= 0:
        raise InvalidAmountError(f"a top-up must be positive, got {amount}")
    threshold = amount * LOW_BALANCE_FRACTION
    credited = replace(
        state,
        balance=state.balance + amount,
        topups_by_period=_frozen({**state.topups_by_period, period_start: state.topups(period_start) + amount}),
        last_topup=amount,
        low_balance_armed=True,
    )
    new_state, drawn = _settle(
        credited, period_start, credited.usage_by_period, ("topup_settlement", "topup_settlement"), at
    )
    settled = sum((d.amount for d in drawn), Fraction(0))
    # More money never draws less, nor more than it brought (later top-ups' money was not there before it).
    assert all(d.amount > 0 for d in drawn)
    assert settled <= amount
    signals: list[WalletSignal] = list(drawn)
    if settled > 0 and new_state.balance < threshold:
        # The credited balance (≥ amount ≥ threshold) was above the threshold: the settlement crossed it.
        signals.append(LowBalance(new_state.balance, threshold, at))
        new_state = replace(new_state, low_balance_armed=False)
    if new_state.exhausted and new_state.balance > 0:
        signals.append(Resume(new_state.balance, at))
        new_state = replace(new_state, exhausted=False)
    # Paired assertion: what the top-up added is either in the balance or drawn for the periods it settled.
    assert new_state.balance - state.balance + settled == amount
    return new_state, tuple(signals)


WalletOpKind = Literal["topup", "charge"]


def wallet_order_key(period_start: datetime, at: datetime, kind: WalletOpKind) -> tuple[datetime, datetime, int]:
    """Sort key of wallet operations for event-time processing (R8).

    ``at``: a top-up's time; for a charge of hour ``h``, ``h + 1h`` (its usage is complete).
    Operations sort by period, then time, then top-ups before charges at the same instant. Sorting
    by period first only matters at a period boundary: the charge of a period's last hour (at the
    boundary) goes before a top-up made at that instant, which belongs to the next period — so
    each period sees only its own top-ups and ``drawn = min(usage, balance at start + top-ups
    before its end)`` holds per period.
    """
    return period_start, at, 0 if kind == "topup" else 1


def ledger_delta(balance_before: Exact, balance_after: Exact, currency: str) -> int:
    """Ledger units to move out of the wallet account (negative: into it) for a balance change.

    ``round_ledger(before) − round_ledger(after)``: the postings telescope, so the ledger's wallet
    balance is always ``round_ledger(exact balance)`` — never negative, never drifting.
    """
    return round_ledger(Fraction(balance_before), currency) - round_ledger(Fraction(balance_after), currency)
