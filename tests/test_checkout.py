"""Issue 12's subscription cases against the Stripe double, through GraphQL:

- case 10: a plan change reads Stripe's schedule phase items as Stripe sends them (a metered
  price's item has no `quantity` at all), and a change that fails leaves Stripe as it found it;
- case 6: every subscription's periods start on the 1st at 00:00 UTC: where no valid billing
  anchor exists, `startCheckout` answers `CheckoutUnavailable` with when to try again;
- case 2 (checkout half): one open checkout per company.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from meterline.billing.catalog import Tier
from meterline.db import sql, subscriptions
from meterline.services import lifecycle
from meterline.services.errors import BadUserInput
from meterline.stripe_gateway.client import close_client, make_client
from meterline.stripe_gateway.lifecycle import StripeLifecycle
from tests.test_lifecycle import (
    CANCEL,
    CHANGE,
    DEC_1,
    call,
    checked_out,
    error_code,
    limits,
    result,
)
from tests.webhook_support import NOV_20, StripeWorld, company_row

CHECKOUT = """mutation($tier: SubscriptionTier!) { startCheckout(tier: $tier) { __typename
  ... on CheckoutStarted { url sessionId expiresAt }
  ... on CheckoutUnavailable { retryAt message }
  ... on StripeNotReady { missingPrices message } } }"""

JAN_1 = datetime(2027, 1, 1, tzinfo=UTC)


def schedule_ids(world: StripeWorld) -> list[str]:
    """The schedules Meterline's calls named, in the order it named them."""
    found: list[str] = []
    for _, path in world.double.requests:
        match = re.fullmatch(r"/v1/subscription_schedules/(sub_sched_\w+)(/release)?", path)
        if match and match.group(1) not in found:
            found.append(match.group(1))
    return found


def sessions_created(world: StripeWorld) -> int:
    return world.double.requests.count(("POST", "/v1/checkout/sessions"))


async def recorded_change(company_id: uuid.UUID) -> Tier | None:
    """The change the mutations recorded for the next 1st (`companies.scheduled_tier`)."""
    return (await company_row(company_id)).scheduled_tier


async def open_rows(company_id: uuid.UUID) -> list[str]:
    rows = await sql.fetch(
        "SELECT id FROM checkout_sessions WHERE company_id = $1 AND status = 'open'", company_id
    )
    return [row["id"] for row in rows]


# --- case 10: schedule phase items without a quantity; a failed change undone ------------------


async def test_a_change_reads_metered_phase_items_that_have_no_quantity(world: StripeWorld) -> None:
    """Stripe leaves `quantity` out of a metered price's phase item: reading it as an attribute
    raised AttributeError (INTERNAL) and left the new schedule attached."""
    company_id, subscription = await checked_out(world)
    changed = await result(world, company_id, CHANGE, tier="PROFESSIONAL")
    assert changed == {
        "__typename": "TierChangeScheduled",
        "tier": "PROFESSIONAL",
        "effectiveAt": DEC_1.isoformat(),
    }
    schedule = world.double.get_object(world.double.get_object(subscription)["schedule"])
    starter = world.tier_prices(Tier.STARTER)
    this_month = schedule["phases"][0]["items"]
    assert [(i["price"], i.get("quantity")) for i in this_month] == [
        (price, 1 if index == 0 else None) for index, price in enumerate(starter)
    ]
    assert ["quantity" in i for i in this_month] == [True] + [False] * 5
    assert {i["price"] for i in schedule["phases"][-1]["items"]} == set(
        world.tier_prices(Tier.PROFESSIONAL)
    )
    assert await recorded_change(company_id) is Tier.PROFESSIONAL
    # Changing it again reads the schedule Meterline attached (the same phase items).
    again = await result(world, company_id, CHANGE, tier="ENTERPRISE")
    assert again["tier"] == "ENTERPRISE"


@pytest.mark.parametrize("failure", ["500", "drop"])
async def test_a_change_that_fails_after_creating_its_schedule_releases_it(
    world: StripeWorld, failure: Any
) -> None:
    """The schedule is created from the subscription, then its update fails (refused, or done
    by Stripe with the answer lost): the schedule is released, so the subscription goes on as it
    was, and the same request later works."""
    company_id, subscription = await checked_out(world)
    world.double.fail(failure, 1.0, path_prefix="/v1/subscription_schedules/", times=1)
    body = await call(world, company_id, CHANGE, tier="PROFESSIONAL")
    assert error_code(body) == "STRIPE_UNAVAILABLE", body
    [created] = schedule_ids(world)
    assert world.double.get_object(created)["status"] == "released"
    sub = world.double.get_object(subscription)
    assert sub["schedule"] is None and not sub["cancel_at_period_end"]
    assert [i["price"]["id"] for i in sub["items"]["data"]] == world.tier_prices(Tier.STARTER)
    assert await recorded_change(company_id) is None

    changed = await result(world, company_id, CHANGE, tier="PROFESSIONAL")
    assert changed["__typename"] == "TierChangeScheduled"
    assert world.double.get_object(subscription)["schedule"] not in (None, created)


async def test_a_failed_change_after_a_cancellation_leaves_the_cancellation(
    world: StripeWorld,
) -> None:
    """A schedule made from a subscription ending at the period's end takes the cancellation
    over: undoing it must put the cancellation back."""
    company_id, subscription = await checked_out(world)
    await result(world, company_id, CANCEL)
    world.double.fail("500", 1.0, path_prefix="/v1/subscription_schedules/", times=1)
    body = await call(world, company_id, CHANGE, tier="PROFESSIONAL")
    assert error_code(body) == "STRIPE_UNAVAILABLE", body
    [created] = schedule_ids(world)
    assert world.double.get_object(created)["status"] == "released"
    sub = world.double.get_object(subscription)
    assert sub["schedule"] is None and sub["cancel_at_period_end"] is True
    mirror = await subscriptions.get(subscription)
    assert mirror is not None and mirror.cancel_at_period_end
    await world.reach(DEC_1)
    shown = await limits(world, company_id)
    assert (shown["tier"], shown["subscriptionStatus"]) == ("FREE", "CANCELED")


async def test_a_failed_replacement_keeps_the_pending_change(world: StripeWorld) -> None:
    """A schedule that was there before the call is the pending change: never released on a
    failure."""
    company_id, subscription = await checked_out(world)
    await result(world, company_id, CHANGE, tier="ENTERPRISE")
    pending = world.double.get_object(subscription)["schedule"]
    world.double.fail("500", 1.0, path_prefix="/v1/subscription_schedules/", times=1)
    body = await call(world, company_id, CHANGE, tier="PROFESSIONAL")
    assert error_code(body) == "STRIPE_UNAVAILABLE", body
    assert world.double.get_object(subscription)["schedule"] == pending
    assert world.double.get_object(pending)["status"] == "active"
    assert await recorded_change(company_id) is Tier.ENTERPRISE


# --- case 6: periods start on the 1st; no checkout where no anchor is valid ---------------------


@pytest.mark.parametrize(
    ("now", "started"),
    [
        (datetime(2026, 11, 30, 23, 23, 59, tzinfo=UTC), True),
        (datetime(2026, 11, 30, 23, 24, tzinfo=UTC), True),  # 31 minutes of session left
        (datetime(2026, 11, 30, 23, 24, 1, tzinfo=UTC), False),
        (datetime(2026, 11, 30, 23, 40, tzinfo=UTC), False),  # was anchored to 1 January
        (datetime(2026, 11, 30, 23, 59, 59, 999_999, tzinfo=UTC), False),
        (datetime(2026, 12, 1, 0, 0, 0, 500_000, tzinfo=UTC), False),  # anchor = natural date
    ],
)
async def test_a_checkout_starts_only_where_its_periods_start_on_the_1st(
    world: StripeWorld, now: datetime, started: bool
) -> None:
    world.clock.set(now)
    company_id = uuid.uuid4()
    answer = await result(world, company_id, CHECKOUT, tier="STARTER")
    if started:
        assert answer["__typename"] == "CheckoutStarted", answer
        session = world.double.get_object(answer["sessionId"])
        assert session["expires_at"] == int((DEC_1 - timedelta(minutes=5)).timestamp())
        return
    retry_at = datetime(2026, 12, 1, 0, 0, 1, tzinfo=UTC)
    assert answer["__typename"] == "CheckoutUnavailable", answer
    assert answer["retryAt"] == retry_at.isoformat()
    assert "2026-12-01 00:00:01 UTC" in answer["message"]
    assert sessions_created(world) == 0  # Stripe was not asked
    assert await open_rows(company_id) == []

    # At retryAt: a session anchored to the next 1st; paid, its periods start on 1 January.
    world.clock.set(retry_at)
    again = await result(world, company_id, CHECKOUT, tier="STARTER")
    assert again["__typename"] == "CheckoutStarted", again
    expires_at = datetime.fromisoformat(again["expiresAt"])
    assert expires_at == datetime(2026, 12, 2, 0, tzinfo=UTC)  # 24 h from the hour's start
    world.clock.set(retry_at + timedelta(minutes=10))
    completed = world.double.complete_checkout(again["sessionId"])
    sub = world.double.get_object(completed["data"]["object"]["subscription"])
    assert sub["billing_cycle_anchor"] == int(JAN_1.timestamp())
    assert {i["current_period_end"] for i in sub["items"]["data"]} == {int(JAN_1.timestamp())}


# --- case 2: one open checkout per company -----------------------------------------------------


async def test_the_same_tier_again_is_the_same_session_even_hours_later(
    world: StripeWorld,
) -> None:
    """A second click, a reload, another admin: the open session, not a second one."""
    company_id = uuid.uuid4()
    first = await result(world, company_id, CHECKOUT, tier="STARTER")
    for later in (timedelta(minutes=1), timedelta(hours=3), timedelta(hours=23, minutes=59)):
        world.clock.set(NOV_20 + later)
        again = await result(world, company_id, CHECKOUT, tier="STARTER")
        assert again == first
    assert sessions_created(world) == 1
    assert await open_rows(company_id) == [first["sessionId"]]
    # Once it has lapsed (24 hours from the start of its hour), a new one.
    world.clock.set(NOV_20 + timedelta(hours=24))
    fresh = await result(world, company_id, CHECKOUT, tier="STARTER")
    assert fresh["sessionId"] != first["sessionId"]
    assert world.double.get_object(first["sessionId"])["status"] == "expired"
    assert await open_rows(company_id) == [fresh["sessionId"]]


async def test_another_tier_expires_the_open_session_first(world: StripeWorld) -> None:
    company_id = uuid.uuid4()
    starter = await result(world, company_id, CHECKOUT, tier="STARTER")
    professional = await result(world, company_id, CHECKOUT, tier="PROFESSIONAL")
    assert professional["__typename"] == "CheckoutStarted"
    assert professional["sessionId"] != starter["sessionId"]
    assert world.double.get_object(starter["sessionId"])["status"] == "expired"
    with pytest.raises(ValueError, match="is expired"):
        world.double.complete_checkout(starter["sessionId"])  # that tab can no longer pay
    # Back to starter within the hour: a new session, not the expired one replayed by the
    # idempotency key of the first click.
    back = await result(world, company_id, CHECKOUT, tier="STARTER")
    assert back["sessionId"] not in (starter["sessionId"], professional["sessionId"])
    assert world.double.get_object(professional["sessionId"])["status"] == "expired"
    assert world.double.get_object(back["sessionId"])["status"] == "open"
    assert await open_rows(company_id) == [back["sessionId"]]
    # The one left open is paid: one subscription, at that tier.
    completed = world.double.complete_checkout(back["sessionId"])
    assert (await world.deliver(completed)).status_code == 200
    await world.send("customer.subscription.created", completed["data"]["object"]["subscription"])
    assert (await company_row(company_id)).tier is Tier.STARTER


async def test_a_session_being_paid_is_not_replaced(world: StripeWorld) -> None:
    """Paid in one tab, its webhook not yet here: the other tab's checkout waits (retryAt a
    minute on) rather than open a second subscription."""
    company_id = uuid.uuid4()
    starter = await result(world, company_id, CHECKOUT, tier="STARTER")
    completed = world.double.complete_checkout(starter["sessionId"])  # no webhook delivered yet
    for tier in ("PROFESSIONAL", "STARTER"):
        waiting = await result(world, company_id, CHECKOUT, tier=tier)
        assert waiting["__typename"] == "CheckoutUnavailable", waiting
        assert datetime.fromisoformat(waiting["retryAt"]) == NOV_20 + timedelta(minutes=1)
        assert "A checkout for starter is being paid" in waiting["message"]
    assert sessions_created(world) == 1
    # The webhook comes: the company has its subscription, and checkout is for free companies.
    assert (await world.deliver(completed)).status_code == 200
    body = await call(world, company_id, CHECKOUT, tier="PROFESSIONAL")
    assert error_code(body) == "BAD_USER_INPUT"
    assert sessions_created(world) == 1


async def test_after_the_subscription_ends_a_new_checkout_starts(world: StripeWorld) -> None:
    company_id, subscription = await checked_out(world)
    world.double.cancel_subscription(subscription)
    await world.send("customer.subscription.deleted", subscription)
    assert (await company_row(company_id)).tier is Tier.FREE
    again = await result(world, company_id, CHECKOUT, tier="STARTER")
    assert again["__typename"] == "CheckoutStarted", again
    assert world.double.get_object(again["sessionId"])["status"] == "open"
    assert await open_rows(company_id) == [again["sessionId"]]


async def test_a_session_expired_in_stripe_is_replaced(world: StripeWorld) -> None:
    """Expired in the dashboard (or by Stripe at its expires_at): a new session."""
    company_id = uuid.uuid4()
    first = await result(world, company_id, CHECKOUT, tier="STARTER")
    client = make_client(world.api.settings, timeout=5.0)
    try:
        await client.v1.checkout.sessions.expire_async(first["sessionId"])
    finally:
        await close_client(client)
    again = await result(world, company_id, CHECKOUT, tier="STARTER")
    assert again["__typename"] == "CheckoutStarted"
    assert again["sessionId"] != first["sessionId"]
    assert await open_rows(company_id) == [again["sessionId"]]


@pytest.mark.parametrize("failure", ["500", "drop_before"])
async def test_stripe_failing_to_expire_changes_nothing(world: StripeWorld, failure: Any) -> None:
    company_id = uuid.uuid4()
    starter = await result(world, company_id, CHECKOUT, tier="STARTER")
    world.double.fail(failure, 1.0, path_prefix=f"/v1/checkout/sessions/{starter['sessionId']}/")
    body = await call(world, company_id, CHECKOUT, tier="PROFESSIONAL")
    assert error_code(body) == "STRIPE_UNAVAILABLE", body
    world.double.heal()
    assert sessions_created(world) == 1
    assert world.double.get_object(starter["sessionId"])["status"] == "open"
    assert await open_rows(company_id) == [starter["sessionId"]]
    assert (await result(world, company_id, CHECKOUT, tier="STARTER")) == starter


async def test_a_lost_answer_is_the_same_session_on_retry(world: StripeWorld) -> None:
    """Stripe made the session but its answer was lost: the retry gets that session (the
    idempotency key), and stores it as the open one."""
    company_id = uuid.uuid4()
    world.double.fail("drop", 1.0, path_prefix="/v1/checkout/sessions", times=1)
    body = await call(world, company_id, CHECKOUT, tier="STARTER")
    assert error_code(body) == "STRIPE_UNAVAILABLE", body
    assert await open_rows(company_id) == []
    started = await result(world, company_id, CHECKOUT, tier="STARTER")
    assert sessions_created(world) == 2  # the same request twice: one session in Stripe
    assert await open_rows(company_id) == [started["sessionId"]]
    assert world.double.get_object(started["sessionId"])["status"] == "open"


async def test_two_tabs_at_once_leave_one_open_session(world: StripeWorld) -> None:
    company_id = uuid.uuid4()
    world.double.delay = 0.05  # both requests would be in Stripe at once without the lock
    answers = await asyncio.gather(
        result(world, company_id, CHECKOUT, tier="STARTER"),
        result(world, company_id, CHECKOUT, tier="PROFESSIONAL"),
        result(world, company_id, CHECKOUT, tier="STARTER"),
    )
    world.double.delay = 0.0
    ids = {a["sessionId"] for a in answers}
    statuses = {i: world.double.get_object(i)["status"] for i in ids}
    open_ids = [i for i, status in statuses.items() if status == "open"]
    assert len(open_ids) == 1, statuses
    assert await open_rows(company_id) == open_ids


async def test_a_subscription_arriving_meanwhile_stops_the_new_checkout(world: StripeWorld) -> None:
    """The webhook links the paid session's subscription while a click for another tier runs
    (its company read before): no new session for a company that now has a subscription."""
    company_id = uuid.uuid4()
    starter = await result(world, company_id, CHECKOUT, tier="STARTER")
    as_read = await company_row(company_id)
    completed = world.double.complete_checkout(starter["sessionId"])
    assert (await world.deliver(completed)).status_code == 200
    client = make_client(world.api.settings, timeout=5.0)
    try:
        with pytest.raises(BadUserInput, match="already has a subscription"):
            await lifecycle.start_checkout(
                as_read,
                Tier.PROFESSIONAL,
                lifecycle=StripeLifecycle(client),
                settings=world.api.settings,
                now=world.clock(),
            )
    finally:
        await close_client(client)
    assert sessions_created(world) == 1
    assert await open_rows(company_id) == []
