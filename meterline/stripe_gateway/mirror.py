"""Reading the objects Stripe's webhooks are about: subscriptions, invoices, thin events.

Webhook handlers never trust an event's snapshot: they re-read the object here and apply its
current state, so the order of deliveries does not matter (the design, webhooks). What comes back
are plain values; no Stripe object leaves the gateway.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import stripe

PAGE_SIZE = 100
MAX_LINES = 1_000


class ObjectMissing(Exception):
    """Stripe has no such object (deleted, or another account's)."""


class StripeReadFailed(Exception):
    """Stripe did not answer the read (unreachable, 5xx, 429, refused): try again later."""


@dataclass(frozen=True)
class PriceRef:
    id: str
    lookup_key: str | None
    metered: bool
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SubscriptionState:
    id: str
    customer: str
    status: str
    metadata: Mapping[str, str]
    created: datetime
    start_date: datetime
    current_period_start: datetime | None
    current_period_end: datetime | None
    cancel_at_period_end: bool
    prices: tuple[PriceRef, ...]
    ended_at: datetime | None = None
    base_price_since: datetime | None = None  # when its base (licensed) price item was added
    # `pause_collection.behavior` while payment collection is paused (the status stays
    # active): keep_as_draft, mark_uncollectible or void; None when collecting.
    pause_collection: str | None = None
    schedule_id: str | None = None


@dataclass(frozen=True)
class ScheduleState:
    """A subscription schedule: what its next phase (if any) will bill, and from when."""

    id: str
    subscription_id: str | None
    status: str  # not_started, active, completed, released, canceled
    next_phase_start: datetime | None
    next_phase_prices: tuple[PriceRef, ...]


@dataclass(frozen=True)
class InvoiceState:
    id: str
    customer: str
    subscription_id: str | None
    subscription_metadata: Mapping[str, str]
    number: str | None
    status: str
    billing_reason: str | None
    currency: str
    amount_due: int
    amount_paid: int
    amount_remaining: int
    period_start: datetime | None
    period_end: datetime | None
    created: datetime
    finalized_at: datetime | None
    paid_at: datetime | None
    marked_uncollectible_at: datetime | None
    hosted_invoice_url: str | None
    invoice_pdf: str | None
    attempted: bool
    attempt_count: int
    metered_periods: tuple[tuple[datetime, datetime], ...]  # the metered lines' periods


@dataclass(frozen=True)
class SampleError:
    code: str
    message: str
    identifier: str | None


@dataclass(frozen=True)
class MeterErrorEvent:
    id: str
    type: str
    created: datetime | None  # Stripe's; when it reached Meterline is the app's clock
    meter_id: str | None
    summary: str | None
    error_count: int
    validation_start: datetime | None
    validation_end: datetime | None
    samples: tuple[SampleError, ...]


def _ts(value: Any) -> datetime | None:
    return datetime.fromtimestamp(int(value), UTC) if value is not None else None


def iso_time(value: Any) -> datetime | None:
    """Stripe's v2 timestamps ("2026-11-25T10:00:00.000Z"); ValueError without an offset."""
    if not value:
        return None
    moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError(f"timestamp without a UTC offset: {value!r}")
    return moment


def optional(obj: Any, name: str) -> Any:
    """A field Stripe may leave out (Stripe objects are not dicts: no `.get`)."""
    return getattr(obj, name, None) if obj is not None else None


def _id(value: Any) -> str | None:
    """An expandable field: the id, whether Stripe sent the id or the object."""
    if value is None or isinstance(value, str):
        return value
    return str(value.id)


def _price(price: Any) -> PriceRef:
    if isinstance(price, str):  # not expanded: nothing to judge it by
        return PriceRef(price, None, False)
    recurring = optional(price, "recurring")
    return PriceRef(
        id=str(price.id),
        lookup_key=optional(price, "lookup_key"),
        metered=optional(recurring, "usage_type") == "metered",
        metadata=_metadata(price),
    )


def _metadata(obj: Any) -> dict[str, str]:
    metadata = optional(obj, "metadata")
    return {str(k): str(v) for k, v in metadata.to_dict().items()} if metadata else {}


def subscription_state(sub: stripe.Subscription) -> SubscriptionState:
    items = list(sub["items"].data)
    starts = [i.current_period_start for i in items if optional(i, "current_period_start")]
    ends = [i.current_period_end for i in items if optional(i, "current_period_end")]
    return SubscriptionState(
        id=str(sub.id),
        customer=str(_id(sub.customer)),
        status=str(sub.status),
        metadata=_metadata(sub),
        created=datetime.fromtimestamp(int(sub.created), UTC),
        start_date=datetime.fromtimestamp(int(optional(sub, "start_date") or sub.created), UTC),
        current_period_start=_ts(min(starts)) if starts else None,
        current_period_end=_ts(max(ends)) if ends else None,
        cancel_at_period_end=bool(optional(sub, "cancel_at_period_end")),
        prices=tuple(_price(i.price) for i in items),
        ended_at=_ts(optional(sub, "ended_at")),
        base_price_since=_ts(
            min(
                (int(i.created) for i in items if not _price(i.price).metered and i.created),
                default=None,
            )
        ),
        pause_collection=_optional_str(optional(optional(sub, "pause_collection"), "behavior")),
        schedule_id=_id(optional(sub, "schedule")),
    )


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)


def line_price_id(line: Any) -> str | None:
    return _id(optional(optional(optional(line, "pricing"), "price_details"), "price"))


def invoice_state(
    invoice: stripe.Invoice, lines: list[Any], prices: Mapping[str, PriceRef]
) -> InvoiceState:
    """`prices`: the lines' prices by id (a line's price is not expanded: Stripe expands at most
    four levels, and `lines.data.pricing.price_details.price` is five)."""
    parent = optional(invoice, "parent")
    details = optional(parent, "subscription_details")
    transitions = optional(invoice, "status_transitions")
    metered: list[tuple[datetime, datetime]] = []
    for line in lines:
        price_id = line_price_id(line)
        price = prices.get(price_id) if price_id else None
        period = optional(line, "period")
        if price is not None and price.metered and period is not None:
            metered.append(
                (
                    datetime.fromtimestamp(int(period.start), UTC),
                    datetime.fromtimestamp(int(period.end), UTC),
                )
            )
    return InvoiceState(
        id=str(invoice.id),
        customer=str(_id(invoice.customer)),
        subscription_id=_id(optional(details, "subscription")),
        subscription_metadata=_metadata(details),
        number=optional(invoice, "number"),
        status=str(invoice.status),
        billing_reason=optional(invoice, "billing_reason"),
        currency=str(invoice.currency).lower(),
        amount_due=int(invoice.amount_due),
        amount_paid=int(invoice.amount_paid),
        amount_remaining=int(optional(invoice, "amount_remaining") or 0),
        period_start=_ts(optional(invoice, "period_start")),
        period_end=_ts(optional(invoice, "period_end")),
        created=datetime.fromtimestamp(int(invoice.created), UTC),
        finalized_at=_ts(optional(transitions, "finalized_at")),
        paid_at=_ts(optional(transitions, "paid_at")),
        marked_uncollectible_at=_ts(optional(transitions, "marked_uncollectible_at")),
        hosted_invoice_url=optional(invoice, "hosted_invoice_url"),
        invoice_pdf=optional(invoice, "invoice_pdf"),
        attempted=bool(optional(invoice, "attempted")),
        attempt_count=int(optional(invoice, "attempt_count") or 0),
        metered_periods=tuple(metered),
    )


def meter_error_event(event: Any) -> MeterErrorEvent:
    data = optional(event, "data")
    reason = optional(data, "reason")
    samples = []
    for error_type in optional(reason, "error_types") or []:
        for sample in optional(error_type, "sample_errors") or []:
            samples.append(
                SampleError(
                    code=str(optional(error_type, "code")),
                    message=str(optional(sample, "error_message") or ""),
                    identifier=optional(optional(sample, "request"), "identifier"),
                )
            )
    related = optional(event, "related_object")
    return MeterErrorEvent(
        id=str(event.id),
        type=str(event.type),
        created=iso_time(event.created),
        meter_id=optional(related, "id"),
        summary=optional(data, "developer_message_summary"),
        error_count=int(optional(reason, "error_count") or 0),
        validation_start=iso_time(optional(data, "validation_start")),
        validation_end=iso_time(optional(data, "validation_end")),
        samples=tuple(samples),
    )


def _failure(exc: stripe.StripeError) -> Exception:
    # v1 says `resource_missing`, v2 (events) `not_found`.
    if isinstance(exc, stripe.InvalidRequestError) and exc.code in (
        "resource_missing",
        "not_found",
    ):
        return ObjectMissing(str(exc.user_message or exc))
    status = f" ({exc.http_status})" if exc.http_status else ""
    return StripeReadFailed(f"{type(exc).__name__}{status}: {exc.user_message or exc}")


class StripeReader:
    """The reads webhook handlers and the backfill need, on one StripeClient."""

    def __init__(self, client: stripe.StripeClient) -> None:
        self._client = client
        # Whether a price is metered never changes: each price is read once per process.
        self._prices: dict[str, PriceRef] = {}
        self._price_reads: dict[str, asyncio.Future[stripe.Price]] = {}

    async def _line_prices(self, lines: list[Any]) -> dict[str, PriceRef]:
        return await self._line_prices_by_id([p for p in map(line_price_id, lines) if p])

    async def _line_prices_by_id(self, price_ids: list[str]) -> dict[str, PriceRef]:
        for price_id in {p for p in price_ids if p not in self._prices}:
            # Concurrent handlers missing the same price share one read.
            task = self._price_reads.get(price_id)
            if task is None:
                task = asyncio.ensure_future(self._client.v1.prices.retrieve_async(price_id))
                self._price_reads[price_id] = task
            try:
                self._prices[price_id] = _price(await asyncio.shield(task))
            finally:
                if task.done():
                    self._price_reads.pop(price_id, None)
        return self._prices

    async def subscription(self, subscription_id: str) -> SubscriptionState:
        try:
            sub = await self._client.v1.subscriptions.retrieve_async(subscription_id)
        except stripe.StripeError as exc:
            raise _failure(exc) from exc
        return subscription_state(sub)

    async def subscription_schedule(self, schedule_id: str) -> ScheduleState:
        """The schedule and the prices of its next phase (each read: a phase's item names its
        price by id)."""
        try:
            schedule = await self._client.v1.subscription_schedules.retrieve_async(schedule_id)
            current = optional(schedule, "current_phase")
            current_end = optional(current, "end_date")
            phases = list(optional(schedule, "phases") or [])
            upcoming = [
                p
                for p in phases
                if current_end is not None and int(optional(p, "start_date") or 0) >= current_end
            ]
            if current is None and phases and str(schedule.status) == "not_started":
                upcoming = phases
            following = min(upcoming, key=lambda p: int(p.start_date), default=None)
            price_ids = [
                pid
                for item in (optional(following, "items") or [])
                if (pid := _id(optional(item, "price"))) is not None
            ]
            prices = await self._line_prices_by_id(price_ids)
        except stripe.StripeError as exc:
            raise _failure(exc) from exc
        return ScheduleState(
            id=str(schedule.id),
            # A released schedule no longer names its subscription, only the one it released.
            subscription_id=_id(optional(schedule, "subscription"))
            or _id(optional(schedule, "released_subscription")),
            status=str(schedule.status),
            next_phase_start=_ts(optional(following, "start_date")),
            next_phase_prices=tuple(prices[p] for p in price_ids if p in prices),
        )

    async def invoice(self, invoice_id: str) -> InvoiceState:
        try:
            invoice = await self._client.v1.invoices.retrieve_async(invoice_id)
            lines = await self._lines(invoice)
            prices = await self._line_prices(lines)
        except stripe.StripeError as exc:
            raise _failure(exc) from exc
        return invoice_state(invoice, lines, prices)

    async def _invoice_states(self, page: list[stripe.Invoice]) -> list[InvoiceState]:
        states = []
        for invoice in page:
            lines = await self._lines(invoice)
            states.append(invoice_state(invoice, lines, await self._line_prices(lines)))
        return states

    async def _lines(self, invoice: stripe.Invoice) -> list[Any]:
        page = invoice.lines
        lines = list(page.data)
        while page.has_more and lines and len(lines) < MAX_LINES:
            page = await self._client.v1.invoices.line_items.list_async(
                str(invoice.id),
                {"limit": PAGE_SIZE, "starting_after": lines[-1].id},
            )
            if not page.data:
                break
            lines.extend(page.data)
        return lines

    async def meter_error_report(self, notification: Mapping[str, Any]) -> MeterErrorEvent:
        """The full event a stored thin notification announces (GET /v2/core/events/{id})."""
        parsed = self._client.parse_event_notification_without_verification(
            json.dumps(notification)
        )
        try:
            # Not `parsed.fetch_event_async()`: in stripe 16.1 its async path leaks the SDK's
            # internal `usage` list into the query string (`?usage[0]=pushed_event_pull...`).
            event = await self._client.v2.core.events.retrieve_async(parsed.id)
        except stripe.StripeError as exc:
            raise _failure(exc) from exc
        return meter_error_event(event)

    async def subscriptions_page(
        self, after: str | None
    ) -> tuple[list[SubscriptionState], str | None]:
        """One page of every subscription of the account (canceled ones included), newest
        first, and the cursor of the next page (None at the end)."""
        params: dict[str, Any] = {"status": "all", "limit": PAGE_SIZE}
        if after:
            params["starting_after"] = after
        try:
            page = await self._client.v1.subscriptions.list_async(params)  # type: ignore[arg-type]
        except stripe.StripeError as exc:
            raise _failure(exc) from exc
        states = [subscription_state(sub) for sub in page.data]
        return states, (states[-1].id if page.has_more and states else None)

    async def customer_invoices(self, customer: str) -> list[InvoiceState]:
        """A customer's latest invoices (one page: those a new link may have missed)."""
        try:
            page = await self._client.v1.invoices.list_async(
                {"customer": customer, "limit": PAGE_SIZE}
            )
            return await self._invoice_states(page.data)
        except stripe.StripeError as exc:
            raise _failure(exc) from exc

    async def invoices_page(self, after: str | None) -> tuple[list[InvoiceState], str | None]:
        """One page of every invoice of the account, newest first, and the next cursor."""
        params: dict[str, Any] = {"limit": PAGE_SIZE}
        if after:
            params["starting_after"] = after
        try:
            page = await self._client.v1.invoices.list_async(params)  # type: ignore[arg-type]
            states = await self._invoice_states(page.data)
        except stripe.StripeError as exc:
            raise _failure(exc) from exc
        return states, (states[-1].id if page.has_more and states else None)
