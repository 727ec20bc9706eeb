"""Rating's pure domain: price usage (R4, R13) in ``pricing``, prepaid wallets (R8) in ``wallet``,
credit limits (R9) in ``credit``; every public name is importable from here.

Units
-----
* ``*_x3600`` are exact :class:`~decimal.Decimal` values equal to the exact amount in major units
  times 3600 (``gpu_seconds × price_per_gpu_hour``). They are computed in a context that traps every
  inexact operation, so nothing here ever rounds; the ``/ 3600`` of R4 happens once per line,
  downstream (invoicing, statements), or through :func:`exact_from_x3600`.
* Wallet and credit amounts are :data:`~libs.money.Exact` (``Fraction``) in major units.
* Times are tz-aware UTC datetimes; an hour is ``[hour_start, hour_start + 1h)``.

No I/O, no clock, no logging: time and ids come from the arguments; the shell (handlers, store)
turns the returned values and signals into rows, ledger postings and events.

Extensions to the billing rules made here (docs/billing-rules.md, "Settle extensions" of R4, R8)
-----------------------------------------------------------------------------------------------
* Add-on meters (``meter != "gpu_seconds"``): charge = ``quantity × meter_prices[meter]`` with the
  terms in force at the first in-term instant of the hour (``max(hour_start, starts_at)``); a meter
  without a price is charged 0; an hour wholly outside the term is charged 0; suppliers earn nothing
  on add-ons (their rate is per GPU-hour only).
* An empty wallet that is charged (never topped up, or at zero without having been exhausted) is
  exhausted too: :class:`Exhausted` fires on the first charge that leaves the balance at zero.
* Only a top-up resumes an exhausted wallet (``ResumeRequested.reason`` is ``wallet_topped_up``);
  money returned by a negative correction goes back to the balance but does not lift a suspension.
* A top-up whose settlement of overage leaves the balance below 20 % of that top-up emits
  :class:`LowBalance` (the top-up armed the alert, the settlement crossed it).
* A late charge or correction (of a period older than others the wallet already ran) draws only from
  the money its period had, and what it takes or returns flows on to the later periods, whose drawn is
  recomputed by R8's closed form (:class:`Drawn` with reason ``correction``, of either sign).
"""

from services.rating.domain.credit import (
    check_credit,
    credit_exposure,
    limit_crossed,
)
from services.rating.domain.pricing import (
    GPU_METER,
    ChargeDelta,
    Priced,
    UsageRecordLike,
    UsageState,
    affected_since,
    exact_from_x3600,
    period_at,
    period_of_hour,
    platform_take,
    price_usage,
    rate_revision,
    reprice_needed,
    usage_state_of,
    x3600_from_exact,
)
from services.rating.domain.wallet import (
    LOW_BALANCE_FRACTION,
    Drawn,
    DrawReason,
    Exhausted,
    LowBalance,
    Resume,
    WalletSignal,
    WalletState,
    apply_charge,
    apply_topup,
    ledger_delta,
    resettle_wallet,
    wallet_order_key,
)

__all__ = [
    "GPU_METER",
    "LOW_BALANCE_FRACTION",
    "ChargeDelta",
    "DrawReason",
    "Drawn",
    "Exhausted",
    "LowBalance",
    "Priced",
    "Resume",
    "UsageRecordLike",
    "UsageState",
    "WalletSignal",
    "WalletState",
    "affected_since",
    "apply_charge",
    "apply_topup",
    "check_credit",
    "credit_exposure",
    "exact_from_x3600",
    "ledger_delta",
    "limit_crossed",
    "period_at",
    "period_of_hour",
    "platform_take",
    "price_usage",
    "rate_revision",
    "reprice_needed",
    "resettle_wallet",
    "usage_state_of",
    "wallet_order_key",
    "x3600_from_exact",
]
