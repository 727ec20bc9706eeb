"""Payments configuration: the gateways, what each takes and costs, and which decline codes are hard.

Configuration, not code (R14): the defaults below describe the two gateways Settle ships adapters
for; ``SETTLE_PAYMENTS_CONFIG`` names a YAML file with the same shape to replace them::

    gateways:
      - {name: stripe, kinds: [card, ach_debit, sepa_debit], fee_fixed_minor: 30, fee_bps: 290}
      - {name: ledgerpay, kinds: [card], currencies: [USD, EUR], fee_fixed_minor: 20, fee_bps: 250}
    hard_decline_codes:
      stripe: [stolen_card, lost_card, expired_card, incorrect_number, fraudulent, ...]
      ledgerpay: ["43", "54", "14", "41"]
    circuit: {failures: 5, open_s: 30}
    explore_every: 20
    interrupted_after_s: 30   # a `sending` attempt this long past the gateway timeout was cut off by a crash
    dispute_fee_minor: 1500   # what a processor charges per dispute opened (posted to dispute_losses)
    inquiry_delays_s: [60, 300, 3600, 86400, 86400, 86400, 86400, 86400]   # R14's schedule (the default)
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml

from services.payments.domain.dunning import INQUIRY_DELAYS, DeclineCodes
from services.payments.domain.routing import GatewayConfig

_DEFAULT: dict[str, Any] = {
    "gateways": [
        {"name": "stripe", "kinds": ["card", "ach_debit", "sepa_debit"], "fee_fixed_minor": 30, "fee_bps": 290},
        {"name": "ledgerpay", "kinds": ["card"], "fee_fixed_minor": 20, "fee_bps": 250},
    ],
    "hard_decline_codes": {
        "stripe": [
            "stolen_card",
            "lost_card",
            "expired_card",
            "incorrect_number",
            "invalid_account",
            "fraudulent",
            "pickup_card",
            "restricted_card",
            "account_closed",
            "no_account",
            "authentication_required",
        ],
        "ledgerpay": ["04", "07", "14", "41", "43", "54", "57"],
    },
    "circuit": {"failures": 5, "open_s": 30},
    "explore_every": 20,
    "interrupted_after_s": 30,
    "dispute_fee_minor": 1500,
}


@dataclass(frozen=True)
class PaymentsConfig:
    gateways: tuple[GatewayConfig, ...]
    codes: DeclineCodes
    circuit_failures: int
    circuit_open_s: float
    explore_every: int
    interrupted_after_s: float = 30.0
    dispute_fee_minor: int = 1500
    inquiry_delays: tuple[timedelta, ...] = INQUIRY_DELAYS

    def gateway(self, name: str) -> GatewayConfig | None:
        return next((g for g in self.gateways if g.name == name), None)


def parse(raw: dict[str, Any]) -> PaymentsConfig:
    gateways = tuple(
        GatewayConfig(
            name=str(g["name"]),
            kinds=frozenset(g["kinds"]),
            currencies=frozenset(g["currencies"]) if g.get("currencies") else None,
            min_minor=int(g.get("min_minor", 1)),
            max_minor=int(g["max_minor"]) if g.get("max_minor") is not None else None,
            fee_fixed_minor=int(g.get("fee_fixed_minor", 0)),
            fee_bps=int(g.get("fee_bps", 0)),
        )
        for g in raw["gateways"]
    )
    assert gateways, "payments need at least one gateway"
    hard = {str(k): frozenset(str(c) for c in v) for k, v in (raw.get("hard_decline_codes") or {}).items()}
    circuit = raw.get("circuit") or {}
    return PaymentsConfig(
        gateways=gateways,
        codes=DeclineCodes(hard),
        circuit_failures=int(circuit.get("failures", 5)),
        circuit_open_s=float(circuit.get("open_s", 30)),
        explore_every=int(raw.get("explore_every", 20)),
        interrupted_after_s=float(raw.get("interrupted_after_s", 30)),
        dispute_fee_minor=int(raw.get("dispute_fee_minor", 1500)),
        inquiry_delays=tuple(timedelta(seconds=float(x)) for x in raw["inquiry_delays_s"])
        if raw.get("inquiry_delays_s")
        else INQUIRY_DELAYS,
    )


def load(path: Path | None) -> PaymentsConfig:
    if path is None:
        return parse(_DEFAULT)
    return parse(yaml.safe_load(path.read_text()))
