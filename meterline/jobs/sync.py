"""The usage sync: pending events -> batches -> Stripe meter events, exactly once.

Three steps, never a transaction open across a network call (docs/design.md "Sync to Stripe"):
1. claim: one transaction stores the batch (leased) and marks its events taken;
2. send the stored batch (identifier = batch id) to Stripe;
3. one transaction marks the batch and its events sent.
A crash anywhere leaves a leased batch that the next run re-sends unchanged: Stripe's identifier
de-duplication makes it count once. Any number of runs may overlap.

Older months go first: Stripe finalises a month's invoice at its end plus the late-usage grace,
and usage that arrives later is never billed (docs/design.md, section 12).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import stripe

from meterline.billing.periods import billable_window, month_of
from meterline.db import batches, usage
from meterline.db.batches import Batch, Group
from meterline.stripe_gateway.meter_events import (
    Outcome,
    SendResult,
    meter_event_name,
    send_meter_event,
)

logger = logging.getLogger(__name__)

# Stripe keeps identifiers unique for at least 24 hours: settle a batch well within that.
SETTLE_WINDOW = timedelta(hours=20)
LEASE = timedelta(seconds=120)  # longer than a Stripe call may take (client timeout 20 s)
FIRST_RETRY_SECONDS = 2.0
MAX_RETRY_SECONDS = 30 * 60.0
MAX_EVENTS_PER_BATCH = 50_000


def retry_delay(attempt: int, rng: random.Random) -> timedelta:
    """Exponential backoff with jitter: 2 s, 4 s, 8 s, ... capped at 30 min, times 0.5..1."""
    base = min(MAX_RETRY_SECONDS, FIRST_RETRY_SECONDS * 2 ** max(0, attempt - 1))
    return timedelta(seconds=base * rng.uniform(0.5, 1.0))


@dataclass
class SyncReport:
    claimed: int = 0
    sent: int = 0
    failed: int = 0
    retrying: int = 0
    unknown: int = 0
    pending: int = 0
    duration_ms: int = 0
    events_sent: int = 0  # usage units delivered (a batch's value)
    errors: int = 0  # steps that raised (logged); their batches are re-taken later
    # calls Stripe refused for the API key (401/403); the run stops calling after the first
    key_refused: int = 0
    # units of closed months not in Stripe after their invoice closed (the late-usage alert)
    last_month_pending_units: int = 0
    # units delivered after their month's invoice closed, by event type: never billed
    units_sent_late: dict[str, int] = field(default_factory=dict)

    @property
    def settled(self) -> int:
        return self.sent + self.failed + self.retrying + self.unknown

    def as_dict(self) -> dict[str, int]:
        return {
            "claimed": self.claimed,
            "sent": self.sent,
            "failed": self.failed,
            "retrying": self.retrying,
            "unknown": self.unknown,
            "pending": self.pending,
            "duration_ms": self.duration_ms,
            "errors": self.errors,
            "key_refused": self.key_refused,
            "last_month_pending_units": self.last_month_pending_units,
        }


Hook = Callable[[Batch], Awaitable[None]]


@dataclass
class SyncHooks:
    """Test seams: called after a claim commits and after Stripe answered (before marking)."""

    after_claim: Hook | None = None
    after_send: Callable[[Batch, SendResult], Awaitable[None]] | None = None


@dataclass
class SyncJob:
    client: stripe.StripeClient
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    concurrency: int = 32
    budget: timedelta = timedelta(seconds=25)
    hooks: SyncHooks = field(default_factory=SyncHooks)
    rng: random.Random = field(default_factory=random.Random)
    company_ids: list[uuid.UUID] | None = None  # only these companies (operators, tests)
    late_grace_hours: int = 1  # LATE_USAGE_GRACE_HOURS: when a month's invoice closes

    async def run(self) -> SyncReport:
        started = time.monotonic()
        deadline = started + self.budget.total_seconds()
        report = SyncReport()
        limit = asyncio.Semaphore(self.concurrency)
        # Events a request recorded as local while the company's subscription was arriving.
        # From last month during the grace: its invoice is still open.
        window = billable_window(self.clock(), self.late_grace_hours)
        stranded = await usage.release_stranded_events(month_of(window.earliest))
        if stranded:
            logger.warning("%d events of paying companies were local only: now pending", stranded)

        async def in_budget(work: Callable[[], Awaitable[None]]) -> None:
            # A batch is leased (or claimed) only when a slot is free and the budget is not
            # spent, so a long queue never outlives its leases nor the cron call. Once Stripe
            # refused the API key, every further call would be refused alike: none is made.
            async with limit:
                if time.monotonic() < deadline and not report.key_refused:
                    await work()

        while time.monotonic() < deadline and not report.key_refused:
            claimed_before, settled_before = report.claimed, report.settled
            due = await batches.due(
                now=self.clock(), limit=self.round_size, company_ids=self.company_ids
            )
            groups = oldest_month_per_pair(
                await batches.pending_groups(self.round_size, self.company_ids)
            )
            if not due and not groups:
                break
            # Oldest month first (the semaphore lets them in in this order): during the grace,
            # last month's batches and events leave before this month's backlog.
            work = sorted(
                [(b.month, functools.partial(self._resend, b, report)) for b in due]
                + [(g.month, functools.partial(self._claim_and_send, g, report)) for g in groups],
                key=lambda item: item[0],
            )
            outcomes = await asyncio.gather(
                *[in_budget(step) for _, step in work], return_exceptions=True
            )
            for outcome in outcomes:
                if isinstance(outcome, Exception):
                    # One batch's trouble (the database for a moment, a bug) must not strand
                    # the others mid-flight: its lease expires and a later run takes it again.
                    report.errors += 1
                    logger.error("usage sync step failed", exc_info=outcome)
                elif isinstance(outcome, BaseException):
                    raise outcome  # the process is going down: let it
            if report.claimed == claimed_before and report.settled == settled_before:
                break  # whatever is left is held by another worker: leave it to them
        now = self.clock()
        status = await batches.status(
            current_month=month_of(now), problem_limit=0, company_ids=self.company_ids
        )
        report.pending = status.pending_events
        report.last_month_pending_units = sum(
            u.units for u in status.missed_invoice(now=now, late_grace_hours=self.late_grace_hours)
        )
        report.duration_ms = int((time.monotonic() - started) * 1000)
        return report

    @property
    def round_size(self) -> int:
        return self.concurrency * 8

    async def _claim_and_send(self, group: Group, report: SyncReport) -> None:
        batch = await batches.claim(
            group,
            event_name=meter_event_name(group.event_type),
            now=self.clock(),
            lease=LEASE,
            max_events=MAX_EVENTS_PER_BATCH,
        )
        if batch is None:
            return
        report.claimed += 1
        if self.hooks.after_claim:
            await self.hooks.after_claim(batch)
        await self._send(batch, report)

    async def _resend(self, candidate: Batch, report: SyncReport) -> None:
        batch = await batches.take(candidate, now=self.clock(), lease=LEASE)
        if batch is None:
            return  # another worker took it
        if self.clock() - batch.created_at > SETTLE_WINDOW:
            await self._unknown(batch, f"not settled within {SETTLE_WINDOW}", report)
            return
        await self._send(batch, report)

    async def _unknown(self, batch: Batch, why: str, report: SyncReport) -> None:
        if await batches.mark_unknown(batch, error=f"{why}: {batch.last_error or ''}"[:1000]):
            report.unknown += 1
            logger.error(
                "usage batch %s (%s, %s, %s) is unknown (%s): compare with Stripe's meter "
                "event summaries, then `meterline sync-usage --resolve`",
                batch.identifier,
                batch.stripe_customer_id,
                batch.event_name,
                batch.month,
                why,
            )

    async def _send(self, batch: Batch, report: SyncReport) -> None:
        result = await send_meter_event(
            self.client,
            identifier=batch.identifier,
            event_name=batch.event_name,
            customer=batch.stripe_customer_id,
            value=batch.value,
            timestamp=batch.timestamp,
        )
        if self.hooks.after_send:
            await self.hooks.after_send(batch, result)
        now = self.clock()
        if result.outcome is Outcome.DELIVERED:
            if await batches.mark_sent(batch, now=now):
                report.sent += 1
                report.events_sent += batch.value
                self._after_the_invoice(batch, result, now, report)
        elif result.outcome is Outcome.KEY_REFUSED:
            await self._key_refused(batch, result, now, report)
        elif result.outcome is Outcome.REJECTED and batch.attempts > 1:
            # An earlier attempt's outcome was unknown: Stripe may hold the event although it
            # refuses this repeat (e.g. the meter was deactivated since). Re-driving it under a
            # new identifier could bill it twice, so an operator decides.
            await self._unknown(
                batch, f"refused after an unanswered attempt: {result.message}", report
            )
        elif result.outcome is Outcome.REJECTED:
            if await batches.mark_failed(batch, error=result.message):
                report.failed += 1
                logger.error("Stripe refused usage batch %s: %s", batch.identifier, result.message)
        else:
            retry_at = self._retry_at(batch, now)
            if retry_at - batch.created_at > SETTLE_WINDOW:
                await self._unknown(batch, result.message, report)
            elif await batches.schedule_retry(batch, retry_at=retry_at, error=result.message):
                report.retrying += 1
                logger.warning(
                    "usage batch %s will be retried at %s: %s",
                    batch.identifier,
                    retry_at,
                    result.message,
                )

    async def _key_refused(
        self, batch: Batch, result: SendResult, now: datetime, report: SyncReport
    ) -> None:
        """401/403: Stripe refused Meterline's key, before looking at the batch. This call
        delivered nothing; only a person can fix it (STRIPE_SECRET_KEY)."""
        report.key_refused += 1
        where = (
            f"{batch.identifier} ({batch.stripe_customer_id}, {batch.event_name}, {batch.month})"
        )
        if batch.attempts == 1:
            # Nothing of it can be in Stripe: it fails like any refusal at a first attempt, and
            # is re-driven (a new identifier, safe) once the key is fixed. Never `unknown`.
            error = (
                f"{result.message}. Nothing was delivered: fix STRIPE_SECRET_KEY, then "
                f"`meterline sync-usage --redrive {batch.identifier}`"
            )
            if await batches.mark_failed(batch, error=error):
                report.failed += 1
                logger.error(
                    "Stripe refused the API key for usage batch %s: the batch failed and nothing "
                    "was delivered. Fix STRIPE_SECRET_KEY, then re-drive it with "
                    "`meterline sync-usage --redrive %s`. %s",
                    where,
                    batch.identifier,
                    result.message,
                )
            return
        # An earlier attempt went unanswered and may have reached Stripe; this refusal says
        # nothing about it, and a new identifier could bill it twice. Keep the identifier and
        # back off: once the key works, the same request settles it exactly.
        retry_at = self._retry_at(batch, now)
        if retry_at - batch.created_at > SETTLE_WINDOW:
            await self._unknown(batch, result.message, report)
        elif await batches.schedule_retry(batch, retry_at=retry_at, error=result.message):
            report.retrying += 1
            logger.error(
                "Stripe refused the API key for usage batch %s, which an earlier unanswered "
                "attempt may have delivered: it is retried with the same identifier at %s. Fix "
                "STRIPE_SECRET_KEY. %s",
                where,
                retry_at,
                result.message,
            )

    def _retry_at(self, batch: Batch, now: datetime) -> datetime:
        """The backoff, but never past the close of the batch's month's invoice while that is
        still ahead: then within half the time left, so the last tries come before it."""
        retry_at = now + retry_delay(batch.attempts, self.rng)
        closes = batches.invoice_closes_at(batch.month, self.late_grace_hours)
        if now < closes < retry_at:
            retry_at = now + max(timedelta(seconds=FIRST_RETRY_SECONDS), (closes - now) / 2)
        return retry_at

    def _after_the_invoice(
        self, batch: Batch, result: SendResult, now: datetime, report: SyncReport
    ) -> None:
        """Stripe recorded the batch after its month's invoice was finalised: it will never
        bill those units. Said, never silent. Certain only when Stripe took it now, or when even
        the first attempt came after the close (a repeat may have landed in time)."""
        closes = batches.invoice_closes_at(batch.month, self.late_grace_hours)
        if now < closes or (result.repeat and batch.created_at < closes):
            return
        key = batch.event_type.value
        report.units_sent_late[key] = report.units_sent_late.get(key, 0) + batch.value
        logger.error(
            "usage batch %s (%s, %s, %s) reached Stripe after its invoice closed at %s: its %d "
            "units will not be billed",
            batch.identifier,
            batch.stripe_customer_id,
            batch.event_name,
            batch.month,
            closes.isoformat(),
            batch.value,
        )


def oldest_month_per_pair(groups: list[Group]) -> list[Group]:
    """Of each (company, event type), only the oldest month's group (`groups` come oldest month
    first): one batch of a pair may be in flight at a time, and last month's must not wait
    behind this month's, whose invoice closes a month later."""
    seen: set[tuple[uuid.UUID, str]] = set()
    kept = []
    for group in groups:
        pair = (group.company_id, group.event_type.value)
        if pair not in seen:
            seen.add(pair)
            kept.append(group)
    return kept
