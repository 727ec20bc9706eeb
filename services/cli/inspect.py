"""`settle status`: what an SRE on call looks at first.

The database half (outbox backlog, dead letters) and the broker half (consumer lag) are collected
separately, so a status without a running broker still reports what the database knows.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
from aiokafka.errors import KafkaError

from libs.errors import BrokerUnavailableError
from libs.messaging import deadletters
from libs.messaging.broker import committed_offsets, end_offsets
from libs.settings import Settings
from services import catalog

LAG_TIMEOUT_S = 30.0
"""Longest `settle status` waits for the broker's offsets (a broker that accepts TCP but never answers)."""


async def collect_backlog(conn: asyncpg.Connection) -> dict[str, Any]:
    """Outbox backlog and oldest unpublished age, delayed rows, dead-letter counts. SELECTs only."""
    row = await conn.fetchrow(
        """select count(*) filter (where not_before is null or not_before <= now()) as backlog,
                  count(*) filter (where not_before > now()) as delayed,
                  coalesce(extract(epoch from now() - min(created_at)
                           filter (where not_before is null or not_before <= now())), 0) as oldest
             from settle.outbox where sent_at is null"""
    )
    letters = await deadletters.dead_letter_counts(conn)
    return {
        "outbox": {"backlog": row["backlog"], "delayed": row["delayed"], "oldest_age_s": float(row["oldest"])},
        "dead_letters": letters,
    }


async def collect_lag(settings: Settings, bootstrap_servers: str) -> list[dict[str, Any]]:
    """Lag per consumer group and topic. Raises BrokerUnavailableError when the broker does not answer
    within :data:`LAG_TIMEOUT_S`."""
    try:
        return await asyncio.wait_for(_collect_lag(settings, bootstrap_servers), LAG_TIMEOUT_S)
    except (KafkaError, TimeoutError) as exc:
        raise BrokerUnavailableError(
            f"Kafka at {bootstrap_servers} did not report offsets: {type(exc).__name__}: {exc}"
        ) from exc


async def _collect_lag(settings: Settings, bootstrap_servers: str) -> list[dict[str, Any]]:
    groups: dict[str, set[str]] = {}
    partitions: dict[str, int] = {}
    for name in catalog.worker_names():
        if name == catalog.RELAY:
            continue
        for sub in catalog.load(name).subscriptions:
            groups.setdefault(sub.consumer, set()).update(settings.topic_prefix + t.name for t in sub.topics)
            partitions.update({settings.topic_prefix + t.name: t.partitions for t in sub.topics})
    ends = await end_offsets(bootstrap_servers, partitions)
    consumers = []
    for group, topic_names in sorted(groups.items()):
        committed = await committed_offsets(
            bootstrap_servers, group, {t: n for t, n in partitions.items() if t in topic_names}
        )
        lag: dict[str, int] = {}
        for tp, end in ends.items():
            if tp.topic in topic_names:
                lag[tp.topic] = lag.get(tp.topic, 0) + max(0, end - committed.get(tp, 0))
        consumers.append({"group": group, "lag": lag, "total_lag": sum(lag.values())})
    return consumers
