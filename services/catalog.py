"""Every worker the CLI can run (``settle run <name...>|all``); compose.yaml has one service per entry."""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module

from libs.messaging.worker import Service

# name → module holding SERVICE; imported lazily so `settle --help` stays fast.
_WORKERS: dict[str, str] = {
    "journal": "services.journal.main",
    "metering": "services.metering.main",
    "rating": "services.rating.main",
    "invoicing": "services.invoicing.main",
    "clock": "services.clock.main",
    "payments": "services.payments.main",
    "payouts": "services.payouts.main",
    "webhooks": "services.webhooks.main",
    "saga": "services.saga.main",
}
RELAY = "relay"
"""``settle run relay`` runs relays only (no consumers); every other worker also runs one relay."""


def worker_names() -> list[str]:
    return [*[n for n in _WORKERS if _available(n)], RELAY]


def _available(name: str) -> bool:
    try:
        import_module(_WORKERS[name])
    except ModuleNotFoundError:
        return False
    return True


def load(name: str) -> Service:
    if name not in _WORKERS:
        raise KeyError(name)
    module = import_module(_WORKERS[name])
    service = module.SERVICE
    assert isinstance(service, Service)
    return service


def resolve(names: list[str]) -> tuple[list[Service], bool]:
    """Names (or ``all``) → services, and whether a relay-only worker was asked for."""
    wanted = worker_names() if names == ["all"] or not names else names
    unknown = [n for n in wanted if n not in worker_names()]
    if unknown:
        raise KeyError(", ".join(unknown))
    return [load(n) for n in wanted if n != RELAY], RELAY in wanted


LoadFn = Callable[[str], Service]
