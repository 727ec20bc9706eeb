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
from libs.messaging.broker import end_offsets
from libs.messaging.positions import group_lag, open_gaps
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
    gaps = [
        {
            "id": g.id,
            "consumer": g.consumer,
            "topic": g.topic,
            "partition": g.partition,
            "missing_from": g.missing_from,
            "missing_to": g.missing_to,
            "reason": g.reason,
            "detected_at": g.detected_at.isoformat(),
        }
        for g in await open_gaps(conn)
    ]
    return {
        "outbox": {"backlog": row["backlog"], "delayed": row["delayed"], "oldest_age_s": float(row["oldest"])},
        "dead_letters": letters,
        "gaps": gaps,
    }


async def collect_lag(settings: Settings, bootstrap_servers: str, conn: asyncpg.Connection) -> list[dict[str, Any]]:
    """Lag per consumer group and topic. Raises BrokerUnavailableError when the broker does not answer
    within :data:`LAG_TIMEOUT_S`."""
    try:
        return await asyncio.wait_for(_collect_lag(settings, bootstrap_servers, conn), LAG_TIMEOUT_S)
    except (KafkaError, TimeoutError) as exc:
        raise BrokerUnavailableError(
            f"Kafka at {bootstrap_servers} did not report offsets: {type(exc).__name__}: {exc}"
        ) from exc


async def _collect_lag(settings: Settings, bootstrap_servers: str, conn: asyncpg.Connection) -> list[dict[str, Any]]:
    """Broker end offsets minus each group's PostgreSQL position, per topic."""
    groups: dict[str, set[str]] = {}
    partitions: dict[str, int] = {}
    for name in catalog.worker_names():
        if name == catalog.RELAY:
            continue
        for sub in catalog.load(name).subscriptions:
            groups.setdefault(sub.consumer, set()).update(settings.topic_prefix + t.name for t in sub.topics)
            partitions.update({settings.topic_prefix + t.name: t.partitions for t in sub.topics})
    ends = await end_offsets(bootstrap_servers, partitions)
    prefix = settings.topic_prefix
    consumers = []
    for group, topic_names in sorted(groups.items()):
        mine = {(tp.topic[len(prefix) :], tp.partition): e for tp, e in ends.items() if tp.topic in topic_names}
        lag: dict[str, int] = {}
        for (topic, _), behind in (await group_lag(conn, group, mine)).items():
            lag[prefix + topic] = lag.get(prefix + topic, 0) + behind
        consumers.append({"group": group, "lag": lag, "total_lag": sum(lag.values())})
    return consumers
