"""R16 dispatch, pure (no I/O, no clock, no random ids): which rail carries a payout, what the rail's
instruction for it is, how a file cut at a tick is named, and whether a failed payout may go again.

* :func:`attempt_ref` — what the rail carries for one attempt of a payout (ISO ``EndToEndId``, NACHA
  addenda reference): the payout id without its dashes for the first attempt (32 characters: ISO's
  Max35Text; reconciliation finds the payout id in it), ``…R<n>`` for attempt *n* > 1. A retry is never
  the same rail payment as the attempt before it;
* :func:`instruction_for` — the rail's :class:`PayoutInstruction` from the payee's stored account object;
* :func:`route` — the payee's rail, else its fallback, within the rails' currencies and limits
  (:func:`~services.payouts.rails.calendar.choose_rail`), else wait for an operator with the reasons;
* :func:`file_identity` — batch id, file name and sequence of a file of (rail, tick, sequence);
* :func:`may_retry` — :func:`~services.payouts.rails.port.retry_allowed` over what we know of the
  payout's failed attempts and its payee versions.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime

from services.payouts.rails.calendar import DEFAULT_RAILS, RailConfig, choose_rail
from services.payouts.rails.port import (
    Account,
    IbanAccount,
    PayoutInstruction,
    RailReturn,
    UsBankAccount,
    WalletAccount,
    retry_allowed,
)

FILE_EXTENSIONS: Mapping[str, str] = {
    "ach": "ach",
    "wire": "xml",
    "sepa": "xml",
    "rtp": "xml",
    "fednow": "xml",
    "stablecoin": "json",
}


def attempt_ref(payout_id: str, attempt: int) -> str:
    """The rail's reference of attempt ``attempt`` (1, 2, …) of ``payout_id``: ASCII, at most 35."""
    assert attempt >= 1
    compact = payout_id.replace("-", "")
    if not (compact.isascii() and compact.isalnum() and len(compact) <= 32):
        compact = "P" + hashlib.sha256(payout_id.encode()).hexdigest()[:31]
    return compact if attempt == 1 else f"{compact}R{attempt}"


def account_of(rail: str, account: Mapping[str, str]) -> tuple[str, Account, str]:
    """(payee name, rail account, payee kind) from the stored account object of ``rail`` (the shapes of
    ``schemas.inputs.ACCOUNT_MODELS``, already validated on the way in)."""
    name = account.get("holder_name") or account.get("address", "")
    if rail in ("ach", "rtp", "fednow"):
        kind = "individual" if account.get("entity") == "individual" else "business"
        savings = account.get("account_type") == "savings"
        number = (account["routing_number"], account["account_number"])
        return name, UsBankAccount(*number, "savings") if savings else UsBankAccount(*number, "checking"), kind
    if rail in ("sepa", "wire") and account.get("iban"):
        return name, IbanAccount(account["iban"], account.get("bic")), "business"
    if rail == "wire":
        return name, UsBankAccount(account.get("routing_number") or "", account.get("account_number") or ""), "business"
    if rail == "stablecoin":
        return name, WalletAccount(account["address"], account.get("network", "ethereum")), "business"
    raise ValueError(f"no account shape for rail {rail!r}")


def instruction_for(
    *,
    payout_id: str,
    attempt: int,
    rail: str,
    account: Mapping[str, str],
    amount_minor: int,
    currency: str,
    effective_date: date,
) -> PayoutInstruction:
    """One payout attempt as its rail sends it. The instruction's id is :func:`attempt_ref`: rejects and
    returns name it, and the bank's statement carries it."""
    name, acct, kind = account_of(rail, account)
    ref = attempt_ref(payout_id, attempt)
    return PayoutInstruction(
        payout_id=ref,
        payee_name=name,
        account=acct,
        amount_minor=amount_minor,
        currency=currency,
        effective_date=effective_date,
        reference=ref,
        payee_kind=kind,  # type: ignore[arg-type]
    )


@dataclass(frozen=True, slots=True)
class Route:
    rail: str | None
    reason: str


def route(
    amount_minor: int,
    currency: str,
    preferred: str,
    fallback: str | None,
    configs: Mapping[str, RailConfig] = DEFAULT_RAILS,
) -> Route:
    """R16: the rail a payout goes by, or None (``waiting_operator``) with the reasons."""
    choice = choose_rail(amount_minor, currency, preferred, fallback, configs)
    return Route(choice.rail, choice.reason)


@dataclass(frozen=True, slots=True)
class FileIdentity:
    file_id: str
    batch_id: str
    name: str
    sequence: int


def file_identity(rail: str, tick: datetime, sequence: int) -> FileIdentity:
    """A file cut for ``rail`` at ``tick``, the ``sequence``-th of that tick: every name derives from the
    three (never from the wall clock), so a rebuild after a crash has the same name and bytes."""
    assert tick.tzinfo is not None and sequence >= 0
    stamp = tick.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    batch_id = f"{rail.upper()}{stamp.replace('T', '').replace('Z', '')}S{sequence:03d}"
    name = f"settle-{rail}-{stamp}-{sequence:03d}.{FILE_EXTENSIONS.get(rail, 'dat')}"
    return FileIdentity(file_id=f"{rail}-{stamp}-{sequence:03d}", batch_id=batch_id, name=name, sequence=sequence)


@dataclass(frozen=True, slots=True)
class FailedAttempt:
    attempt: int
    kind: str
    code: str
    payee_details: str
    """Where that attempt sent the money: the payee's rail and account (not the version's event id — a
    republished payee with the same account, e.g. only a new minimum, is not a change of details)."""


def may_retry(failed: Sequence[FailedAttempt], current_payee_details: str | None) -> bool:
    """R16 over the payout's failed attempts (oldest first): the last one decides. The payee's details
    changed when the latest payee's rail and account differ from those that attempt was sent to;
    ``represented`` counts the earlier attempts that failed with an R01/R09 code to the same details."""
    if not failed or current_payee_details is None:
        return False
    last = failed[-1]
    changed = current_payee_details != last.payee_details
    represented = sum(
        1
        for f in failed[:-1]
        if f.payee_details == last.payee_details and f.kind == "return" and f.code in ("R01", "R09")
    )
    answer = RailReturn(kind=last.kind, code=last.code, rail_reference="", reason="")  # type: ignore[arg-type]
    return retry_allowed(answer, represented=represented, payee_changed=changed)
