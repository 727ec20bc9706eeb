"""Gateways built from settings: name → adapter, each with its base URL, key and timeouts.

``SETTLE_GATEWAYS_ENABLED`` lists the names (``stripe``, ``ledgerpay``); a name whose adapter needs a
key that is not set (Stripe's ``SETTLE_STRIPE_API_KEY``) is refused with a clear error rather than
built half-configured. Close the registry once, when the worker stops.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import structlog

from libs.errors import ConfigurationError
from libs.settings import Settings
from services.payments.gateways.ledgerpay_adapter import LedgerPayGateway
from services.payments.gateways.port import Gateway
from services.payments.gateways.stripe_adapter import StripeGateway

KNOWN = ("stripe", "ledgerpay")
log = structlog.get_logger("settle.payments")


def build_gateway(name: str, settings: Settings) -> Gateway:
    if name == "stripe":
        if not settings.stripe_api_key:
            raise ConfigurationError("gateway stripe is enabled but SETTLE_STRIPE_API_KEY is not set")
        return StripeGateway(
            api_key=settings.stripe_api_key,
            api_base=settings.stripe_api_base,
            timeout_s=settings.gateway_timeout_s,
            connect_timeout_s=settings.gateway_connect_timeout_s,
        )
    if name == "ledgerpay":
        return LedgerPayGateway(
            api_base=settings.ledgerpay_api_base,
            api_key=settings.ledgerpay_api_key,
            timeout_s=settings.gateway_timeout_s,
            connect_timeout_s=settings.gateway_connect_timeout_s,
        )
    raise ConfigurationError(f"unknown gateway {name!r} (known: {', '.join(KNOWN)})")


class Gateways(Mapping[str, Gateway]):
    """The configured gateways by name (a read-only mapping) plus :meth:`close`."""

    def __init__(self, gateways: Mapping[str, Gateway]) -> None:
        self._by_name = dict(gateways)

    def __getitem__(self, name: str) -> Gateway:
        return self._by_name[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_name)

    def __len__(self) -> int:
        return len(self._by_name)

    async def close(self) -> None:
        for gateway in self._by_name.values():
            await gateway.close()


def enabled_names(settings: Settings) -> list[str]:
    names = [n.strip() for n in settings.gateways_enabled.split(",") if n.strip()]
    if len(set(names)) != len(names):
        raise ConfigurationError(f"SETTLE_GATEWAYS_ENABLED names a gateway twice: {settings.gateways_enabled}")
    return names


def build_gateways(settings: Settings, names: list[str] | None = None) -> Gateways:
    """Every enabled gateway (or just ``names``). Adapters open their HTTP sessions on first use, so a
    configuration error half-way leaves nothing open.

    From the enabled list, Stripe without a key is left out (its setting says so: unset, no Stripe
    gateway) and logged; asked for by name, it is an error. Attempts routed to a gateway that is not
    built fail with ``gateway_not_configured`` (a definite error, so routing fails over)."""
    if names is None:
        names = enabled_names(settings)
        if "stripe" in names and not settings.stripe_api_key:
            log.warning("stripe is enabled but SETTLE_STRIPE_API_KEY is not set: no Stripe gateway")
            names = [n for n in names if n != "stripe"]
    return Gateways({name: build_gateway(name, settings) for name in names})
