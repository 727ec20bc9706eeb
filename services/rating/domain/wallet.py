"""R8: prepaid wallets — charges drawn as they are rated, top-ups, overage settlement, low-balance,
exhaustion and resume signals, event-time ordering, telescoping ledger deltas. Pure."""

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
    ``drawn`` = what the wallet paid of them, ``overage`` = the rest, invoiced at period end.
    Invariants (checked on construction): ``balance ≥ 0``; per period ``drawn ≥ 0``,
    ``overage ≥ 0`` and ``drawn + overage = usage`` (hence ``drawn ≤ usage``).
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

    def __post_init__(self) -> None:
        assert self.balance >= 0, f"wallet balance {self.balance} below zero"
        assert self.last_topup is None or self.last_topup > 0
        periods = set(self.usage_by_period) | set(self.drawn_by_period) | set(self.overage_by_period)
        for period_start in periods:
            usage = self.usage_by_period.get(period_start, Fraction(0))
            drawn = self.drawn_by_period.get(period_start, Fraction(0))
            overage = self.overage_by_period.get(period_start, Fraction(0))
            assert drawn >= 0, f"period {period_start}: drawn {drawn} below zero"
            assert overage >= 0, f"period {period_start}: overage {overage} below zero"
            assert drawn + overage == usage, f"period {period_start}: {drawn} + {overage} != usage {usage}"

    @property
    def low_balance_threshold(self) -> Exact | None:
        return None if self.last_topup is None else self.last_topup * LOW_BALANCE_FRACTION

    def drawn(self, period_start: datetime) -> Exact:
        return self.drawn_by_period.get(period_start, Fraction(0))

    def overage(self, period_start: datetime) -> Exact:
        return self.overage_by_period.get(period_start, Fraction(0))

    def usage(self, period_start: datetime) -> Exact:
        return self.usage_by_period.get(period_start, Fraction(0))


def _with_period(
    state: WalletState,
    period_start: datetime,
    *,
    balance: Exact,
    usage: Exact,
    drawn: Exact,
    overage: Exact,
    low_balance_armed: bool,
    exhausted: bool,
) -> WalletState:
    return replace(
        state,
        balance=balance,
        usage_by_period=_frozen({**state.usage_by_period, period_start: usage}),
        drawn_by_period=_frozen({**state.drawn_by_period, period_start: drawn}),
        overage_by_period=_frozen({**state.overage_by_period, period_start: overage}),
        low_balance_armed=low_balance_armed,
        exhausted=exhausted,
    )


def apply_charge(
    state: WalletState, period_start: datetime, amount: Exact, at: datetime
) -> tuple[WalletState, tuple[WalletSignal, ...]]:
    """Apply a rated usage charge delta of ``period_start``'s period to the wallet (R8).

    Positive: the wallet pays ``min(amount, balance)``; the rest is overage of the period.
    Negative (a correction that lowered usage): first reduces the period's overage, the rest is
    returned from the period's drawn amount to the balance. Signals: :class:`Drawn` for every
    change of drawn, :class:`LowBalance` when the balance crosses below 20 % of the last top-up
    (once until the next top-up), :class:`Exhausted` when a charge leaves the balance at zero and
    the wallet was not exhausted yet.

    Raises DomainRuleError when a negative amount exceeds the period's usage charges so far.
    """
    amount = require_exact(amount, "charge")
    if amount == 0:
        return state, ()
    usage, drawn, overage = state.usage(period_start), state.drawn(period_start), state.overage(period_start)
    signals: list[WalletSignal] = []
    if amount > 0:
        draw = min(amount, state.balance)
        balance = state.balance - draw
        overage += amount - draw
        drawn += draw
        if draw > 0:
            signals.append(Drawn(period_start, draw, "charge", at))
        armed = state.low_balance_armed
        threshold = state.low_balance_threshold
        if armed and threshold is not None and state.balance >= threshold > balance:
            signals.append(LowBalance(balance, threshold, at))
            armed = False
        exhausted = state.exhausted
        if not exhausted and balance == 0:
            signals.append(Exhausted(period_start, overage, at))
            exhausted = True
        new_state = _with_period(
            state,
            period_start,
            balance=balance,
            usage=usage + amount,
            drawn=drawn,
            overage=overage,
            low_balance_armed=armed,
            exhausted=exhausted,
        )
    else:
        reduction = -amount
        if reduction > usage:
            raise DomainRuleError(f"correction {amount} exceeds the usage charges {usage} of period {period_start}")
        from_overage = min(reduction, overage)
        returned = reduction - from_overage
        if returned > 0:
            signals.append(Drawn(period_start, -returned, "correction", at))
        new_state = _with_period(
            state,
            period_start,
            balance=state.balance + returned,
            usage=usage - reduction,
            drawn=drawn - returned,
            overage=overage - from_overage,
            low_balance_armed=state.low_balance_armed,
            exhausted=state.exhausted,
        )
    # Paired assertion: the wallet's money and the period's split moved by the same amount.
    assert (state.balance - new_state.balance) == (new_state.drawn(period_start) - state.drawn(period_start))
    return new_state, tuple(signals)


def apply_topup(
    state: WalletState, period_start: datetime, amount: Exact, at: datetime
) -> tuple[WalletState, tuple[WalletSignal, ...]]:
    """Credit a top-up made at ``at`` (in the period starting ``period_start``) to the wallet (R8).

    The balance grows by ``amount``, which becomes the last top-up (the low-balance threshold is
    20 % of it, and the alert is re-armed); then the overage of the top-up's own period is settled
    first, counting as drawn (:class:`Drawn` with reason ``topup_settlement``). A top-up that arrives
    late — after charges of later periods already ran into overage — then settles those periods'
    overage too, oldest first: in event time the money was there before them, so each later period's
    drawn is min(its usage, the balance at its start + its top-ups), as R8 says. (On time, no later
    period has been charged yet.) A wallet that was exhausted and is above zero afterwards emits
    :class:`Resume`.
    """
    amount = require_exact(amount, "top-up")
    if amount <= 0:
        raise InvalidAmountError(f"a top-up must be positive, got {amount}")
    signals: list[WalletSignal] = []
    threshold = amount * LOW_BALANCE_FRACTION
    new_state = replace(state, balance=state.balance + amount, last_topup=amount, low_balance_armed=True)
    owing = [period_start, *sorted(p for p, owed in state.overage_by_period.items() if p > period_start and owed > 0)]
    settled = Fraction(0)
    for period in owing:
        # Only this top-up's money: a balance left by later top-ups (already run) was not there before them.
        paid = min(new_state.overage(period), amount - settled)
        if paid <= 0:
            continue
        signals.append(Drawn(period, paid, "topup_settlement", at))
        settled += paid
        new_state = _with_period(
            new_state,
            period,
            balance=new_state.balance - paid,
            usage=new_state.usage(period),
            drawn=new_state.drawn(period) + paid,
            overage=new_state.overage(period) - paid,
            low_balance_armed=new_state.low_balance_armed,
            exhausted=new_state.exhausted,
        )
    if settled > 0 and new_state.balance < threshold:
        # The credited balance (≥ amount ≥ threshold) was above the threshold: the settlement crossed it.
        signals.append(LowBalance(new_state.balance, threshold, at))
        new_state = replace(new_state, low_balance_armed=False)
    if new_state.exhausted and new_state.balance > 0:
        signals.append(Resume(new_state.balance, at))
        new_state = replace(new_state, exhausted=False)
    # Paired assertion: what the top-up added is either in the balance or drawn for the periods it settled.
    assert new_state.balance - state.balance + settled == amount
    assert sum(new_state.drawn(p) - state.drawn(p) for p in owing) == settled
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
