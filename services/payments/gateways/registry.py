"""Gateways built from settings: name → adapter, each with its base URL, key and timeouts.

``SETTLE_GATEWAYS_ENABLED`` lists the names (``stripe``, ``ledgerpay``); a name whose adapter needs a
key that is not set (Stripe's ``SETTLE_STRIPE_API_KEY``) is refused with a clear error rather than
built half-configured. Close the registry once, when the worker stops.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from libs.errors import ConfigurationError
from libs.settings import Settings
from services.payments.gateways.ledgerpay_adapter import LedgerPayGateway
from services.payments.gateways.port import Gateway
from services.payments.gateways.stripe_adapter import StripeGateway

KNOWN = ("stripe", "ledgerpay")


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
    configuration error half-way leaves nothing open."""
    return Gateways(
        {name: build_gateway(name, settings) for name in (enabled_names(settings) if names is None else names)}
    )
