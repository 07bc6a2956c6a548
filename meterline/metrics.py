"""Meterline's own Prometheus metrics (the HTTP ones come from Litestar's plugin)."""

from __future__ import annotations

from prometheus_client import Counter

USAGE_RECORDINGS = Counter(
    "meterline_usage_recordings_total",
    "recordUsage calls by event type and outcome",
    ["event_type", "outcome"],
)
