"""The rail port (R16): what every payout rail offers, whatever its file format.

A rail turns a batch of :class:`PayoutInstruction` into one artefact (a NACHA file, a pain.001 or
pacs.008 document) and reads what the bank sends back (returns, notifications of change, rejects).
Everything here is pure: no clock, no randomness, no I/O. The same batch always gives the same
bytes and the same file id, so a regenerated file is byte-identical and a resend is recognisable
by the bank (and by us).

Amounts are integers of minor units of ``currency`` (ISO 4217 exponent); a rail refuses a currency
it cannot carry rather than converting anything.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from typing import Literal, Protocol

from libs.errors import PermanentError

__all__ = [
    "MAX_REPRESENTMENTS",
    "REPRESENTABLE_CODES",
    "Account",
    "BankFileError",
    "BuiltFile",
    "IbanAccount",
    "InvalidBatchError",
    "Payee",
    "PayeeKind",
    "PayoutBatch",
    "PayoutInstruction",
    "Rail",
    "RailReturn",
    "ReturnKind",
    "UsBankAccount",
    "WalletAccount",
    "file_digest",
    "retry_allowed",
    "with_payout_ids",
]

PayeeKind = Literal["individual", "business"]
"""Who receives the money: decides e.g. the NACHA SEC code (PPD for individuals, CCD for businesses)."""

ReturnKind = Literal["return", "notification_of_change", "reject", "acknowledgement"]
"""``return``: the money came back (ACH return, R-code). ``notification_of_change``: the payment went
through but the payee's details must be corrected (ACH NOC, C-code). ``reject``: the payment was
refused before settlement (pacs.002/pain.002 ``RJCT``)."""


class BankFileError(PermanentError):
    """A file from (or for) the bank is malformed: wrong record length, bad totals, unknown record."""


class InvalidBatchError(PermanentError):
    """A batch the rail cannot build: wrong currency, an invalid payee, an empty batch, a field too long."""


@dataclass(frozen=True, slots=True)
class UsBankAccount:
    """A US account reached through ACH, RTP or FedNow: a 9-digit ABA routing number and an account number."""

    routing_number: str
    account_number: str
    account_type: Literal["checking", "savings"] = "checking"


@dataclass(frozen=True, slots=True)
class IbanAccount:
    """An account reached by SEPA or a SWIFT wire: an IBAN and (optional for SEPA) the bank's BIC."""

    iban: str
    bic: str | None = None


@dataclass(frozen=True, slots=True)
class WalletAccount:
    """A stablecoin wallet: a 0x-address on an EVM network, checksummed per EIP-55."""

    address: str
    network: str = "ethereum"


Account = UsBankAccount | IbanAccount | WalletAccount


@dataclass(frozen=True, slots=True)
class Payee:
    """Whom a rail pays: a name as the bank shows it, the account, and individual or business."""

    name: str
    account: Account
    kind: PayeeKind = "business"


@dataclass(frozen=True, slots=True)
class PayoutInstruction:
    """One payout to send once (R16: one payout id, one payment).

    ``amount_minor`` is a positive integer of minor units of ``currency``; ``effective_date`` is the
    date the money should settle (a business day of the rail, see :mod:`.calendar`); ``reference`` is
    what the payee sees (remittance information), ``payout_id`` what we match returns and statements on.
    """

    payout_id: str
    payee_name: str
    account: Account
    amount_minor: int
    currency: str
    effective_date: date
    reference: str
    payee_kind: PayeeKind = "business"

    def __post_init__(self) -> None:
        if isinstance(self.amount_minor, bool) or not isinstance(self.amount_minor, int):
            raise InvalidBatchError(f"payout {self.payout_id}: amount_minor must be an int, not {self.amount_minor!r}")
        if self.amount_minor <= 0:
            raise InvalidBatchError(f"payout {self.payout_id}: amount_minor must be positive, got {self.amount_minor}")
        if not self.payout_id:
            raise InvalidBatchError("a payout needs a payout_id")

    @property
    def payee(self) -> Payee:
        return Payee(self.payee_name, self.account, self.payee_kind)


@dataclass(frozen=True, slots=True)
class PayoutBatch:
    """What one artefact carries.

    ``created_at`` (timezone-aware) is written as the file's creation time: the caller passes the
    batch's own time (e.g. the cut-off it was cut at), never the wall clock, so a rebuild is identical.
    ``sequence`` numbers the files cut for the same originator on the same day (0, 1, …): NACHA's
    file id modifier is derived from it, so two different files of a day never look like a resend.
    ``first_trace`` is the sequence number of the file's first NACHA entry: the caller continues after
    the rail's earlier files, so a trace number names one entry across files (a return names only
    its trace); other rails ignore it.
    """

    batch_id: str
    created_at: datetime
    instructions: tuple[PayoutInstruction, ...]
    sequence: int = 0
    first_trace: int = 1

    def __post_init__(self) -> None:
        if self.created_at.tzinfo is None:
            raise InvalidBatchError(f"batch {self.batch_id}: created_at must be timezone-aware")
        if not self.instructions:
            raise InvalidBatchError(f"batch {self.batch_id}: no instructions")
        if self.first_trace < 1:
            raise InvalidBatchError(f"batch {self.batch_id}: first_trace must be at least 1")
        ids = [i.payout_id for i in self.instructions]
        if len(set(ids)) != len(ids):
            raise InvalidBatchError(f"batch {self.batch_id}: a payout id appears twice (R16: sent once)")
        if self.sequence < 0:
            raise InvalidBatchError(f"batch {self.batch_id}: sequence must be >= 0")


@dataclass(frozen=True, slots=True)
class BuiltFile:
    """A built artefact. ``file_id`` names it (stable across rebuilds); ``references`` maps each
    payout id to the rail's own reference for it (the ACH trace number, the ISO end-to-end id) so
    returns can be matched back. ``digest`` is the SHA-256 of ``content``."""

    file_id: str
    content: bytes
    references: dict[str, str]
    count: int
    total_minor: int
    currency: str
    media_type: str
    digest: str = field(default="")

    def __post_init__(self) -> None:
        if not self.digest:
            object.__setattr__(self, "digest", file_digest(self.content))
        assert self.digest == file_digest(self.content), "digest must be the content's"
        assert len(self.references) == self.count, "one rail reference per payout"


@dataclass(frozen=True, slots=True)
class RailReturn:
    """One answer from the bank about one payout.

    ``rail_reference`` is the reference we sent (ACH original trace number, ISO original end-to-end id);
    ``payout_id`` is filled when the artefact carries it (ISO: the end-to-end id *is* the payout id),
    otherwise the caller resolves ``rail_reference`` through :attr:`BuiltFile.references`.
    ``corrected_data`` is set for notifications of change. ``amount_minor`` is what came back, if stated.
    """

    kind: ReturnKind
    code: str
    rail_reference: str
    reason: str
    payout_id: str | None = None
    amount_minor: int | None = None
    corrected_data: str | None = None
    original_message_id: str | None = None


class Rail(Protocol):
    """The port every payout rail implements."""

    name: str
    max_per_file: int
    """The most payouts one artefact carries (a round with more is cut into several)."""

    def validate(self, payee: Payee) -> list[str]:
        """Problems that stop this rail from paying ``payee`` (empty list: payable). Never raises."""
        ...

    def build(self, batch: PayoutBatch) -> BuiltFile:
        """The artefact for ``batch``: deterministic bytes and file id. Raises InvalidBatchError."""
        ...

    def parse_returns(self, content: bytes) -> list[RailReturn]:
        """Returns, notifications of change and rejects in a file from the bank. Raises BankFileError."""
        ...


def file_digest(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def with_payout_ids(returns: list[RailReturn], references: dict[str, str]) -> list[RailReturn]:
    """Fill ``payout_id`` from the built file's ``references`` (payout id → rail reference) where the
    bank's answer names only the rail reference (an ACH trace number). Unknown references stay None:
    the caller treats them as not ours (or from a file it no longer has), never guesses."""
    by_reference = {reference: payout_id for payout_id, reference in references.items()}
    assert len(by_reference) == len(references), "rail references are unique within a file"
    return [r if r.payout_id is not None else replace(r, payout_id=by_reference.get(r.rail_reference)) for r in returns]


REPRESENTABLE_CODES = frozenset({"R01", "R09"})
"""ACH returns for insufficient or uncollected funds: the only ones sent again with unchanged details."""

MAX_REPRESENTMENTS = 2
"""R16 (and NACHA's rule): an R01/R09 return is presented again at most twice."""


def retry_allowed(answer: RailReturn, *, represented: int, payee_changed: bool) -> bool:
    """R16: may the payout be sent again after ``answer``?

    A notification of change is not a failure (the payment went through; apply the correction). A
    return or reject is retried once the payee's details changed; without a change only an ACH R01/R09
    return, and only while it has been presented again fewer than :data:`MAX_REPRESENTMENTS` times.
    """
    assert represented >= 0
    if answer.kind == "notification_of_change":
        return False
    if payee_changed:
        return True
    return answer.kind == "return" and answer.code in REPRESENTABLE_CODES and represented < MAX_REPRESENTMENTS
