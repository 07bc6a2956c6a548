"""What the sync job tells operators: /metrics gauges and counters, and the late-usage alert
on usage that missed its month's invoice."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from prometheus_client import Counter, Gauge

from meterline.billing.catalog import EventType
from meterline.billing.periods import month_of
from meterline.db import batches, flags, meter_errors, webhook_events
from meterline.jobs.sync import SyncReport

logger = logging.getLogger(__name__)

SYNC_BATCHES = Counter(
    "meterline_sync_batches_total", "usage batches settled by the sync job", ["outcome"]
)
SYNC_EVENTS_SENT = Counter("meterline_sync_units_sent_total", "usage units delivered to Stripe")
SYNC_UNITS_SENT_LATE = Counter(
    "meterline_sync_units_sent_late_total",
    "usage units delivered to Stripe after their month's invoice closed (month end + "
    "LATE_USAGE_GRACE_HOURS): Stripe will not bill them",
    ["event_type"],
)
SYNC_KEY_REFUSALS = Counter(
    "meterline_sync_key_refusals_total",
    "meter event calls Stripe refused for the API key (401/403): fix STRIPE_SECRET_KEY",
)
BATCHES_BY_STATE = Gauge("meterline_sync_batches_by_state", "usage batches by state", ["state"])
PENDING_EVENTS = Gauge("meterline_sync_pending_events", "events not yet delivered to Stripe")
OLDEST_PENDING_AGE = Gauge(
    "meterline_sync_oldest_pending_seconds", "age of the oldest event not yet delivered"
)
LATE_PENDING = Gauge(
    "meterline_sync_last_month_pending_events",
    "events of closed months not in Stripe after their invoice closed (alert when > 0)",
)
LATE_PENDING_UNITS = Gauge(
    "meterline_sync_last_month_pending_units",
    "usage units of closed months not in Stripe after their invoice closed: Stripe will not "
    "bill them (alert when > 0)",
    ["event_type"],
)
for _event_type in EventType:  # every series exists from the start, at 0
    SYNC_UNITS_SENT_LATE.labels(_event_type.value)
    LATE_PENDING_UNITS.labels(_event_type.value)


WEBHOOK_EVENTS = Gauge(
    "meterline_webhook_events_unsettled",
    "stored Stripe events not applied, by status (alert when failed > 0)",
    ["status"],
)
OPEN_FLAGS = Gauge(
    "meterline_stripe_flags_open",
    "Stripe reports Meterline refused or cannot reconcile alone (meterline company show)",
)
METER_ERROR_REPORTS = Gauge(
    "meterline_meter_error_reports_24h", "Stripe meter error reports received in the last 24 h"
)
METER_ERRORS = Gauge(
    "meterline_meter_errors_24h",
    "meter events Stripe dropped in validation, as its reports of the last 24 h count them",
)


async def publish(report: SyncReport, *, now: datetime, late_grace_hours: int) -> None:
    SYNC_BATCHES.labels("sent").inc(report.sent)
    SYNC_BATCHES.labels("failed").inc(report.failed)
    SYNC_BATCHES.labels("retrying").inc(report.retrying)
    SYNC_BATCHES.labels("unknown").inc(report.unknown)
    SYNC_EVENTS_SENT.inc(report.events_sent)
    SYNC_KEY_REFUSALS.inc(report.key_refused)
    for event_type, units in report.units_sent_late.items():
        SYNC_UNITS_SENT_LATE.labels(event_type).inc(units)
    await refresh(now=now, late_grace_hours=late_grace_hours)


async def refresh(*, now: datetime, late_grace_hours: int) -> batches.SyncStatus:
    status = await batches.status(current_month=month_of(now), problem_limit=0)
    for state in ("sending", "sent", "failed", "unknown"):
        BATCHES_BY_STATE.labels(state).set(status.batches_by_state.get(state, 0))
    PENDING_EVENTS.set(status.pending_events)
    OLDEST_PENDING_AGE.set(
        (now - status.oldest_pending).total_seconds() if status.oldest_pending else 0
    )
    # Usage of months whose invoice closed (month end + grace) without it: any state but sent.
    missed = status.missed_invoice(now=now, late_grace_hours=late_grace_hours)
    LATE_PENDING.set(sum(u.events for u in missed))
    for event_type in EventType:
        LATE_PENDING_UNITS.labels(event_type.value).set(
            sum(u.units for u in missed if u.event_type is event_type)
        )
    if missed:
        logger.error(
            "%d usage units (%d events) of closed months are not in Stripe after their invoice "
            "closed (month end + %d h): Stripe will not bill them unless its grace is longer: %s",
            sum(u.units for u in missed),
            sum(u.events for u in missed),
            late_grace_hours,
            "; ".join(batches.summarize(missed)),
        )
    events = await webhook_events.count_unsettled()
    for state in ("received", "failed"):
        WEBHOOK_EVENTS.labels(state).set(events.get(state, 0))
    OPEN_FLAGS.set(await flags.count_open())
    errors = await meter_errors.totals_since(now - timedelta(hours=24))
    METER_ERROR_REPORTS.set(errors.reports)
    METER_ERRORS.set(errors.errors)
    return status
