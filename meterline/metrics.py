"""Meterline's own Prometheus metrics (the HTTP ones come from Litestar's plugin)."""

from __future__ import annotations

from prometheus_client import Counter

DATABASE_BUSY = Counter(
    "meterline_database_busy_total",
    "Requests answered DATABASE_BUSY: a statement waited past DB_STATEMENT_TIMEOUT_MS (a lock "
    "held elsewhere) or lost a deadlock",
    ["surface"],  # graphql | http | webhook
)
USAGE_RECORDINGS = Counter(
    "meterline_usage_recordings_total",
    "recordUsage calls by event type and outcome",
    ["event_type", "outcome"],
)
DUPLICATE_SUBSCRIPTIONS_CANCELLED = Counter(
    "meterline_duplicate_subscriptions_cancelled_total",
    "A company's second live subscription (two tabs paid, one made in the dashboard) cancelled "
    "in Stripe at once, what it charged refunded or voided",
)
