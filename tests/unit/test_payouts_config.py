"""Payouts configuration (SETTLE_PAYOUTS_CONFIG): our side of each rail comes from the bank agreement,
rail terms are overridable, and a bad file is refused with the key that is wrong."""

from __future__ import annotations

from datetime import UTC, date, datetime, time
from pathlib import Path

import pytest

from services.payouts import config
from services.payouts.domain.dispatch import file_identity, instruction_for
from services.payouts.rails.nacha import read_nacha
from services.payouts.rails.port import PayoutBatch

TICK = datetime(2026, 2, 2, tzinfo=UTC)
ACH = {"holder_name": "Ach Supplier Inc", "routing_number": "021000021", "account_number": "000123456789"}


def _ach_file(cfg: config.PayoutsConfig) -> bytes:
    instruction = instruction_for(
        payout_id="f018c51f-4062-5273-a0eb-5c7ead536bb5",
        attempt=1,
        rail="ach",
        account=ACH,
        amount_minor=120_00,
        currency="USD",
        effective_date=date(2026, 2, 3),
    )
    ident = file_identity("ach", TICK, 0)
    return cfg.rail_impls["ach"].build(PayoutBatch(ident.batch_id, TICK, (instruction,), sequence=0)).content


def test_the_defaults_are_flagged_as_placeholders() -> None:
    cfg = config.load(None)
    assert cfg.placeholder_originator
    assert read_nacha(_ach_file(cfg)).immediate_origin.strip() == "1234567890"


def test_a_configured_originator_is_what_the_files_carry(tmp_path: Path) -> None:
    path = tmp_path / "payouts.yaml"
    path.write_text(
        """
originator:
  ach: {immediate_destination: "011000015", immediate_origin: "9876543210", immediate_origin_name: ACME GPU MARKET,
        company_id: "9876543210", odfi_routing: "011000015"}
rails:
  ach: {cutoff: "14:30", limit_minor: 2500000000}
"""
    )
    cfg = config.load(path)
    assert not cfg.placeholder_originator
    read = read_nacha(_ach_file(cfg))
    assert (read.immediate_destination.strip(), read.immediate_origin.strip()) == ("011000015", "9876543210")
    assert read.immediate_origin_name.strip() == "ACME GPU MARKET"
    assert cfg.rails["ach"].cutoff == time(14, 30) and cfg.rails["ach"].limit_minor == 25_000_000_00
    assert cfg.rails["sepa"] == config.load(None).rails["sepa"]  # untouched rails keep their defaults


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("originator: {ach: {odfi_routing: '12345'}}", "odfi_routing"),
        ("originator: {ach: {company_idd: 'x'}}", "company_idd"),
        ("rails: {carrier_pigeon: {cutoff: '10:00'}}", "carrier_pigeon"),
        ("rails: {ach: {cutoff: 1430}}", "cutoff"),
    ],
)
def test_a_bad_configuration_is_refused_naming_the_key(tmp_path: Path, text: str, named: str) -> None:
    path = tmp_path / "payouts.yaml"
    path.write_text(text)
    with pytest.raises(config.PayoutsConfigError, match=named):
        config.load(path)
