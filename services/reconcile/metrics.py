"""Reconciliation's Prometheus gauges (declared in ``libs.observability.metrics``, where the alert rules'
test finds them): set from a run's result. ``settle reconcile --metrics-file`` writes them in the text
format for node_exporter's textfile collector, since a run is a command, not a long-lived worker."""

from __future__ import annotations

import time
from collections import Counter

from libs.observability import metrics
from services.reconcile.domain.matching import REASONS, Reconciliation, age_bucket

AGE_BUCKETS = ("0-3d", "4-7d", "8-30d", "31d+")


def observe(result: Reconciliation) -> None:
    """Set every gauge (zero for the reason/bucket pairs the run did not find: series stay continuous)."""
    counts = Counter((b.reason, age_bucket(b.age_days)) for b in result.breaks if not b.explanation)
    explained = Counter(b.reason for b in result.explained_breaks)
    for reason in REASONS:
        for bucket in AGE_BUCKETS:
            metrics.RECONCILE_BREAKS.labels(reason=reason, age_bucket=bucket).set(counts[(reason, bucket)])
        metrics.RECONCILE_EXPLAINED.labels(reason=reason).set(explained[reason])
    metrics.RECONCILE_OVERDUE.set(len(result.overdue_breaks))
    matched = Counter(r.source for m in result.matches for r in m.records)
    for source in ("ledger", "processor", "bank"):
        metrics.RECONCILE_MATCHED.labels(source=source).set(matched[source])
    metrics.RECONCILE_LAST_RUN.set(time.time())
