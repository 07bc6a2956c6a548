"""Usage: recording (validation + the one atomic write) and the reads the API serves.

Every function takes the company id from the caller's token and `now` from the app's clock,
so tests can move time.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from meterline.billing.catalog import MAX_QUANTITY, MIN_QUANTITY, EventType, Tier
from meterline.billing.dunning import BillingStatus
from meterline.billing.periods import (
    add_months,
    as_utc,
    billable_window,
    format_month,
    month_of,
    month_start,
    months_back,
)
from meterline.billing.plans import (
    MONTHLY_VOLUME_CEILING,
    Applied,
    applied,
    month_plan,
    plan_of,
)
from meterline.billing.pricing import MeterStatement, price_meter, total_overage_cost
from meterline.db import companies, sql, tiers, usage
from meterline.db.companies import Company
from meterline.db.engine import DB
from meterline.db.usage import NewEvent, PlanChanged, Pricing, StoredEvent
from meterline.services.errors import BadUserInput, DatabaseBusy, IdempotencyKeyReused

MAX_METADATA_BYTES = 4096
MAX_IDEMPOTENCY_KEY_LENGTH = 255
# A caller's clock a little ahead of ours is not an error: its occurredAt is floored to now.
CLOCK_SKEW = timedelta(seconds=5)
MAX_HISTORY_MONTHS = 24
MAX_PAGE_SIZE = 100
MAX_BATCH_EVENTS = 1_000
# A recording that keeps meeting plan changes (each one a committed webhook) gives up.
MAX_PLAN_RETRIES = 5


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
            f"{self.used} used, {self.requested} requested: {self.over} over. "
            "Upgrade to record more."
        )

    @property
    def over(self) -> int:
        """By how much the request passes the allowance."""
        return self.used + self.requested - self.included


@dataclass(frozen=True)
class PaymentRequired:
    grace_ended_at: datetime

    @property
    def message(self) -> str:
        return "Usage recording is suspended until the overdue invoice is paid."


RecordOutcome = Recorded | LimitExceeded | PaymentRequired


@dataclass(frozen=True)
class BatchItem:
    index: int
    event: StoredEvent
    duplicate: bool


@dataclass(frozen=True)
class BatchRecorded:
    items: list[BatchItem]

    @property
    def duplicates(self) -> int:
        return sum(item.duplicate for item in self.items)

    @property
    def recorded(self) -> int:
        return len(self.items) - self.duplicates


BatchOutcome = BatchRecorded | LimitExceeded | PaymentRequired


def outcome_label(outcome: RecordOutcome | BatchItem) -> str:
    """The `outcome` label of the recordings counter."""
    if isinstance(outcome, Recorded | BatchItem):
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
    scheduled_tier_effective_at: datetime | None
    hard_cap: bool  # usage beyond the allowance is refused, not billed
    billing_status: BillingStatus
    grace_ends_at: datetime | None
    grace_period_days: int
    meters: list[MeterStatement]
    subscription_status: str | None = None  # Stripe's, of the current subscription

    @property
    def exceeded(self) -> bool:
        return any(m.exceeded for m in self.meters)


@dataclass(frozen=True)
class EventPage:
    events: list[StoredEvent]
    has_next_page: bool


# --- validation -----------------------------------------------------------------------------


def _has_nul(value: Any) -> bool:
    """PostgreSQL text and jsonb cannot hold U+0000."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


def _canonical_json(value: Any) -> str:
    """The one JSON text of a value (keys sorted); BadUserInput when JSON cannot hold it."""
    try:
        return json.dumps(
            value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
    except (ValueError, TypeError, RecursionError) as exc:
        raise BadUserInput("metadata must be plain JSON (no NaN or Infinity)") from exc


def _validated_metadata(metadata: Any) -> dict[str, Any] | None:
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        raise BadUserInput("metadata must be a JSON object")
    size = len(_canonical_json(metadata).encode())
    if size > MAX_METADATA_BYTES:
        raise BadUserInput(f"metadata is {size} bytes; at most {MAX_METADATA_BYTES} are accepted")
    if _has_nul(metadata):
        raise BadUserInput("metadata may not contain the NUL character")
    return metadata


def _given_occurred_at(occurred_at: datetime | None) -> datetime | None:
    """The caller's occurredAt in UTC, as given (no flooring, no skew correction)."""
    if occurred_at is None:
        return None
    try:
        return as_utc(occurred_at)
    except ValueError as exc:
        raise BadUserInput(
            "occurredAt must carry a time zone offset, e.g. 2026-11-25T10:00:00Z"
        ) from exc
    except OverflowError as exc:
        raise BadUserInput("occurredAt is out of range") from exc


@dataclass(frozen=True)
class LateWindow:
    """How late last month's events are accepted: Stripe's finalisation grace, less a margin
    that leaves the sync time to deliver them before the invoice is final."""

    grace_hours: int = 1
    margin_minutes: int = 0


def _billable_occurred_at(given: datetime | None, now: datetime, late: LateWindow) -> datetime:
    """When the event happened, for billing: now by default; a caller's clock a few seconds
    ahead is floored to now; the past only as far as Stripe still bills it."""
    if given is None:
        return now
    if given > now:
        if given - now > CLOCK_SKEW:
            raise BadUserInput("occurredAt is in the future")
        return now
    window = billable_window(now, late.grace_hours, late.margin_minutes)
    if given < window.earliest:
        raise BadUserInput(
            f"occurredAt {given.isoformat()} is in a closed period: events may date back to "
            f"{window.earliest.isoformat()} at the earliest"
        )
    return given


def _validate(request: RecordRequest) -> None:
    if not MIN_QUANTITY <= request.quantity <= MAX_QUANTITY:
        raise BadUserInput(f"quantity must be between {MIN_QUANTITY} and {MAX_QUANTITY:,}")
    key = request.idempotency_key
    if key is not None and not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY_LENGTH:
        raise BadUserInput(
            f"idempotencyKey must be 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} characters long"
        )
    if key is not None and "\x00" in key:
        raise BadUserInput("idempotencyKey may not contain the NUL character")


def _fingerprint(event_type: EventType, quantity: int, metadata: dict[str, Any] | None) -> str:
    """What identifies a request's payload for its idempotency key (occurredAt aside)."""
    canonical = _canonical_json([event_type.value, quantity, metadata])
    return hashlib.sha256(canonical.encode()).hexdigest()


# --- recording ------------------------------------------------------------------------------


class _KeyTaken(Exception):
    pass


def _late(late_grace_hours: int, late_margin_minutes: int) -> LateWindow:
    return LateWindow(late_grace_hours, late_margin_minutes)


def pricing_of(plan: Applied, event_type: EventType) -> Pricing:
    """What an event writes into its month's rollup: the month's plan and its instant's cap."""
    return Pricing(
        tier=plan.month_plan.tier,
        version=plan.month_plan.version,
        allowance=plan.month_plan.allowance(event_type),
        cap=plan.cap(event_type),
    )


async def record_usage(
    company_id: uuid.UUID,
    request: RecordRequest,
    *,
    now: datetime,
    late_grace_hours: int,
    late_margin_minutes: int = 0,
) -> RecordOutcome:
    _validate(request)
    metadata = _validated_metadata(request.metadata)
    given = _given_occurred_at(request.occurred_at)
    fingerprint = _fingerprint(request.event_type, request.quantity, metadata)
    key = request.idempotency_key

    # A retry is answered from its key before any refusal: the first request was recorded (and
    # will be billed), so a retry must not be told "do not send" because the period closed, the
    # company was restricted or the cap was reached in between. The key is looked up only on
    # those paths (and when the write finds it taken), so a new event costs no look-up.
    async def retried() -> Recorded | None:
        return await _replay(company_id, key, fingerprint, given) if key is not None else None

    try:
        occurred_at = _billable_occurred_at(
            given, now, _late(late_grace_hours, late_margin_minutes)
        )
    except BadUserInput:
        if replay := await retried():
            return replay
        raise
    month = month_of(occurred_at)
    catalog = await tiers.cached_catalog()
    async with sql.pinned():  # one pooled connection for the request's two or three statements
        for _ in range(MAX_PLAN_RETRIES):
            company = await companies.get_or_create(company_id, now=now)
            if company.dunning.status(now) is BillingStatus.RESTRICTED:
                return await retried() or PaymentRequired(
                    grace_ended_at=company.dunning.grace_ends_at or now
                )
            plan = applied(company.plans, catalog, occurred_at, month)
            new_event = NewEvent(
                id=uuid.uuid4(),
                company_id=company_id,
                event_type=request.event_type,
                quantity=request.quantity,
                occurred_at=occurred_at,
                month=month,
                idempotency_key=key,
                metadata=metadata,
                sync_state="pending" if plan.billed else "local_only",
            )
            try:
                written = await usage.record_event(
                    new_event,
                    fingerprint=fingerprint,
                    occurred_at_given=given,
                    pricing=pricing_of(plan, request.event_type),
                    plan_seq=company.plan_seq,
                )
            except PlanChanged:  # a plan change committed meanwhile: decide again by it
                continue
            except usage.KeyTaken:  # stored before, or by a concurrent request that committed
                replay = await retried()
                if replay is None:  # its holder is gone (cannot happen: keys are kept)
                    raise IdempotencyKeyReused(
                        "idempotencyKey is in use by another request; retry"
                    ) from None
                return replay
            if written is None:
                return await retried() or await _refused(
                    company, plan, month, request.event_type, request.quantity
                )
            event, total = written
            return Recorded(event, _statement(event.event_type, total), duplicate=False)
    # Nothing was written: the same request (same key) records it once the changes settle.
    raise DatabaseBusy(
        "The company's plan kept changing while this was recorded (Stripe events arriving); "
        "nothing was recorded: send the same request again."
    )


async def _replay(
    company_id: uuid.UUID, key: str, fingerprint: str, occurred_at_given: datetime | None
) -> Recorded | None:
    """The first event recorded with `key`, if any; IdempotencyKeyReused if the payload differs.
    docs/design.md: event type, quantity and metadata are compared, occurredAt only when given."""
    record = await usage.find_idempotency_key(company_id, key)
    if record is None:
        return None
    original = record.event
    original_at = record.occurred_at_given or original.occurred_at
    if not _same_payload(fingerprint, occurred_at_given, record.fingerprint, original_at):
        raise IdempotencyKeyReused(
            "idempotencyKey was already used for a different event (type, quantity, metadata "
            "or occurredAt differ)"
        )
    total = await usage.rollup(company_id, original.month, original.event_type)
    assert total is not None  # written in the same transaction as the event
    return Recorded(original, _statement(original.event_type, total), duplicate=True)


async def _refused(
    company: Company, plan: Applied, month: date, event_type: EventType, requested: int
) -> LimitExceeded:
    """Why the rollup refused `requested` units: the cap of the event's instant, or the monthly
    volume ceiling (BAD_USER_INPUT)."""
    total = await usage.rollup(company.id, month, event_type)
    used = total.used if total else 0
    if used + requested > MONTHLY_VOLUME_CEILING:
        raise BadUserInput(
            f"{event_type.value}: {used:,} used in {format_month(month)} and {requested:,} "
            f"requested pass the monthly volume ceiling of {MONTHLY_VOLUME_CEILING:,} units"
        )
    return LimitExceeded(event_type, plan.cap(event_type) or 0, used, requested)


# --- recording a batch ----------------------------------------------------------------------
#
# The same rules as one recording, for up to 1,000 events in one transaction: a retried event
# is answered from its key, new events are written all or none (a cap refuses the batch), and
# the rollups are updated once per (month, event type).


@dataclass(frozen=True)
class _Checked:
    """One event of a batch, validated; `first` is the index of the first event in the batch
    with the same idempotency key (its own index when it is the first or has no key)."""

    index: int
    request: RecordRequest
    metadata: dict[str, Any] | None
    given: datetime | None
    fingerprint: str
    first: int


def _same_payload(
    fingerprint: str,
    given: datetime | None,
    original_fingerprint: str,
    original_at: datetime | None,
) -> bool:
    """the design: event type, quantity and metadata are compared, occurredAt only when given."""
    return fingerprint == original_fingerprint and (given is None or given == original_at)


def _check_batch(requests: list[RecordRequest]) -> list[_Checked]:
    if not 1 <= len(requests) <= MAX_BATCH_EVENTS:
        raise BadUserInput(
            f"events must hold 1 to {MAX_BATCH_EVENTS:,} events; {len(requests):,} were sent"
        )
    checked: list[_Checked] = []
    first_of_key: dict[str, _Checked] = {}
    for index, request in enumerate(requests):
        try:
            _validate(request)
            metadata = _validated_metadata(request.metadata)
            given = _given_occurred_at(request.occurred_at)
        except BadUserInput as exc:
            raise BadUserInput(f"events[{index}]: {exc}") from exc
        fingerprint = _fingerprint(request.event_type, request.quantity, metadata)
        key = request.idempotency_key
        first = first_of_key.get(key) if key is not None else None
        if first is not None and not _same_payload(
            fingerprint, given, first.fingerprint, first.given
        ):
            raise IdempotencyKeyReused(
                f"events[{index}] reuses the idempotencyKey of events[{first.index}] for a "
                "different event (type, quantity, metadata or occurredAt differ)"
            )
        item = _Checked(
            index, request, metadata, given, fingerprint, first.index if first else index
        )
        if key is not None and first is None:
            first_of_key[key] = item
        checked.append(item)
    return checked


def _replayed(
    checked: list[_Checked], stored: dict[str, usage.KeyRecord]
) -> dict[int, StoredEvent]:
    """The events a batch's keys already recorded, by the index of the first event with that
    key; IdempotencyKeyReused if one is sent again with a different payload."""
    replayed: dict[int, StoredEvent] = {}
    for item in checked:
        key = item.request.idempotency_key
        record = stored.get(key) if key is not None else None
        if record is None or item.first != item.index:
            continue
        original_at = record.occurred_at_given or record.event.occurred_at
        if not _same_payload(item.fingerprint, item.given, record.fingerprint, original_at):
            raise IdempotencyKeyReused(
                f"events[{item.index}]: idempotencyKey was already used for a different event "
                "(type, quantity, metadata or occurredAt differ)"
            )
        replayed[item.index] = record.event
    return replayed


async def record_usage_batch(
    company_id: uuid.UUID,
    requests: list[RecordRequest],
    *,
    now: datetime,
    late_grace_hours: int,
    late_margin_minutes: int = 0,
) -> BatchOutcome:
    checked = _check_batch(requests)
    late = _late(late_grace_hours, late_margin_minutes)
    catalog = await tiers.cached_catalog()
    keys = sorted({r.idempotency_key for r in requests if r.idempotency_key is not None})
    # An attempt is run again only when a concurrent request stored one of the batch's keys
    # after the look-up (the claim waits for an open holder, so it has committed): the next
    # look-up finds one more key each time, which bounds the attempts by the keys. A plan
    # change committed meanwhile also runs it again, a bounded number of times.
    for _ in range(len(keys) + 1 + MAX_PLAN_RETRIES):
        # As for one event, retries are answered before anything else is checked.
        replayed = _replayed(checked, await usage.find_idempotency_keys(company_id, keys))
        fresh = [i for i in checked if i.first == i.index and i.index not in replayed]
        if not fresh:
            return _batch_answer(checked, replayed, {})
        occurred: dict[int, datetime] = {}
        for i in fresh:
            try:
                occurred[i.index] = _billable_occurred_at(i.given, now, late)
            except BadUserInput as exc:
                raise BadUserInput(f"events[{i.index}]: {exc}") from exc
        company = await companies.get_or_create(company_id, now=now)
        if company.dunning.status(now) is BillingStatus.RESTRICTED:
            return PaymentRequired(grace_ended_at=company.dunning.grace_ends_at or now)
        plans = {
            index: applied(company.plans, catalog, at, month_of(at))
            for index, at in occurred.items()
        }
        new_events = {
            i.index: NewEvent(
                id=uuid.uuid4(),
                company_id=company_id,
                event_type=i.request.event_type,
                quantity=i.request.quantity,
                occurred_at=occurred[i.index],
                month=month_of(occurred[i.index]),
                idempotency_key=i.request.idempotency_key,
                metadata=i.metadata,
                sync_state="pending" if plans[i.index].billed else "local_only",
            )
            for i in fresh
        }
        claims = [
            usage.KeyClaim(key, new_events[i.index].id, i.fingerprint, i.given)
            for i in fresh
            if (key := i.request.idempotency_key) is not None
        ]
        groups = _group_pricing(new_events, plans)
        try:
            written = await _write_batch(company_id, new_events, claims, groups, company.plan_seq)
        except (_KeyTaken, PlanChanged):  # a key taken, or the plan changed: look again
            continue
        except _GroupCapReached as refused:
            # The rollups are checked before the keys are claimed: a cap reached by a
            # concurrent copy of this batch makes it a retry, answered from its keys.
            if claims and await usage.find_idempotency_keys(company_id, [c.key for c in claims]):
                continue
            plan = next(
                plans[index]
                for index, e in new_events.items()
                if (e.month, e.event_type) == (refused.month, refused.event_type)
            )
            return await _refused(company, plan, refused.month, refused.event_type, refused.total)
        return _batch_answer(checked, replayed, written)
    raise DatabaseBusy(
        "The company's plan or these idempotency keys kept changing while the batch was "
        "recorded; nothing was recorded: send the same request again."
    )


def _group_pricing(
    new_events: dict[int, NewEvent], plans: dict[int, Applied]
) -> dict[tuple[date, EventType], tuple[int, Pricing]]:
    """Per (month, event type): the batch's total, and what its rollup is priced and capped by
    (the month's plan; the strictest cap of the group's instants)."""
    groups: dict[tuple[date, EventType], tuple[int, Pricing]] = {}
    for index, event in new_events.items():
        group = (event.month, event.event_type)
        pricing = pricing_of(plans[index], event.event_type)
        if group in groups:
            total, known = groups[group]
            caps = [c for c in (known.cap, pricing.cap) if c is not None]
            pricing = Pricing(known.tier, known.version, known.allowance, min(caps, default=None))
            groups[group] = (total + event.quantity, pricing)
        else:
            groups[group] = (event.quantity, pricing)
    return groups


class _GroupCapReached(Exception):
    def __init__(self, month: date, event_type: EventType, total: int) -> None:
        super().__init__(f"{event_type.value} {month}: {total}")
        self.month, self.event_type, self.total = month, event_type, total


async def _write_batch(
    company_id: uuid.UUID,
    new_events: dict[int, NewEvent],
    claims: list[usage.KeyClaim],
    totals: dict[tuple[date, EventType], tuple[int, Pricing]],
    plan_seq: int,
) -> dict[int, StoredEvent]:
    """The events, the rollups and then the keys, in the same lock order as one recording
    (the company's share lock, rollups, then keys, each sorted), so a batch and a recording
    sharing a rollup or a key wait for each other and never deadlock: one transaction, all or
    nothing."""
    async with DB.transaction():
        stored = await usage.insert_events(list(new_events.values()))
        added = await usage.add_to_rollups(company_id, totals, plan_seq=plan_seq)
        if len(added) < len(totals):
            month, event_type = min(set(totals) - set(added), key=lambda g: (g[0], g[1].value))
            raise _GroupCapReached(month, event_type, totals[(month, event_type)][0])
        if claims and await usage.claim_idempotency_keys(company_id, claims) < len(claims):
            raise _KeyTaken
        written = dict(zip(new_events, stored, strict=True))
    return written


def _batch_answer(
    checked: list[_Checked], replayed: dict[int, StoredEvent], written: dict[int, StoredEvent]
) -> BatchRecorded:
    """Per event, in the caller's order: the event it recorded, or the one its key recorded
    before (a duplicate, counted once)."""
    items = []
    for item in checked:
        if item.first in written and item.first == item.index:
            items.append(BatchItem(item.index, written[item.index], duplicate=False))
        else:
            event = written.get(item.first) or replayed[item.first]
            items.append(BatchItem(item.index, event, duplicate=True))
    return BatchRecorded(items)


# --- reads ----------------------------------------------------------------------------------


async def company(company_id: uuid.UUID, now: datetime) -> Company:
    """The caller's company; the first request that names it creates it on the free tier."""
    return await companies.get_or_create(company_id, now=now)


async def existing_company(company_id: uuid.UUID) -> Company | None:
    """The company, if a request has named it before; None otherwise (nothing is created)."""
    return await companies.get(company_id)


def _statement(event_type: EventType, total: usage.Rollup) -> MeterStatement:
    return price_meter(event_type, total.used, total.allowance)


async def _month_summaries(company: Company, months: list[date]) -> list[MonthSummary]:
    """Each month priced by the plan copied into its rollups; an event type without a rollup
    that month shows the allowance of the plan that prices the month (its plan history)."""
    if not months:
        return []
    catalog = await tiers.cached_catalog()
    totals = await usage.rollups(company.id, min(months), max(months))
    summaries = []
    for month in months:
        plan = month_plan(company.plans, catalog, month)
        meters = [
            _statement(t, totals[(month, t)])
            if (month, t) in totals
            else price_meter(t, 0, plan.allowance(t))
            for t in EventType
        ]
        summaries.append(MonthSummary(month, meters))
    return summaries


async def current_usage(company: Company, now: datetime) -> list[MeterStatement]:
    return (await _month_summaries(company, [month_of(now)]))[0].meters


async def tier_now(company: Company, now: datetime) -> Tier:
    """The tier whose rules apply now (free while a subscription is paused or ended)."""
    return plan_of(company.plans.at(now), await tiers.cached_catalog(), now).tier


async def scheduled_change(company: Company, now: datetime) -> tuple[Tier, datetime] | None:
    """The tier of the next change in the company's plan history (a schedule's next phase, or
    free when the subscription ends at its period's end), and when it takes effect, if one is
    pending."""
    change = company.plans.next_change(now)
    if change is None:
        return None
    catalog = await tiers.cached_catalog()
    tier = plan_of(change, catalog, change.effective_from).tier
    if tier is await tier_now(company, now):
        return None
    return tier, change.effective_from


async def usage_limits(company: Company, now: datetime) -> Limits:
    catalog = await tiers.cached_catalog()
    plan = plan_of(company.plans.at(now), catalog, now)
    summary = (await _month_summaries(company, [month_of(now)]))[0]
    change = await scheduled_change(company, now)
    return Limits(
        tier=plan.tier,
        scheduled_tier=change[0] if change else None,
        scheduled_tier_effective_at=change[1] if change else None,
        hard_cap=plan.hard_cap,
        billing_status=company.dunning.status(now),
        grace_ends_at=company.dunning.grace_ends_at,
        grace_period_days=plan.grace_days,
        meters=summary.meters,
        subscription_status=company.subscription_status,
    )


async def monthly_summary(company: Company, month: date, now: datetime) -> MonthSummary | None:
    if month > month_of(now):
        raise BadUserInput(f"month {format_month(month)} has not started yet")
    return (await _month_summaries(company, [month]))[0]


async def units_missing_from_invoice(
    company: Company, month: date, *, now: datetime, late_grace_hours: int
) -> int:
    """Units of `month` that were to be billed and are not in Stripe once its invoice closed
    (the month's end + LATE_USAGE_GRACE_HOURS): Stripe will not invoice them. 0 while the
    invoice is open (the sync may still deliver them)."""
    if now < month_start(add_months(month, 1)) + timedelta(hours=late_grace_hours):
        return 0
    return await usage.units_not_in_stripe(company.id, month)


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
    if not 1 <= first <= MAX_PAGE_SIZE:
        raise BadUserInput(f"first must be between 1 and {MAX_PAGE_SIZE}")
    rows = await usage.list_events(
        company.id, limit=first + 1, after=after, event_type=event_type, month=month
    )
    return EventPage(events=rows[:first], has_next_page=len(rows) > first)
