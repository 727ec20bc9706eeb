"""rating's SQL (schema ``rating``, migration ``0020_rating.sql``). No decisions here: rows in, rows out.
One module per purpose: ``locks``, ``hours`` (priced hours, charges), ``held`` (usage of unknown
contracts), ``watermarks``, ``wallets`` (R8), ``exposure`` (R9); every name is importable from here.

Exact amounts are ``*_x3600`` numerics (the exact amount in major units × 3600, see the migration);
:func:`services.rating.domain.exact_from_x3600` / :func:`~services.rating.domain.x3600_from_exact`
convert them, losslessly, to and from :class:`fractions.Fraction`.

Locks: every rating transaction serializes on transaction-scoped advisory locks, taken once per
batch by :func:`lock_batch` — partitions first, then contracts, each in sorted order — so that two
consumers never interleave on one contract (its wallet, its priced hours, its exposure) or on one
partition's watermark, and no two batches can deadlock. Advisory locks (not ``select … for update``
on ``rating.contracts``) because a contract rating does not know yet must be locked too: usage held
for it and its creation releasing that usage must not race.
"""

from services.rating.store.exposure import (
    Exposure,
    insert_invoice,
    invoice_amount_due,
    invoice_remaining,
    limits_taking_effect,
    load_exposure,
    mark_invoiced,
    period_invoiced,
    save_exposures,
    save_invoice_remaining,
    wallet_balance,
)
from services.rating.store.held import (
    held_usage_count,
    hold_usage,
    take_held_usage,
)
from services.rating.store.hours import (
    ChargeRow,
    HourKey,
    PendingCharge,
    PricedHour,
    insert_charges,
    load_priced_many,
    mark_charges_applied,
    priced_hours_ending_after,
    save_priced_many,
    wallet_charges_due,
)
from services.rating.store.locks import (
    lock_batch,
    prepaid_contracts,
)
from services.rating.store.tables import (
    SCHEMA,
)
from services.rating.store.wallets import (
    TopUp,
    held_topups,
    insert_topup,
    load_wallet,
    mark_topups_applied,
    pending_topups_total,
    save_wallet,
    set_topup_status,
    topups_due,
)
from services.rating.store.watermarks import (
    WatermarkRow,
    load_watermark,
    save_forwarded,
    save_received,
)

__all__ = [
    "SCHEMA",
    "ChargeRow",
    "Exposure",
    "HourKey",
    "PendingCharge",
    "PricedHour",
    "TopUp",
    "WatermarkRow",
    "held_topups",
    "held_usage_count",
    "hold_usage",
    "insert_charges",
    "insert_invoice",
    "insert_topup",
    "invoice_amount_due",
    "invoice_remaining",
    "limits_taking_effect",
    "load_exposure",
    "load_priced_many",
    "load_wallet",
    "load_watermark",
    "lock_batch",
    "mark_charges_applied",
    "mark_invoiced",
    "mark_topups_applied",
    "pending_topups_total",
    "period_invoiced",
    "prepaid_contracts",
    "priced_hours_ending_after",
    "save_exposures",
    "save_forwarded",
    "save_invoice_remaining",
    "save_priced_many",
    "save_received",
    "save_wallet",
    "set_topup_status",
    "take_held_usage",
    "topups_due",
    "wallet_balance",
    "wallet_charges_due",
]
