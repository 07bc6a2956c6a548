"""Issue 12: the findings of the billing review of the plan history, each a test that failed
before its fix (late events that moved a pause back, two writers of one history, a pause and
its resumption inside a month, operator accounts beside subscriptions, duplicates). Each
docstring tells the scenario as the reviewer found it failing."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from meterline.billing.catalog import EventType, Tier
from meterline.db import sql
from meterline.services import usage
from meterline.stripe_gateway.client import close_client, make_client
from tests.conftest import make_token
from tests.test_duplicate_subscriptions import older_and_newer, pay_first_invoice, two_tabs_paid
from tests.test_plan_exactness import (
    DEC_1,
    changed_tier,
    meter,
    month_summary,
    record,
    recorded,
    subscribed,
)
from tests.test_record_usage_batch import lock_waiters
from tests.webhook_support import NOV_20, StripeWorld, company_row

JAN_1 = datetime(2027, 1, 1, tzinfo=UTC)


async def periods(company_id: uuid.UUID) -> list[tuple[datetime, str, bool, str]]:
    rows = await sql.fetch(
        "SELECT effective_from, tier, billed, reason FROM company_plans WHERE company_id = $1 "
        "ORDER BY effective_from",
        company_id,
    )
    return [(r["effective_from"], r["tier"], r["billed"], r["reason"]) for r in rows]


def stripe_cents(world: StripeWorld, subscription: str, month_start: datetime) -> int:
    invoice = world.double.invoice_for_month(
        subscription, int(month_start.timestamp()), status="draft"
    )
    return world.double.metered_subtotal(invoice)


# --- F1: companies.lock() returns a stale plan history after waiting for another writer -------


async def test_two_writers_of_one_history_keep_both_changes(
    world: StripeWorld, database_url: str
) -> None:
    """Starter with a changeTier to professional pending (schedule). In the dashboard the
    schedule is released and the subscription set to cancel at period end: Stripe sends
    customer.subscription.updated and subscription_schedule.released together. The second
    handler waits on the company row lock; its SELECT ... FOR NO KEY UPDATE then returns the
    new plan_seq but the company_plans sub-select of its OLD snapshot, and store() deletes the
    period the first handler wrote. Stripe ends the subscription on 1 Dec; Meterline keeps the
    company billed (uncapped, events pending) from 1 Dec until the deleted webhook arrives."""
    company_id, _, subscription = await subscribed(world, Tier.STARTER)
    schedule = await changed_tier(world, company_id, Tier.PROFESSIONAL)
    client = make_client(world.api.settings, timeout=5.0)
    try:
        await client.v1.subscription_schedules.release_async(schedule)
    finally:
        await close_client(client)
    world.double.update_subscription(subscription, cancel_at_period_end=True)
    updated = world.double.snapshot_event("customer.subscription.updated", subscription)
    released = world.double.snapshot_event("subscription_schedule.released", schedule)

    holder = await asyncpg.connect(database_url)
    watcher = await asyncpg.connect(database_url)
    try:
        await holder.execute("BEGIN")  # e.g. a recording's batch or another handler
        await holder.execute("SELECT 1 FROM companies WHERE id = $1 FOR NO KEY UPDATE", company_id)
        first = asyncio.ensure_future(world.deliver(updated))
        await lock_waiters(watcher, 1)
        second = asyncio.ensure_future(world.deliver(released))
        await lock_waiters(watcher, 2)
        await holder.execute("COMMIT")
        assert (await first).status_code == 200
        assert (await second).status_code == 200
    finally:
        await holder.close()
        await watcher.close()

    history = await periods(company_id)
    assert (DEC_1, "free", False, "scheduled_end") in history, history
    refused = await record(company_id, EventType.SMS_SENT, 100_000, DEC_1 + timedelta(minutes=3))
    assert isinstance(refused, usage.LimitExceeded), refused


# --- F2: a subscription event created before a pause, applied after it, backdates the pause ---


async def test_a_late_event_never_dates_a_pause_back(
    world: StripeWorld,
) -> None:
    """An ordinary customer.subscription.updated created 28 Nov is delivered late (Stripe
    retries for 3 days). Meanwhile payment collection was paused on 10 Dec. The late event is
    applied with the CURRENT state (pause_collection set) but observed_at = its own `created`:
    the pause is backdated to 28 Nov, December re-priced as free. When collection resumes on
    15 Dec, the resume writes a billed period at 1 Dec *before* the 10 Dec pause, so the
    company stays paused: capped as free and local_only while Stripe bills it."""
    company_id, _, subscription = await subscribed(world, Tier.STARTER)
    world.clock.set(datetime(2026, 11, 28, 12, tzinfo=UTC))
    late = world.double.snapshot_event("customer.subscription.updated", subscription)
    await world.reach(DEC_1 + timedelta(minutes=5))  # renewal; its event is delivered
    await recorded(company_id, EventType.AI_QUERY, 60, datetime(2026, 12, 5, tzinfo=UTC))
    world.clock.set(datetime(2026, 12, 5, 0, 1, tzinfo=UTC))
    await world.sync(company_id)

    world.clock.set(datetime(2026, 12, 10, tzinfo=UTC))
    world.double.update_subscription(subscription, pause_collection={"behavior": "keep_as_draft"})
    await world.send("customer.subscription.updated", subscription)
    world.clock.set(datetime(2026, 12, 11, tzinfo=UTC))
    assert (await world.deliver(late)).status_code == 200

    # The pause started on 10 Dec, not on 28 Nov: December is still starter's month.
    december = await month_summary(world, company_id, "2026-12")
    assert meter(december, "AI_QUERY")["included"] == 50, (december, await periods(company_id))

    world.clock.set(datetime(2026, 12, 15, tzinfo=UTC))
    world.double.update_subscription(subscription, pause_collection=None)
    await world.send("customer.subscription.updated", subscription)
    # Collecting again: a paying company is never refused by the free cap, and Stripe bills it.
    after = await record(company_id, EventType.AI_QUERY, 10, datetime(2026, 12, 16, tzinfo=UTC))
    assert isinstance(after, usage.Recorded), (after, await periods(company_id))
    assert after.event.sync_state == "pending"


# --- F3: a pause and a resumption inside one month: Meterline counts units Stripe never gets ---


async def test_a_pause_and_resume_inside_a_month_bills_what_it_shows(
    world: StripeWorld,
) -> None:
    """Starter. 21 Nov payment collection paused (keep_as_draft), 50 guest invitations
    recorded local_only (within the free cap); 22 Nov collection resumes, 500 invitations
    (pending). Stripe's November invoice: 500 invitations, 500 included: $0.00. Meterline's
    November: 550 used at starter's prices (the month keeps its plan): $5.00."""
    company_id, _, subscription = await subscribed(world, Tier.STARTER)
    world.clock.set(datetime(2026, 11, 21, tzinfo=UTC))
    world.double.update_subscription(subscription, pause_collection={"behavior": "keep_as_draft"})
    await world.send("customer.subscription.updated", subscription)
    paused = await recorded(
        company_id, EventType.GUEST_INVITATION, 50, datetime(2026, 11, 21, 1, tzinfo=UTC)
    )
    assert paused.event.sync_state == "local_only"
    world.clock.set(datetime(2026, 11, 22, tzinfo=UTC))
    world.double.update_subscription(subscription, pause_collection=None)
    await world.send("customer.subscription.updated", subscription)
    await recorded(
        company_id, EventType.GUEST_INVITATION, 500, datetime(2026, 11, 22, 1, tzinfo=UTC)
    )
    world.clock.set(datetime(2026, 11, 22, 2, tzinfo=UTC))
    await world.sync(company_id)

    shown = (await month_summary(world, company_id, "2026-11"))["totalOverageCost"]["amount"]
    billed = stripe_cents(world, subscription, datetime(2026, 11, 1, tzinfo=UTC))
    assert (shown, billed) == ("0.00", 0) or f"{billed / 100:.2f}" == shown, (shown, billed)


# --- controls: the same deliveries without the race / without the late event pass ------------


async def test_sequential_deliveries_keep_the_scheduled_end(world: StripeWorld) -> None:
    company_id, _, subscription = await subscribed(world, Tier.STARTER)
    schedule = await changed_tier(world, company_id, Tier.PROFESSIONAL)
    client = make_client(world.api.settings, timeout=5.0)
    try:
        await client.v1.subscription_schedules.release_async(schedule)
    finally:
        await close_client(client)
    world.double.update_subscription(subscription, cancel_at_period_end=True)
    await world.send("customer.subscription.updated", subscription)
    await world.send("subscription_schedule.released", schedule)
    assert (DEC_1, "free", False, "scheduled_end") in await periods(company_id)


async def test_a_resumed_company_bills_again_after_a_late_event(world: StripeWorld) -> None:
    company_id, _, subscription = await subscribed(world, Tier.STARTER)
    world.clock.set(datetime(2026, 11, 28, 12, tzinfo=UTC))
    late = world.double.snapshot_event("customer.subscription.updated", subscription)
    await world.reach(DEC_1 + timedelta(minutes=5))
    world.clock.set(datetime(2026, 12, 10, tzinfo=UTC))
    world.double.update_subscription(subscription, pause_collection={"behavior": "keep_as_draft"})
    await world.send("customer.subscription.updated", subscription)
    world.clock.set(datetime(2026, 12, 11, tzinfo=UTC))
    assert (await world.deliver(late)).status_code == 200
    world.clock.set(datetime(2026, 12, 15, tzinfo=UTC))
    world.double.update_subscription(subscription, pause_collection=None)
    await world.send("customer.subscription.updated", subscription)
    after = await record(company_id, EventType.AI_QUERY, 10, datetime(2026, 12, 16, tzinfo=UTC))
    assert isinstance(after, usage.Recorded), (after, await periods(company_id))
    assert after.event.sync_state == "pending"


async def test_a_pause_and_its_resumption_without_late_events(world: StripeWorld) -> None:
    company_id, _, subscription = await subscribed(world, Tier.STARTER)
    await world.reach(DEC_1 + timedelta(minutes=5))
    world.clock.set(datetime(2026, 12, 10, tzinfo=UTC))
    world.double.update_subscription(subscription, pause_collection={"behavior": "keep_as_draft"})
    await world.send("customer.subscription.updated", subscription)
    world.clock.set(datetime(2026, 12, 15, tzinfo=UTC))
    world.double.update_subscription(subscription, pause_collection=None)
    await world.send("customer.subscription.updated", subscription)
    after = await record(company_id, EventType.AI_QUERY, 10, datetime(2026, 12, 16, tzinfo=UTC))
    assert isinstance(after, usage.Recorded), (after, await periods(company_id))


async def test_replaying_an_old_event_never_reprices_an_invoiced_month(
    world: StripeWorld,
) -> None:
    """`meterline webhooks replay` (or any late delivery) of the subscription's 20 Nov event
    while its payment collection is paused in January: the pause is dated 20 Nov, and
    December, whose invoice Stripe finalised on 1 Jan at starter's prices ($2.00), is
    re-priced as free ($12.00)."""
    from meterline.services.webhooks import WebhookProcessor
    from meterline.stripe_gateway.mirror import StripeReader

    company_id, _, subscription = await subscribed(world, Tier.STARTER)
    created_event = await sql.fetchrow(
        "SELECT id FROM webhook_events WHERE object_id = $1 AND type = "
        "'customer.subscription.created'",
        subscription,
    )
    assert created_event is not None
    await world.reach(DEC_1 + timedelta(minutes=5))
    await recorded(company_id, EventType.AI_QUERY, 60, datetime(2026, 12, 5, tzinfo=UTC))
    world.clock.set(datetime(2026, 12, 5, 0, 1, tzinfo=UTC))
    await world.sync(company_id)
    await world.reach(JAN_1 + timedelta(minutes=5))
    assert stripe_cents(world, subscription, DEC_1) == 200
    december = await month_summary(world, company_id, "2026-12")
    assert december["totalOverageCost"]["amount"] == "2.00"

    world.clock.set(datetime(2027, 1, 10, tzinfo=UTC))
    world.double.update_subscription(subscription, pause_collection={"behavior": "void"})
    await world.send("customer.subscription.updated", subscription)
    world.clock.set(datetime(2027, 1, 11, tzinfo=UTC))
    client = make_client(world.api.settings, timeout=5.0)
    try:
        processor = WebhookProcessor(reader=lambda: StripeReader(client), clock=world.clock)
        await processor.replay(created_event["id"])
    finally:
        await close_client(client)
    december = await month_summary(world, company_id, "2026-12")
    assert december["totalOverageCost"]["amount"] == "2.00", (december, await periods(company_id))


async def test_usage_accepted_before_a_pause_arrives_is_sent(
    world: StripeWorld,
) -> None:
    """Payment collection paused at 21 Nov 10:00 (keep_as_draft); its event is applied at
    10:05. At 10:02 the company, still billed as far as anyone knew, records 100,000 SMS
    (pending, no cap). The webhook backdates the pause to 10:00 and resync_events makes them
    local_only: accepted beyond any free allowance, never sent. Collection resumes on the 25th;
    Stripe's November invoice bills 0 SMS; Meterline shows 100,000 SMS at starter's price."""
    company_id, _, subscription = await subscribed(world, Tier.STARTER)
    pause_at = datetime(2026, 11, 21, 10, tzinfo=UTC)
    world.clock.set(pause_at)
    world.double.update_subscription(subscription, pause_collection={"behavior": "keep_as_draft"})
    paused_event = world.double.snapshot_event("customer.subscription.updated", subscription)
    accepted = await recorded(
        company_id, EventType.SMS_SENT, 100_000, pause_at + timedelta(minutes=2)
    )
    assert accepted.event.sync_state == "pending"
    world.clock.set(pause_at + timedelta(minutes=5))
    assert (await world.deliver(paused_event)).status_code == 200
    world.clock.set(datetime(2026, 11, 25, tzinfo=UTC))
    world.double.update_subscription(subscription, pause_collection=None)
    await world.send("customer.subscription.updated", subscription)
    await world.sync(company_id)

    unbilled = await sql.fetchrow(
        "SELECT coalesce(sum(quantity), 0) AS n FROM usage_events WHERE company_id = $1 "
        "AND event_type = 'sms_sent' AND sync_state <> 'sent'",
        company_id,
    )
    shown = (await month_summary(world, company_id, "2026-11"))["totalOverageCost"]["amount"]
    billed = stripe_cents(world, subscription, datetime(2026, 11, 1, tzinfo=UTC))
    # Invariant 2 of issue 12 (nothing unbilled beyond the free allowance, 0 SMS) and 1.
    assert unbilled is not None and unbilled["n"] == 0, (unbilled, shown, billed)


async def test_f6_operator_set_tier_on_a_subscribed_company_is_refused(
    world: StripeWorld,
) -> None:
    """`meterline company set-tier ID enterprise` on a company whose starter subscription is
    live in Stripe would replace the billed period: November re-priced as enterprise ($0.00)
    while Stripe bills the 60 AI queries at starter's prices ($2.00). It is refused."""
    from meterline.services.plan_history import OperatorRefused, set_tier_by_operator

    company_id, _, subscription = await subscribed(world, Tier.STARTER)
    await recorded(company_id, EventType.AI_QUERY, 60, datetime(2026, 11, 21, tzinfo=UTC))
    world.clock.set(datetime(2026, 11, 21, 0, 1, tzinfo=UTC))
    await world.sync(company_id)
    with pytest.raises(OperatorRefused):
        await set_tier_by_operator(
            company_id, Tier.ENTERPRISE, now=datetime(2026, 11, 22, tzinfo=UTC)
        )
    shown = (await month_summary(world, company_id, "2026-11"))["totalOverageCost"]["amount"]
    billed = stripe_cents(world, subscription, datetime(2026, 11, 1, tzinfo=UTC))
    assert f"{billed / 100:.2f}" == shown, (shown, billed)


async def test_checkout_after_a_manual_account_never_bills_its_usage(
    world: StripeWorld,
) -> None:
    """An operator account (set-tier enterprise, unlimited, nothing billed) records 100,000 SMS
    on 5 Nov; on 20 Nov the company checks out starter. The free -> paid rule treats the
    operator period as free and extends the billed period back to 1 Nov over it: the 100,000
    SMS are sent to Stripe and billed at starter's overage ($4,950), although they were
    recorded on an unlimited manual account."""
    from meterline.services.plan_history import set_tier_by_operator

    company_id = uuid.uuid4()
    await set_tier_by_operator(company_id, Tier.ENTERPRISE, now=datetime(2026, 11, 5, tzinfo=UTC))
    await recorded(company_id, EventType.SMS_SENT, 100_000, datetime(2026, 11, 5, 1, tzinfo=UTC))
    customer, subscription = world.subscribe(company_id, Tier.STARTER, start=NOV_20)
    await world.send("customer.subscription.created", subscription)
    await world.sync(company_id)
    assert world.double.meter_total(customer, "sms_sent") == 0


# --- the second review round ---------------------------------------------------------

NOV_1 = datetime(2026, 11, 1, tzinfo=UTC)


async def test_subscribing_again_the_month_after_an_immediate_cancellation_bills_it(
    world: StripeWorld,
) -> None:
    """Starter, cancelled at once on 25 Nov (dashboard, or dunning's final cancel). The ENDED
    period carries tier starter. On 10 Dec the company checks out starter again. for_month(Dec)
    returns the ENDED period (tier is not FREE) -> December is priced by the FREE plan, while
    Stripe's new subscription bills starter (50 AI queries included)."""
    company_id, customer, sub1 = await subscribed(world, Tier.STARTER)
    world.clock.set(datetime(2026, 11, 25, tzinfo=UTC))
    world.double.cancel_subscription(sub1)
    await world.send("customer.subscription.deleted", sub1)
    dec10 = datetime(2026, 12, 10, tzinfo=UTC)
    world.clock.set(dec10)
    _, sub2 = world.subscribe(company_id, Tier.STARTER, customer=customer, start=dec10)
    await world.send("customer.subscription.created", sub2)
    got = await recorded(company_id, EventType.AI_QUERY, 60, dec10 + timedelta(hours=1))
    world.clock.set(dec10 + timedelta(hours=2))
    await world.sync(company_id)
    december = await month_summary(world, company_id, "2026-12")
    billed = stripe_cents(world, sub2, DEC_1)
    shown = december["totalOverageCost"]["amount"]
    assert (meter(december, "AI_QUERY")["included"], shown, billed) == (50, "2.00", 200), (
        got.usage,
        december,
        billed,
        await periods(company_id),
    )


async def test_an_older_duplicate_going_live_late_takes_the_month_over(
    world: StripeWorld,
) -> None:
    """Tab 1 starter (incomplete, 3DS), tab 2 professional paid: professional becomes current
    and billed from 1 Nov. Tab 1 completes: professional is cancelled and refunded, starter
    kept. The history keeps the cancelled professional period from 1 Nov: November is priced
    professional (200 AI included) while Stripe bills it on the starter subscription."""
    company_id = uuid.uuid4()
    customer, older = world.subscribe(
        company_id, Tier.STARTER, status="incomplete", start=world.clock()
    )
    await world.send("customer.subscription.created", older)
    world.clock.set(NOV_20 + timedelta(minutes=2))
    _, newer = world.subscribe(
        company_id, Tier.PROFESSIONAL, customer=customer, start=world.clock()
    )
    pay_first_invoice(world, newer)
    await world.send("customer.subscription.created", newer)
    world.clock.set(NOV_20 + timedelta(minutes=3))
    world.double.update_subscription(older, status="active")
    await world.send("customer.subscription.updated", older)
    assert world.double.get_object(newer)["status"] == "canceled"
    assert (await company_row(company_id)).stripe_subscription_id == older
    at = NOV_20 + timedelta(hours=1)
    await recorded(company_id, EventType.AI_QUERY, 60, at)
    world.clock.set(at + timedelta(minutes=1))
    await world.sync(company_id)
    november = await month_summary(world, company_id, "2026-11")
    billed = stripe_cents(world, older, NOV_1)
    assert (november["totalOverageCost"]["amount"], billed) == ("2.00", 200), (
        november,
        billed,
        await periods(company_id),
    )


async def test_an_end_before_a_scheduled_end_counts_from_ended_at(world: StripeWorld) -> None:
    """cancel_at_period_end (scheduled end 1 Dec); on 25 Nov cancelled at once in the dashboard;
    its deleted event is retried and applied in the grace hour. The confirmation path keeps the
    end at 1 Dec: a late event stamped 28 Nov is accepted uncapped and sent, though no
    subscription bills it (the same delivery without the scheduled end caps it)."""
    company_id, _, subscription = await subscribed(world, Tier.STARTER)
    world.double.update_subscription(subscription, cancel_at_period_end=True)
    await world.send("customer.subscription.updated", subscription)
    world.clock.set(datetime(2026, 11, 25, tzinfo=UTC))
    world.double.cancel_subscription(subscription)
    deleted = world.double.snapshot_event("customer.subscription.deleted", subscription)
    world.clock.set(DEC_1 + timedelta(minutes=10))
    assert (await world.deliver(deleted)).status_code == 200
    outcome = await record(
        company_id,
        EventType.SMS_SENT,
        100_000,
        DEC_1 + timedelta(minutes=20),
        datetime(2026, 11, 28, tzinfo=UTC),
    )
    assert isinstance(outcome, usage.LimitExceeded), (outcome, await periods(company_id))


async def test_an_end_applied_late_counts_from_ended_at(world: StripeWorld) -> None:
    company_id, _, subscription = await subscribed(world, Tier.STARTER)
    world.clock.set(datetime(2026, 11, 25, tzinfo=UTC))
    world.double.cancel_subscription(subscription)
    deleted = world.double.snapshot_event("customer.subscription.deleted", subscription)
    world.clock.set(DEC_1 + timedelta(minutes=10))
    assert (await world.deliver(deleted)).status_code == 200
    outcome = await record(
        company_id,
        EventType.SMS_SENT,
        100_000,
        DEC_1 + timedelta(minutes=20),
        datetime(2026, 11, 28, tzinfo=UTC),
    )
    assert isinstance(outcome, usage.LimitExceeded), (outcome, await periods(company_id))


async def test_the_newer_tabs_webhook_first_never_leaves_the_paying_company_free(
    world: StripeWorld,
) -> None:
    """Two tabs paid; the newer subscription's webhook arrives first: it is cancelled and applied
    as the company's current subscription (canceled): the company is free, capped, local_only,
    until the older one's own webhook arrives, though Stripe bills it on the older one."""
    company_id, events, _ = await two_tabs_paid(world, timedelta(seconds=3))
    older, newer = older_and_newer(world, list(events))
    world.clock.set(world.clock() + timedelta(seconds=30))
    for event in events[newer]:
        assert (await world.deliver(event)).status_code == 200
    assert world.double.get_object(newer)["status"] == "canceled"
    assert world.double.get_object(older)["status"] == "active"
    company = await company_row(company_id)
    outcome = await record(company_id, EventType.SMS_SENT, 100, world.clock())
    assert isinstance(outcome, usage.Recorded), (
        outcome,
        company.stripe_subscription_id,
        company.subscription_status,
        newer,
        older,
    )


async def test_a_manual_accounts_month_cannot_start_a_checkout(world: StripeWorld) -> None:
    """A month is billed by one plan: a manual enterprise account (company set-tier) cannot
    also be billed by a subscription from the 20th (Stripe would bill only what follows)."""
    from meterline.services.plan_history import set_tier_by_operator

    company_id = uuid.uuid4()
    await set_tier_by_operator(company_id, Tier.ENTERPRISE, now=datetime(2026, 11, 5, tzinfo=UTC))
    body = await world.api.gql(
        "mutation { startCheckout(tier: STARTER) { __typename "
        "... on CheckoutUnavailable { retryAt message } } }",
        token=make_token(company_id, "company_admin"),
    )
    answer = body["data"]["startCheckout"]
    assert answer["__typename"] == "CheckoutUnavailable", body
    assert answer["retryAt"].startswith("2026-12-01T00:00:00")
    assert "manual enterprise account" in answer["message"]
