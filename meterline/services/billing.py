"""Billing reads: the upcoming invoice of a company's subscription, served from Stripe, and
the invoices mirrored from Stripe's webhooks.

Stripe's answer is cached per company for a short while (PREVIEW_TTL) so that a dashboard
polling the field does not spend Stripe's rate limit; concurrent requests for one company share
one call. Time comes from the caller (`now`, the app's clock), so tests can move it.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from meterline.config import Settings
from meterline.db import invoices
from meterline.db.companies import Company
from meterline.db.invoices import InvoiceMirror
from meterline.services.errors import BadUserInput, StripeRequestRejected, StripeUnavailable
from meterline.stripe_gateway.client import StripeNotConfigured
from meterline.stripe_gateway.invoices import (
    InvoicePreview,
    PreviewFailed,
    preview_upcoming_invoice,
)

logger = logging.getLogger(__name__)

PREVIEW_TTL = timedelta(seconds=60)
# An interactive query: better a quick "try again" than a request hanging on Stripe.
PREVIEW_TIME_LIMIT_SECONDS = 10.0
MAX_CACHED_COMPANIES = 10_000

NOT_CONFIGURED = "Stripe is not configured on this server (STRIPE_SECRET_KEY is unset)."
# In the error's extensions, so a client tells "not connected" from "not answering".
NOT_CONFIGURED_REASON: dict[str, object] = {"reason": "STRIPE_NOT_CONFIGURED"}
UNREACHABLE = "Stripe could not be reached for the upcoming invoice; try again in a moment."
REJECTED = "Stripe refused to preview the upcoming invoice"
UNREADABLE = "Stripe's preview of the upcoming invoice could not be read."

# Which company, and which Stripe subscription of it: a new subscription is a new entry.
_Key = tuple[uuid.UUID, str, str]


@dataclass(frozen=True)
class _Entry:
    preview: InvoicePreview | None
    expires_at: datetime


class PreviewCache:
    """Successful answers of Stripe per company for `ttl`, and the calls in flight.

    In-process: each API process asks Stripe at most once a `ttl` per company."""

    def __init__(self, ttl: timedelta = PREVIEW_TTL, max_entries: int = MAX_CACHED_COMPANIES):
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: OrderedDict[_Key, _Entry] = OrderedDict()
        self._in_flight: dict[_Key, asyncio.Task[InvoicePreview | None]] = {}

    def clear(self) -> None:
        self._entries.clear()

    async def get(
        self,
        key: _Key,
        now: datetime,
        fetch: Callable[[], Awaitable[InvoicePreview | None]],
    ) -> InvoicePreview | None:
        entry = self._entries.get(key)
        if entry is not None and now < entry.expires_at:
            return entry.preview
        task = self._in_flight.get(key)
        if task is None:
            task = asyncio.ensure_future(self._fetch(key, now, fetch))
            self._in_flight[key] = task
            task.add_done_callback(lambda done: self._done(key, done))
        # One caller going away (client disconnect) must not cancel the others' call.
        return await asyncio.shield(task)

    async def _fetch(
        self,
        key: _Key,
        now: datetime,
        fetch: Callable[[], Awaitable[InvoicePreview | None]],
    ) -> InvoicePreview | None:
        preview = await fetch()
        self._store(key, _Entry(preview, now + self.ttl), now)
        return preview

    def _done(self, key: _Key, task: asyncio.Task[InvoicePreview | None]) -> None:
        if self._in_flight.get(key) is task:
            del self._in_flight[key]
        if not task.cancelled():
            task.exception()  # retrieved: its callers got it (or all left)

    def _store(self, key: _Key, entry: _Entry, now: datetime) -> None:
        self._entries.pop(key, None)
        self._entries[key] = entry
        if len(self._entries) > self.max_entries:
            for stale in [k for k, e in self._entries.items() if e.expires_at <= now]:
                del self._entries[stale]
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)  # the oldest answer


PREVIEW_CACHE = PreviewCache()


async def upcoming_invoice(
    company: Company,
    settings: Settings,
    now: datetime,
    *,
    cache: PreviewCache = PREVIEW_CACHE,
) -> InvoicePreview | None:
    """The invoice Stripe would issue next for the company's subscription; None when the
    company has no Stripe customer and subscription (or Stripe says nothing is coming).
    StripeUnavailable when Stripe is not configured or unreachable, StripeRequestRejected
    when it refuses."""
    if not settings.stripe_secret_key:
        raise StripeUnavailable(NOT_CONFIGURED, extensions=dict(NOT_CONFIGURED_REASON))
    customer, subscription = company.stripe_customer_id, company.stripe_subscription_id
    if not customer or not subscription:
        return None

    async def fetch() -> InvoicePreview | None:
        try:
            return await preview_upcoming_invoice(
                settings,
                customer=customer,
                subscription=subscription,
                time_limit=PREVIEW_TIME_LIMIT_SECONDS,
            )
        except StripeNotConfigured as exc:  # pragma: no cover - checked above
            raise StripeUnavailable(NOT_CONFIGURED, extensions=dict(NOT_CONFIGURED_REASON)) from exc
        except PreviewFailed as exc:
            logger.warning(
                "invoice preview failed for company %s (customer %s, subscription %s): %s",
                company.id,
                customer,
                subscription,
                exc,
            )
            if exc.rejection is not None:
                raise StripeRequestRejected(REJECTED, exc.rejection) from exc
            raise StripeUnavailable(UNREACHABLE if exc.transient else UNREADABLE) from exc

    return await cache.get((company.id, customer, subscription), now, fetch)


MAX_PAYMENT_HISTORY = 100


async def payment_history(company: Company, limit: int) -> list[InvoiceMirror]:
    if not 1 <= limit <= MAX_PAYMENT_HISTORY:
        raise BadUserInput(f"limit must be between 1 and {MAX_PAYMENT_HISTORY}")
    return await invoices.recent(company.id, limit)


async def invoices_for_months(
    company_id: uuid.UUID, months: list[date]
) -> dict[date, InvoiceMirror]:
    return await invoices.for_usage_months(company_id, months)
