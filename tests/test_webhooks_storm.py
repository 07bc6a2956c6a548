"""A storm of deliveries: 1,000 of them, 30% duplicates, shuffled, some of one event at once.
Whatever the order, the final state is the state the Stripe double holds, and each event is
applied exactly once."""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from datetime import UTC, datetime
from typing import Any

from meterline.billing.catalog import Tier
from meterline.db import companies, invoices, sql
from meterline.services.subscriptions import LIVE_STATUSES
from tests.webhook_support import StripeWorld

DELIVERIES = 1_000
DUPLICATE_SHARE = 0.30
CONCURRENCY = 16
OCT_1 = datetime(2026, 10, 1, tzinfo=UTC)


def history_of_one_company(
    world: StripeWorld, company_id: uuid.UUID, rng: random.Random, events: list[dict[str, Any]]
) -> None:
    """Move one company's Stripe objects through a random life, keeping every event Stripe
    would send on the way (each a snapshot of that moment)."""
    double = world.double
    tiers = [Tier.STARTER, Tier.PROFESSIONAL, Tier.ENTERPRISE]
    _, subscription = world.subscribe(company_id, rng.choice(tiers), start=OCT_1)
    events.append(double.snapshot_event("customer.subscription.created", subscription))
    for month in (datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 11, 1, tzinfo=UTC)):
        invoice = double.invoice_for_month(subscription, int(month.timestamp()))
        events.append(double.snapshot_event("invoice.created", invoice))
        events.append(double.snapshot_event("invoice.finalized", invoice))
        for _ in range(rng.randint(0, 2)):
            double.fail_invoice_payment(invoice)
            events.append(double.snapshot_event("invoice.payment_failed", invoice))
        ending = rng.choice(["paid", "paid", "open", "void", "uncollectible"])
        if ending == "paid":
            double.pay_invoice(invoice)
            events.append(double.snapshot_event("invoice.paid", invoice))
        elif ending == "void":
            double.void_invoice(invoice)
            events.append(double.snapshot_event("invoice.voided", invoice))
        elif ending == "uncollectible":
            double.mark_uncollectible(invoice)
            events.append(double.snapshot_event("invoice.marked_uncollectible", invoice))
    for _ in range(rng.randint(1, 4)):
        change = rng.choice(["tier", "past_due", "active", "paused"])
        if change == "tier":
            double.set_subscription_prices(subscription, world.tier_prices(rng.choice(tiers)))
        else:
            double.update_subscription(subscription, status=change)
        kind = "paused" if change == "paused" else "updated"
        events.append(double.snapshot_event(f"customer.subscription.{kind}", subscription))
    if rng.random() < 0.3:
        double.cancel_subscription(subscription)
        events.append(double.snapshot_event("customer.subscription.deleted", subscription))


def expected_tier(world: StripeWorld, subscription: dict[str, Any]) -> Tier:
    if subscription["status"] not in LIVE_STATUSES:
        return Tier.FREE
    base = {item["price"]["id"] for item in subscription["items"]["data"]}
    return next(t for t in Tier if t is not Tier.FREE and world.tier_prices(t)[0] in base)


async def test_a_storm_of_deliveries_ends_in_stripes_state(world: StripeWorld) -> None:
    rng = random.Random(20261125)
    world.clock.set(datetime(2026, 11, 2, tzinfo=UTC))
    company_ids: list[uuid.UUID] = []
    distinct: list[dict[str, Any]] = []
    while len(distinct) < DELIVERIES * (1 - DUPLICATE_SHARE):
        company_ids.append(uuid.uuid4())
        history_of_one_company(world, company_ids[-1], rng, distinct)
    deliveries = distinct + [rng.choice(distinct) for _ in range(DELIVERIES - len(distinct))]
    assert len(deliveries) == DELIVERIES and len(distinct) >= 0.69 * DELIVERIES
    rng.shuffle(deliveries)
    # Some events arrive several times at the same moment.
    hot = rng.sample(distinct, 10)
    world.clock.set(datetime(2026, 11, 3, tzinfo=UTC))  # no grace has ended yet

    semaphore = asyncio.Semaphore(CONCURRENCY)
    statuses: list[int] = []

    async def deliver(event: dict[str, Any]) -> None:
        async with semaphore:
            response = await world.deliver(event)
        statuses.append(response.status_code)

    await asyncio.gather(*(deliver(e) for e in deliveries))
    for event in hot:
        responses = await asyncio.gather(*(world.deliver(event) for _ in range(6)))
        statuses.extend(r.status_code for r in responses)
    assert set(statuses) == {200}

    ids = [e["id"] for e in distinct]
    rows = await sql.fetch(
        "SELECT id, status, applied_count FROM webhook_events WHERE id = ANY($1)", ids
    )
    assert len(rows) == len(ids)
    assert {r["applied_count"] for r in rows} == {1}, "an event was applied twice or never"
    assert {r["status"] for r in rows} <= {"applied", "ignored"}

    for company_id in company_ids:
        company = await companies.get(company_id)
        assert company is not None and company.stripe_subscription_id is not None
        subscription = world.double.get_object(company.stripe_subscription_id)
        assert company.subscription_status == subscription["status"]
        assert company.tier is expected_tier(world, subscription), json.dumps(
            subscription["status"]
        )
        open_failed = uncollectible = False
        for invoice_id in await invoice_ids(company_id):
            mirror = await invoices.get(invoice_id)
            held = world.double.get_object(invoice_id)
            assert mirror is not None
            assert (mirror.status, mirror.amount_due, mirror.amount_paid) == (
                held["status"],
                held["amount_due"],
                held["amount_paid"],
            )
            open_failed |= held["status"] == "open" and held["attempt_count"] > 0
            uncollectible |= held["status"] == "uncollectible"
        status = company.dunning.status(world.clock())
        # An uncollectible invoice counts as unpaid after a failure; no grace has ended yet.
        expected = "past_due" if open_failed or uncollectible else "ok"
        assert status.value == expected, company_id


async def invoice_ids(company_id: uuid.UUID) -> list[str]:
    rows = await sql.fetch("SELECT id FROM invoices WHERE company_id = $1", company_id)
    return [r["id"] for r in rows]
