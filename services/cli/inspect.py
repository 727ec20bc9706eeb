"""`settle status`: what an SRE on call looks at first."""

from __future__ import annotations

from typing import Any

from libs.db.pool import create_pool
from libs.messaging import deadletters
from libs.messaging.broker import end_offsets
from libs.messaging.positions import group_lag, open_gaps
from libs.settings import Settings
from services import catalog
from services.cli.runtime import Targets


async def collect_status(settings: Settings, targets: Targets) -> dict[str, Any]:
    assert targets.bootstrap_servers is not None
    groups: dict[str, set[str]] = {}
    partitions: dict[str, int] = {}
    for name in catalog.worker_names():
        if name == catalog.RELAY:
            continue
        for sub in catalog.load(name).subscriptions:
            groups.setdefault(sub.consumer, set()).update(settings.topic_prefix + t.name for t in sub.topics)
            partitions.update({settings.topic_prefix + t.name: t.partitions for t in sub.topics})
    ends = await end_offsets(targets.bootstrap_servers, partitions)
    prefix = settings.topic_prefix
    consumers = []
    pool = await create_pool(targets.database_url, max_size=2)
    try:
        async with pool.acquire() as conn:
            for group, topic_names in sorted(groups.items()):
                mine = {(tp.topic[len(prefix) :], tp.partition): e for tp, e in ends.items() if tp.topic in topic_names}
                lag: dict[str, int] = {}
                for (topic, _), behind in (await group_lag(conn, group, mine)).items():
                    lag[prefix + topic] = lag.get(prefix + topic, 0) + behind
                consumers.append({"group": group, "lag": lag, "total_lag": sum(lag.values())})
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
            row = await conn.fetchrow(
                """select count(*) filter (where not_before is null or not_before <= now()) as backlog,
                          count(*) filter (where not_before > now()) as delayed,
                          coalesce(extract(epoch from now() - min(created_at)
                                   filter (where not_before is null or not_before <= now())), 0) as oldest
                     from settle.outbox where sent_at is null"""
            )
            letters = await deadletters.dead_letter_counts(conn)
    finally:
        await pool.close()
    return {
        "consumers": consumers,
        "outbox": {"backlog": row["backlog"], "delayed": row["delayed"], "oldest_age_s": float(row["oldest"])},
        "dead_letters": letters,
        "gaps": gaps,
    }
