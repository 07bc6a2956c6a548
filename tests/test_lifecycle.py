"""The subscription lifecycle through GraphQL against the Stripe double: checkout, plan changes
on the 1st, cancellation, resumption, the billing portal, roles and Stripe failures."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import pytest

from meterline.app import create_app
from meterline.billing.catalog import EventType, Tier
from meterline.db import subscriptions
from meterline.services import usage
from meterline.services.lifecycle import plan_lookup_keys
from meterline.stripe_gateway.client import close_client, make_client
from tests.commands import meterline
from tests.conftest import Api, client_for, make_token, service_token
from tests.stripe_double import FailureKind
from tests.webhook_support import APP_ORIGIN, NOV_20, StripeWorld, company_row

NOV_1 = datetime(2026, 11, 1, tzinfo=UTC)
DEC_1 = datetime(2026, 12, 1, tzinfo=UTC)

CHECKOUT = """mutation($tier: SubscriptionTier!) { startCheckout(tier: $tier) { __typename
  ... on CheckoutStarted { url sessionId expiresAt }
  ... on StripeNotReady { missingPrices message } } }"""
CHANGE = """mutation($tier: SubscriptionTier!) { changeTier(tier: $tier) { __typename
  ... on TierChangeScheduled { tier effectiveAt }
  ... on TierChangeCanceled { tier message }
  ... on CancellationScheduled { effectiveAt message }
  ... on NoSubscription { message }
  ... on StripeNotReady { missingPrices } } }"""
CANCEL = """mutation { cancelSubscription { __typename
  ... on CancellationScheduled { effectiveAt message } ... on NoSubscription { message } } }"""
RESUME = """mutation { resumeSubscription { __typename
  ... on SubscriptionResumed { tier } ... on NoSubscription { message }
  ... on NothingToResume { message } } }"""
PORTAL = """mutation($url: String!) { billingPortalUrl(returnUrl: $url) { __typename
  ... on BillingPortalSession { url } ... on NoSubscription { message } } }"""
LIMITS = "{ usageLimits { tier scheduledTier subscriptionStatus } }"


async def call(
    world: StripeWorld, company_id: uuid.UUID, query: str, role: str = "company_admin", **v: Any
) -> dict[str, Any]:
    token = service_token(company_id) if role == "service" else make_token(company_id, role)
    return await world.api.gql(query, v, token=token)


async def result(world: StripeWorld, company_id: uuid.UUID, query: str, **v: Any) -> Any:
    body = await call(world, company_id, query, **v)
    assert "errors" not in body, body
    return next(iter(body["data"].values()))


def error_code(body: dict[str, Any]) -> str:
    assert body.get("errors"), body
    code: str = body["errors"][0]["extensions"]["code"]
    return code


async def limits(world: StripeWorld, company_id: uuid.UUID) -> dict[str, Any]:
    return dict(await result(world, company_id, LIMITS))


async def checked_out(world: StripeWorld, tier: Tier = Tier.STARTER) -> tuple[uuid.UUID, str]:
    """A free company that checks out now and pays: (company, subscription)."""
    company_id = uuid.uuid4()
    started = await result(world, company_id, CHECKOUT, tier=tier.name)
    assert started["__typename"] == "CheckoutStarted", started
    completed = world.double.complete_checkout(started["sessionId"])
    assert (await world.deliver(completed)).status_code == 200
    subscription = completed["data"]["object"]["subscription"]
    await world.send("customer.subscription.created", subscription)
    return company_id, subscription


async def test_checkout_creates_the_six_prices_with_the_anchor_and_metadata(
    world: StripeWorld,
) -> None:
    company_id, subscription = await checked_out(world, Tier.PROFESSIONAL)
    sub = world.double.get_object(subscription)
    prices = sorted(item["price"]["lookup_key"] for item in sub["items"]["data"])
    assert prices == sorted(plan_lookup_keys(Tier.PROFESSIONAL))
    quantities = {i["price"]["lookup_key"]: i["quantity"] for i in sub["items"]["data"]}
    assert quantities["tier_professional"] == 1
    assert {q for k, q in quantities.items() if k.startswith("meter_")} == {None}
    assert sub["metadata"] == {"company_id": str(company_id)}
    assert sub["billing_cycle_anchor"] == int(DEC_1.timestamp())  # the next 1st
    item = sub["items"]["data"][0]
    assert (item["current_period_start"], item["current_period_end"]) == (
        int(NOV_20.timestamp()),
        int(DEC_1.timestamp()),
    )  # a prorated first period
    company = await company_row(company_id)
    assert (company.tier, company.stripe_subscription_id) == (Tier.PROFESSIONAL, subscription)


async def test_checkout_session_urls_and_expiry(world: StripeWorld) -> None:
    company_id = uuid.uuid4()
    started = await result(world, company_id, CHECKOUT, tier="STARTER")
    session = world.double.get_object(started["sessionId"])
    assert started["url"] == session["url"] and session["mode"] == "subscription"
    assert session["success_url"] == f"{APP_ORIGIN}/billing?checkout=success"
    assert session["cancel_url"] == f"{APP_ORIGIN}/billing?checkout=canceled"
    assert session["metadata"] == {"company_id": str(company_id)}
    # The same click again within the hour: the same session (idempotency key).
    again = await result(world, company_id, CHECKOUT, tier="STARTER")
    assert again["sessionId"] == started["sessionId"]


@pytest.mark.parametrize(
    ("first", "later", "same"),
    [
        (NOV_20, NOV_20 + timedelta(minutes=1), True),
        (NOV_20 + timedelta(minutes=1), NOV_20 + timedelta(minutes=59, seconds=59), True),
        # The next hour: still the company's open session (one open checkout per company).
        (NOV_20 + timedelta(minutes=59), NOV_20 + timedelta(minutes=61), True),
    ],
)
async def test_a_click_repeated_later_in_the_hour_gives_the_same_session(
    world: StripeWorld, first: datetime, later: datetime, same: bool
) -> None:
    """Stripe refuses an idempotency key reused with other parameters (400): the parameters of
    one hour's clicks are the same. (The company's open session is given back whatever the
    hour: tests/test_checkout.py.)"""
    company_id = uuid.uuid4()
    world.clock.set(first)
    started = await result(world, company_id, CHECKOUT, tier="STARTER")
    world.clock.set(later)
    again = await result(world, company_id, CHECKOUT, tier="STARTER")
    assert (again["sessionId"] == started["sessionId"]) is same
    for answer in (started, again):
        session = world.double.get_object(answer["sessionId"])
        created = datetime.fromtimestamp(session["created"], UTC)
        expires = datetime.fromtimestamp(session["expires_at"], UTC)
        assert timedelta(minutes=30) <= expires - created <= timedelta(hours=24)


@pytest.mark.parametrize("tier", ["FREE", "STARTER"])
async def test_checkout_is_refused_for_free_and_for_a_subscribed_company(
    world: StripeWorld, tier: str
) -> None:
    company_id = uuid.uuid4()
    if tier == "STARTER":
        company_id, _ = await checked_out(world)
    body = await call(world, company_id, CHECKOUT, tier=tier)
    assert error_code(body) == "BAD_USER_INPUT"


async def test_checkout_without_the_tiers_prices_says_what_is_missing(world: StripeWorld) -> None:
    client = make_client(world.api.settings, timeout=5.0)
    try:
        await client.v1.prices.update_async(
            world.prices["meter_starter_sms_sent"], {"active": False}
        )
    finally:
        await close_client(client)
    refused = await result(world, uuid.uuid4(), CHECKOUT, tier="STARTER")
    assert refused["__typename"] == "StripeNotReady"
    assert refused["missingPrices"] == ["meter_starter_sms_sent"]


# --- plan changes on the 1st ------------------------------------------------------------------


async def record(
    company_id: uuid.UUID, event_type: EventType, quantity: int, now: datetime
) -> None:
    outcome = await usage.record_usage(
        company_id,
        usage.RecordRequest(event_type=event_type, quantity=quantity, occurred_at=now),
        now=now,
        late_grace_hours=1,
    )
    assert isinstance(outcome, usage.Recorded), outcome


async def metered_preview_cents(world: StripeWorld, subscription: str) -> int:
    sub = world.double.get_object(subscription)
    client = make_client(world.api.settings, timeout=5.0)
    try:
        preview = await client.v1.invoices.create_preview_async(
            {"customer": sub["customer"], "subscription": subscription}
        )
    finally:
        await close_client(client)
    return world.double.metered_subtotal(preview.to_dict())


async def overage(world: StripeWorld, company_id: uuid.UUID, month: str) -> Decimal:
    data = await result(
        world,
        company_id,
        f'{{ monthlySummary(month: "{month}") {{ totalOverageCost {{ amount }} }} }}',
    )
    return Decimal(data["totalOverageCost"]["amount"])


async def test_a_month_with_an_upgrade_scheduled_mid_month_bills_old_then_new(
    world: StripeWorld,
) -> None:
    world.clock.set(NOV_1 - timedelta(days=1))
    company_id, subscription = await checked_out(world, Tier.STARTER)  # anchored to Nov 1
    await world.reach(NOV_1 + timedelta(hours=1))  # Stripe renews on the 1st
    await record(company_id, EventType.SMS_SENT, 1_300, NOV_1 + timedelta(days=3))
    await record(company_id, EventType.AI_QUERY, 61, NOV_1 + timedelta(days=9))

    world.clock.set(NOV_1 + timedelta(days=14))
    scheduled = await result(world, company_id, CHANGE, tier="PROFESSIONAL")
    assert scheduled == {
        "__typename": "TierChangeScheduled",
        "tier": "PROFESSIONAL",
        "effectiveAt": DEC_1.isoformat(),
    }
    shown = await limits(world, company_id)
    assert (shown["tier"], shown["scheduledTier"]) == ("STARTER", "PROFESSIONAL")
    world.clock.set(NOV_1 + timedelta(days=20))
    await record(company_id, EventType.SMS_SENT, 200, world.clock())
    await world.sync(company_id)

    world.clock.set(DEC_1 - timedelta(seconds=1))
    november = await overage(world, company_id, "2026-11")
    assert november == Decimal("27.20")  # (1,500 - 1,000) x 0.05 + (61 - 50) x 0.20
    assert Decimal(await metered_preview_cents(world, subscription)) / 100 == november

    await world.reach(DEC_1)
    shown = await limits(world, company_id)
    assert (shown["tier"], shown["scheduledTier"]) == ("PROFESSIONAL", None)
    world.clock.set(DEC_1 + timedelta(days=2))
    await record(company_id, EventType.SMS_SENT, 5_100, world.clock())
    await world.sync(company_id)
    december = await overage(world, company_id, "2026-12")
    assert december == Decimal("5.00")  # (5,100 - 5,000) x 0.05 at the professional tier
    assert Decimal(await metered_preview_cents(world, subscription)) / 100 == december
    assert await overage(world, company_id, "2026-11") == november  # November keeps starter


async def test_changing_again_replaces_and_the_current_tier_withdraws(world: StripeWorld) -> None:
    company_id, subscription = await checked_out(world)
    assert (await result(world, company_id, CHANGE, tier="PROFESSIONAL"))["tier"] == "PROFESSIONAL"
    assert (await result(world, company_id, CHANGE, tier="ENTERPRISE"))["tier"] == "ENTERPRISE"
    sub = world.double.get_object(subscription)
    schedule = world.double.get_object(sub["schedule"])
    next_prices = {i["price"] for i in schedule["phases"][-1]["items"]}
    assert next_prices == set(world.tier_prices(Tier.ENTERPRISE))
    assert (await limits(world, company_id))["scheduledTier"] == "ENTERPRISE"
    withdrawn = await result(world, company_id, CHANGE, tier="STARTER")
    assert withdrawn["__typename"] == "TierChangeCanceled"
    assert world.double.get_object(subscription)["schedule"] is None
    assert (await limits(world, company_id))["scheduledTier"] is None


async def test_cancel_at_period_end_resume_and_the_end(world: StripeWorld) -> None:
    company_id, subscription = await checked_out(world)
    cancelled = await result(world, company_id, CANCEL)
    assert cancelled["__typename"] == "CancellationScheduled"
    assert cancelled["effectiveAt"] == DEC_1.isoformat()
    assert world.double.get_object(subscription)["cancel_at_period_end"] is True
    assert (await limits(world, company_id))["scheduledTier"] == "FREE"
    resumed = await result(world, company_id, RESUME)
    assert resumed == {"__typename": "SubscriptionResumed", "tier": "STARTER"}
    assert world.double.get_object(subscription)["cancel_at_period_end"] is False
    assert (await limits(world, company_id))["scheduledTier"] is None
    nothing = await result(world, company_id, RESUME)
    assert nothing["__typename"] == "NothingToResume"
    # FREE through changeTier is the same cancellation; it ends on the 1st.
    assert (await result(world, company_id, CHANGE, tier="FREE"))["__typename"] == (
        "CancellationScheduled"
    )
    await world.reach(DEC_1)
    shown = await limits(world, company_id)
    assert (shown["tier"], shown["subscriptionStatus"]) == ("FREE", "CANCELED")


async def test_a_pending_change_then_a_cancellation(world: StripeWorld) -> None:
    company_id, subscription = await checked_out(world)
    await result(world, company_id, CHANGE, tier="PROFESSIONAL")
    cancelled = await result(world, company_id, CANCEL)  # releases the schedule first
    assert cancelled["__typename"] == "CancellationScheduled"
    sub = world.double.get_object(subscription)
    assert sub["schedule"] is None and sub["cancel_at_period_end"] is True
    assert (await limits(world, company_id))["scheduledTier"] == "FREE"


async def test_free_companies_have_nothing_to_change(world: StripeWorld) -> None:
    company_id = uuid.uuid4()
    for query, variables in ((CHANGE, {"tier": "STARTER"}), (CANCEL, {}), (RESUME, {})):
        refused = await result(world, company_id, query, **variables)
        assert refused["__typename"] == "NoSubscription", refused
    portal = await result(world, company_id, PORTAL, url=f"{APP_ORIGIN}/billing")
    assert portal["__typename"] == "NoSubscription"


async def test_billing_portal(world: StripeWorld) -> None:
    company_id, _ = await checked_out(world)
    portal = await result(world, company_id, PORTAL, url=f"{APP_ORIGIN}/billing")
    assert portal["__typename"] == "BillingPortalSession"
    assert portal["url"].startswith("https://billing.stripe.com/")
    for bad in (
        "https://evil.example/phish",
        "javascript:alert(1)",
        "/relative",
        "http://app.weddingflow.test/x",
    ):
        body = await call(world, company_id, PORTAL, url=bad)
        assert error_code(body) == "BAD_USER_INPUT", bad


@pytest.mark.parametrize("role", ["staff", "service", "unknown_role"])
async def test_only_admins_manage_the_subscription(world: StripeWorld, role: str) -> None:
    company_id, _ = await checked_out(world)
    for query, variables in (
        (CHECKOUT, {"tier": "STARTER"}),
        (CHANGE, {"tier": "PROFESSIONAL"}),
        (CANCEL, {}),
        (RESUME, {}),
        (PORTAL, {"url": f"{APP_ORIGIN}/billing"}),
    ):
        body = await call(world, company_id, query, role=role, **variables)
        assert error_code(body) == "FORBIDDEN", (query, body)
    assert (await limits(world, company_id))["scheduledTier"] is None


async def test_super_admin_manages_too(world: StripeWorld) -> None:
    company_id, _ = await checked_out(world)
    body = await call(world, company_id, CHANGE, role="super_admin", tier="PROFESSIONAL")
    assert body["data"]["changeTier"]["__typename"] == "TierChangeScheduled"


@pytest.mark.parametrize("failure", ["500", "429", "drop_before"])
@pytest.mark.parametrize(
    ("path", "query", "variables"),
    [
        ("/v1/subscription_schedules", CHANGE, {"tier": "PROFESSIONAL"}),
        ("/v1/subscriptions/", CANCEL, {}),
        ("/v1/billing_portal", PORTAL, {"url": f"{APP_ORIGIN}/billing"}),
    ],
)
async def test_stripe_failures_are_stripe_unavailable_and_change_nothing(
    world: StripeWorld, path: str, query: str, variables: dict[str, Any], failure: FailureKind
) -> None:
    """Stripe down, busy (429) or unreachable: the same request may work later."""
    company_id, subscription = await checked_out(world)
    world.double.fail(failure, 1.0, path_prefix=path)
    body = await call(world, company_id, query, **variables)
    assert error_code(body) == "STRIPE_UNAVAILABLE", body
    world.double.heal()
    shown = await limits(world, company_id)
    assert shown["scheduledTier"] is None
    mirror = await subscriptions.get(subscription)
    assert mirror is not None and not mirror.cancel_at_period_end
    sub = world.double.get_object(subscription)
    assert not sub["cancel_at_period_end"]


async def test_a_call_stripe_refuses_is_rejected_not_unavailable(world: StripeWorld) -> None:
    """A 4xx is Stripe's answer, not an outage: retrying the same request cannot help, so the
    caller is told so (STRIPE_REQUEST_REJECTED) with what an operator needs to act on it."""
    company_id, subscription = await checked_out(world)
    world.double.cancel_subscription(subscription)  # in Stripe only: no event delivered yet
    body = await call(world, company_id, CHANGE, tier="PROFESSIONAL")
    assert error_code(body) == "STRIPE_REQUEST_REJECTED", body
    [error] = body["errors"]
    stripe_said = error["extensions"]["stripe"]
    assert stripe_said["status"] == 400 and stripe_said["param"] == "from_subscription"
    assert stripe_said["requestId"].startswith("req_")
    assert "HTTP 400" in error["message"] and "from_subscription" in error["message"]
    assert "Retrying will not help" in error["message"]
    assert subscription not in error["message"]  # Stripe's own words (and ids) stay in the log
    assert (await limits(world, company_id))["scheduledTier"] is None


async def test_a_wrong_portal_configuration_is_rejected_naming_the_parameter(
    world: StripeWorld,
) -> None:
    company_id, _ = await checked_out(world)
    settings = replace(world.api.settings, stripe_portal_configuration="bpc_not_ours")
    app = create_app(settings, clock=world.clock, manage_database=False)
    async with client_for(app) as client:
        misconfigured = Api(client=client, clock=world.clock, settings=settings)
        body = await misconfigured.gql(
            PORTAL, {"url": f"{APP_ORIGIN}/billing"}, token=make_token(company_id)
        )
    assert error_code(body) == "STRIPE_REQUEST_REJECTED", body
    stripe_said = body["errors"][0]["extensions"]["stripe"]
    assert stripe_said == {
        "status": 400,
        "code": "resource_missing",
        "param": "configuration",
        "requestId": stripe_said["requestId"],
    }
    # The right configuration (Stripe's default) works.
    portal = await result(world, company_id, PORTAL, url=f"{APP_ORIGIN}/billing")
    assert portal["__typename"] == "BillingPortalSession"


async def test_checkout_failure_is_stripe_unavailable(world: StripeWorld) -> None:
    world.double.fail("500", 1.0, path_prefix="/v1/checkout")
    body = await call(world, uuid.uuid4(), CHECKOUT, tier="STARTER")
    assert error_code(body) == "STRIPE_UNAVAILABLE"


async def test_drift_lists_a_mid_month_change_made_in_stripe(
    world: StripeWorld, database_url: str
) -> None:
    company_id, subscription = await checked_out(world)
    world.clock.set(NOV_20 + timedelta(days=3))
    world.double.set_subscription_prices(subscription, world.tier_prices(Tier.ENTERPRISE))
    await world.send("customer.subscription.updated", subscription)
    shown = meterline("company", "drift", env=world.cli_env(), clock=world.clock)
    assert shown.returncode == 0, shown.stderr
    assert str(company_id) in shown.stdout and "from starter to enterprise" in shown.stdout
    assert "Stripe's coming invoice" in shown.stdout


async def test_changing_back_and_forth_always_leaves_stripe_on_the_last_choice(
    world: StripeWorld,
) -> None:
    """A reused idempotency key would replay an earlier answer and leave Stripe on another tier
    than the one Meterline shows."""
    company_id, subscription = await checked_out(world)
    for tier in ("PROFESSIONAL", "ENTERPRISE", "PROFESSIONAL", "STARTER", "PROFESSIONAL"):
        await result(world, company_id, CHANGE, tier=tier)
        schedule_id = world.double.get_object(subscription)["schedule"]
        if tier == "STARTER":
            assert schedule_id is None
            continue
        schedule = world.double.get_object(schedule_id)
        assert {i["price"] for i in schedule["phases"][-1]["items"]} == set(
            world.tier_prices(Tier[tier])
        ), tier
        assert (await limits(world, company_id))["scheduledTier"] == tier


async def test_a_change_that_fails_leaves_a_pending_cancellation_standing(
    world: StripeWorld,
) -> None:
    company_id, subscription = await checked_out(world)
    await result(world, company_id, CANCEL)
    world.double.fail("500", 1.0, path_prefix="/v1/subscription_schedules")
    body = await call(world, company_id, CHANGE, tier="PROFESSIONAL")
    assert error_code(body) == "STRIPE_UNAVAILABLE"
    world.double.heal()
    assert world.double.get_object(subscription)["cancel_at_period_end"] is True
    assert (await limits(world, company_id))["scheduledTier"] == "FREE"
    # Done again with Stripe up: the schedule takes over and the subscription goes on.
    changed = await result(world, company_id, CHANGE, tier="PROFESSIONAL")
    assert changed["__typename"] == "TierChangeScheduled"
    assert (await limits(world, company_id))["scheduledTier"] == "PROFESSIONAL"
    await world.reach(DEC_1)
    shown = await limits(world, company_id)
    assert (shown["tier"], shown["subscriptionStatus"]) == ("PROFESSIONAL", "ACTIVE")


async def test_two_checkouts_share_the_companys_customer(world: StripeWorld) -> None:
    company_id = uuid.uuid4()
    first = await result(world, company_id, CHECKOUT, tier="STARTER")
    second = await result(world, company_id, CHECKOUT, tier="PROFESSIONAL")
    customers = {world.double.get_object(s["sessionId"])["customer"] for s in (first, second)}
    assert len(customers) == 1 and None not in customers
    assert (await company_row(company_id)).stripe_customer_id in customers


@pytest.mark.parametrize(
    ("now", "anchor"),
    [
        (datetime(2026, 11, 20, 12, tzinfo=UTC), DEC_1),
        (datetime(2026, 11, 30, 23, 0, tzinfo=UTC), DEC_1),
        (datetime(2026, 11, 30, 23, 24, tzinfo=UTC), DEC_1),
        # No anchor on a 1st is valid: in a month's last 36 minutes, and in its first second.
        (datetime(2026, 11, 30, 23, 40, tzinfo=UTC), None),
        (datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC), None),
        (datetime(2027, 1, 1, 0, 0, 0, 999_999, tzinfo=UTC), None),
        (datetime(2027, 1, 1, 0, 0, 1, tzinfo=UTC), datetime(2027, 2, 1, tzinfo=UTC)),
        (datetime(2028, 2, 29, 12, tzinfo=UTC), datetime(2028, 3, 1, tzinfo=UTC)),
    ],
)
def test_a_checkout_expires_before_its_anchor(now: datetime, anchor: datetime | None) -> None:
    from meterline.services.lifecycle import checkout_opens_at, checkout_window

    window = checkout_window(now)
    if anchor is None:
        assert window is None
        opens = checkout_opens_at(now)
        assert opens > now and opens.day == 1 and opens.time() == time(0, 0, 1)
        assert checkout_window(opens) is not None
        assert checkout_window(opens - timedelta(microseconds=1)) is None
        return
    assert window is not None
    got_anchor, expires_at = window
    assert got_anchor == anchor
    assert now + timedelta(minutes=31) <= expires_at < got_anchor
    assert expires_at <= now + timedelta(hours=24)


async def test_two_admins_changing_at_once_leave_stripe_and_meterline_agreeing(
    world: StripeWorld,
) -> None:
    import asyncio

    company_id, subscription = await checked_out(world)
    world.double.delay = 0.05  # both requests are in Stripe at the same time without the lock
    answers = await asyncio.gather(
        result(world, company_id, CHANGE, tier="PROFESSIONAL"),
        result(world, company_id, CHANGE, tier="ENTERPRISE"),
        result(world, company_id, CANCEL),
    )
    world.double.delay = 0.0
    assert {a["__typename"] for a in answers} <= {"TierChangeScheduled", "CancellationScheduled"}
    shown = (await limits(world, company_id))["scheduledTier"]
    sub = world.double.get_object(subscription)
    if sub["schedule"] is None:
        in_stripe = "FREE" if sub["cancel_at_period_end"] else None
    else:
        schedule = world.double.get_object(sub["schedule"])
        prices = {i["price"] for i in schedule["phases"][-1]["items"]}
        in_stripe = next(
            t.name for t in Tier if t is not Tier.FREE and set(world.tier_prices(t)) == prices
        )
    assert shown == in_stripe
