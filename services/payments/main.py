"""Wiring of the payments worker: the consumer (facts, R11 allocation, due collections) and the
collector (gateway calls and inquiries)."""

from __future__ import annotations

from collections.abc import Mapping
from importlib import import_module

from libs.messaging.worker import Service
from libs.settings import Settings, get_settings
from services.payments import config as payments_config
from services.payments.collector import collector_task
from services.payments.gateways.port import Gateway
from services.payments.handlers import subscription


def build_gateways(settings: Settings) -> Mapping[str, Gateway]:
    registry = import_module("services.payments.gateways.registry")
    gateways: Mapping[str, Gateway] = registry.build_gateways(settings)
    return gateways


CONFIG = payments_config.load(get_settings().payments_config)

SERVICE = Service(
    name="payments",
    subscriptions=(subscription(CONFIG),),
    tasks=(collector_task(CONFIG, build_gateways),),  # type: ignore[arg-type]
    description="Collections (R14), money received applied to invoices (R11), refunds and disputes "
    "(invoices, credit notes, payments.received/methods, ticks → payments.v1, invoices.payments.v1)",
)
