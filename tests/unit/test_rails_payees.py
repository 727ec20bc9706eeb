"""Payee validation (R16): check digits from python-stdnum, schwifty and eth-utils."""

from __future__ import annotations

import pytest

from services.payouts.rails.payees import (
    check_account,
    check_bic,
    check_iban,
    check_name,
    check_payee,
    check_routing_number,
    check_us_account_number,
    check_wallet_address,
    is_sepa_iban,
)
from services.payouts.rails.port import IbanAccount, Payee, UsBankAccount, WalletAccount


@pytest.mark.parametrize("routing", ["011000015", "021000021", "026009593", "111000025", "121000248"])
def test_valid_routing_numbers(routing: str) -> None:
    assert check_routing_number(routing) == []


@pytest.mark.parametrize("routing", ["021000022", "12345678", "0210000211", "02100002a", "021-000-021", ""])
def test_invalid_routing_numbers(routing: str) -> None:
    assert len(check_routing_number(routing)) == 1


def test_us_account_numbers() -> None:
    assert check_us_account_number("000123456789") == []
    assert check_us_account_number("1" * 18) != []
    assert check_us_account_number("12 34") != []


def test_iban_and_bic() -> None:
    assert check_iban("DE89370400440532013000") == []
    assert "checksum" in check_iban("DE89370400440532013001")[0].lower()
    assert "compact" in check_iban("DE89 3704 0044 0532 0130 00")[0]
    assert check_bic("COBADEFFXXX") == [] and check_bic("NWBKGB2L") == []
    assert check_bic("COBADEFF1") != []
    assert is_sepa_iban("FR1420041010050500013M02606") and is_sepa_iban("GB29NWBK60161331926819")
    assert not is_sepa_iban("BR1800360305000010009795493C1") and not is_sepa_iban("nonsense")


@pytest.mark.parametrize(
    "address",
    [  # the test vectors of EIP-55
        "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
        "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359",
        "0xdbF03B407c01E7cD3CBea99509d93f8DDDC8C6FB",
        "0xD1220A0cf47c7B9Be7A2E6BA89F429762e7b9aDb",
    ],
)
def test_eip55_checksummed_addresses(address: str) -> None:
    assert check_wallet_address(address) == []
    flipped = address[:2] + address[2:].swapcase()
    assert check_wallet_address(flipped) != []  # every letter's case is part of the checksum


def test_unchecksummed_or_malformed_wallets_are_refused() -> None:
    assert "EIP-55" in check_wallet_address("0x5aaeb6053f3e94c9b9a09f33669435e7ef1beaed")[0]
    assert "40 hex" in check_wallet_address("0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAe")[0]
    assert "40 hex" in check_wallet_address("5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed")[0]


def test_names_and_whole_payees() -> None:
    assert check_name("Acme GmbH") == []
    assert check_name("   ") == ["payee name is empty"]
    assert check_name("x" * 141) != [] and check_name("bad\nname") != []
    assert check_payee(Payee("Acme", UsBankAccount("021000021", "42"))) == []
    assert len(check_payee(Payee("", UsBankAccount("021000022", "42")))) == 2
    assert check_account(IbanAccount("DE89370400440532013000", "COBADEFF1")) != []
    assert check_account(WalletAccount("0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed")) == []
