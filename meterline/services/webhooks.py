"""Receiving Stripe events: stored once by id, re-read from Stripe, applied in one transaction.

A delivery is stored first (a duplicate finds its row and is acknowledged), then its object is
re-read from Stripe outside any transaction, then one transaction locks the event row, applies
the state read and marks the event applied: a concurrent delivery of the same event waits on
that lock and finds it applied, so nothing is applied twice. A failure is stored on the event
and answered 500, and Stripe's next delivery (or `meterline webhooks replay`) applies it.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from meterline.db import companies, webhook_events
from meterline.db.engine import DB
from meterline.db.sql import is_database_busy
from meterline.db.stripe_reads import next_read_seq
from meterline.db.webhook_events import StoredWebhookEvent
from meterline.metrics import DATABASE_BUSY
from meterline.services import duplicates
from meterline.services.backfill import assumed_failure
from meterline.services.invoices import apply_invoice
from meterline.services.meter_errors import record_meter_errors
from meterline.services.subscriptions import (
    Outcome,
    apply_schedule,
    apply_subscription,
    company_named,
)
from meterline.stripe_gateway.client import StripeNotConfigured
from meterline.stripe_gateway.lifecycle import DuplicateSubscriptions
from meterline.stripe_gateway.mirror import ObjectMissing, StripeReader, StripeReadFailed

logger = logging.getLogger(__name__)

SUBSCRIPTION_EVENTS = frozenset(
    f"customer.subscription.{what}"
    for what in ("created", "updated", "deleted", "paused", "resumed")
)
INVOICE_EVENTS = frozenset(
    f"invoice.{what}"
    for what in (
        "created",
        "finalized",
        "updated",
        "paid",
        "payment_failed",
        "voided",
        "marked_uncollectible",
    )
)
SCHEDULE_EVENTS = frozenset(
    f"subscription_schedule.{what}"
    for what in ("created", "updated", "released", "canceled", "completed", "aborted")
)
CHECKOUT_COMPLETED = "checkout.session.completed"
METER_ERROR_EVENTS = frozenset(
    {"v1.billing.meter.error_report_triggered", "v1.billing.meter.no_meter_found"}
)
HANDLED_EVENTS = (
    SUBSCRIPTION_EVENTS
    | SCHEDULE_EVENTS
    | INVOICE_EVENTS
    | {CHECKOUT_COMPLETED}
    | METER_ERROR_EVENTS
)

Step = Callable[[], Awaitable[Outcome]]  # the database part of applying an event


class EventNotStored(LookupError):
    pass


@dataclass(frozen=True)
class Received:
    event_id: str
    status: str  # applied | ignored | failed
    duplicate: bool
    error: str | None = None


@dataclass
class WebhookProcessor:
    reader: Callable[[], StripeReader]  # raises StripeNotConfigured when there is no key
    clock: Callable[[], datetime]
    # The calls that cancel a company's second live subscription; by default on the reader's
    # client (one connection pool).
    duplicates: Callable[[], DuplicateSubscriptions] | None = None

    async def receive(
        self,
        *,
        source: str,
        event_id: str,
        event_type: str,
        object_id: str | None,
        created: datetime,
        payload: Mapping[str, Any],
    ) -> Received:
        stored, new = await webhook_events.store(
            event_id=event_id,
            source=source,
            event_type=event_type,
            object_id=object_id,
            created=created,
            payload=dict(payload),
            status="received" if event_type in HANDLED_EVENTS else "ignored",
            received_at=self.clock(),
        )
        if stored.status in ("applied", "ignored"):
            return Received(event_id, stored.status, duplicate=not new)
        try:
            status, duplicate = await self._apply(stored, force=False)
        except Exception as exc:
            expected = isinstance(exc, StripeReadFailed | StripeNotConfigured)
            if is_database_busy(exc):  # Stripe delivers it again; counted for /metrics
                DATABASE_BUSY.labels("webhook").inc()
                expected = True
            error = f"{type(exc).__name__}: {exc}"
            if expected:  # Stripe will deliver it again
                logger.warning("Stripe event %s (%s) not applied: %s", event_id, event_type, error)
            else:
                logger.exception("applying Stripe event %s (%s) failed", event_id, event_type)
            await webhook_events.mark_failed(event_id, error=error)
            now_stored = await webhook_events.get(event_id)
            if now_stored is not None and now_stored.status in ("applied", "ignored"):
                # A concurrent delivery applied it while this one failed: nothing to retry.
                return Received(event_id, now_stored.status, duplicate=True)
            # Stripe shows this answer in its dashboard: the reason, never internals.
            shown = error if expected else f"{type(exc).__name__} (see Meterline's log)"
            return Received(event_id, "failed", duplicate=False, error=shown)
        return Received(event_id, status, duplicate=duplicate)

    async def replay(self, event_id: str) -> str:
        """Apply a stored event again, whatever its status (`meterline webhooks replay`)."""
        stored = await webhook_events.get(event_id)
        if stored is None:
            raise EventNotStored(f"no stored event {event_id}")
        try:
            status, _ = await self._apply(stored, force=True)
        except Exception as exc:
            await webhook_events.mark_failed(event_id, error=f"{type(exc).__name__}: {exc}")
            raise
        return status

    async def _apply(self, stored: StoredWebhookEvent, *, force: bool) -> tuple[str, bool]:
        step = await self._prepare(stored)  # Stripe is read here, outside any transaction
        now = self.clock()
        async with DB.transaction():
            row = await webhook_events.lock(stored.id)
            assert row is not None
            if not force and row.status in ("applied", "ignored"):
                return row.status, True  # a concurrent delivery applied it
            outcome = await step()
            status = "applied" if outcome.applied else "ignored"
            await webhook_events.mark_applied(stored.id, status=status, now=now, note=outcome.note)
        if outcome.newly_linked is not None:
            await self._mirror_invoices_of(outcome.newly_linked)
        return status, False

    async def _mirror_invoices_of(self, customer: str) -> None:
        """A customer just linked to its company: its invoices that came before (acknowledged
        then as of an unknown customer) are mirrored now. Best effort: the event is applied."""
        try:
            read_seq = await next_read_seq()
            for state in await self.reader().customer_invoices(customer):
                async with DB.transaction():
                    await apply_invoice(
                        state, read_seq=read_seq, now=self.clock(), failed_at=assumed_failure(state)
                    )
        except Exception:
            logger.warning("could not mirror the invoices of customer %s", customer, exc_info=True)

    async def _prepare(self, stored: StoredWebhookEvent) -> Step:
        now = self.clock()
        obj = stored.payload.get("data", {}).get("object", {})
        if stored.type in SUBSCRIPTION_EVENTS:
            return await self._subscription_step(stored.object_id, now)
        if stored.type in SCHEDULE_EVENTS:
            if stored.object_id is None:
                return _done(Outcome(False, "the event names no schedule"))
            try:
                schedule = await self.reader().subscription_schedule(stored.object_id)
            except ObjectMissing as exc:
                return _done(Outcome(False, f"Stripe has no schedule {stored.object_id}: {exc}"))
            return lambda: apply_schedule(schedule, now=now)
        if stored.type == CHECKOUT_COMPLETED:
            subscription = obj.get("subscription")
            if isinstance(subscription, dict):
                subscription = subscription.get("id")
            if not isinstance(subscription, str):
                return _done(Outcome(False, "not a subscription checkout"))
            # The session's metadata is set by whoever created the session (Meterline's
            # checkout); never `client_reference_id`, which a payment link's visitor can set.
            hint = company_named(obj.get("metadata") or {})
            return await self._subscription_step(subscription, now, company_hint=hint)
        if stored.type in INVOICE_EVENTS:
            return await self._invoice_step(stored, now)
        if stored.type in METER_ERROR_EVENTS:
            try:
                report = await self.reader().meter_error_report(stored.payload)
            except ObjectMissing as exc:  # retrying for three days would not bring it back
                return _done(Outcome(False, f"Stripe has no event {stored.id}: {exc}"))
            return lambda: record_meter_errors(report, now=now)
        return _done(Outcome(False, f"{stored.type} is not handled"))

    async def _subscription_step(
        self,
        subscription_id: str | None,
        now: datetime,
        company_hint: uuid.UUID | None = None,
    ) -> Step:
        if subscription_id is None:
            return _done(Outcome(False, "the event names no subscription"))
        read_seq = await next_read_seq()
        reader = self.reader()
        try:
            state = await reader.subscription(subscription_id)
        except ObjectMissing as exc:
            return _done(Outcome(False, f"Stripe has no subscription {subscription_id}: {exc}"))
        # A second live subscription of the company: the newer one is cancelled in Stripe now,
        # outside any transaction (services/duplicates.py).
        duplicate = await duplicates.resolve(
            state, reader=reader, gateway=self._duplicate_gateway(), company_hint=company_hint
        )
        if duplicate is None:
            return lambda: apply_subscription(
                state, read_seq=read_seq, now=now, company_hint=company_hint
            )
        kept_state, kept_seq = state, read_seq
        if duplicate.cancelled.id == state.id:
            # The newer one's event came first: the older one, live in Stripe and billing the
            # company, is applied first too, so the company is never left free meanwhile.
            kept_seq = await next_read_seq()
            try:
                kept_state = await reader.subscription(duplicate.kept)
            except ObjectMissing:
                kept_state = state

        async def step() -> Outcome:
            kept: Outcome | None = None
            if kept_state.id != duplicate.cancelled.id:
                # The older one becomes (or stays) the company's first, so the newer one ends
                # as a subscription that is not the company's.
                kept = await apply_subscription(
                    kept_state,
                    read_seq=kept_seq,
                    now=now,
                    company_hint=company_hint,
                )
            ended = await apply_subscription(
                duplicate.cancelled,
                read_seq=duplicate.read_seq,
                now=now,
                company_hint=company_hint,
            )
            await duplicates.record(duplicate, now=now)
            return kept if kept is not None else ended

        return step

    def _duplicate_gateway(self) -> DuplicateSubscriptions:
        if self.duplicates is not None:
            return self.duplicates()
        return DuplicateSubscriptions(self.reader()._client)

    async def _invoice_step(self, stored: StoredWebhookEvent, now: datetime) -> Step:
        if stored.object_id is None:
            return _done(Outcome(False, "the event names no invoice"))
        reader = self.reader()
        read_seq = await next_read_seq()
        try:
            state = await reader.invoice(stored.object_id)
        except ObjectMissing as exc:
            return _done(Outcome(False, f"Stripe has no invoice {stored.object_id}: {exc}"))
        failed_at = stored.created if stored.type == "invoice.payment_failed" else None
        # An invoice may arrive before its subscription's events: apply the subscription first
        # (it links the customer), whatever the order of deliveries.
        before: Step | None = None
        if (
            state.subscription_id is not None
            and await companies.by_customer(state.customer) is None
        ):
            before = await self._subscription_step(state.subscription_id, now)

        async def step() -> Outcome:
            if before is not None:
                await before()
            return await apply_invoice(state, read_seq=read_seq, now=now, failed_at=failed_at)

        return step


def _done(outcome: Outcome) -> Step:
    async def step() -> Outcome:
        return outcome

    return step
