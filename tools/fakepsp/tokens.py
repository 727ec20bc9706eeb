"""Scripted outcomes: what the fake processor does with each test token.

A token is all the "card" a test needs: its name says what happens. Outcomes are per call, chains
advance per (token, invoice) with every charge request the processor *executes* — an idempotent replay
does not advance a chain (it returns the stored first result), a ``500`` is not stored (Stripe saves
no result for a request that failed before it was processed), so a retry of the same key executes
again and moves the chain on.

| token | outcome |
|---|---|
| ``tok_visa``, ``tok_ok``, ``pm_card_visa`` | succeeded |
| ``tok_insufficient_funds`` | soft decline ``card_declined/insufficient_funds`` (LedgerPay ``51``) |
| ``tok_do_not_honor`` | soft decline ``card_declined/do_not_honor`` (``05``) |
| ``tok_stolen`` | hard decline ``card_declined/stolen_card`` (``43``) |
| ``tok_expired`` | hard decline ``expired_card`` (``54``) |
| ``tok_500`` | HTTP 500 before anything is charged (LedgerPay: result ``ERROR``) |
| ``tok_timeout_after_charge`` | charged, then the response is held ``--hang-ms`` (past a client's timeout) |
| ``tok_drop_after_charge`` | charged, then the connection is closed without a response |
| ``tok_slow`` | succeeded after ``--slow-ms`` |
| ``tok_chain_<s1>_..._[then_]<sN>`` | step *k* on the *k*-th executed request for this token and invoice; |
| | the last step repeats. Steps: ``ok``, ``500``, ``soft`` (insufficient funds), ``hard`` (stolen), |
| | ``timeout`` (charged, answer held), ``drop`` (charged, connection closed) |

So ``tok_chain_500_then_ok`` fails with 500 once and succeeds after, and ``tok_chain_soft_soft_ok``
declines the first two distinct idempotency keys and succeeds on the third.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["ok", "decline", "error500", "timeout", "drop", "slow"]


@dataclass(frozen=True)
class Script:
    kind: Kind
    code: str = ""
    """Stripe error code (``card_declined``, ``expired_card``)."""
    decline_code: str = ""
    """Stripe decline code (``insufficient_funds``, ``stolen_card`` …)."""
    reason_code: str = ""
    """LedgerPay's ISO 8583-style reason code for the same decline."""
    message: str = ""


OK = Script("ok")
SOFT = Script("decline", "card_declined", "insufficient_funds", "51", "Your card has insufficient funds.")
DO_NOT_HONOR = Script("decline", "card_declined", "do_not_honor", "05", "Your card was declined.")
STOLEN = Script("decline", "card_declined", "stolen_card", "43", "Your card was declined.")
EXPIRED = Script("decline", "expired_card", "expired_card", "54", "Your card has expired.")
ERROR_500 = Script("error500", message="An unknown error occurred (scripted, nothing was charged).")
TIMEOUT = Script("timeout")
DROP = Script("drop")
SLOW = Script("slow")

TOKENS: dict[str, Script] = {
    "tok_visa": OK,
    "tok_ok": OK,
    "pm_card_visa": OK,
    "tok_insufficient_funds": SOFT,
    "tok_do_not_honor": DO_NOT_HONOR,
    "tok_stolen": STOLEN,
    "tok_expired": EXPIRED,
    "tok_500": ERROR_500,
    "tok_timeout_after_charge": TIMEOUT,
    "tok_drop_after_charge": DROP,
    "tok_slow": SLOW,
}
_STEPS: dict[str, Script] = {
    "ok": OK,
    "500": ERROR_500,
    "soft": SOFT,
    "hard": STOLEN,
    "timeout": TIMEOUT,
    "drop": DROP,
}
CHAIN_PREFIX = "tok_chain_"
MAX_CHAIN_STEPS = 16


def chain_steps(token: str) -> list[Script] | None:
    """The steps of a ``tok_chain_…`` token, or None when the token is not a (valid) chain."""
    if not token.startswith(CHAIN_PREFIX):
        return None
    words = [w for w in token[len(CHAIN_PREFIX) :].split("_") if w != "then"]
    if not words or len(words) > MAX_CHAIN_STEPS or any(w not in _STEPS for w in words):
        return None
    return [_STEPS[w] for w in words]


def is_known(token: str) -> bool:
    return token in TOKENS or chain_steps(token) is not None


def script_for(token: str, executed_before: int) -> Script:
    """What the ``executed_before + 1``-th executed request with this token (for one invoice) does."""
    assert executed_before >= 0
    steps = chain_steps(token)
    if steps is not None:
        return steps[min(executed_before, len(steps) - 1)]
    return TOKENS[token]
