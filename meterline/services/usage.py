"""Usage: recording (validation + the one atomic write) and the reads the API serves.

Every function takes the company id from the caller's token and `now` from the app's clock,
so tests can move time.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from meterline.billing.catalog import EventType, Plan, Tier
from meterline.billing.dunning import BillingStatus
from meterline.billing.periods import (
    as_utc,
    billable_window,
    format_month,
    month_of,
    months_back,
)
from meterline.billing.pricing import MeterStatement, price_meter, total_overage_cost
from meterline.db import companies, tiers, usage
from meterline.db.companies import Company
from meterline.db.engine import DB
from meterline.db.usage import NewEvent, StoredEvent
from meterline.services.errors import BadUserInput, IdempotencyKeyReused

MIN_QUANTITY, MAX_QUANTITY = 1, 100_000
MAX_METADATA_BYTES = 4096
MAX_IDEMPOTENCY_KEY_LENGTH = 255
# A caller's clock a little ahead of ours is not an error: its occurredAt is floored to now.
CLOCK_SKEW = timedelta(seconds=5)
MAX_HISTORY_MONTHS = 24


@dataclass(frozen=True)
class RecordRequest:
    event_type: EventType
    quantity: int = 1
    idempotency_key: str | None = None
    occurred_at: datetime | None = None
    metadata: Any = None


@dataclass(frozen=True)
class Recorded:
    event: StoredEvent
    usage: MeterStatement
    duplicate: bool


@dataclass(frozen=True)
class LimitExceeded:
    event_type: EventType
    included: int
    used: int
    requested: int

    @property
    def message(self) -> str:
        return (
            f"The {self.event_type.value} allowance of the free tier is {self.included} a month; "
            f"{self.used} used, {self.requested} requested. Upgrade to record more."
        )


@dataclass(frozen=True)
class PaymentRequired:
    grace_ended_at: datetime

    @property
    def message(self) -> str:
        return "Usage recording is suspended until the overdue invoice is paid."


RecordOutcome = Recorded | LimitExceeded | PaymentRequired


def outcome_label(outcome: RecordOutcome) -> str:
    if isinstance(outcome, Recorded):
        return "duplicate" if outcome.duplicate else "recorded"
    return "limit_exceeded" if isinstance(outcome, LimitExceeded) else "payment_required"


@dataclass(frozen=True)
class MonthSummary:
    month: date
    meters: list[MeterStatement]

    @property
    def total_overage_cost(self) -> Any:
        return total_overage_cost(self.meters)


@dataclass(frozen=True)
class Limits:
    tier: Tier
    scheduled_tier: Tier | None
    billing_status: BillingStatus
    grace_ends_at: datetime | None
    grace_period_days: int
    meters: list[MeterStatement]

    @property
    def exceeded(self) -> bool:
        return any(m.exceeded for m in self.meters)


@dataclass(frozen=True)
class EventPage:
    events: list[StoredEvent]
    has_next_page: bool


# --- validation -----------------------------------------------------------------------------


def _validated_metadata(metadata: Any) -> dict[str, Any] | None:
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        raise BadUserInput("metadata must be a JSON object")
    encoded = json.dumps(metadata, separators=(",", ":"), ensure_ascii=False).encode()
    if len(encoded) > MAX_METADATA_BYTES:
        raise BadUserInput(
            f"metadata is {len(encoded)} bytes; at most {MAX_METADATA_BYTES} are accepted"
        )
    return metadata


def _validated_occurred_at(
    occurred_at: datetime | None, now: datetime, grace_hours: int
) -> datetime:
    if occurred_at is None:
        return now
    try:
        moment = as_utc(occurred_at)
    except ValueError as exc:
        raise BadUserInput(
            "occurredAt must carry a time zone offset, e.g. 2026-11-25T10:00:00Z"
        ) from exc
    if moment > now:
        if moment - now > CLOCK_SKEW:
            raise BadUserInput("occurredAt is in the future")
        return now
    window = billable_window(now, grace_hours)
    if moment < window.earliest:
        raise BadUserInput(
            f"occurredAt {moment.isoformat()} is in a closed period: events may date back to "
            f"{window.earliest.isoformat()} at the earliest"
        )
    return moment


def _validate(request: RecordRequest) -> None:
    if not MIN_QUANTITY <= request.quantity <= MAX_QUANTITY:
        raise BadUserInput(f"quantity must be between {MIN_QUANTITY} and {MAX_QUANTITY:,}")
    key = request.idempotency_key
    if key is not None and not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY_LENGTH:
        raise BadUserInput(
            f"idempotencyKey must be 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} characters long"
        )


def _same_payload(stored: StoredEvent, request: RecordRequest, metadata: Any) -> bool:
    """DESIGN: event type, quantity, metadata, and occurredAt only when the caller gave it."""
    if stored.event_type != request.event_type or stored.quantity != request.quantity:
        return False
    if stored.metadata != metadata:
        return False
    return request.occurred_at is None or as_utc(request.occurred_at) == stored.occurred_at


# --- recording ------------------------------------------------------------------------------


class _KeyTaken(Exception):
    pass


class _CapReached(Exception):
    pass


async def record_usage(
    company_id: uuid.UUID, request: RecordRequest, *, now: datetime, late_grace_hours: int
) -> RecordOutcome:
    _validate(request)
    metadata = _validated_metadata(request.metadata)
    occurred_at = _validated_occurred_at(request.occurred_at, now, late_grace_hours)
    month = month_of(occurred_at)

    company = await companies.get_or_create(company_id)
    if company.dunning.status(now) is BillingStatus.RESTRICTED:
        return PaymentRequired(grace_ended_at=company.dunning.grace_ends_at or now)

    plan = (await tiers.cached_plans())[company.tier]
    allowance = plan.allowance(request.event_type)
    cap = allowance.included if company.tier.is_hard_capped else None
    new_event = NewEvent(
        id=uuid.uuid4(),
        company_id=company_id,
        event_type=request.event_type,
        quantity=request.quantity,
        occurred_at=occurred_at,
        month=month,
        idempotency_key=request.idempotency_key,
        metadata=metadata,
        sync_state="pending" if company.stripe_customer_id else "local_only",
    )
    try:
        event, used = await _write(new_event, cap)
    except _KeyTaken:
        return await _replay(company, plan, request, metadata)
    except _CapReached:
        used_now = await usage.used_in_month(company_id, month, request.event_type)
        assert cap is not None
        return LimitExceeded(request.event_type, cap, used_now, request.quantity)
    return Recorded(event, price_meter(request.event_type, used, allowance), duplicate=False)


async def _write(new_event: NewEvent, cap: int | None) -> tuple[StoredEvent, int]:
    """The event, its idempotency key and the rollup: one transaction, all or nothing."""
    async with DB.transaction():
        event = await usage.insert_event(new_event)
        key = new_event.idempotency_key
        if key is not None and not await usage.claim_idempotency_key(
            new_event.company_id, key, event.id
        ):
            raise _KeyTaken
        used = await usage.add_to_rollup(
            new_event.company_id, new_event.month, new_event.event_type, new_event.quantity, cap
        )
        if used is None:
            raise _CapReached
        written = (event, used)
    return written


async def _replay(company: Company, plan: Plan, request: RecordRequest, metadata: Any) -> Recorded:
    assert request.idempotency_key is not None
    original = await usage.event_by_idempotency_key(company.id, request.idempotency_key)
    if original is None:  # the holder rolled back between our conflict and this read
        raise IdempotencyKeyReused("idempotencyKey is being used by a request that failed; retry")
    if not _same_payload(original, request, metadata):
        raise IdempotencyKeyReused(
            "idempotencyKey was already used for a different event (type, quantity, metadata "
            "or occurredAt differ)"
        )
    used = await usage.used_in_month(company.id, original.month, original.event_type)
    statement = price_meter(original.event_type, used, plan.allowance(original.event_type))
    return Recorded(original, statement, duplicate=True)


# --- reads ----------------------------------------------------------------------------------


def _statements(plan: Plan, used: Mapping[EventType, int]) -> list[MeterStatement]:
    return [price_meter(t, used.get(t, 0), plan.allowance(t)) for t in EventType]


async def _month_summaries(company: Company, months: list[date]) -> list[MonthSummary]:
    if not months:
        return []
    plan = (await tiers.cached_plans())[company.tier]
    totals = await usage.rollups(company.id, min(months), max(months))
    return [
        MonthSummary(m, _statements(plan, {t: totals.get((m, t), 0) for t in EventType}))
        for m in months
    ]


async def current_usage(company: Company, now: datetime) -> list[MeterStatement]:
    return (await _month_summaries(company, [month_of(now)]))[0].meters


async def usage_limits(company: Company, now: datetime) -> Limits:
    plan = (await tiers.cached_plans())[company.tier]
    summary = (await _month_summaries(company, [month_of(now)]))[0]
    return Limits(
        tier=company.tier,
        scheduled_tier=None,  # plan changes come with the subscription lifecycle
        billing_status=company.dunning.status(now),
        grace_ends_at=company.dunning.grace_ends_at,
        grace_period_days=plan.grace_days,
        meters=summary.meters,
    )


async def monthly_summary(company: Company, month: date, now: datetime) -> MonthSummary | None:
    if month > month_of(now):
        raise BadUserInput(f"month {format_month(month)} has not started yet")
    return (await _month_summaries(company, [month]))[0]


async def usage_history(company: Company, months: int, now: datetime) -> list[MonthSummary]:
    if not 1 <= months <= MAX_HISTORY_MONTHS:
        raise BadUserInput(f"months must be between 1 and {MAX_HISTORY_MONTHS}")
    current = month_of(now)
    first_usage = await usage.first_month(company.id)
    oldest = min(month_of(company.created_at), current)
    if first_usage is not None:  # usage may predate the row (late events of last month)
        oldest = min(oldest, first_usage)
    return await _month_summaries(company, months_back(current, months, oldest))


async def list_events(
    company: Company,
    *,
    first: int,
    after: tuple[datetime, uuid.UUID] | None,
    event_type: EventType | None,
    month: date | None,
) -> EventPage:
    rows = await usage.list_events(
        company.id, limit=first + 1, after=after, event_type=event_type, month=month
    )
    return EventPage(events=rows[:first], has_next_page=len(rows) > first)
