"""The usage sync: pending events -> batches -> Stripe meter events, exactly once.

Three steps, never a transaction open across a network call (docs/design.md "Sync to Stripe"):
1. claim: one transaction stores the batch (leased) and marks its events taken;
2. send the stored batch (identifier = batch id) to Stripe;
3. one transaction marks the batch and its events sent.
A crash anywhere leaves a leased batch that the next run re-sends unchanged: Stripe's identifier
de-duplication makes it count once. Any number of runs may overlap.
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

from meterline.billing.periods import month_of
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
    events_sent: int = 0
    errors: int = 0  # steps that raised (logged); their batches are re-taken later

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

    async def run(self) -> SyncReport:
        started = time.monotonic()
        deadline = started + self.budget.total_seconds()
        report = SyncReport()
        limit = asyncio.Semaphore(self.concurrency)
        # Events a request recorded as local while the company's subscription was arriving.
        stranded = await usage.release_stranded_events(month_of(self.clock()))
        if stranded:
            logger.warning("%d events of paying companies were local only: now pending", stranded)

        async def in_budget(work: Callable[[], Awaitable[None]]) -> None:
            # A batch is leased (or claimed) only when a slot is free and the budget is not
            # spent, so a long queue never outlives its leases nor the cron call.
            async with limit:
                if time.monotonic() < deadline:
                    await work()

        while time.monotonic() < deadline:
            claimed_before, settled_before = report.claimed, report.settled
            due = await batches.due(
                now=self.clock(), limit=self.round_size, company_ids=self.company_ids
            )
            groups = await batches.pending_groups(self.round_size, self.company_ids)
            if not due and not groups:
                break
            outcomes = await asyncio.gather(
                *[in_budget(functools.partial(self._resend, b, report)) for b in due],
                *[in_budget(functools.partial(self._claim_and_send, g, report)) for g in groups],
                return_exceptions=True,
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
        status = await batches.status(
            current_month=month_of(self.clock()), problem_limit=0, company_ids=self.company_ids
        )
        report.pending = status.pending_events
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
            retry_at = now + retry_delay(batch.attempts, self.rng)
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
