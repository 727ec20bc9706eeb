"""Ledger accounts and entries of payouts (pure: no I/O, no clock). Amounts in ledger units.

A payout planned (R15), statement currency C, payout currency P::

    Dr supplier payable:C          L(amount)            the statement nets leave the supplier's payable
    Cr platform target:P           L(payout amount)     target = payouts_in_transit (planned)
                                                               or payouts_on_hold (on_hold)

and when C ≠ P the two currencies meet in the platform's FX position, the exact conversion and the
rounded payout differing by the FX gain or loss (R15: "the difference is posted as FX gain/loss")::

    Cr platform fx_position:C      L(amount)
    Dr platform fx_position:P      round_ledger(amount × rate)
    platform fx_gain_loss:P        the balance: debit = a loss (the payout is more than the exact
                                   conversion), credit = a gain

An operator's hold moves ``payouts_in_transit → payouts_on_hold``, a release the other way. Rail fees
and the rails' own movements (sent, returned, completed) are the rails' entries, not these.
"""

from __future__ import annotations

from datetime import datetime
from fractions import Fraction

from domain.contracts import chart
from libs.ids import derive_id
from libs.ledger import AccountSpec, Entry, Posting, build_entry, credit, debit
from libs.money import minor_to_ledger, round_ledger

PLATFORM = chart.PLATFORM


def payouts_in_transit(currency: str) -> AccountSpec:
    return AccountSpec(
        f"{PLATFORM}:payouts_in_transit:{currency}",
        currency,
        "liability",
        PLATFORM,
        description="payouts planned, to be sent by their rail (R15, R16)",
    )


def payouts_on_hold(currency: str) -> AccountSpec:
    return AccountSpec(
        f"{PLATFORM}:payouts_on_hold:{currency}",
        currency,
        "liability",
        PLATFORM,
        description="payouts planned on hold: never sent until an operator releases them (R15)",
    )


def fx_position(currency: str) -> AccountSpec:
    return AccountSpec(
        f"{PLATFORM}:fx_position:{currency}",
        currency,
        "asset",
        PLATFORM,
        description="currency converted for payouts: credit = given up, debit = acquired (R15)",
    )


def fx_gain_loss(currency: str) -> AccountSpec:
    return AccountSpec(
        f"{PLATFORM}:fx_gain_loss:{currency}",
        currency,
        "expense",
        PLATFORM,
        description="payout conversion: exact minus rounded (R15): debit = loss, credit = gain",
    )


def target_of(state: str, payout_currency: str) -> AccountSpec:
    return payouts_on_hold(payout_currency) if state == "on_hold" else payouts_in_transit(payout_currency)


def payout_entry(
    *,
    payout_id: str,
    supplier_id: str,
    currency: str,
    amount_minor: int,
    payout_currency: str,
    payout_amount_minor: int,
    converted_exact: Fraction | None,
    state: str,
    occurred_at: datetime,
) -> tuple[Entry, list[AccountSpec]]:
    """The one entry of a planned payout, and the accounts it needs."""
    assert amount_minor > 0 and payout_amount_minor > 0
    payable = chart.payable(supplier_id, currency)
    target = target_of(state, payout_currency)
    specs = [payable, target]
    postings: list[Posting] = [
        debit(payable.code, minor_to_ledger(amount_minor, currency), currency),
        credit(target.code, minor_to_ledger(payout_amount_minor, payout_currency), payout_currency),
    ]
    if payout_currency != currency:
        assert converted_exact is not None, "a converted payout keeps its exact conversion"
        from_position, to_position, gain_loss = (
            fx_position(currency),
            fx_position(payout_currency),
            fx_gain_loss(payout_currency),
        )
        specs += [from_position, to_position, gain_loss]
        exact_units = round_ledger(converted_exact, payout_currency)
        postings += [
            credit(from_position.code, minor_to_ledger(amount_minor, currency), currency),
            debit(to_position.code, exact_units, payout_currency),
        ]
        residual = exact_units - minor_to_ledger(payout_amount_minor, payout_currency)
        # Half-even to the minor unit: never more than half a minor unit from the exact conversion.
        assert abs(residual) <= minor_to_ledger(1, payout_currency) // 2 + 1
        if residual:
            postings.append(Posting(gain_loss.code, payout_currency, -residual))
    else:
        assert payout_amount_minor == amount_minor and converted_exact is None
    entry = build_entry(
        id=derive_id("entry", "payout.planned", payout_id),
        cause_id=payout_id,
        kind="payout.planned",
        occurred_at=occurred_at,
        postings=postings,
        description=f"R15 payout {payout_id} to {supplier_id} ({state})",
    )
    assert entry is not None
    used = {p.account for p in entry.postings}
    return entry, [s for s in specs if s.code in used]


def hold_entry(
    *, payout_id: str, action_id: int, hold: bool, payout_currency: str, payout_amount_minor: int, at: datetime
) -> tuple[Entry, list[AccountSpec]]:
    """An operator's hold (in transit → on hold) or release (on hold → in transit)."""
    transit, held = payouts_in_transit(payout_currency), payouts_on_hold(payout_currency)
    source, target = (transit, held) if hold else (held, transit)
    units = minor_to_ledger(payout_amount_minor, payout_currency)
    entry = build_entry(
        id=derive_id("entry", "payout.held" if hold else "payout.released", payout_id, action_id),
        cause_id=f"{payout_id}:{action_id}",
        kind="payout.held" if hold else "payout.released",
        occurred_at=at,
        postings=[debit(source.code, units, payout_currency), credit(target.code, units, payout_currency)],
    )
    assert entry is not None
    return entry, [transit, held]


# --- R16: the rails' movements ----------------------------------------------------------------------------
# Causes are the payout's *ledger key* (the payout id for its first attempt, the attempt's rail reference
# for a retry) followed by what happened, so reconciliation nets a reject with the attempt it undoes and
# reads a return (money back from the bank) on its own. All amounts are in the payout currency P: a
# reversal credits the supplier's payable in P (an FX payout's conversion is not unwound).


def rail_entry(
    kind: str, *, ledger_key: str, supplier_id: str, payout_currency: str, amount_minor: int, at: datetime
) -> tuple[Entry, list[AccountSpec]]:
    """One rail movement of a payout attempt:

    * ``payout.retried`` — a failed payout goes again: ``Dr supplier payable:P / Cr payouts_in_transit:P``;
    * ``payout.rejected`` — refused before settlement (pacs.002 RJCT): ``Dr payouts_in_transit:P / Cr
      supplier payable:P`` (nets with the attempt it undoes: nothing reached the bank);
    * ``payout.returned`` — the money came back (ACH return): the same postings, read on its own by
      reconciliation (the bank shows the return as a credit);
    * ``payout.returned_after_completion`` — a return after completion: ``Dr cash_clearing:P / Cr supplier
      payable:P`` (the cash that left comes back);
    * ``payout.completed`` — matched to a posted bank transaction (R16, R17): ``Dr payouts_in_transit:P /
      Cr cash_clearing:P``.
    """
    assert amount_minor > 0
    payable = chart.payable(supplier_id, payout_currency)
    transit = payouts_in_transit(payout_currency)
    cash = chart.cash_clearing(payout_currency)
    source, target = {
        "payout.retried": (payable, transit),
        "payout.rejected": (transit, payable),
        "payout.returned": (transit, payable),
        "payout.returned_after_completion": (cash, payable),
        "payout.completed": (transit, cash),
    }[kind]
    units = minor_to_ledger(amount_minor, payout_currency)
    entry = build_entry(
        id=derive_id("entry", kind, ledger_key),
        cause_id=f"{ledger_key}:{kind.removeprefix('payout.')}" if kind != "payout.retried" else ledger_key,
        kind=kind,
        occurred_at=at,
        postings=[debit(source.code, units, payout_currency), credit(target.code, units, payout_currency)],
        description=f"R16 {kind} {ledger_key} ({supplier_id})",
    )
    assert entry is not None
    return entry, [source, target]
