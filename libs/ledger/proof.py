"""The journal's canonical form, the ledger hash and the entry chain — pure (no I/O, no clock).

**Canonical entry.** An entry is written as one line of JSON (RFC 8259; no whitespace; every
character outside ASCII escaped as ``\\uXXXX``, so the bytes are ASCII)::

    ["settle.entry.v1", id, occurred_at, kind, cause_id, reverses, description, postings]

``occurred_at`` is UTC with exactly six fractional digits (``2026-12-01T00:00:00.000000Z``),
``reverses`` a string or ``null``, and ``postings`` a list of ``[account, asset, amount]`` sorted by
that triple, with ``amount`` the signed integer in ledger units as a decimal string. Posting sequence
numbers, ``recorded_at``, the transaction id and the chain columns are not part of it: they say where
and when a row was written, not what the ledger says.

**Ledger hash.** SHA-256 over ``settle.ledger.v1\\n`` followed by every entry's canonical line and a
``\\n``, entries in (occurred_at, id) order — ids compared code point by code point. Two ledgers
with the same entries have the same hash whatever the physical row order or the time they were
written; any amount, account, asset, kind, time, cause or reference that differs changes it.

**Chain.** Every entry belongs to one chain: a *lane* of its assets, sorted and joined by ``+``
(``USD/8``; a multi-asset entry ``EUR/8+USD/8``). An asset set has :data:`LANES` lanes: the first is
named by the assets alone (``USD/8``), the others carry ``#1`` … ``#7`` (``USD/8#3``). Each lane is a
chain of its own: its n-th entry stores ``prev_hash`` (the (n-1)-th's ``hash``; 32 zero bytes for the
first) and ``hash = SHA-256(prev_hash ‖ chain line)``, where the chain line is the canonical line with
the entry's ``correlation_id`` (string or null) appended to the array (it is covered by the chain,
though not by the ledger hash: tracing, not money). Which lane an entry joined says only which
transactions were writing at the same time (a posting transaction holds its lane's head until it
commits, so lanes let that many post and commit at once); it is not part of what the ledger says.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from libs.ledger.postings import Entry, asset_of

CANONICAL_TAG = "settle.entry.v1"
LEDGER_HASH_HEADER = b"settle.ledger.v1\n"
GENESIS = bytes(32)
"""``prev_hash`` of every chain's first entry."""


@dataclass(frozen=True)
class EntryRecord:
    """An entry as the journal stores it (postings as (account, asset, amount in ledger units))."""

    id: str
    cause_id: str
    kind: str
    occurred_at: datetime
    reverses: str | None
    description: str
    correlation_id: str | None
    postings: tuple[tuple[str, str, int], ...]


def record_of(entry: Entry) -> EntryRecord:
    """The stored form of an entry about to be posted."""
    return EntryRecord(
        id=entry.id,
        cause_id=entry.cause_id,
        kind=entry.kind,
        occurred_at=entry.occurred_at,
        reverses=entry.reverses,
        description=entry.description,
        correlation_id=entry.correlation_id,
        postings=tuple((p.account, asset_of(p.currency), p.amount_units) for p in entry.postings),
    )


def canonical_time(value: datetime) -> str:
    assert value.tzinfo is not None, "ledger times are UTC"
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def _fields(record: EntryRecord) -> list[object]:
    postings = sorted(record.postings)
    return [
        CANONICAL_TAG,
        record.id,
        canonical_time(record.occurred_at),
        record.kind,
        record.cause_id,
        record.reverses,
        record.description,
        [[account, asset, str(int(amount))] for account, asset, amount in postings],
    ]


def _dump(value: object) -> bytes:
    return json.dumps(value, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def canonical_line(record: EntryRecord) -> bytes:
    """The entry's canonical line (without the trailing newline): what the ledger hash covers."""
    return _dump(_fields(record))


def chain_line(record: EntryRecord) -> bytes:
    """What the chain covers: the canonical line's array with the correlation id appended."""
    return _dump([*_fields(record), record.correlation_id])


LANES = 8
"""Chains per asset set (see the module's docstring)."""


def chain_of(record: EntryRecord) -> str:
    """The asset set an entry is chained under: its sorted assets joined by ``+`` (any of its lanes)."""
    return "+".join(sorted({asset for _, asset, _ in record.postings}))


def lanes_of(assets: str) -> list[str]:
    """The chains (lanes) of an asset set, first lane first: ``USD/8``, ``USD/8#1`` … ``USD/8#7``."""
    return [assets] + [f"{assets}#{n}" for n in range(1, LANES)]


def assets_of_chain(chain: str) -> str:
    """The asset set a chain (lane) belongs to: ``USD/8#3`` → ``USD/8``."""
    return chain.split("#", 1)[0]


def link(prev_hash: bytes, record: EntryRecord) -> bytes:
    """``hash`` of an entry whose predecessor in its chain has hash ``prev_hash``."""
    assert len(prev_hash) == 32, "a chain hash is 32 bytes"
    return hashlib.sha256(prev_hash + chain_line(record)).digest()


def sort_key(record: EntryRecord) -> tuple[str, str]:
    """The ledger hash's order: occurred_at (canonical text sorts as time does), then id."""
    return (canonical_time(record.occurred_at), record.id)


class LedgerHasher:
    """Feed entries in :func:`sort_key` order; :meth:`hexdigest` is the ledger hash.

    Out-of-order or repeated entries are refused (the hash would not be canonical)."""

    def __init__(self) -> None:
        self._sha = hashlib.sha256(LEDGER_HASH_HEADER)
        self._last: tuple[str, str] | None = None
        self.entries = 0
        self.postings = 0

    def add(self, record: EntryRecord) -> None:
        key = sort_key(record)
        if self._last is not None and key <= self._last:
            raise ValueError(f"entries out of canonical order: {self._last} then {key}")
        self._last = key
        self._sha.update(canonical_line(record) + b"\n")
        self.entries += 1
        self.postings += len(record.postings)

    def hexdigest(self) -> str:
        return self._sha.hexdigest()


def ledger_hash(records: Iterable[EntryRecord]) -> str:
    """The ledger hash of entries in any order (sorts them; for large ledgers stream a LedgerHasher)."""
    hasher = LedgerHasher()
    for record in sorted(records, key=sort_key):
        hasher.add(record)
    return hasher.hexdigest()
