"""Payouts configuration: our side of every rail (the bank agreement) and each rail's operating terms.

``SETTLE_PAYOUTS_CONFIG`` names a YAML file; every key is optional and falls back to the defaults::

    originator:
      ach:                       # NACHA file and batch headers, from the ODFI
        immediate_destination: "021000021"
        immediate_destination_name: ODFI BANK
        immediate_origin: "1234567890"
        immediate_origin_name: SETTLE PLATFORM
        company_name: SETTLE
        company_id: "1234567890"
        odfi_routing: "021000021"
        offset_account: {routing_number: "021000021", account_number: "000111222333"}   # balanced files
      usd_debtor: {name: Settle Platform, routing_number: "021000021", account_number: "000111222333", id: SETTLE}
      eur_debtor: {name: Settle Platform, iban: DE89370400440532013000, bic: COBADEFFXXX, id: SETTLE}
      stablecoin: {network: ethereum, chain_id: 1, token_address: "0x…", sender_address: "0x…"}
    rails:                       # per-rail overrides of services.payouts.rails.calendar.DEFAULT_RAILS
      ach: {cutoff: "14:30", limit_minor: 2500000000}

The built-in originator values are **placeholders** (valid formats, nobody's bank): a worker that cuts
files with them logs a warning at start, and :attr:`PayoutsConfig.placeholder_originator` says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.payouts.rails.calendar import RailConfig, rail_configs
from services.payouts.rails.iso20022 import Debtor, InstantRail, Pain001Rail
from services.payouts.rails.nacha import NachaOriginator, NachaRail
from services.payouts.rails.port import IbanAccount, InvalidBatchError, Rail, UsBankAccount
from services.payouts.rails.stablecoin import StablecoinRail, TokenConfig

__all__ = ["PayoutsConfig", "PayoutsConfigError", "load", "parse"]


class PayoutsConfigError(ValueError):
    """The payouts configuration file is unusable; the message names the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _UsAccount(_Strict):
    routing_number: str
    account_number: str


class _Ach(_Strict):
    immediate_destination: str = "021000021"
    immediate_destination_name: str = "ODFI BANK"
    immediate_origin: str = "1234567890"
    immediate_origin_name: str = "SETTLE PLATFORM"
    company_name: str = "SETTLE"
    company_id: str = "1234567890"
    odfi_routing: str = "021000021"
    entry_description: str = "PAYOUT"
    reference_code: str = ""
    offset_account: _UsAccount | None = None


class _UsdDebtor(_Strict):
    name: str = "Settle Platform"
    routing_number: str = "021000021"
    account_number: str = "000111222333"
    id: str = "SETTLE"


class _EurDebtor(_Strict):
    name: str = "Settle Platform"
    iban: str = "DE89370400440532013000"
    bic: str | None = "COBADEFFXXX"
    id: str = "SETTLE"


class _Token(_Strict):
    network: str = "ethereum"
    chain_id: int = Field(default=1, gt=0)
    token_address: str = "0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48"
    sender_address: str = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"
    decimals: int = Field(default=6, ge=0, le=36)


class _Originator(_Strict):
    ach: _Ach = _Ach()
    usd_debtor: _UsdDebtor = _UsdDebtor()
    eur_debtor: _EurDebtor = _EurDebtor()
    stablecoin: _Token = _Token()


class _File(_Strict):
    originator: _Originator = _Originator()
    rails: dict[str, dict[str, Any]] = {}


@dataclass(frozen=True, slots=True)
class PayoutsConfig:
    rails: dict[str, RailConfig]
    """Each rail's calendar, cut-off, offset, limit and currencies."""
    rail_impls: dict[str, Rail]
    """Each rail's writer and reader, built with our side of it."""
    placeholder_originator: bool
    """True when no originator section was configured: the built-in placeholder accounts are in use."""


def parse(raw: Any) -> PayoutsConfig:
    try:
        data = _File.model_validate(raw or {})
    except ValidationError as error:
        raise PayoutsConfigError(f"payouts configuration: {error}") from error
    o = data.originator
    try:
        ach = NachaOriginator(
            **o.ach.model_dump(exclude={"offset_account"}),
            offset_account=UsBankAccount(**o.ach.offset_account.model_dump()) if o.ach.offset_account else None,
        )
        usd = Debtor(
            o.usd_debtor.name, UsBankAccount(o.usd_debtor.routing_number, o.usd_debtor.account_number), o.usd_debtor.id
        )
        eur = Debtor(o.eur_debtor.name, IbanAccount(o.eur_debtor.iban, o.eur_debtor.bic), o.eur_debtor.id)
        token = TokenConfig(**o.stablecoin.model_dump())
        configs = rail_configs(data.rails)
    except (InvalidBatchError, ValueError, AssertionError) as error:
        raise PayoutsConfigError(f"payouts configuration: {error}") from error
    impls: dict[str, Rail] = {
        "ach": NachaRail(ach),
        "wire": Pain001Rail(usd, scheme="wire"),
        "sepa": Pain001Rail(eur, scheme="sepa"),
        "rtp": InstantRail(usd, name="rtp"),  # one transaction per message, as both schemes require
        "fednow": InstantRail(usd, name="fednow"),
        "stablecoin": StablecoinRail(token),
    }
    placeholder = "originator" not in (raw or {})
    return PayoutsConfig(rails=configs, rail_impls=impls, placeholder_originator=placeholder)


def load(path: Path | None) -> PayoutsConfig:
    """The configuration in ``path`` (YAML), or the defaults when None."""
    if path is None:
        return parse({})
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise PayoutsConfigError(f"payouts configuration {path}: {error}") from error
    return parse(raw)
