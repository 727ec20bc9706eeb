"""Process settings, all from ``SETTLE_*`` environment variables (pydantic-settings).

The README's configuration table is checked against :data:`Settings.model_fields` by a test, and
compose.yaml's worker environments against the same names.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from platformdirs import user_state_dir
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from libs import limits


def default_state_dir() -> Path:
    return Path(user_state_dir("settle", appauthor=False))


class Settings(BaseSettings):
    """Every knob of a Settle process. Unset means "let the local stack decide"."""

    model_config = SettingsConfigDict(env_prefix="SETTLE_", extra="ignore", frozen=True)

    database_url: str | None = Field(
        default=None,
        description="PostgreSQL DSN. Unset: 127.0.0.1:5432 when it answers, else embedded PostgreSQL.",
    )
    kafka_bootstrap_servers: str | None = Field(
        default=None,
        description="Comma-separated Kafka bootstrap servers. Unset: the local broker (SETTLE_LOCAL_BROKER).",
    )
    local_broker: Literal["noida", "mock"] = Field(
        default="noida",
        description="The local broker started when no bootstrap servers are set: noida (durable) or mock.",
    )
    local_broker_retention_s: int = Field(
        default=7 * 24 * 3600,
        ge=60,
        description="retention.ms (in seconds) of the topics the local noida broker creates.",
    )
    state_dir: Path = Field(
        default_factory=default_state_dir,
        description="Where the local stack keeps its state file, broker log and embedded PostgreSQL data.",
    )
    topic_prefix: str = Field(
        default="",
        description="Prefix of every physical topic name (isolates test runs on a shared real Kafka).",
    )
    metrics_port: int = Field(
        default=9400,
        description="Port of /metrics, /healthz and /readyz for `settle run`; 0 picks a free port.",
    )
    log_level: str = Field(default="INFO", description="Structured-log level: DEBUG, INFO, WARNING, ERROR.")
    log_format: str = Field(default="json", description="`json` (production) or `console` (humans).")
    consume_batch_max: int = Field(default=500, ge=1, le=1000, description="Messages per transaction.")
    consume_linger_ms: int = Field(
        default=25,
        ge=0,
        le=1000,
        description="A batch smaller than a quarter of the maximum waits this long for more messages.",
    )
    consume_prefetch: bool = Field(
        default=False,
        description="Keep fetching while a batch is processed. Off: a reader pauses its partitions during each "
        "batch (noida-db answers an empty fetch at once, so prefetching spins); on: for a Kafka that honours "
        "fetch_max_wait_ms.",
    )
    fetch_min_bytes: int = Field(
        default=64 * 1024, ge=1, description="Consumer fetch linger: bytes the broker waits for before answering."
    )
    fetch_max_wait_ms: int = Field(
        default=25, ge=0, le=1000, description="Consumer fetch linger: longest the broker waits for fetch_min_bytes."
    )
    relay_batch_max: int = Field(default=1000, ge=1, le=2000, description="Outbox rows per relay round.")
    outbox_retention_s: int = Field(
        default=7 * 24 * 3600, ge=0, description="Sent outbox rows older than this are pruned."
    )
    inbox_retention_s: int = Field(
        default=limits.INBOX_RETENTION_S,
        ge=limits.INBOX_RETENTION_FLOOR_S,
        description="Inbox claims (dedup of redeliveries) older than this are pruned; at least Kafka's "
        "retention plus the outbox retention.",
    )
    archive_retention_months: int = Field(
        default=25,
        ge=0,
        le=1200,
        description="Input archive months kept by `settle archive prune` (whole month partitions by event "
        "time; 0 keeps everything).",
    )
    held_alert_after_s: int = Field(
        default=6 * 3600,
        ge=60,
        description="Held data older than this is an alert (settle_held_alert_after_seconds).",
    )
    db_pool_max: int = Field(default=10, ge=2, le=100, description="Connections per process.")
    clock_interval_s: int = Field(
        default=3600, ge=1, description="`settle clock run`: seconds between published ticks."
    )
    documents_dir: Path | None = Field(
        default=None, description="Where invoice and statement documents are written (default: state dir)."
    )
    # payments
    payments_config: Path | None = Field(
        default=None,
        description="YAML file of payment gateways (kinds, currencies, limits, costs), hard decline codes and "
        "circuit breaker; unset: the defaults in services/payments/config.py.",
    )
    # payout files (issue 10, R16)
    payout_outbox_dir: Path | None = Field(
        default=None,
        description="Directory the payouts worker hands payout files to (the bank transport); unset: planned "
        "payouts are not cut into files or sent.",
    )
    payouts_config: Path | None = Field(
        default=None,
        description="YAML file of our side of each payout rail (NACHA originator, debtor accounts, stablecoin "
        "wallet) and per-rail cut-offs and limits; unset: the defaults in services/payouts/config.py "
        "(placeholder accounts).",
    )
    payout_files_interval_s: float = Field(
        default=5.0,
        gt=0,
        le=3600,
        description="Seconds between the payouts worker's rounds of cutting and sending files.",
    )
    # saga coordinator (issue 11)
    saga_dispute_lost: Literal["platform_absorbs", "supplier_charged_back"] = Field(
        default="supplier_charged_back",
        description="A lost dispute: the supplier's share is charged back too (reverse_supplier_share requested; "
        "R15's clawback, the default), or the platform absorbs it (renter revenue reversed only).",
    )
    saga_follow_payouts: bool = Field(
        default=False,
        description="Sagas follow payout sent/settled/returned (needs payouts.v1 wired to the saga worker); "
        "off: a paid cycle completes when the supplier's earnings are released.",
    )
    saga_await_acknowledgement: bool = Field(
        default=False,
        description="A compensation is done when payouts answers it (payout.compensation_applied; failed → "
        "retried); off: a request durably in the outbox counts as done, and the answer is only recorded.",
    )

    # payments gateways
    gateways_enabled: str = Field(
        default="stripe,ledgerpay",
        description="Comma-separated gateways the payments worker builds (services.payments.gateways.registry).",
    )
    stripe_api_base: str = Field(
        default="https://api.stripe.com",
        description="Base URL of the Stripe API (the fake processor: http://127.0.0.1:12111).",
    )
    stripe_api_key: str | None = Field(default=None, description="Stripe secret key (sk_…); unset: no Stripe gateway.")
    stripe_webhook_secret: str | None = Field(
        default=None, description="Signing secret of Stripe webhooks (whsec_…); unset: the endpoint refuses them all."
    )
    stripe_webhook_tolerance_s: int = Field(
        default=300, ge=1, le=3600, description="Oldest accepted Stripe-Signature timestamp, in seconds."
    )
    ledgerpay_api_base: str = Field(
        default="http://127.0.0.1:12111/ledgerpay",
        description="Base URL of the LedgerPay API (the fake processor serves it under /ledgerpay).",
    )
    ledgerpay_api_key: str | None = Field(default=None, description="LedgerPay API key (X-Api-Key).")
    gateway_timeout_s: float = Field(
        default=10.0, gt=0, le=120, description="Longest wait for a gateway's answer; past it the outcome is unknown."
    )
    gateway_connect_timeout_s: float = Field(
        default=3.0, gt=0, le=60, description="Longest wait to connect to a gateway; past it nothing was sent (error)."
    )
    webhooks_port: int = Field(default=9410, ge=0, description="Port of the webhook endpoint (`settle run webhooks`).")
    webhooks_host: str = Field(default="0.0.0.0", description="Address the webhook endpoint listens on.")
    fakepsp_port: int = Field(default=12111, ge=0, description="Port of `settle fakepsp` (the fake processor).")
    reconcile_window_days: int = Field(
        default=3,
        ge=0,
        le=60,
        description="R17: business days two dates of one movement may differ; older unmatched records are breaks.",
    )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
