"""The double-entry ledger: accounts, immutable journal entries, postings in exact integer units.

Public API::

    AccountSpec, Posting, Entry, debit, credit, build_entry   (postings — pure)
    ensure_accounts, post, reverse, balances, verify           (store — asyncpg)
    EntryRecord, ledger_hash, canonical_line, chain_line, link (proof — pure: canonical form, hash, chain)
    hash_ledger, LedgerHash                                    (store — the ledger hash, streamed)

Amounts are integers at the asset's scale (``libs.money.ledger_scale``: USD/8, JPY/6), debit
positive and credit negative. An entry balances per currency when built (asserted here) and when
written (refused by the database otherwise). See ``libs/db/migrations/0002_ledger.sql``.
"""

from libs.ledger.postings import AccountSpec, Entry, Posting, asset_of, build_entry, credit, debit
from libs.ledger.proof import EntryRecord, canonical_line, chain_line, ledger_hash, link
from libs.ledger.store import (
    AccountBalance,
    LedgerHash,
    VerifyReport,
    balances,
    ensure_accounts,
    hash_ledger,
    post,
    reverse,
    verify,
)

__all__ = [
    "AccountBalance",
    "AccountSpec",
    "Entry",
    "EntryRecord",
    "LedgerHash",
    "Posting",
    "VerifyReport",
    "asset_of",
    "balances",
    "build_entry",
    "canonical_line",
    "chain_line",
    "credit",
    "debit",
    "ensure_accounts",
    "hash_ledger",
    "ledger_hash",
    "link",
    "post",
    "reverse",
    "verify",
]
