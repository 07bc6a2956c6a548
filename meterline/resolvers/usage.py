"""Thin resolvers: the caller's company and arguments in, service calls, GraphQL types out."""

from __future__ import annotations

from collections import Counter
from datetime import date
from typing import Any

import strawberry
from graphql import GraphQLResolveInfo

from meterline.billing.catalog import EventType
from meterline.billing.periods import month_of
from meterline.metrics import USAGE_RECORDINGS
from meterline.permissions import Permission
from meterline.schema.context import Context
from meterline.schema.types import (
    MeterUsage,
    MonthlySummary,
    RecordUsageBatchResult,
    RecordUsageInput,
    RecordUsageResult,
    UsageEventConnection,
    UsageEventType,
    UsageLimits,
    batch_result,
    decode_cursor,
    month_argument,
    record_result,
)
from meterline.services import usage
from meterline.services.usage import BatchRecorded, outcome_label

Info = strawberry.Info[Context, None]


async def current_usage(info: Info) -> list[MeterUsage]:
    ctx = info.context
    company = await ctx.company(Permission.READ_USAGE)
    return [MeterUsage.of(m) for m in await usage.current_usage(company, ctx.now())]


async def usage_limits(info: Info) -> UsageLimits:
    ctx = info.context
    company = await ctx.company(Permission.READ_USAGE)
    return UsageLimits.of(await usage.usage_limits(company, ctx.now()))


async def monthly_summary(info: Info, month: str | None = None) -> MonthlySummary | None:
    ctx = info.context
    company = await ctx.company(Permission.READ_USAGE)
    chosen = month_argument(month) if month is not None else month_of(ctx.now())
    summary = await usage.monthly_summary(company, chosen, ctx.now())
    return MonthlySummary.of(summary) if summary else None


async def month_units_missing_from_invoice(info: Info, month: date) -> int:
    ctx = info.context
    company = await ctx.company(Permission.READ_USAGE)
    return await usage.units_missing_from_invoice(
        company, month, now=ctx.now(), late_grace_hours=ctx.settings.late_usage_grace_hours
    )


async def usage_history(info: Info, months: int | None = 12) -> list[MonthlySummary]:
    ctx = info.context
    company = await ctx.company(Permission.READ_USAGE)
    history = await usage.usage_history(company, 12 if months is None else months, ctx.now())
    return [MonthlySummary.of(s) for s in history]


async def usage_events(
    info: Info,
    first: int | None = 50,
    after: str | None = None,
    event_type: UsageEventType | None = None,
    month: str | None = None,
) -> UsageEventConnection:
    ctx = info.context
    company = await ctx.company(Permission.READ_USAGE)
    page = await usage.list_events(
        company,
        first=50 if first is None else first,
        after=decode_cursor(after) if after is not None else None,
        event_type=EventType(event_type) if event_type is not None else None,
        month=month_argument(month) if month is not None else None,
    )
    return UsageEventConnection.of(page)


async def record_usage(info: Info, input: RecordUsageInput) -> RecordUsageResult:
    ctx = info.context
    company_id = ctx.authorize(Permission.RECORD_USAGE)
    outcome = await usage.record_usage(
        company_id,
        input.to_request(),
        now=ctx.now(),
        late_grace_hours=ctx.settings.late_usage_grace_hours,
        late_margin_minutes=ctx.settings.late_usage_margin_minutes,
    )
    USAGE_RECORDINGS.labels(input.event_type.value, outcome_label(outcome)).inc()
    return record_result(outcome)


async def record_usage_batch(info: Info, events: list[RecordUsageInput]) -> RecordUsageBatchResult:
    """Declares the mutation (its arguments and result); requests run `record_usage_batch_fast`
    instead (schema/__init__.py), which skips Strawberry's conversion of the inputs."""
    return await _record_batch(info.context, [event.to_request() for event in events])


async def record_usage_batch_fast(
    _root: object, info: GraphQLResolveInfo[Context], events: list[dict[str, Any]]
) -> RecordUsageBatchResult:
    """recordUsageBatch on the inputs as graphql-core coerced them (plain dicts, GraphQL names,
    defaults filled in, enums and scalars parsed). Strawberry's conversion of 1,000 input
    objects into RecordUsageInput instances cost more CPU than the whole recording."""
    requests = [
        usage.RecordRequest(
            event_type=EventType(event["eventType"]),
            quantity=event["quantity"],
            idempotency_key=event.get("idempotencyKey"),
            occurred_at=event.get("occurredAt"),
            metadata=event.get("metadata"),
        )
        for event in events
    ]
    return await _record_batch(info.context, requests)


async def _record_batch(
    ctx: Context, requests: list[usage.RecordRequest]
) -> RecordUsageBatchResult:
    company_id = ctx.authorize(Permission.RECORD_USAGE)
    outcome = await usage.record_usage_batch(
        company_id,
        requests,
        now=ctx.now(),
        late_grace_hours=ctx.settings.late_usage_grace_hours,
        late_margin_minutes=ctx.settings.late_usage_margin_minutes,
    )
    if isinstance(outcome, BatchRecorded):
        counted = Counter((i.event.event_type.value, outcome_label(i)) for i in outcome.items)
        for (event_type, label), count in counted.items():
            USAGE_RECORDINGS.labels(event_type, label).inc(count)
    else:  # refused whole: one count per event type asked for
        for event_type in {request.event_type.value for request in requests}:
            USAGE_RECORDINGS.labels(event_type, outcome_label(outcome)).inc()
    return batch_result(outcome)
