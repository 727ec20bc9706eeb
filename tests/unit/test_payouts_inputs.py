"""The payouts inputs (suppliers.v1, fx.rates.v1) and the ledger entries of a planned payout."""

from __future__ import annotations

from datetime import UTC, datetime
from fractions import Fraction
from typing import Any

import pytest
from pydantic import ValidationError

from libs.errors import InvalidEventError
from libs.messaging.envelope import RawEnvelope, decode_data
from schemas.inputs import FxRate, PayeeUpdated, mask_account
from services.payouts.entries import hold_entry, payout_entry

AT = datetime(2026, 2, 1, tzinfo=UTC)
ACH = {"holder_name": "Supplier Inc", "routing_number": "021000021", "account_number": "000123456789"}


def payee(rail: str = "ach", account: dict[str, str] | None = None, **kw: Any) -> dict[str, Any]:
    return {
        "supplier_id": "sup-1",
        "payout_currency": kw.get("currency", "USD"),
        "rail": rail,
        "account": ACH if account is None else account,
        "minimum_payout": kw.get("minimum", "100.00"),
        "pay_when_paid": False,
        "on_hold": False,
    }


@pytest.mark.parametrize(
    ("rail", "account"),
    [
        ("ach", ACH),
        ("rtp", {"holder_name": "A", "routing_number": "021000021", "account_number": "1234"}),
        ("fednow", {"holder_name": "A", "routing_number": "021000021", "account_number": "1234"}),
        ("wire", {"holder_name": "A", "bic": "DEUTDEFF", "iban": "DE89370400440532013000"}),
        ("sepa", {"holder_name": "A", "iban": "DE89 3704 0044 0532 0130 00"}),
        ("stablecoin", {"network": "ethereum", "token": "USDC", "address": "0x" + "ab" * 20}),
    ],
)
def test_each_rail_accepts_its_account_shape(rail: str, account: dict[str, str]) -> None:
    assert PayeeUpdated.model_validate(payee(rail, account)).rail == rail


@pytest.mark.parametrize(
    ("rail", "account", "why"),
    [
        ("ach", {**ACH, "routing_number": "021000022"}, "routing_number"),  # check digit
        ("ach", {**ACH, "account_number": "12AB"}, "account_number"),
        ("ach", {**ACH, "iban": "DE89370400440532013000"}, "iban"),  # a field the rail does not have
        ("sepa", {"holder_name": "A", "iban": "DE89370400440532013001"}, "iban"),
        ("wire", {"holder_name": "A", "account_number": "1234"}, "routing_number or a bic"),
        ("stablecoin", {"network": "ethereum", "token": "USDC"}, "address"),
    ],
)
def test_a_wrong_account_is_refused_without_echoing_it(rail: str, account: dict[str, str], why: str) -> None:
    with pytest.raises(ValidationError) as caught:
        PayeeUpdated.model_validate(payee(rail, account))
    assert why in str(caught.value)
    raw = RawEnvelope.model_validate(
        {
            "specversion": "1.0",
            "id": "e-1",
            "source": "/platform",
            "type": "supplier.payee_updated",
            "time": "2026-01-01T00:00:00Z",
            "data": payee(rail, account),
        }
    )
    with pytest.raises(InvalidEventError) as dead:
        decode_data(raw, PayeeUpdated)  # what a dead letter's reason says
    for secret in ("000123456789", "DE89370400440532013001", "12AB"):
        assert secret not in str(dead.value)


def test_minimum_has_at_most_the_payout_currency_digits() -> None:
    with pytest.raises(ValidationError):
        PayeeUpdated.model_validate(payee(currency="JPY", minimum="100.5"))
    assert PayeeUpdated.model_validate(payee(currency="JPY", minimum="100")).minimum_payout == 100


def test_masked_accounts_show_only_the_last_four() -> None:
    assert mask_account("ach", ACH) == "ach:…6789"
    assert mask_account("sepa", {"iban": "DE89370400440532013000"}) == "sepa:…3000"
    assert mask_account("stablecoin", {"network": "base", "address": "0xabcdef0123456789"}) == "base:0xabcd…6789"


def test_fx_rate_is_a_positive_decimal_between_two_currencies() -> None:
    rate = FxRate.model_validate({"rate_id": "r", "base": "EUR", "quote": "USD", "rate": "1.0857", "as_of": AT})
    assert Fraction(rate.rate) == Fraction(10857, 10000)
    for bad in ({"rate": "0"}, {"rate": 1.1}, {"quote": "EUR"}, {"base": "XXX"}):
        with pytest.raises(ValidationError):
            FxRate.model_validate({"rate_id": "r", "base": "EUR", "quote": "USD", "rate": "1.1", "as_of": AT, **bad})


def _balances(entry: Any) -> dict[tuple[str, str], int]:
    return {(p.account, p.currency): p.amount_units for p in entry.postings}


def test_a_converted_payout_posts_the_fx_difference_as_gain_or_loss() -> None:
    # 41.10 EUR at 1.0857 = 44.62227 USD, paid 44.62: a gain of 0.00227 USD (227,000 USD/8 units).
    entry, specs = payout_entry(
        payout_id="p-1",
        supplier_id="sup-1",
        currency="EUR",
        amount_minor=4_110,
        payout_currency="USD",
        payout_amount_minor=4_462,
        converted_exact=Fraction(4_110, 100) * Fraction("1.0857"),
        state="planned",
        occurred_at=AT,
    )
    got = _balances(entry)
    assert got[("supplier:sup-1:payable:EUR", "EUR")] == 4_110 * 10**6
    assert got[("platform:fx_position:EUR", "EUR")] == -4_110 * 10**6
    assert got[("platform:fx_position:USD", "USD")] == 4_462_227_000
    assert got[("platform:payouts_in_transit:USD", "USD")] == -4_462 * 10**6
    assert got[("platform:fx_gain_loss:USD", "USD")] == -227_000  # credit: a gain
    assert {s.code for s in specs} == {a for a, _ in got}


def test_a_payout_in_its_statement_currency_moves_payable_to_its_target() -> None:
    entry, _ = payout_entry(
        payout_id="p-2",
        supplier_id="sup-1",
        currency="USD",
        amount_minor=7_500,
        payout_currency="USD",
        payout_amount_minor=7_500,
        converted_exact=None,
        state="on_hold",
        occurred_at=AT,
    )
    assert _balances(entry) == {
        ("supplier:sup-1:payable:USD", "USD"): 7_500 * 10**6,
        ("platform:payouts_on_hold:USD", "USD"): -7_500 * 10**6,
    }
    released, _ = hold_entry(
        payout_id="p-2", action_id=1, hold=False, payout_currency="USD", payout_amount_minor=7_500, at=AT
    )
    assert _balances(released) == {
        ("platform:payouts_on_hold:USD", "USD"): 7_500 * 10**6,
        ("platform:payouts_in_transit:USD", "USD"): -7_500 * 10**6,
    }
