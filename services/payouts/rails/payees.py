"""Payee validation (R16): can this account be paid at all, and by which rail?

Check digits come from libraries, never hand-written tables: ABA routing numbers from
``python-stdnum`` (``stdnum.us.rtn``), IBAN and BIC from ``schwifty`` (country length, the mod-97
check, the BIC's shape and country), stablecoin addresses from ``eth-utils`` (EIP-55 mixed-case
checksum over Keccak-256). Every function returns a list of problems in words (empty: valid) and
never raises: a payee's bad details are data to show an operator, not an exception.
"""

from __future__ import annotations

import re

from eth_utils.address import is_checksum_address, is_hex_address
from schwifty import BIC, IBAN
from schwifty.exceptions import SchwiftyException
from stdnum.exceptions import ValidationError
from stdnum.us import rtn

from services.payouts.rails.port import Account, IbanAccount, Payee, UsBankAccount, WalletAccount

__all__ = [
    "MAX_NAME_CHARS",
    "check_account",
    "check_bic",
    "check_iban",
    "check_name",
    "check_payee",
    "check_routing_number",
    "check_us_account_number",
    "check_wallet_address",
    "is_sepa_iban",
]

MAX_NAME_CHARS = 140
"""ISO 20022's ``Max140Text`` for a party name; NACHA's 22-character field truncates further."""

_US_ACCOUNT_RE = re.compile(r"[0-9A-Za-z-]{1,17}")  # NACHA's DFI account number: 17 alphanumerics


def check_routing_number(routing_number: str) -> list[str]:
    """A 9-digit ABA routing transit number with a valid 3-7-1 check digit."""
    try:
        rtn.validate(routing_number)
    except ValidationError as exc:
        return [f"routing number {routing_number!r}: {exc}"]
    if len(routing_number) != 9:  # rtn.validate accepts separators; the files need the 9 digits as they are
        return [f"routing number {routing_number!r}: 9 digits without separators expected"]
    return []


def check_us_account_number(account_number: str) -> list[str]:
    if not _US_ACCOUNT_RE.fullmatch(account_number):
        return [f"account number {account_number!r}: 1 to 17 letters, digits or hyphens expected"]
    return []


def check_iban(iban: str, *, sepa: bool = False) -> list[str]:
    """Length and mod-97 check digits for the IBAN's country; with ``sepa`` also that the country is
    in the SEPA scheme."""
    try:
        parsed = IBAN(iban)
    except SchwiftyException as exc:
        return [f"IBAN {iban!r}: {exc}"]
    if parsed.compact != iban:
        return [f"IBAN {iban!r}: store it compact ({parsed.compact}), without spaces or lower case"]
    if sepa and not parsed.in_sepa_zone:
        return [f"IBAN {iban}: its country is outside the SEPA scheme"]
    return []


def check_bic(bic: str) -> list[str]:
    try:
        parsed = BIC(bic)
    except SchwiftyException as exc:
        return [f"BIC {bic!r}: {exc}"]
    if parsed.compact != bic:
        return [f"BIC {bic!r}: store it compact ({parsed.compact})"]
    return []


def is_sepa_iban(iban: str) -> bool:
    """The IBAN's country is in the SEPA scheme (schwifty's list)."""
    try:
        return bool(IBAN(iban).in_sepa_zone)
    except SchwiftyException:
        return False


def check_wallet_address(address: str) -> list[str]:
    """An EVM address in EIP-55 mixed-case form. An all-lower or all-upper address carries no
    checksum, so a typo in it cannot be caught: refused for payouts."""
    if not address.startswith("0x") or not is_hex_address(address):
        return [f"wallet address {address!r}: 0x and 40 hex digits expected"]
    if not is_checksum_address(address):
        return [f"wallet address {address!r}: not in EIP-55 checksum form (or the checksum is wrong)"]
    return []


def check_name(name: str) -> list[str]:
    if not name.strip():
        return ["payee name is empty"]
    if len(name) > MAX_NAME_CHARS:
        return [f"payee name has {len(name)} characters; at most {MAX_NAME_CHARS}"]
    if any(not ch.isprintable() for ch in name):
        return ["payee name contains control characters"]
    return []


def check_account(account: Account) -> list[str]:
    """The account's own check digits, whatever rail will carry it."""
    if isinstance(account, UsBankAccount):
        return check_routing_number(account.routing_number) + check_us_account_number(account.account_number)
    if isinstance(account, IbanAccount):
        return check_iban(account.iban) + (check_bic(account.bic) if account.bic is not None else [])
    if isinstance(account, WalletAccount):
        return check_wallet_address(account.address)
    raise AssertionError(f"unknown account type {type(account).__name__}")  # exhaustive over Account


def check_payee(payee: Payee) -> list[str]:
    """Name and account problems of a payee (rail-independent)."""
    return check_name(payee.name) + check_account(payee.account)
