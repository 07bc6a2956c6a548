"""SQL of `meter_error_reports`: Stripe's asynchronous meter event validation errors."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from meterline.db import sql


@dataclass(frozen=True)
class MeterErrorReport:
    id: str  # the thin event's id
    type: str
    meter_id: str | None
    summary: str | None
    error_count: int
    validation_start: datetime | None
    validation_end: datetime | None
    samples: list[dict[str, Any]]  # {code, message, identifier, batch_id}
    created_at: datetime


async def insert(report: MeterErrorReport) -> bool:
    """False when it is stored already (a replayed event)."""
    row = await sql.fetchrow(
        """
        INSERT INTO meter_error_reports (id, type, meter_id, summary, error_count,
            validation_start, validation_end, samples, created_at)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb, $9)
        ON CONFLICT (id) DO NOTHING RETURNING id
        """,
        report.id,
        report.type,
        report.meter_id,
        report.summary,
        report.error_count,
        report.validation_start,
        report.validation_end,
        json.dumps(report.samples),
        report.created_at,
    )
    return row is not None


async def recent(limit: int = 10) -> list[MeterErrorReport]:
    rows = await sql.fetch(
        "SELECT id, type, meter_id, summary, error_count, validation_start, validation_end, "
        "samples, created_at FROM meter_error_reports ORDER BY created_at DESC, id LIMIT $1",
        limit,
    )
    return [MeterErrorReport(**{**dict(r), "samples": json.loads(r["samples"])}) for r in rows]


@dataclass(frozen=True)
class MeterErrorTotals:
    reports: int
    errors: int


async def totals_since(since: datetime) -> MeterErrorTotals:
    row = await sql.fetchrow(
        "SELECT count(*) AS reports, coalesce(sum(error_count), 0) AS errors "
        "FROM meter_error_reports WHERE created_at >= $1",
        since,
    )
    assert row is not None
    return MeterErrorTotals(int(row["reports"]), int(row["errors"]))
