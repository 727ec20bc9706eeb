"""The fake processor's books: charges, refunds, disputes, balance transactions, payouts, idempotency.

Both dialects (Stripe-like and LedgerPay) keep their charges here, each with its own id prefix and fee
schedule. Everything is deterministic: ids are sequence numbers, outcomes come from the token table
(:mod:`tools.fakepsp.tokens`), and money is integers of minor units. Only ``created`` times read the
wall clock (they are reported, never decided on). With a state file the books survive a restart.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Dialect = Literal["stripe", "ledgerpay"]
DAY_S = 86_400
AVAILABLE_AFTER_DAYS = 2
DISPUTE_FEE_MINOR = 1500
MAX_RECORDS = 1_000_000
"""A test double still has limits: past this many charges it refuses more (HTTP 400)."""


@dataclass(frozen=True)
class FeeSchedule:
    """``per_mille`` ‰ of the amount (rounded half up) plus ``fixed_minor``, all in integers."""

    per_mille: int
    fixed_minor: int

    def fee_for(self, amount_minor: int) -> int:
        assert amount_minor > 0
        return (amount_minor * self.per_mille + 500) // 1000 + self.fixed_minor


FEES: dict[Dialect, FeeSchedule] = {
    "stripe": FeeSchedule(per_mille=29, fixed_minor=30),  # 2.9 % + 30
    "ledgerpay": FeeSchedule(per_mille=25, fixed_minor=25),  # 2.5 % + 25
}
PREFIXES: dict[Dialect, dict[str, str]] = {
    "stripe": {"payment": "pi_", "charge": "ch_", "refund": "re_", "dispute": "dp_", "txn": "txn_", "payout": "po_"},
    "ledgerpay": {
        "payment": "lp_",
        "charge": "lpc_",
        "refund": "lpr_",
        "dispute": "lpd_",
        "txn": "lpe_",
        "payout": "lps_",
    },
}


class BooksError(Exception):
    """A request the processor refuses (the HTTP layer renders it in its dialect)."""

    def __init__(self, code: str, message: str, *, status: int = 400, param: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.param = param


@dataclass
class Books:
    """All records, as JSON-ready dicts (so a state file is a plain dump of this object)."""

    seq: int = 0
    payments: dict[str, dict[str, Any]] = field(default_factory=dict)
    refunds: dict[str, dict[str, Any]] = field(default_factory=dict)
    disputes: dict[str, dict[str, Any]] = field(default_factory=dict)
    txns: list[dict[str, Any]] = field(default_factory=list)
    payouts: dict[str, dict[str, Any]] = field(default_factory=dict)
    idempotency: dict[str, dict[str, Any]] = field(default_factory=dict)
    executed: dict[str, int] = field(default_factory=dict)
    """``token|invoice`` → charge requests executed (drives chains)."""
    charges_by_attempt: dict[str, int] = field(default_factory=dict)
    charges_by_key: dict[str, int] = field(default_factory=dict)
    requests: dict[str, int] = field(default_factory=dict)
    """Counters by request kind (``charge``, ``replay``, ``error500``, ``outage`` …) for /_admin/stats."""
    events: list[dict[str, Any]] = field(default_factory=list)
    """Webhook events (Stripe dialect), in creation order."""

    path: Path | None = None
    clock: Any = None
    namespace: str = ""
    """Put into every id after ``fake`` (``ch_fake<namespace>00000001``): a processor started afresh for
    another run against the same database (the demo's second run) never reuses a reported id."""

    # --- basics ---------------------------------------------------------------------------------------
    def now(self) -> int:
        return int(self.clock()) if self.clock is not None else int(time.time())

    def next_id(self, dialect: Dialect, kind: str) -> str:
        self.seq += 1
        return f"{PREFIXES[dialect][kind]}fake{self.namespace}{self.seq:08d}"

    def count(self, what: str) -> None:
        self.requests[what] = self.requests.get(what, 0) + 1

    # --- charges ----------------------------------------------------------------------------------------
    def executed_before(self, token: str, invoice: str) -> int:
        return self.executed.get(f"{token}|{invoice}", 0)

    def note_executed(self, token: str, invoice: str) -> None:
        key = f"{token}|{invoice}"
        self.executed[key] = self.executed.get(key, 0) + 1

    def record_payment(
        self,
        dialect: Dialect,
        *,
        amount_minor: int,
        currency: str,
        token: str,
        metadata: dict[str, str],
        idempotency_key: str,
        succeeded: bool,
        decline: dict[str, str] | None,
    ) -> dict[str, Any]:
        """A charge the processor executed: money moved (``succeeded``) or the issuer declined it."""
        if len(self.payments) >= MAX_RECORDS:
            raise BooksError("limit_exceeded", "the fake processor holds no more charges")
        assert amount_minor > 0
        payment_id = self.next_id(dialect, "payment")
        charge_id = self.next_id(dialect, "charge")
        created = self.now()
        fee = FEES[dialect].fee_for(amount_minor) if succeeded else 0
        payment: dict[str, Any] = {
            "id": payment_id,
            "charge_id": charge_id,
            "dialect": dialect,
            "amount": amount_minor,
            "currency": currency.upper(),
            "token": token,
            "metadata": dict(metadata),
            "idempotency_key": idempotency_key,
            "status": "succeeded" if succeeded else "declined",
            "decline": decline,
            "created": created,
            "fee": fee,
            "amount_refunded": 0,
        }
        self.payments[payment_id] = payment
        if succeeded:
            attempt = metadata.get("attempt_id", "")
            self.charges_by_attempt[attempt] = self.charges_by_attempt.get(attempt, 0) + 1
            self.charges_by_key[idempotency_key] = self.charges_by_key.get(idempotency_key, 0) + 1
            self.add_txn(dialect, "charge", charge_id, amount_minor, fee, currency, created, payment)
        return payment

    def add_txn(
        self,
        dialect: Dialect,
        type_: str,
        source: str,
        amount_minor: int,
        fee_minor: int,
        currency: str,
        created: int,
        payment: dict[str, Any] | None,
    ) -> dict[str, Any]:
        txn = {
            "id": self.next_id(dialect, "txn"),
            "dialect": dialect,
            "type": type_,
            "source": source,
            "payment_id": payment["id"] if payment else None,
            "amount": amount_minor,
            "fee": fee_minor,
            "net": amount_minor - fee_minor,
            "currency": currency.upper(),
            "created": created,
            "available_on": created + AVAILABLE_AFTER_DAYS * DAY_S,
            "payout": None,
            "metadata": dict(payment["metadata"]) if payment else {},
        }
        self.txns.append(txn)
        return txn

    def find_payment(self, dialect: Dialect, ref: str) -> dict[str, Any]:
        """A payment by its id or its charge's id."""
        payment = self.payments.get(ref)
        if payment is None:
            payment = next((p for p in self.payments.values() if p["charge_id"] == ref), None)
        if payment is None or payment["dialect"] != dialect:
            raise BooksError("resource_missing", f"No such charge: '{ref}'", status=404, param="charge")
        return payment

    def search(self, dialect: Dialect, metadata: dict[str, str]) -> list[dict[str, Any]]:
        """Payments whose metadata has every given pair, newest first."""
        found = [
            p
            for p in self.payments.values()
            if p["dialect"] == dialect and all(p["metadata"].get(k) == v for k, v in metadata.items())
        ]
        return sorted(found, key=lambda p: p["id"], reverse=True)

    # --- refunds ----------------------------------------------------------------------------------------
    def refund(
        self, dialect: Dialect, ref: str, amount_minor: int | None, metadata: dict[str, str]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Refund part or all of a succeeded charge; never more than what is left of it."""
        payment = self.find_payment(dialect, ref)
        if payment["status"] != "succeeded":
            raise BooksError("charge_not_refundable", f"Charge {payment['charge_id']} did not succeed.")
        if any(d["payment_id"] == payment["id"] and d["status"] != "won" for d in self.disputes.values()):
            raise BooksError("charge_disputed", f"Charge {payment['charge_id']} has been charged back.")
        left = payment["amount"] - payment["amount_refunded"]
        amount = left if amount_minor is None else amount_minor
        if left == 0:
            raise BooksError("charge_already_refunded", f"Charge {payment['charge_id']} has already been refunded.")
        if amount <= 0:
            raise BooksError("parameter_invalid_integer", "Refund amount must be positive.", param="amount")
        if amount > left:
            raise BooksError(
                "amount_too_large",
                f"Refund amount ({amount}) is greater than unrefunded amount on charge ({left})",
                param="amount",
            )
        created = self.now()
        refund = {
            "id": self.next_id(dialect, "refund"),
            "dialect": dialect,
            "payment_id": payment["id"],
            "charge_id": payment["charge_id"],
            "amount": amount,
            "currency": payment["currency"],
            "status": "succeeded",
            "created": created,
            "metadata": dict(metadata),
        }
        self.refunds[refund["id"]] = refund
        payment["amount_refunded"] += amount
        assert payment["amount_refunded"] <= payment["amount"]
        self.add_txn(dialect, "refund", refund["id"], -amount, 0, payment["currency"], created, payment)
        return refund, payment

    # --- disputes ---------------------------------------------------------------------------------------
    def open_dispute(self, ref: str, amount_minor: int | None, reason: str) -> tuple[dict[str, Any], dict[str, Any]]:
        payment = self._any_payment(ref)
        dialect: Dialect = payment["dialect"]
        if payment["status"] != "succeeded":
            raise BooksError("charge_not_disputable", "only a succeeded charge can be disputed")
        amount = payment["amount"] - payment["amount_refunded"] if amount_minor is None else amount_minor
        if not 0 < amount <= payment["amount"] - payment["amount_refunded"]:
            raise BooksError("amount_invalid", "a dispute is for at most what is left of the charge")
        if any(d["payment_id"] == payment["id"] for d in self.disputes.values()):
            raise BooksError("already_disputed", "this charge already has a dispute")
        created = self.now()
        dispute = {
            "id": self.next_id(dialect, "dispute"),
            "dialect": dialect,
            "payment_id": payment["id"],
            "charge_id": payment["charge_id"],
            "amount": amount,
            "currency": payment["currency"],
            "reason": reason,
            "status": "needs_response",
            "created": created,
        }
        self.disputes[dispute["id"]] = dispute
        self.add_txn(
            dialect, "dispute", dispute["id"], -amount, DISPUTE_FEE_MINOR, payment["currency"], created, payment
        )
        return dispute, payment

    def close_dispute(self, dispute_id: str, status: str) -> tuple[dict[str, Any], dict[str, Any]]:
        dispute = self.disputes.get(dispute_id)
        if dispute is None:
            raise BooksError("resource_missing", f"No such dispute: '{dispute_id}'", status=404)
        if status not in ("won", "lost"):
            raise BooksError("status_invalid", "a dispute closes as won or lost")
        if dispute["status"] in ("won", "lost"):
            raise BooksError("dispute_closed", f"dispute {dispute_id} is already {dispute['status']}")
        dispute["status"] = status
        payment = self.payments[dispute["payment_id"]]
        if status == "won":  # the money comes back; the dispute fee stays (as on Stripe in most regions)
            self.add_txn(
                dispute["dialect"],
                "dispute_reversal",
                dispute_id,
                dispute["amount"],
                0,
                dispute["currency"],
                self.now(),
                payment,
            )
        return dispute, payment

    def _any_payment(self, ref: str) -> dict[str, Any]:
        payment = self.payments.get(ref) or next((p for p in self.payments.values() if p["charge_id"] == ref), None)
        if payment is None:
            raise BooksError("resource_missing", f"No such charge: '{ref}'", status=404)
        return payment

    # --- payouts ----------------------------------------------------------------------------------------
    def payout(self, dialect: Dialect, currency: str) -> dict[str, Any] | None:
        """Pay out every unpaid balance transaction of a currency (None when there is nothing)."""
        unpaid = [
            t
            for t in self.txns
            if t["dialect"] == dialect
            and t["currency"] == currency.upper()
            and t["payout"] is None
            and t["type"] != "payout"
        ]
        if not unpaid:
            return None
        total = sum(t["net"] for t in unpaid)
        created = self.now()
        payout = {
            "id": self.next_id(dialect, "payout"),
            "dialect": dialect,
            "amount": total,
            "currency": currency.upper(),
            "created": created,
            "arrival_date": created + DAY_S,
            "status": "paid",
            "balance_transactions": [t["id"] for t in unpaid],
        }
        self.payouts[payout["id"]] = payout
        for t in unpaid:
            t["payout"] = payout["id"]
        line = self.add_txn(dialect, "payout", payout["id"], -total, 0, currency, created, None)
        line["payout"] = payout["id"]
        return payout

    def txns_of(self, dialect: Dialect) -> list[dict[str, Any]]:
        """Balance transactions of a dialect, newest first (Stripe's list order)."""
        return [t for t in reversed(self.txns) if t["dialect"] == dialect]

    # --- statistics -------------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        by_status = Counter(p["status"] for p in self.payments.values())
        return {
            "charges": sum(self.charges_by_attempt.values()),
            "payments": dict(by_status),
            "charges_by_attempt": dict(self.charges_by_attempt),
            "charges_by_key": dict(self.charges_by_key),
            "requests": dict(self.requests),
            "refunds": len(self.refunds),
            "disputes": len(self.disputes),
            "events": len(self.events),
        }

    # --- persistence ------------------------------------------------------------------------------------
    _FIELDS = (
        "seq",
        "payments",
        "refunds",
        "disputes",
        "txns",
        "payouts",
        "idempotency",
        "executed",
        "charges_by_attempt",
        "charges_by_key",
        "requests",
        "events",
    )

    def save(self) -> None:
        """Write the books to the state file (atomically: a crash leaves the previous file)."""
        if self.path is None:
            return
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        tmp.write_text(json.dumps({name: getattr(self, name) for name in self._FIELDS}, sort_keys=True))
        os.replace(tmp, self.path)

    @classmethod
    def load(cls, path: Path | None) -> Books:
        books = cls(path=path)
        if path is not None and path.exists():
            data = json.loads(path.read_text())
            for name in cls._FIELDS:
                if name in data:
                    setattr(books, name, data[name])
        return books
