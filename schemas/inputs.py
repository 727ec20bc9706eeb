"""The platform's input contract (docs/billing-rules.md, "Input contract"), as strict pydantic models.

These are what the platform publishes; we validate them strictly (decimals as strings, positive GPU
counts, bounded ids, UTC times) but tolerate unknown fields so the platform can add fields without
breaking us (STYLE rule 8). Settle's extensions of the contract (docs/billing-rules.md) are
optional fields with defaults: ``payment_terms_days``, ``meter_prices``.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator
from stdnum import bic as stdnum_bic
from stdnum import iban as stdnum_iban
from stdnum.us import rtn as stdnum_rtn

from libs import limits
from libs.money import currency_exponent
from schemas.types import (
    Barrier,
    Currency,
    DecimalStr,
    Id,
    NonNegativeDecimalStr,
    PositiveDecimalStr,
    Text,
    UtcTime,
)


class InputModel(BaseModel):
    """Frozen, tolerant of unknown fields (we consume this contract, we do not own it)."""

    model_config = ConfigDict(frozen=True, extra="ignore")


# --- infra.lifecycle.v1 (key: allocation_id) -----------------------------------------------------


def _six_places(value: Decimal) -> Decimal:
    if value.as_tuple().exponent < -6:  # type: ignore[operator]
        raise ValueError("at most 6 decimal places")
    return value


GpuCount = Annotated[int, Field(gt=0, le=limits.MAX_GPU_COUNT, strict=True)]


class AllocationProvisioned(InputModel):
    allocation_id: Id
    contract_id: Id
    renter_id: Id
    supplier_id: Id
    server_id: Id
    gpu_model: Text
    gpu_count: GpuCount


class AllocationDecommissioned(InputModel):
    allocation_id: Id


class MaintenanceWindowEvent(InputModel):
    """``gpu.maintenance.started`` and ``gpu.maintenance.ended``."""

    allocation_id: Id
    window_id: Id


class OutageEvent(InputModel):
    """``gpu.outage.started`` and ``gpu.outage.ended``."""

    allocation_id: Id
    incident_id: Id


# --- contracts.v1 (key: contract_id) -----------------------------------------------------------------


class SlaTier(InputModel):
    """``credit_percent`` of the period's usage charges when uptime is below ``below_uptime``."""

    below_uptime: DecimalStr
    credit_percent: DecimalStr

    @model_validator(mode="after")
    def _bounds(self) -> SlaTier:
        if not (Decimal(0) < self.below_uptime <= Decimal(1)):
            raise ValueError('below_uptime is a fraction in (0, 1], e.g. "0.999"')
        if not (Decimal(0) <= self.credit_percent <= Decimal(100)):
            raise ValueError('credit_percent is a percentage in [0, 100], e.g. "10"')
        return self


SlaTiers = Annotated[list[SlaTier], Field(max_length=limits.MAX_SLA_TIERS)]
MeterName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")]
MeterPrices = Annotated[
    dict[MeterName, Annotated[NonNegativeDecimalStr, AfterValidator(_six_places)]], Field(max_length=32)
]


def _check_tax_rate(value: Decimal | None) -> None:
    if value is not None and not (Decimal(0) <= value <= Decimal(1)):
        raise ValueError('tax_rate is a fraction in [0, 1], e.g. "0.20" for 20 %')


class ContractCreated(InputModel):
    contract_id: Id
    renter_id: Id
    currency: Currency
    billing_mode: Literal["prepaid", "postpaid"]
    price_per_gpu_hour: NonNegativeDecimalStr
    supplier_rate_per_gpu_hour: NonNegativeDecimalStr
    commitment_per_period: NonNegativeDecimalStr
    credit_limit: NonNegativeDecimalStr | None = None
    sla_tiers: SlaTiers = Field(default_factory=list)
    tax_rate: NonNegativeDecimalStr
    starts_at: UtcTime
    ends_at: UtcTime | None = None
    billing_anchor_day: Annotated[int, Field(ge=1, le=28, strict=True)]
    # Settle extensions (docs/billing-rules.md): net days for the due date; prices of metered add-ons per unit.
    payment_terms_days: Annotated[int, Field(ge=0, le=365, strict=True)] = 30
    meter_prices: MeterPrices = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> ContractCreated:
        _check_tax_rate(self.tax_rate)
        if self.ends_at is not None and self.ends_at <= self.starts_at:
            raise ValueError("ends_at must be after starts_at")
        return self


class ContractAmended(InputModel):
    """Any subset of the priced fields, in force from ``effective_at`` (R4, R5)."""

    contract_id: Id
    effective_at: UtcTime
    price_per_gpu_hour: NonNegativeDecimalStr | None = None
    supplier_rate_per_gpu_hour: NonNegativeDecimalStr | None = None
    commitment_per_period: NonNegativeDecimalStr | None = None
    credit_limit: NonNegativeDecimalStr | None = None
    sla_tiers: SlaTiers | None = None
    tax_rate: NonNegativeDecimalStr | None = None
    meter_prices: MeterPrices | None = None

    @model_validator(mode="after")
    def _check(self) -> ContractAmended:
        _check_tax_rate(self.tax_rate)
        priced = (
            "price_per_gpu_hour",
            "supplier_rate_per_gpu_hour",
            "commitment_per_period",
            "credit_limit",
            "sla_tiers",
            "tax_rate",
            "meter_prices",
        )
        changed = {name for name in priced if getattr(self, name) is not None}
        changed |= {"credit_limit"} & self.model_fields_set  # an explicit null credit_limit removes the limit
        if not changed:
            raise ValueError("an amendment must change at least one priced field")
        return self


class ContractTerminated(InputModel):
    contract_id: Id
    effective_at: UtcTime


# --- wallets.v1 (key: contract_id) ------------------------------------------------------------------


class WalletToppedUp(InputModel):
    contract_id: Id
    amount: PositiveDecimalStr
    currency: Currency
    payment_ref: Id


# --- usage.samples.v1 (key: allocation_id) — telemetry, the high-volume path ------------------------


class UsageSampleRecorded(InputModel):
    """One telemetry reading; the envelope ``time`` says when it was measured, ``id`` deduplicates.

    ``quantity`` has at most 6 decimal places (and meter prices too), so a priced quantity stays an
    exact decimal of at most 12 places."""

    allocation_id: Id
    meter: MeterName
    quantity: Annotated[NonNegativeDecimalStr, AfterValidator(_six_places)]


# --- clock.ticks.v1 (key: "clock") ---------------------------------------------------------------------


class ClockTicked(InputModel):
    """Time advances to ``at``: every hour and billing period that ends at or before it is closed.

    ``barrier`` (Settle extension) holds the end offsets of the input topics when the tick was sent:
    the close waits until everything published before the tick has been consumed, so what an invoice
    contains is a function of the input log, not of how far behind a consumer happened to be."""

    at: UtcTime
    barrier: Barrier | None = None


# --- wave two: payments.methods.v1 / payments.received.v1 (key: renter_id) --------------------------


class PaymentMethodEvent(InputModel):
    """``payment_method.attached`` / ``payment_method.detached``: a processor token, never a card number."""

    renter_id: Id
    method_id: Id
    kind: Literal["card", "ach_debit", "sepa_debit"]
    gateway_token: Id
    currency: Currency
    default: bool = False


class PaymentReceived(InputModel):
    """``payment.received``: money that reached the platform's bank or wallet for a renter (R11)."""

    renter_id: Id
    receipt_id: Id
    amount: PositiveDecimalStr
    currency: Currency
    received_at: UtcTime
    rail: Literal["wire", "ach_credit", "sepa_credit", "stablecoin"]
    reference: Annotated[str, Field(max_length=limits.MAX_TEXT_CHARS)] = ""


# --- wave two: suppliers.v1 (key: supplier_id) / fx.rates.v1 (key: "base/quote") --------------------

PayoutRail = Literal["ach", "wire", "rtp", "fednow", "sepa", "stablecoin"]
_ACCOUNT_NUMBER_RE = re.compile(r"^[0-9]{4,17}$")
_ADDRESS_RE = re.compile(r"^[A-Za-z0-9]{20,128}$")


class _AccountModel(BaseModel):
    """Strict: an account object with a field we do not know is refused (we would not pay to it)."""

    model_config = ConfigDict(frozen=True, extra="forbid")


def _routing(value: str) -> str:
    if not stdnum_rtn.is_valid(value):
        raise ValueError("routing_number is not a valid 9-digit ABA routing number")
    return stdnum_rtn.compact(value)


def _account_number(value: str) -> str:
    if not _ACCOUNT_NUMBER_RE.fullmatch(value):
        raise ValueError("account_number is 4 to 17 digits")  # never echo the number itself
    return value


def _iban(value: str) -> str:
    if not stdnum_iban.is_valid(value):
        raise ValueError("iban is not a valid IBAN (country, length or check digits)")
    return stdnum_iban.compact(value)


def _bic(value: str) -> str:
    if not stdnum_bic.is_valid(value):
        raise ValueError("bic is not a valid BIC (8 or 11 characters)")
    return stdnum_bic.compact(value)


RoutingNumber = Annotated[str, Field(max_length=16), AfterValidator(_routing)]
AccountNumber = Annotated[str, Field(max_length=17), AfterValidator(_account_number)]
Iban = Annotated[str, Field(max_length=42), AfterValidator(_iban)]
Bic = Annotated[str, Field(max_length=16), AfterValidator(_bic)]
HolderName = Annotated[str, Field(min_length=1, max_length=140)]


class AchAccount(_AccountModel):
    """``ach``: a US bank account (NACHA PPD for a person, CCD for a company)."""

    holder_name: HolderName
    routing_number: RoutingNumber
    account_number: AccountNumber
    account_type: Literal["checking", "savings"] = "checking"
    entity: Literal["company", "individual"] = "company"


class InstantAccount(_AccountModel):
    """``rtp`` / ``fednow``: a US account reachable by instant payments (pacs.008)."""

    holder_name: HolderName
    routing_number: RoutingNumber
    account_number: AccountNumber


class WireAccount(_AccountModel):
    """``wire``: a domestic (ABA routing + account number) or international (BIC + IBAN or account
    number) beneficiary for pain.001."""

    holder_name: HolderName
    routing_number: RoutingNumber | None = None
    bic: Bic | None = None
    iban: Iban | None = None
    account_number: AccountNumber | None = None
    bank_name: Annotated[str, Field(max_length=140)] | None = None

    @model_validator(mode="after")
    def _reachable(self) -> WireAccount:
        if self.routing_number is None and self.bic is None:
            raise ValueError("a wire account needs a routing_number or a bic")
        if (self.iban is None) == (self.account_number is None):
            raise ValueError("a wire account has exactly one of iban and account_number")
        return self


class SepaAccount(_AccountModel):
    """``sepa``: an IBAN (the BIC is optional in SEPA)."""

    holder_name: HolderName
    iban: Iban
    bic: Bic | None = None


class StablecoinAccount(_AccountModel):
    """``stablecoin``: a wallet address on a network, for a token."""

    network: Literal["ethereum", "solana", "polygon", "base", "stellar"]
    token: Literal["USDC", "USDT", "EURC", "PYUSD"]
    address: Annotated[str, Field(max_length=128, pattern=_ADDRESS_RE.pattern)]


PayeeAccount = AchAccount | InstantAccount | WireAccount | SepaAccount | StablecoinAccount
ACCOUNT_MODELS: dict[str, type[_AccountModel]] = {
    "ach": AchAccount,
    "wire": WireAccount,
    "rtp": InstantAccount,
    "fednow": InstantAccount,
    "sepa": SepaAccount,
    "stablecoin": StablecoinAccount,
}
"""Rail → the shape its ``account`` object must have."""

AccountObject = Annotated[
    dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=limits.MAX_TEXT_CHARS)]],
    Field(max_length=16),
]


def parse_account(rail: str, account: dict[str, str]) -> PayeeAccount:
    """The rail's typed account (raises pydantic.ValidationError on a wrong shape)."""
    model = ACCOUNT_MODELS[rail]
    parsed = model.model_validate(account)
    assert isinstance(parsed, AchAccount | InstantAccount | WireAccount | SepaAccount | StablecoinAccount)
    return parsed


def mask_account(rail: str, account: dict[str, str]) -> str:
    """What a log line or an operator may see of an account: never a full number or IBAN."""
    if rail == "stablecoin":
        address = account.get("address", "")
        return f"{account.get('network', '?')}:{address[:6]}…{address[-4:]}"
    number = account.get("iban") or account.get("account_number") or ""
    return f"{rail}:…{number[-4:]}" if number else f"{rail}:…"


class PayeeUpdated(InputModel):
    """``supplier.payee_updated``: how and when a supplier is paid (R15). The latest one at or before
    planning applies. ``account`` is the rail's object (:data:`ACCOUNT_MODELS`); it is validated for its
    shape and check digits, kept as sent, and never logged in full (:func:`mask_account`)."""

    supplier_id: Id
    payout_currency: Currency
    rail: PayoutRail
    account: AccountObject
    minimum_payout: NonNegativeDecimalStr
    pay_when_paid: bool
    on_hold: bool
    fallback_rail: PayoutRail | None = None
    """R16: the rail an amount over ``rail``'s limit (or in a currency it does not carry) goes by; the same
    ``account`` must reach it (e.g. ``ach`` → ``wire``/``rtp``/``fednow`` with a US account)."""

    @model_validator(mode="after")
    def _check(self) -> PayeeUpdated:
        try:
            parse_account(self.rail, self.account)
            if self.fallback_rail is not None:
                fields = ACCOUNT_MODELS[self.fallback_rail].model_fields
                parse_account(self.fallback_rail, {k: v for k, v in self.account.items() if k in fields})
        except ValidationError as exc:
            # Only field names and messages: pydantic would echo the input (the account number).
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise ValueError(f"account is not a {self.rail} (or fallback) account: {problems}") from None
        if self.fallback_rail == self.rail:
            raise ValueError("fallback_rail is the payee's rail")
        if self.minimum_payout.as_tuple().exponent < -currency_exponent(self.payout_currency):  # type: ignore[operator]
            raise ValueError(f"minimum_payout has more places than {self.payout_currency} has minor digits")
        return self


class FxRate(InputModel):
    """``fx.rate``: 1 ``base`` = ``rate`` ``quote``, published as of ``as_of`` (R15: direct pairs only)."""

    rate_id: Id
    base: Currency
    quote: Currency
    rate: PositiveDecimalStr
    as_of: UtcTime

    @model_validator(mode="after")
    def _check(self) -> FxRate:
        if self.base == self.quote:
            raise ValueError("base and quote are the same currency")
        return self


__all__ = [
    "AllocationDecommissioned",
    "AllocationProvisioned",
    "ClockTicked",
    "ContractAmended",
    "ContractCreated",
    "ContractTerminated",
    "FxRate",
    "MaintenanceWindowEvent",
    "OutageEvent",
    "PayeeUpdated",
    "PaymentMethodEvent",
    "PaymentReceived",
    "SlaTier",
    "UsageSampleRecorded",
    "WalletToppedUp",
]
