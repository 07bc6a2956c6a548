"""Issue 12: a month is priced by the plan that applied to it, here and in Stripe. Each test is
one of the reviewer's reproduced cases (the number is in its name); each failed before the
plan history (billing/plans.py) and passes with it."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from meterline.billing.catalog import EventType, Tier
from meterline.billing.periods import month_of
from meterline.billing.plans import MONTHLY_VOLUME_CEILING
from meterline.db import sql
from meterline.services import usage
from meterline.services.errors import BadUserInput
from meterline.stripe_gateway.client import close_client, make_client
from tests.commands import meterline
from tests.conftest import make_token
from tests.plans import put_on_tier
from tests.test_record_usage_batch import lock_waiters
from tests.webhook_support import NOV_20, StripeWorld, company_row

DEC_1 = datetime(2026, 12, 1, tzinfo=UTC)
NOV_LAST_SECOND = DEC_1 - timedelta(seconds=1)
MONTH_QUERY = """query($month: String) { monthlySummary(month: $month) {
  totalOverageCost { amount } meters { eventType used included overageCost { amount } } } }"""


async def record(
    company_id: uuid.UUID,
    event_type: EventType,
    quantity: int,
    now: datetime,
    occurred_at: datetime | None = None,
) -> usage.RecordOutcome:
    return await usage.record_usage(
        company_id,
        usage.RecordRequest(event_type=event_type, quantity=quantity, occurred_at=occurred_at),
        now=now,
        late_grace_hours=1,
        late_margin_minutes=15,
    )


async def recorded(*args: Any, **kwargs: Any) -> usage.Recorded:
    outcome = await record(*args, **kwargs)
    assert isinstance(outcome, usage.Recorded), outcome
    return outcome


async def month_summary(world: StripeWorld, company_id: uuid.UUID, month: str) -> dict[str, Any]:
    body = await world.api.gql(
        MONTH_QUERY, {"month": month}, token=make_token(company_id, "company_admin")
    )
    assert "errors" not in body, body
    summary: dict[str, Any] = body["data"]["monthlySummary"]
    return summary


def meter(summary: dict[str, Any], event_type: str) -> dict[str, Any]:
    return next(m for m in summary["meters"] if m["eventType"] == event_type)


async def subscribed(world: StripeWorld, tier: Tier) -> tuple[uuid.UUID, str, str]:
    company_id = uuid.uuid4()
    customer, subscription = world.subscribe(company_id, tier, start=NOV_20)
    await world.send("customer.subscription.created", subscription)
    return company_id, customer, subscription


async def change_on_the_first(world: StripeWorld, subscription: str, tier: Tier) -> None:
    """Stripe starts a schedule's next phase at 00:00 on the 1st; its event comes minutes later."""
    world.clock.set(DEC_1)
    world.double.set_subscription_prices(subscription, world.tier_prices(tier))
    world.clock.set(DEC_1 + timedelta(minutes=5))
    await world.send("customer.subscription.updated", subscription)


# --- case 3: late events in the grace hour ------------------------------------------------------


async def test_case3_a_late_event_is_priced_and_synced_by_its_own_months_plan(
    world: StripeWorld,
) -> None:
    company_id, customer, subscription = await subscribed(world, Tier.STARTER)
    await change_on_the_first(world, subscription, Tier.PROFESSIONAL)
    late = await recorded(
        company_id, EventType.AI_QUERY, 150, DEC_1 + timedelta(minutes=30), NOV_LAST_SECOND
    )
    assert (late.usage.included, late.event.sync_state) == (50, "pending")  # starter's
    november = await month_summary(world, company_id, "2026-11")
    assert november["totalOverageCost"]["amount"] == "20.00"  # 100 over x 0.20, as Stripe bills
    december = await recorded(company_id, EventType.AI_QUERY, 1, DEC_1 + timedelta(minutes=31))
    assert december.usage.included == 200  # professional from the 1st
    world.clock.set(DEC_1 + timedelta(minutes=32))
    await world.sync(company_id)
    assert world.double.meter_total(customer, "ai_query") == 151


async def test_case3_after_a_cancellation_on_the_first_late_events_of_the_paid_month_are_billed(
    world: StripeWorld,
) -> None:
    company_id, customer, subscription = await subscribed(world, Tier.STARTER)
    world.clock.set(DEC_1)
    world.double.cancel_subscription(subscription)
    world.clock.set(DEC_1 + timedelta(minutes=10))
    await world.send("customer.subscription.deleted", subscription)
    at = DEC_1 + timedelta(minutes=20)
    sms = await recorded(company_id, EventType.SMS_SENT, 7, at, NOV_LAST_SECOND)
    invitation = await recorded(company_id, EventType.GUEST_INVITATION, 60, at, NOV_LAST_SECOND)
    assert (sms.usage.included, sms.event.sync_state) == (1000, "pending")
    assert (invitation.usage.included, invitation.event.sync_state) == (500, "pending")
    # December is free: capped, and nothing of it goes to Stripe.
    refused = await record(company_id, EventType.SMS_SENT, 1, at)
    assert isinstance(refused, usage.LimitExceeded) and refused.included == 0
    await world.sync(company_id)
    assert world.double.meter_total(customer, "sms_sent") == 7


# --- case 4: a recording racing the webhook that changes the plan ---------------------------------


async def test_case4_a_recording_racing_the_tier_change_is_priced_by_the_new_plan(
    world: StripeWorld, database_url: str
) -> None:
    """The webhook's transaction is open (company locked, new plan written) while a recording
    of the new month runs: the recording waits, sees the plan changed, and decides again."""
    company_id, _, subscription = await subscribed(world, Tier.PROFESSIONAL)
    world.clock.set(DEC_1)
    world.double.set_subscription_prices(subscription, world.tier_prices(Tier.STARTER))
    world.clock.set(DEC_1 + timedelta(minutes=5))
    webhook = await asyncpg.connect(database_url)
    watcher = await asyncpg.connect(database_url)
    try:
        await webhook.execute("BEGIN")
        await webhook.execute("SELECT 1 FROM companies WHERE id = $1 FOR NO KEY UPDATE", company_id)
        racing = asyncio.ensure_future(
            record(company_id, EventType.AI_QUERY, 60, DEC_1 + timedelta(minutes=4))
        )
        await lock_waiters(watcher, 1)
        # What the webhook writes (the same as services/plan_history.py): the new period, and
        # plan_seq bumped, then it commits.
        await webhook.execute(
            "INSERT INTO company_plans (company_id, effective_from, tier, version, billed, "
            "subscription_id, reason) VALUES ($1, $2, 'starter', 1, true, $3, 'subscription')",
            company_id,
            DEC_1,
            subscription,
        )
        await webhook.execute(
            "UPDATE companies SET plan_seq = plan_seq + 1, tier = 'starter' WHERE id = $1",
            company_id,
        )
        await webhook.execute("COMMIT")
        outcome = await racing
    finally:
        await webhook.close()
        await watcher.close()
    assert isinstance(outcome, usage.Recorded), outcome
    assert (outcome.usage.included, outcome.usage.overage_quantity) == (50, 10)


async def test_case4_free_to_paid_racing_a_recording_never_leaves_the_free_cap(
    world: StripeWorld, database_url: str
) -> None:
    company_id = uuid.uuid4()
    customer, subscription = world.subscribe(company_id, Tier.STARTER, start=NOV_20)
    webhook = await asyncpg.connect(database_url)
    watcher = await asyncpg.connect(database_url)
    await recorded(company_id, EventType.EMAIL_SENT, 10, NOV_20)  # free: the company exists
    try:
        await webhook.execute("BEGIN")
        await webhook.execute("SELECT 1 FROM companies WHERE id = $1 FOR NO KEY UPDATE", company_id)
        racing = asyncio.ensure_future(
            record(company_id, EventType.EMAIL_SENT, 150, NOV_20 + timedelta(seconds=1))
        )
        await lock_waiters(watcher, 1)
        await webhook.execute("ROLLBACK")  # released: the real webhook now applies
        await world.send("customer.subscription.created", subscription)
        outcome = await racing
    finally:
        await webhook.close()
        await watcher.close()
    # Either order is fine, as long as the month ends priced and capped as starter.
    if isinstance(outcome, usage.LimitExceeded):  # decided before the webhook committed
        await recorded(company_id, EventType.EMAIL_SENT, 150, NOV_20 + timedelta(seconds=2))
    paid = await recorded(company_id, EventType.EMAIL_SENT, 1, NOV_20 + timedelta(seconds=3))
    assert (paid.usage.included, paid.usage.used, paid.event.sync_state) == (5000, 161, "pending")
    await world.sync(company_id)
    assert world.double.meter_total(customer, "email_sent") == 161


# --- case 5: paused, payment collection paused, and the 1st before a cancellation arrives ------


async def test_case5_a_paused_company_is_capped_as_free_and_sends_nothing(
    world: StripeWorld,
) -> None:
    company_id, customer, subscription = await subscribed(world, Tier.STARTER)
    world.clock.set(NOV_20 + timedelta(days=1))
    world.double.update_subscription(subscription, status="paused")
    await world.send("customer.subscription.paused", subscription)
    after = NOV_20 + timedelta(days=2)
    for _ in range(3):
        refused = await record(company_id, EventType.SMS_SENT, 100_000, after)
        assert isinstance(refused, usage.LimitExceeded), refused
    local = await recorded(company_id, EventType.EMAIL_SENT, 5, after)
    assert local.event.sync_state == "local_only"
    await world.sync(company_id)
    assert world.double.meter_total(customer, "email_sent") == 0


async def test_case5_payment_collection_paused_with_void_is_treated_as_a_pause(
    world: StripeWorld,
) -> None:
    company_id, _, subscription = await subscribed(world, Tier.STARTER)
    world.clock.set(NOV_20 + timedelta(days=1))
    world.double.update_subscription(subscription, pause_collection={"behavior": "void"})
    await world.send("customer.subscription.updated", subscription)
    refused = await record(company_id, EventType.SMS_SENT, 100_000, NOV_20 + timedelta(days=2))
    assert isinstance(refused, usage.LimitExceeded)
    world.double.update_subscription(subscription, pause_collection=None)
    world.clock.set(NOV_20 + timedelta(days=3))
    await world.send("customer.subscription.updated", subscription)
    resumed = await recorded(company_id, EventType.SMS_SENT, 100_000, NOV_20 + timedelta(days=3))
    assert resumed.event.sync_state == "pending"


async def test_case5_a_cancellation_at_period_end_caps_from_midnight_before_its_event(
    world: StripeWorld,
) -> None:
    company_id, _, subscription = await subscribed(world, Tier.STARTER)
    world.double.update_subscription(subscription, cancel_at_period_end=True)
    await world.send("customer.subscription.updated", subscription)
    # 00:03 on the 1st: Stripe has ended it, its event has not arrived (or keeps failing).
    refused = await record(company_id, EventType.SMS_SENT, 100_000, DEC_1 + timedelta(minutes=3))
    assert isinstance(refused, usage.LimitExceeded)
    local = await recorded(company_id, EventType.EMAIL_SENT, 5, DEC_1 + timedelta(minutes=3))
    assert local.event.sync_state == "local_only"


# --- case 9: the event's time, not "now" ----------------------------------------------------


async def test_case9_a_change_on_the_first_replayed_a_month_later_reprices_that_month(
    world: StripeWorld,
) -> None:
    company_id, _, subscription = await subscribed(world, Tier.PROFESSIONAL)
    await recorded(company_id, EventType.AI_QUERY, 60, DEC_1 + timedelta(minutes=1))
    world.clock.set(DEC_1)
    world.double.set_subscription_prices(subscription, world.tier_prices(Tier.STARTER))
    world.clock.set(datetime(2027, 1, 5, tzinfo=UTC))  # the event arrives (or is replayed) now
    await world.send("customer.subscription.updated", subscription)
    december = await month_summary(world, company_id, "2026-12")
    assert meter(december, "AI_QUERY")["included"] == 50
    assert december["totalOverageCost"]["amount"] == "2.00"


async def test_case9_free_to_paid_arriving_in_the_grace_hour_releases_last_months_events(
    world: StripeWorld,
) -> None:
    company_id = uuid.uuid4()
    start = DEC_1 - timedelta(minutes=20)
    await recorded(company_id, EventType.EMAIL_SENT, 40, start - timedelta(hours=3))
    customer, subscription = world.subscribe(company_id, Tier.STARTER, start=start)
    world.clock.set(DEC_1 + timedelta(minutes=10))
    await world.send("customer.subscription.created", subscription)
    row = await sql.fetchrow(
        "SELECT sync_state FROM usage_events WHERE company_id = $1", company_id
    )
    assert row is not None and row["sync_state"] == "pending"
    assert meter(await month_summary(world, company_id, "2026-11"), "EMAIL_SENT")["included"] == (
        5000
    )
    await world.sync(company_id)
    assert world.double.meter_total(customer, "email_sent") == 40


# --- case 13: the monthly volume ceiling ----------------------------------------------------


async def test_case13_no_month_passes_the_32_bit_ceiling_and_a_refusal_writes_nothing(
    world: StripeWorld,
) -> None:
    company_id = uuid.uuid4()
    await put_on_tier(company_id, Tier.ENTERPRISE, now=NOV_20)
    await recorded(company_id, EventType.EMAIL_SENT, 1, NOV_20)
    await sql.execute(  # a month that has come within 5 units of the ceiling
        "UPDATE usage_rollups SET used = $2 WHERE company_id = $1",
        company_id,
        MONTHLY_VOLUME_CEILING - 5,
    )
    count = "SELECT count(*) AS n FROM usage_events WHERE company_id = $1"
    events_before = await sql.fetchrow(count, company_id)
    try:
        await record(company_id, EventType.EMAIL_SENT, 6, NOV_20)
        raise AssertionError("passed the ceiling")
    except BadUserInput as exc:
        assert "monthly volume ceiling" in str(exc)
    assert await sql.fetchrow(count, company_id) == events_before
    last = await recorded(company_id, EventType.EMAIL_SENT, 5, NOV_20)
    assert last.usage.used == MONTHLY_VOLUME_CEILING
    body = await world.api.gql(
        "{ currentUsage { eventType used } }", token=make_token(company_id, "company_admin")
    )
    assert "errors" not in body, body
    assert month_of(NOV_20) == (await company_row(company_id)).created_at.date().replace(day=1)


# --- case 8: schedules edited or released in Stripe's dashboard --------------------------

CHANGE = """mutation($tier: SubscriptionTier!) { changeTier(tier: $tier) { __typename } }"""
SCHEDULED = "{ usageLimits { tier scheduledTier } }"


async def scheduled_tier(world: StripeWorld, company_id: uuid.UUID) -> tuple[str, str | None]:
    body = await world.api.gql(SCHEDULED, token=make_token(company_id, "company_admin"))
    assert "errors" not in body, body
    shown = body["data"]["usageLimits"]
    return shown["tier"], shown["scheduledTier"]


async def changed_tier(world: StripeWorld, company_id: uuid.UUID, tier: Tier) -> str:
    body = await world.api.gql(
        CHANGE, {"tier": tier.name}, token=make_token(company_id, "company_admin")
    )
    assert body["data"]["changeTier"]["__typename"] == "TierChangeScheduled", body
    schedule = (await company_row(company_id)).stripe_subscription_id
    assert schedule is not None
    sub = world.double.get_object(schedule)
    return str(sub["schedule"])


async def test_case8_a_schedule_released_in_the_dashboard_leaves_no_scheduled_tier(
    world: StripeWorld,
) -> None:
    company_id, _, _ = await subscribed(world, Tier.STARTER)
    schedule = await changed_tier(world, company_id, Tier.PROFESSIONAL)
    assert await scheduled_tier(world, company_id) == ("STARTER", "PROFESSIONAL")
    client = make_client(world.api.settings, timeout=5.0)
    try:  # the dashboard's "release"
        await client.v1.subscription_schedules.release_async(schedule)
    finally:
        await close_client(client)
    await world.send("subscription_schedule.released", schedule)
    assert await scheduled_tier(world, company_id) == ("STARTER", None)
    await world.reach(DEC_1 + timedelta(minutes=5))
    assert await scheduled_tier(world, company_id) == ("STARTER", None)
    december = await recorded(company_id, EventType.AI_QUERY, 1, DEC_1 + timedelta(minutes=6))
    assert december.usage.included == 50  # still starter, as Stripe bills it


async def test_case8_a_schedule_edited_in_the_dashboard_shows_its_new_tier(
    world: StripeWorld,
) -> None:
    company_id, _, subscription = await subscribed(world, Tier.STARTER)
    schedule = await changed_tier(world, company_id, Tier.PROFESSIONAL)
    current = world.double.get_object(schedule)["phases"][0]
    client = make_client(world.api.settings, timeout=5.0)
    try:  # the dashboard's edit: the next phase bills enterprise
        await client.v1.subscription_schedules.update_async(
            schedule,
            {
                "phases": [
                    {
                        "items": [
                            {"price": i["price"]}
                            if i.get("quantity") is None
                            else {"price": i["price"], "quantity": i["quantity"]}
                            for i in current["items"]
                        ],
                        "start_date": current["start_date"],
                        "end_date": current["end_date"],
                    },
                    {
                        "items": [
                            {"price": p, "quantity": 1} if n == 0 else {"price": p}
                            for n, p in enumerate(world.tier_prices(Tier.ENTERPRISE))
                        ],
                        "duration": {"interval": "month", "interval_count": 1},
                    },
                ]
            },
        )
    finally:
        await close_client(client)
    await world.send("subscription_schedule.updated", schedule)
    assert await scheduled_tier(world, company_id) == ("STARTER", "ENTERPRISE")
    await world.reach(DEC_1 + timedelta(minutes=5))
    assert await scheduled_tier(world, company_id) == ("ENTERPRISE", None)
    assert subscription


async def test_company_show_lists_the_plan_history_and_the_period_in_force(
    world: StripeWorld,
) -> None:
    company_id, _, subscription = await subscribed(world, Tier.STARTER)
    world.double.update_subscription(subscription, cancel_at_period_end=True)
    await world.send("customer.subscription.updated", subscription)
    shown = meterline("company", "show", str(company_id), env=world.cli_env(), clock=world.clock)
    assert shown.returncode == 0, shown.stderr
    plans = [line.strip() for line in shown.stdout.splitlines() if "PLAN from" in line]
    assert plans == [
        "PLAN from 2026-11-01 00:00:00 starter v1 billed (subscription)  <- in force",
        "PLAN from 2026-12-01 00:00:00 free v(by date) not billed (scheduled_end)",
    ]


# --- case 11: units of a paid month that miss its invoice are shown as such -------------------

UNBILLED = "query($month: String) { monthlySummary(month: $month) { unbilledUnits } }"


async def test_case11_units_that_missed_the_invoice_are_shown_in_the_months_summary(
    world: StripeWorld,
) -> None:
    company_id, _, _ = await subscribed(world, Tier.STARTER)
    await recorded(company_id, EventType.SMS_SENT, 40, DEC_1 - timedelta(minutes=30))
    late = await recorded(
        company_id, EventType.SMS_SENT, 7, DEC_1 + timedelta(minutes=40), NOV_LAST_SECOND
    )
    assert late.event.sync_state == "pending"

    async def unbilled(at: datetime) -> int:
        world.clock.set(at)
        body = await world.api.gql(
            UNBILLED, {"month": "2026-11"}, token=make_token(company_id, "company_admin")
        )
        assert "errors" not in body, body
        return int(body["data"]["monthlySummary"]["unbilledUnits"])

    # Stripe never got them (an incident): while the invoice is open they may still go.
    assert await unbilled(DEC_1 + timedelta(minutes=59, seconds=59)) == 0
    assert await unbilled(DEC_1 + timedelta(hours=1)) == 47
    world.clock.set(DEC_1 + timedelta(minutes=50))
    await world.sync(company_id)
    assert await unbilled(DEC_1 + timedelta(hours=2)) == 0


async def test_a_recording_that_keeps_meeting_plan_changes_is_database_busy_and_writes_nothing(
    world: StripeWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each attempt finds the plan changed (webhooks committing one after another): after a
    bounded number of attempts the caller hears DATABASE_BUSY (retryable), never INTERNAL."""
    from meterline.db import usage as usage_db
    from meterline.services.errors import DatabaseBusy

    company_id, _, _ = await subscribed(world, Tier.STARTER)
    attempts = 0

    async def plan_always_changed(*args: Any, **kwargs: Any) -> None:
        nonlocal attempts
        attempts += 1
        raise usage_db.PlanChanged(str(company_id))

    monkeypatch.setattr(usage_db, "record_event", plan_always_changed)
    with pytest.raises(DatabaseBusy):
        await record(company_id, EventType.SMS_SENT, 1, NOV_20)
    assert attempts == usage.MAX_PLAN_RETRIES
    count = await sql.fetchrow(
        "SELECT count(*) AS n FROM usage_events WHERE company_id = $1", company_id
    )
    assert count is not None and count["n"] == 0
