"""Webhook-event retention: settled Stripe events older than WEBHOOK_EVENT_RETENTION_DAYS are
deleted (`meterline webhooks prune`, `/cron/prune-webhook-events`); events still to be applied
(`received`, `failed`) are never deleted, whatever their age."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from prometheus_client import Counter

from meterline.db import webhook_events

logger = logging.getLogger(__name__)

ROUND = 5_000  # rows per DELETE: short statements, short locks
PRUNED = Counter(
    "meterline_webhook_events_pruned_total", "settled Stripe events deleted by the retention"
)


@dataclass
class PruneReport:
    received_before: datetime  # the cut-off: settled events received before it are deleted
    pruned: int = 0
    kept_unsettled: int = 0  # older than the cut-off, kept: not applied yet
    done: bool = True  # False when the budget ran out first (the next run goes on)
    duration_ms: int = 0

    def as_dict(self) -> dict[str, Any]:
        shown = asdict(self)
        shown["received_before"] = self.received_before.isoformat()
        return shown


async def prune_webhook_events(
    *, now: datetime, retention_days: int, budget: timedelta
) -> PruneReport:
    started = time.monotonic()
    report = PruneReport(received_before=now - timedelta(days=retention_days))
    while True:
        deleted = await webhook_events.prune_settled(
            received_before=report.received_before, limit=ROUND
        )
        report.pruned += deleted
        PRUNED.inc(deleted)
        if deleted < ROUND:
            break
        if time.monotonic() - started > budget.total_seconds():
            report.done = False
            break
    report.kept_unsettled = await webhook_events.count_unsettled_before(report.received_before)
    report.duration_ms = int((time.monotonic() - started) * 1000)
    logger.info("webhook events pruned: %s", json.dumps(report.as_dict()))
    if report.kept_unsettled:
        logger.warning(
            "%d Stripe events older than %d days are kept: not applied yet "
            "(meterline webhooks list --failed)",
            report.kept_unsettled,
            retention_days,
        )
    return report
