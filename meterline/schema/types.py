"""Strawberry types: the design's SDL, built from the domain objects."""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import UTC, date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, cast

import strawberry
from strawberry.scalars import JSON

from meterline.billing.catalog import CURRENCY, EventType, Tier
from meterline.billing.dunning import BillingStatus as DomainBillingStatus
from meterline.billing.periods import parse_month
from meterline.billing.pricing import MeterStatement
from meterline.db.invoices import InvoiceMirror
from meterline.db.usage import StoredEvent
from meterline.services import usage as usage_service
from meterline.services.errors import BadUserInput
from meterline.stripe_gateway.invoices import InvoicePreview, PreviewLine, to_major_units

# The domain enums are the GraphQL enums (exposed by member NAME): the catalog drives the schema.
strawberry.enum(EventType, name="UsageEventType")
strawberry.enum(Tier, name="SubscriptionTier")
strawberry.enum(DomainBillingStatus, name="BillingStatus")
UsageEventType = EventType
SubscriptionTier = Tier
BillingStatus = DomainBillingStatus


@strawberry.enum
class SyncState(StrEnum):
    LOCAL_ONLY = "local_only"
    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"
    UNKNOWN = "unknown"


def money_amount(amount: Decimal) -> Decimal:
    """At least two decimals ("0.35", "12.30"); more only when the amount has them."""
    cents = amount.quantize(Decimal("0.01"))
    return cents if cents == amount else amount.normalize()


@strawberry.type
class Money:
    amount: Decimal
    currency: str

    @classmethod
    def of(cls, amount: Decimal, currency: str = CURRENCY) -> Money:
        return cls(amount=money_amount(amount), currency=currency)


@strawberry.type
class MeterUsage:
    event_type: UsageEventType
    used: int
    included: int | None
    remaining: int | None
    percent_used: float | None
    exceeded: bool
    overage_quantity: int
    unit_price: Money
    overage_cost: Money

    @classmethod
    def of(cls, s: MeterStatement) -> MeterUsage:
        return cls(
            event_type=s.event_type,
            used=s.used,
            included=s.included,
            remaining=s.remaining,
            percent_used=s.percent_used,
            exceeded=s.exceeded,
            overage_quantity=s.overage_quantity,
            unit_price=Money.of(s.unit_price),
            overage_cost=Money.of(s.overage_cost),
        )


@strawberry.enum(description="Stripe's status of the company's current subscription.")
class SubscriptionStatus(StrEnum):
    ACTIVE = "active"
    TRIALING = "trialing"
    PAST_DUE = "past_due"
    UNPAID = "unpaid"
    PAUSED = "paused"
    INCOMPLETE = "incomplete"
    INCOMPLETE_EXPIRED = "incomplete_expired"
    CANCELED = "canceled"

    @classmethod
    def of(cls, status: str | None) -> SubscriptionStatus | None:
        # Stripe may add statuses: an unknown one shows as null rather than failing the query.
        return cls._value2member_map_.get(status or "")  # type: ignore[return-value]


@strawberry.type
class UsageLimits:
    tier: SubscriptionTier
    scheduled_tier: SubscriptionTier | None
    scheduled_tier_effective_at: datetime | None = strawberry.field(
        description="When `scheduledTier` takes effect (a 1st, 00:00 UTC); null without one."
    )
    hard_cap: bool = strawberry.field(
        description="Usage beyond a meter's `included` is refused, not billed: the free tier, "
        "and a subscription paused or ended."
    )
    exceeded: bool
    billing_status: BillingStatus
    grace_ends_at: datetime | None
    grace_period_days: int
    meters: list[MeterUsage]
    subscription_status: SubscriptionStatus | None = strawberry.field(
        description="null without a Stripe subscription; PAUSED while Stripe pauses it."
    )

    @classmethod
    def of(cls, limits: usage_service.Limits) -> UsageLimits:
        return cls(
            tier=limits.tier,
            scheduled_tier=limits.scheduled_tier,
            scheduled_tier_effective_at=limits.scheduled_tier_effective_at,
            hard_cap=limits.hard_cap,
            exceeded=limits.exceeded,
            billing_status=limits.billing_status,
            grace_ends_at=limits.grace_ends_at,
            grace_period_days=limits.grace_period_days,
            meters=[MeterUsage.of(m) for m in limits.meters],
            subscription_status=SubscriptionStatus.of(limits.subscription_status),
        )


@strawberry.type
class Invoice:
    """A Stripe invoice, from the local mirror the webhooks keep."""

    id: str
    number: str | None
    status: str
    amount_due: Money
    amount_paid: Money
    period_start: datetime | None
    period_end: datetime | None
    paid_at: datetime | None
    hosted_invoice_url: str | None
    invoice_pdf: str | None

    @classmethod
    def of(cls, invoice: InvoiceMirror) -> Invoice:
        currency = invoice.currency
        return cls(
            id=invoice.id,
            number=invoice.number,
            status=invoice.status,
            amount_due=Money.of(to_major_units(invoice.amount_due, currency), currency),
            amount_paid=Money.of(to_major_units(invoice.amount_paid, currency), currency),
            period_start=invoice.period_start,
            period_end=invoice.period_end,
            paid_at=invoice.paid_at,
            hosted_invoice_url=invoice.hosted_invoice_url,
            invoice_pdf=invoice.invoice_pdf,
        )


async def _month_invoice(root: MonthlySummary, info: strawberry.Info[Any, None]) -> Invoice | None:
    from meterline.resolvers.billing import month_invoice  # it imports this module

    return await month_invoice(info, root.month)


async def _units_missing_from_invoice(
    root: MonthlySummary, info: strawberry.Info[Any, None]
) -> int:
    from meterline.resolvers.usage import month_units_missing_from_invoice  # imports this module

    return await month_units_missing_from_invoice(info, root.month)


@strawberry.type
class MonthlySummary:
    month: date
    meters: list[MeterUsage]
    total_overage_cost: Money
    invoice: Invoice | None = strawberry.field(
        resolver=_month_invoice,
        description="The Stripe invoice carrying this month's usage, once mirrored (admins).",
    )
    unbilled_units: int = strawberry.field(
        resolver=_units_missing_from_invoice,
        description="Units of this month recorded for Stripe that Stripe did not get before "
        "the month's invoice closed (its end + LATE_USAGE_GRACE_HOURS): counted here, never "
        "invoiced. 0 while the invoice is open.",
    )

    @classmethod
    def of(cls, summary: usage_service.MonthSummary) -> MonthlySummary:
        return cls(
            month=summary.month,
            meters=[MeterUsage.of(m) for m in summary.meters],
            total_overage_cost=Money.of(summary.total_overage_cost),
        )


@strawberry.type
class InvoiceLine:
    description: str | None
    quantity: int | None
    amount: Money

    @classmethod
    def of(cls, line: PreviewLine, currency: str) -> InvoiceLine:
        return cls(
            description=line.description,
            quantity=line.quantity,
            amount=Money.of(line.amount, currency),
        )


@strawberry.type
class UpcomingInvoice:
    amount_due: Money
    period_start: datetime
    period_end: datetime
    lines: list[InvoiceLine]

    @classmethod
    def of(cls, preview: InvoicePreview) -> UpcomingInvoice:
        return cls(
            amount_due=Money.of(preview.amount_due, preview.currency),
            period_start=preview.period_start,
            period_end=preview.period_end,
            lines=[InvoiceLine.of(line, preview.currency) for line in preview.lines],
        )


@strawberry.type
class UsageEvent:
    id: strawberry.ID
    event_type: UsageEventType
    quantity: int
    occurred_at: datetime
    idempotency_key: str | None
    metadata: JSON | None
    sync_state: SyncState

    @classmethod
    def of(cls, event: StoredEvent) -> UsageEvent:
        return cls(
            id=strawberry.ID(str(event.id)),
            event_type=event.event_type,
            quantity=event.quantity,
            occurred_at=event.occurred_at,
            idempotency_key=event.idempotency_key,
            metadata=cast(JSON, event.metadata),
            sync_state=SyncState(event.sync_state),
        )


@strawberry.type
class UsageEventEdge:
    cursor: str
    node: UsageEvent


@strawberry.type
class PageInfo:
    has_next_page: bool
    end_cursor: str | None


@strawberry.type
class UsageEventConnection:
    edges: list[UsageEventEdge]
    page_info: PageInfo

    @classmethod
    def of(cls, page: usage_service.EventPage) -> UsageEventConnection:
        edges = [
            UsageEventEdge(cursor=encode_cursor(e), node=UsageEvent.of(e)) for e in page.events
        ]
        return cls(
            edges=edges,
            page_info=PageInfo(
                has_next_page=page.has_next_page, end_cursor=edges[-1].cursor if edges else None
            ),
        )


def encode_cursor(event: StoredEvent) -> str:
    raw = f"{event.occurred_at.isoformat()}|{event.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode()


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        occurred_at, event_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|")
        moment = datetime.fromisoformat(occurred_at)
        if moment.tzinfo is None:
            raise ValueError
        return moment.astimezone(UTC), uuid.UUID(event_id)
    except (ValueError, OverflowError, binascii.Error, UnicodeDecodeError) as exc:
        raise BadUserInput("after is not a cursor this API gave out") from exc


def month_argument(text: str) -> date:
    try:
        return parse_month(text)
    except ValueError as exc:
        raise BadUserInput(f"month must be YYYY-MM, e.g. 2026-11; got {text!r}") from exc


@strawberry.input
class RecordUsageInput:
    event_type: UsageEventType
    quantity: int = 1
    idempotency_key: str | None = None
    occurred_at: datetime | None = None
    metadata: JSON | None = None

    def to_request(self) -> usage_service.RecordRequest:
        return usage_service.RecordRequest(
            event_type=EventType(self.event_type),
            quantity=self.quantity,
            idempotency_key=self.idempotency_key,
            occurred_at=self.occurred_at,
            metadata=self.metadata,
        )


@strawberry.type
class UsageRecorded:
    event: UsageEvent
    usage: MeterUsage
    duplicate: bool


@strawberry.type
class UsageLimitExceeded:
    event_type: UsageEventType
    included: int
    used: int
    requested: int
    message: str


@strawberry.type
class PaymentRequired:
    grace_ended_at: datetime
    message: str


RecordUsageResult = Annotated[
    UsageRecorded | UsageLimitExceeded | PaymentRequired, strawberry.union("RecordUsageResult")
]


def record_result(
    outcome: usage_service.RecordOutcome,
) -> UsageRecorded | UsageLimitExceeded | PaymentRequired:
    if isinstance(outcome, usage_service.Recorded):
        return UsageRecorded(
            event=UsageEvent.of(outcome.event),
            usage=MeterUsage.of(outcome.usage),
            duplicate=outcome.duplicate,
        )
    return refusal(outcome)


def refusal(
    outcome: usage_service.LimitExceeded | usage_service.PaymentRequired,
) -> UsageLimitExceeded | PaymentRequired:
    """Why a recording (or a whole batch) was refused."""
    if isinstance(outcome, usage_service.LimitExceeded):
        return UsageLimitExceeded(
            event_type=outcome.event_type,
            included=outcome.included,
            used=outcome.used,
            requested=outcome.requested,
            message=outcome.message,
        )
    return PaymentRequired(grace_ended_at=outcome.grace_ended_at, message=outcome.message)


@strawberry.type
class BatchItem:
    index: int
    event: UsageEvent
    duplicate: bool


@strawberry.type
class UsageBatchRecorded:
    outcome: strawberry.Private[usage_service.BatchRecorded]

    @strawberry.field
    def items(self) -> list[BatchItem]:
        """Built only when asked for: 1,000 of them cost a tenth of a batch's CPU."""
        return [
            BatchItem(index=i.index, event=UsageEvent.of(i.event), duplicate=i.duplicate)
            for i in self.outcome.items
        ]

    @strawberry.field
    def recorded(self) -> int:
        return self.outcome.recorded

    @strawberry.field
    def duplicates(self) -> int:
        return self.outcome.duplicates


RecordUsageBatchResult = Annotated[
    UsageBatchRecorded | UsageLimitExceeded | PaymentRequired,
    strawberry.union("RecordUsageBatchResult"),
]


def batch_result(
    outcome: usage_service.BatchOutcome,
) -> UsageBatchRecorded | UsageLimitExceeded | PaymentRequired:
    if isinstance(outcome, usage_service.BatchRecorded):
        return UsageBatchRecorded(outcome=outcome)
    return refusal(outcome)
