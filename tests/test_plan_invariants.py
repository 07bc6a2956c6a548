"""Issue 12's invariants, checked over generated timelines rather than a handful of examples.

Each seed drives one company for three months (20 Nov 2026 to 31 Jan 2027) through checkouts
on any day, plan changes and cancellations on the 1st (through the API, so through Stripe
schedules), resumptions, payment collection paused and resumed within a month, recordings of
every event type (over and under the allowances, late ones in the grace hour), and Stripe's
webhooks delivered late, twice and out of order. Then:

1. every month that a subscription billed: Meterline's monthly summary equals, to the cent,
   the metered subtotal of the invoice the Stripe double makes for that month;
2. no accepted unit is left outside both a paid month (in Stripe after the sync) and a free
   allowance (a month nobody bills holds at most what the free tier includes);
3. a company Meterline knows to be paying is never refused for volume; a free one never
   passes its cap.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from meterline.billing.catalog import DEFAULT_PLANS, EventType, Tier
from meterline.billing.periods import add_months, format_month, month_end, month_of
from meterline.db import sql
from meterline.services import usage
from tests.conftest import make_token
from tests.webhook_support import NOV_20, StripeWorld

MONTHS = [add_months(month_of(NOV_20), n) for n in range(3)]  # November to January
PAID = [Tier.STARTER, Tier.PROFESSIONAL, Tier.ENTERPRISE]
SUMMARY = """query($month: String) { monthlySummary(month: $month) {
  totalOverageCost { amount } meters { eventType used included } } }"""
CHANGE = "mutation($tier: SubscriptionTier!) { changeTier(tier: $tier) { __typename } }"
CANCEL = "mutation { cancelSubscription { __typename } }"
RESUME = "mutation { resumeSubscription { __typename } }"
# Quantities around the allowances (free: 0 to 100; starter 50 to 5,000; professional 200+).
QUANTITIES = [1, 7, 30, 49, 60, 120, 480, 900, 1_500]


@dataclass
class Timeline:
    world: StripeWorld
    rng: random.Random
    company_id: uuid.UUID = field(default_factory=uuid.uuid4)
    subscription: str | None = None
    customer: str | None = None
    known_paid: bool = False  # Meterline has applied a live subscription
    billed_months: dict[str, str] = field(default_factory=dict)  # month -> subscription
    pending_events: list[dict[str, Any]] = field(default_factory=list)  # undelivered webhooks
    cancel_pending: bool = False
    paused: bool = False  # its payment collection is paused in Stripe
    # Two event types per timeline: months then mix free and paid usage of the same meter.
    event_types: list[EventType] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.event_types = self.rng.sample(list(EventType), 2)

    @property
    def token(self) -> str:
        return make_token(self.company_id, "company_admin")

    async def gql(self, query: str, **variables: Any) -> dict[str, Any]:
        body = await self.world.api.gql(query, variables, token=self.token)
        assert "errors" not in body, body
        return body["data"]  # type: ignore[no-any-return]

    async def deliver_some(self, everything: bool = False) -> None:
        """Deliver the undelivered webhooks: some now (in any order, some twice), or all."""
        rng = self.rng
        rng.shuffle(self.pending_events)
        keep = []
        for event in self.pending_events:
            if not everything and rng.random() < 0.4:
                keep.append(event)
                continue
            for _ in range(2 if rng.random() < 0.3 else 1):
                assert (await self.world.deliver(event)).status_code == 200
        self.pending_events = keep
        self.known_paid = await self.paying_now()

    async def paying_now(self) -> bool:
        row = await sql.fetchrow(
            "SELECT billed FROM company_plans WHERE company_id = $1 AND effective_from <= $2 "
            "ORDER BY effective_from DESC LIMIT 1",
            self.company_id,
            self.world.clock(),
        )
        return bool(row and row["billed"])

    async def record(self, at: datetime, occurred_at: datetime | None = None) -> None:
        event_type = self.rng.choice(self.event_types)
        quantity = self.rng.choice(QUANTITIES)
        paying = await self.paying_now()
        outcome = await usage.record_usage(
            self.company_id,
            usage.RecordRequest(event_type=event_type, quantity=quantity, occurred_at=occurred_at),
            now=at,
            late_grace_hours=1,
            late_margin_minutes=15,
        )
        month = month_of(occurred_at or at)
        if paying and month_of(at) == month:
            # Invariant 3: a company Meterline knows to be paying is never refused for volume.
            assert isinstance(outcome, usage.Recorded), (at, event_type, quantity, outcome)
        if isinstance(outcome, usage.LimitExceeded):
            assert outcome.used + quantity > outcome.included

    async def subscribe(self, at: datetime) -> None:
        tier = self.rng.choice(PAID)
        self.customer, self.subscription = self.world.subscribe(
            self.company_id, tier, start=at, customer=self.customer
        )
        created = self.world.double.snapshot_event(
            "customer.subscription.created", self.subscription
        )
        self.pending_events.append(created)
        if self.rng.random() < 0.5:  # an update of the same subscription, maybe delivered first
            self.pending_events.append(
                self.world.double.snapshot_event("customer.subscription.updated", self.subscription)
            )

    async def pause_or_resume(self) -> None:
        """Payment collection paused in Stripe, or resumed (its event delivered in time)."""
        assert self.subscription is not None
        self.paused = not self.paused
        behavior = {"behavior": self.rng.choice(["keep_as_draft", "void", "mark_uncollectible"])}
        self.world.double.update_subscription(
            self.subscription, pause_collection=behavior if self.paused else None
        )
        self.pending_events.append(
            self.world.double.snapshot_event("customer.subscription.updated", self.subscription)
        )

    async def month(self, month: Any) -> None:
        rng, world = self.rng, self.world
        start = max(datetime.combine(month, datetime.min.time(), tzinfo=UTC), NOV_20)
        end = month_end(month)
        moments = sorted(
            start + timedelta(seconds=rng.randrange(int((end - start).total_seconds()) - 7200))
            for _ in range(rng.randint(6, 12))
        )
        for at in moments:
            world.clock.set(at)
            action = rng.random()
            if not self.known_paid and self.subscription is None and action < 0.35:
                await self.subscribe(at)
            elif self.known_paid and action < 0.2:
                tier = rng.choice(PAID)
                await self.gql(CHANGE, tier=tier.name)
                self.cancel_pending = False
            elif self.known_paid and action < 0.3:
                await self.gql(CANCEL)
                self.cancel_pending = True
            elif self.known_paid and self.cancel_pending and action < 0.4:
                await self.gql(RESUME)
                self.cancel_pending = False
            elif self.subscription is not None and action < 0.5:
                await self.pause_or_resume()
            else:
                await self.record(at)
            await self.deliver_some()
        # The month's end: collection resumed, everything Stripe sent has arrived by 23:58.
        world.clock.set(end - timedelta(minutes=3))
        if self.paused:
            await self.pause_or_resume()
        world.clock.set(end - timedelta(minutes=2))
        await self.deliver_some(everything=True)
        if self.known_paid and self.subscription is not None:
            self.billed_months[format_month(month)] = self.subscription
        # The grace hour: Stripe has renewed (its events not here yet); late events arrive.
        late_at = end + timedelta(minutes=rng.randint(1, 40))
        world.clock.set(late_at)
        for _ in range(rng.randint(0, 2)):
            await self.record(late_at, occurred_at=end - timedelta(seconds=rng.randint(1, 600)))
        await world.sync(self.company_id)
        await self.check_month(month)
        await world.reach(end + timedelta(minutes=50))
        self.known_paid = await self.paying_now()
        if not self.known_paid:  # it ended: the company may check out again
            self.subscription = None
            self.cancel_pending = False

    async def check_month(self, month: Any) -> None:
        label = format_month(month)
        summary = (await self.gql(SUMMARY, month=label))["monthlySummary"]
        subscription = self.billed_months.get(label)
        if subscription is not None:
            # Invariant 1: Meterline's month equals Stripe's invoice for it, to the cent.
            month_start_ts = int(
                datetime.combine(month, datetime.min.time(), tzinfo=UTC).timestamp()
            )
            invoice = self.world.double.invoice_for_month(
                subscription, month_start_ts, status="draft"
            )
            stripe_cents = self.world.double.metered_subtotal(invoice)
            shown = Decimal(summary["totalOverageCost"]["amount"])
            assert shown * 100 == stripe_cents, (label, summary, stripe_cents)
        # Invariant 2: what nobody bills stays within the free allowance.
        rows = await sql.fetch(
            "SELECT event_type, sum(quantity) AS units FROM usage_events "
            "WHERE company_id = $1 AND month = $2 AND sync_state <> 'sent' GROUP BY event_type",
            self.company_id,
            month,
        )
        for row in rows:
            event_type = EventType(row["event_type"])
            free = DEFAULT_PLANS[Tier.FREE].allowance(event_type).included
            assert free is not None and int(row["units"]) <= free, (label, dict(row))


@pytest.mark.parametrize("seed", range(16))
async def test_generated_timelines_keep_meterline_equal_to_stripe(
    world: StripeWorld, seed: int
) -> None:
    timeline = Timeline(world, random.Random(seed))
    for month in MONTHS:
        await timeline.month(month)
