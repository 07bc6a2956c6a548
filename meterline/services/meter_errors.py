"""Stripe's asynchronous meter event errors (thin events): stored, matched to our batches.

Stripe validates meter events after accepting them and reports what it dropped in windows,
with a few sample errors each. A sample whose identifier is one of our batches means that batch
was not billed: it becomes `failed` (with Stripe's message) so that an operator can re-drive it
once the cause (a deleted customer, an archived meter) is fixed.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from meterline.db import batches, meter_errors
from meterline.db.meter_errors import MeterErrorReport
from meterline.services.subscriptions import Outcome
from meterline.stripe_gateway.mirror import MeterErrorEvent

logger = logging.getLogger(__name__)


async def record_meter_errors(report: MeterErrorEvent, *, now: datetime) -> Outcome:
    """Store the report and fail the batches its samples name (in the caller's transaction)."""
    samples: list[dict[str, Any]] = []
    matched = []
    for sample in report.samples:
        batch_id = batches.batch_id_of(sample.identifier) if sample.identifier else None
        batch = await batches.get(batch_id) if batch_id is not None else None
        if batch is not None:
            matched.append((batch.id, sample))
        samples.append(
            {
                "code": sample.code,
                "message": sample.message,
                "identifier": sample.identifier,
                "batch_id": str(batch.id) if batch is not None else None,
            }
        )
    stored = await meter_errors.insert(
        MeterErrorReport(
            id=report.id,
            type=report.type,
            meter_id=report.meter_id,
            summary=report.summary,
            error_count=report.error_count,
            validation_start=report.validation_start,
            validation_end=report.validation_end,
            samples=samples,
            created_at=now,  # when it reached us: /metrics counts the last 24 h of reports
        )
    )
    failed = 0
    for batch_id, sample in matched:
        error = f"rejected by Stripe after it was accepted ({sample.code}): {sample.message}"
        failed += await batches.mark_rejected_later(batch_id, error=error)
    logger.error(
        "Stripe meter error report %s (%s): %d errors, %d samples, %d of our batches failed: %s",
        report.id,
        report.type,
        report.error_count,
        len(samples),
        failed,
        report.summary,
    )
    return Outcome(True, None if stored else "report stored already")
