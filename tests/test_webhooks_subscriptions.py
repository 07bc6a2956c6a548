"""Subscriptions drive the company: link, tier, status, order independence, refusals, and the
free -> paid switch whose earlier events reach Stripe stamped at the subscription's start."""

from __future__ import annotations

import copy
import json
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from meterline.billing.catalog import EventType, Tier
from meterline.db import companies, flags, sql, subscriptions
from meterline.jobs.sync import SyncJob
from meterline.services import usage
from meterline.services.subscriptions import Flag
from meterline.stripe_gateway.client import close_client, make_client
from meterline.stripe_gateway.meter_events import meter_event_name
from tests.conftest import make_token
from tests.stripe_double import _fixture
from tests.webhook_support import (
    NOV_20,
    StripeWorld,
    company_row,
    event_row,
)

LIMITS = (
    "{ usageLimits { tier subscriptionStatus billingStatus meters { eventType used included } } }"
)


async def limits(world: StripeWorld, company_id: uuid.UUID) -> dict[str, Any]:
    body = await world.api.gql(LIMITS, token=make_token(company_id, "company_admin"))
    assert "errors" not in body, body
    result: dict[str, Any] = body["data"]["usageLimits"]
    return result


async def open_flag_kinds(company_id: uuid.UUID | None = None) -> set[str]:
    return {f.kind for f in await flags.open_flags(company_id)}


async def test_created_links_the_company_with_tier_status_and_period(world: StripeWorld) -> None:
    company_id = uuid.uuid4()
    customer, subscription = world.subscribe(company_id, Tier.PROFESSIONAL)
    await world.send("customer.subscription.created", subscription)
    company = await company_row(company_id)
    assert (company.tier, company.stripe_customer_id, company.stripe_subscription_id) == (
        Tier.PROFESSIONAL,
        customer,
        subscription,
    )
    assert company.subscription_status == "active"
    mirror = await subscriptions.get(subscription)
    assert mirror is not None and mirror.complete and mirror.tier is Tier.PROFESSIONAL
    assert mirror.current_period_start == datetime(2026, 11, 1, tzinfo=UTC)
    assert mirror.current_period_end == datetime(2026, 12, 1, tzinfo=UTC)
    shown = await limits(world, company_id)
    assert (shown["tier"], shown["subscriptionStatus"]) == ("PROFESSIONAL", "ACTIVE")
    assert await open_flag_kinds(company_id) == set()


async def test_the_handler_applies_stripes_current_state_not_the_snapshot(
    world: StripeWorld,
) -> None:
    company_id = uuid.uuid4()
    _, subscription = world.subscribe(company_id, Tier.STARTER)
    stale = world.double.snapshot_event("customer.subscription.created", subscription)
    world.double.set_subscription_prices(subscription, world.tier_prices(Tier.PROFESSIONAL))
    updated = world.double.snapshot_event("customer.subscription.updated", subscription)
    # Delivered newest first: the stale `created` arriving last still applies today's state.
    for event in (updated, stale):
        assert (await world.deliver(event)).status_code == 200
    assert (await company_row(company_id)).tier is Tier.PROFESSIONAL


async def test_deleted_current_subscription_returns_the_company_to_free(
    world: StripeWorld,
) -> None:
    company_id = uuid.uuid4()
    _, subscription = world.subscribe(company_id)
    await world.send("customer.subscription.created", subscription)
    world.double.cancel_subscription(subscription)
    await world.send("customer.subscription.deleted", subscription)
    company = await company_row(company_id)
    assert (company.tier, company.subscription_status) == (Tier.FREE, "canceled")
    assert (await limits(world, company_id))["subscriptionStatus"] == "CANCELED"
    # A stale `created` delivered after the deletion changes nothing: Stripe says canceled.
    await world.send("customer.subscription.updated", subscription)
    assert (await company_row(company_id)).tier is Tier.FREE


async def test_deleting_an_older_subscription_changes_nothing(world: StripeWorld) -> None:
    company_id = uuid.uuid4()
    customer, old = world.subscribe(company_id, Tier.STARTER)
    await world.send("customer.subscription.created", old)
    world.double.cancel_subscription(old)
    world.clock.set(NOV_20 + timedelta(hours=1))
    _, new = world.subscribe(company_id, Tier.PROFESSIONAL, customer=customer)
    await world.send("customer.subscription.created", new)
    await world.send("customer.subscription.deleted", old)  # arrives after the new one
    company = await company_row(company_id)
    assert (company.tier, company.stripe_subscription_id) == (Tier.PROFESSIONAL, new)


async def test_paused_shows_in_the_status(world: StripeWorld) -> None:
    company_id = uuid.uuid4()
    _, subscription = world.subscribe(company_id)
    await world.send("customer.subscription.created", subscription)
    world.double.update_subscription(subscription, status="paused")
    await world.send("customer.subscription.paused", subscription)
    # Stripe issues no invoice while paused: usage then would never be billed, so the company
    # is held to the free tier (capped, local) until it resumes.
    shown = await limits(world, company_id)
    assert (shown["tier"], shown["subscriptionStatus"]) == ("FREE", "PAUSED")
    world.double.update_subscription(subscription, status="active")
    await world.send("customer.subscription.resumed", subscription)
    shown = await limits(world, company_id)
    assert (shown["tier"], shown["subscriptionStatus"]) == ("STARTER", "ACTIVE")


async def test_a_subscription_missing_a_metered_price_is_flagged(world: StripeWorld) -> None:
    company_id = uuid.uuid4()
    prices = world.tier_prices(Tier.STARTER)[:-1]  # no email price
    _, subscription = world.subscribe(company_id, prices=prices)
    await world.send("customer.subscription.created", subscription)
    assert (await company_row(company_id)).tier is Tier.STARTER
    found = await flags.open_flags(company_id)
    assert [f.kind for f in found] == [Flag.INCOMPLETE]
    assert "meter_starter_email_sent" in found[0].message
    # Fixed in Stripe: the flag goes away with the next event.
    world.double.set_subscription_prices(subscription, world.tier_prices(Tier.STARTER))
    await world.send("customer.subscription.updated", subscription)
    assert await open_flag_kinds(company_id) == set()


async def test_an_unknown_base_price_keeps_the_tier_and_is_flagged(world: StripeWorld) -> None:
    company_id = uuid.uuid4()
    _, subscription = world.subscribe(company_id, prices=world.tier_prices(Tier.STARTER)[1:])
    await world.send("customer.subscription.created", subscription)
    assert (await company_row(company_id)).tier is Tier.FREE
    assert await open_flag_kinds(company_id) == {Flag.UNKNOWN_TIER}


async def test_relinking_attack_changes_nothing_and_is_flagged(world: StripeWorld) -> None:
    victim, attacker = uuid.uuid4(), uuid.uuid4()
    customer, genuine = world.subscribe(victim, Tier.STARTER)
    await world.send("customer.subscription.created", genuine)
    # A subscription of the victim's customer that names another company.
    _, hostile = world.subscribe(attacker, Tier.ENTERPRISE, customer=customer)
    response = await world.send("customer.subscription.created", hostile)
    assert response.json()["status"] == "ignored"
    company = await company_row(victim)
    assert (company.tier, company.stripe_customer_id, company.stripe_subscription_id) == (
        Tier.STARTER,
        customer,
        genuine,
    )
    assert await companies.get(attacker) is None or (
        (await company_row(attacker)).stripe_customer_id is None
    )
    assert Flag.CUSTOMER_TAKEN in await open_flag_kinds(attacker)


async def test_a_company_linked_to_another_customer_is_not_relinked(world: StripeWorld) -> None:
    company_id = uuid.uuid4()
    customer, first = world.subscribe(company_id)
    await world.send("customer.subscription.created", first)
    _, other = world.subscribe(company_id, Tier.ENTERPRISE)  # a second customer naming it
    await world.send("customer.subscription.created", other)
    company = await company_row(company_id)
    assert (company.stripe_customer_id, company.tier) == (customer, Tier.STARTER)
    assert Flag.COMPANY_HAS_OTHER_CUSTOMER in await open_flag_kinds(company_id)


async def test_a_subscription_naming_no_company_is_flagged(world: StripeWorld) -> None:
    _, subscription = world.subscribe(None)
    response = await world.send("customer.subscription.created", subscription)
    assert response.json()["status"] == "ignored"
    assert any(f.object_id == subscription for f in await flags.open_flags())


def checkout_completed(
    world: StripeWorld, subscription: str, company_id: uuid.UUID
) -> dict[str, Any]:
    """checkout.session.completed for a subscription-mode session (the double stores no
    sessions: the event is built from Stripe's example session, as Stripe would send it)."""
    event = world.double.snapshot_event("customer.subscription.created", subscription)
    session = _fixture("checkout.session")
    sub = world.double.get_object(subscription)
    session.update(
        id=f"cs_test_{uuid.uuid4().hex}",
        mode="subscription",
        status="complete",
        customer=sub["customer"],
        subscription=subscription,
        client_reference_id=str(company_id),
        metadata={"company_id": str(company_id)},
    )
    event = copy.deepcopy(event)
    event.update(type="checkout.session.completed", data={"object": session})
    return event


async def test_checkout_completed_links_the_subscription(world: StripeWorld) -> None:
    company_id = uuid.uuid4()
    customer = world.double.add_customer()
    subscription = world.double.add_subscription(customer, world.tier_prices(Tier.STARTER))
    event = checkout_completed(world, subscription, company_id)  # metadata only on the session
    response = await world.deliver(event)
    assert response.status_code == 200 and response.json()["status"] == "applied"
    company = await company_row(company_id)
    assert (company.tier, company.stripe_customer_id) == (Tier.STARTER, customer)


# --- free -> paid -----------------------------------------------------------------------------


async def record(
    company_id: uuid.UUID, event_type: EventType, quantity: int, now: datetime
) -> usage.Recorded:
    outcome = await usage.record_usage(
        company_id,
        usage.RecordRequest(event_type=event_type, quantity=quantity),
        now=now,
        late_grace_hours=1,
    )
    assert isinstance(outcome, usage.Recorded), outcome
    return outcome


async def test_free_to_paid_mid_month_sends_the_months_events_stamped_at_the_start(
    world: StripeWorld,
) -> None:
    company_id = uuid.uuid4()
    nov_3 = datetime(2026, 11, 3, 9, 30, tzinfo=UTC)
    await record(company_id, EventType.GUEST_INVITATION, 40, nov_3)
    await record(company_id, EventType.EMAIL_SENT, 90, nov_3 + timedelta(days=2))
    oct_30 = datetime(2026, 10, 30, tzinfo=UTC)  # last month: invoiced already, stays local
    await record(company_id, EventType.GUEST_INVITATION, 5, oct_30)
    start = NOV_20
    customer, subscription = world.subscribe(company_id, Tier.STARTER, start=start)
    world.clock.set(start + timedelta(minutes=2))  # the webhook arrives a little later
    await world.send("customer.subscription.created", subscription)

    company = await company_row(company_id)
    assert (company.tier, company.usage_stamped_from) == (Tier.STARTER, start)
    rows = await sql.fetch(
        "SELECT month, sync_state, count(*) AS n FROM usage_events WHERE company_id = $1 "
        "GROUP BY 1, 2 ORDER BY 1",
        company_id,
    )
    assert [(r["month"].month, r["sync_state"], r["n"]) for r in rows] == [
        (10, "local_only", 1),
        (11, "pending", 2),
    ]
    # November is now priced by the paid tier: 500 invitations included, no free cap.
    meters = {m["eventType"]: m for m in (await limits(world, company_id))["meters"]}
    assert meters["GUEST_INVITATION"]["included"] == 500
    await record(company_id, EventType.GUEST_INVITATION, 600, world.clock())  # past free's 50

    await world.sync(company_id)
    sent = [e for e in world.double.meter_events() if e["customer"] == customer]
    stamps = {e["event_name"]: e["timestamp"] for e in sent}
    assert stamps[meter_event_name(EventType.EMAIL_SENT)] == int(start.timestamp())
    assert stamps[meter_event_name(EventType.GUEST_INVITATION)] >= int(start.timestamp())
    assert world.double.meter_total(customer, "guest_invitation") == 640
    assert world.double.meter_total(customer, "email_sent") == 90

    # Stripe's invoice for November bills exactly what Meterline says November costs.
    invoice = world.double.invoice_for_month(
        subscription, int(datetime(2026, 11, 1, tzinfo=UTC).timestamp())
    )
    stored = world.double.get_object(invoice)
    summary = await world.api.data(
        '{ monthlySummary(month: "2026-11") { totalOverageCost { amount } } }',
        token=make_token(company_id, "company_admin"),
    )
    metered_cents = sum(
        line["amount"]
        for line in stored["lines"]["data"]
        if line["period"]["start"] < int(datetime(2026, 12, 1, tzinfo=UTC).timestamp())
    )
    total = Decimal(summary["monthlySummary"]["totalOverageCost"]["amount"])
    assert total == Decimal("14.00")  # (640 - 500) x 0.10
    assert Decimal(metered_cents) / 100 == total, json.dumps(stored["lines"]["data"])[:500]


async def test_free_to_paid_applies_once_whatever_the_deliveries(world: StripeWorld) -> None:
    company_id = uuid.uuid4()
    await record(company_id, EventType.EMAIL_SENT, 10, NOV_20 - timedelta(days=1))
    _, subscription = world.subscribe(company_id, start=NOV_20)
    created = world.double.snapshot_event("customer.subscription.created", subscription)
    updated = world.double.snapshot_event("customer.subscription.updated", subscription)
    for event in (updated, created, updated):
        assert (await world.deliver(event)).status_code == 200
    assert (await event_row(created["id"]))["applied_count"] == 1
    company = await company_row(company_id)
    assert company.usage_stamped_from == NOV_20
    pending = await sql.fetchrow(
        "SELECT count(*) AS n FROM usage_events WHERE company_id = $1 AND sync_state = 'pending'",
        company_id,
    )
    assert pending is not None and pending["n"] == 1


async def test_an_incomplete_subscription_links_but_does_not_upgrade(world: StripeWorld) -> None:
    company_id = uuid.uuid4()
    _, subscription = world.subscribe(company_id, status="incomplete")
    await world.send("customer.subscription.created", subscription)
    company = await company_row(company_id)
    assert (company.tier, company.subscription_status) == (Tier.FREE, "incomplete")
    world.double.update_subscription(subscription, status="active")
    await world.send("customer.subscription.updated", subscription)
    assert (await company_row(company_id)).tier is Tier.STARTER


async def test_operators_see_and_resolve_flags(world: StripeWorld, database_url: str) -> None:
    from tests.commands import meterline

    company_id = uuid.uuid4()
    _, subscription = world.subscribe(company_id, prices=world.tier_prices(Tier.STARTER)[:-2])
    await world.send("customer.subscription.created", subscription)
    env = {"DATABASE_URL": database_url}
    shown = meterline("company", "show", str(company_id), env=env, clock=world.clock)
    assert f"FLAG {Flag.INCOMPLETE} ({subscription}" in shown.stdout, shown.stderr
    assert "subscription=" + subscription + "(active)" in shown.stdout
    listed = meterline("stripe", "flags", "--limit", "1000", env=env, clock=world.clock)
    line = next(x for x in listed.stdout.splitlines() if subscription in x)
    flag_id = line.split()[0]
    assert (
        meterline("stripe", "flags", "--resolve", flag_id, env=env, clock=world.clock).returncode
        == 0
    )
    assert await open_flag_kinds(company_id) == set()
    again = meterline("stripe", "flags", "--resolve", flag_id, env=env, clock=world.clock)
    assert again.returncode != 0 and "no open flag" in again.stderr


async def test_a_second_live_subscription_is_cancelled_and_the_first_stays_current(
    world: StripeWorld,
) -> None:
    """The newer of two live subscriptions never becomes the company's: it is cancelled in
    Stripe at once (tests/test_duplicate_subscriptions.py has the rest)."""
    company_id = uuid.uuid4()
    customer, first = world.subscribe(company_id, Tier.STARTER, start=NOV_20)
    await world.send("customer.subscription.created", first)
    world.clock.set(NOV_20 + timedelta(hours=1))
    _, second = world.subscribe(  # a 2nd checkout
        company_id, Tier.PROFESSIONAL, customer=customer, start=world.clock()
    )
    await world.send("customer.subscription.created", second)
    company = await company_row(company_id)
    assert (company.tier, company.stripe_subscription_id) == (Tier.STARTER, first)
    assert Flag.SECOND_LIVE in await open_flag_kinds(company_id)
    assert world.double.get_object(second)["status"] == "canceled"
    await world.send("customer.subscription.deleted", second)
    company = await company_row(company_id)
    assert (company.tier, company.stripe_subscription_id) == (Tier.STARTER, first)


async def record_at(
    company_id: uuid.UUID, event_type: EventType, quantity: int, now: datetime
) -> str:
    return (await record(company_id, event_type, quantity, now)).event.sync_state


async def rollup_tiers(company_id: uuid.UUID) -> set[str]:
    rows = await sql.fetch(
        "SELECT DISTINCT tier FROM usage_rollups WHERE company_id = $1 AND month = $2",
        company_id,
        datetime(2026, 12, 1, tzinfo=UTC).date(),
    )
    return {r["tier"] for r in rows}


async def test_a_cancellation_at_period_end_prices_the_new_month_as_free(
    world: StripeWorld,
) -> None:
    company_id = uuid.uuid4()
    _, subscription = world.subscribe(company_id, Tier.STARTER)
    await world.send("customer.subscription.created", subscription)
    dec_1 = datetime(2026, 12, 1, tzinfo=UTC)
    # Stripe ends it at 00:00 on the 1st; usage recorded before the event arrives opened
    # December at the paid tier, with no cap, and pending for Stripe.
    assert (
        await record_at(company_id, EventType.GUEST_INVITATION, 80, dec_1 + timedelta(minutes=3))
        == "pending"
    )
    world.clock.set(dec_1)
    world.double.cancel_subscription(subscription)
    world.clock.set(dec_1 + timedelta(minutes=20))
    await world.send("customer.subscription.deleted", subscription)
    assert (await company_row(company_id)).tier is Tier.FREE
    assert await rollup_tiers(company_id) == {"free"}
    state = await sql.fetchrow(
        "SELECT sync_state FROM usage_events WHERE company_id = $1", company_id
    )
    assert state is not None and state["sync_state"] == "local_only"  # no subscription bills it
    # Free's cap (50) holds from now on; what was recorded stays recorded.
    refused = await usage.record_usage(
        company_id,
        usage.RecordRequest(event_type=EventType.GUEST_INVITATION, quantity=1),
        now=world.clock(),
        late_grace_hours=1,
    )
    assert isinstance(refused, usage.LimitExceeded)


async def test_a_change_on_the_first_reprices_the_month_and_a_change_mid_month_is_flagged(
    world: StripeWorld,
) -> None:
    company_id = uuid.uuid4()
    _, subscription = world.subscribe(company_id, Tier.PROFESSIONAL)
    await world.send("customer.subscription.created", subscription)
    dec_1 = datetime(2026, 12, 1, tzinfo=UTC)
    await record_at(company_id, EventType.SMS_SENT, 10, dec_1 + timedelta(minutes=1))
    world.clock.set(dec_1)  # a scheduled downgrade's phase starts on the 1st
    world.double.set_subscription_prices(subscription, world.tier_prices(Tier.STARTER))
    world.clock.set(dec_1 + timedelta(minutes=5))
    await world.send("customer.subscription.updated", subscription)
    assert (await company_row(company_id)).tier is Tier.STARTER
    assert await rollup_tiers(company_id) == {"starter"}
    assert Flag.TIER_CHANGED_IN_STRIPE not in await open_flag_kinds(company_id)
    # In the middle of the month, from Stripe's dashboard: applied, flagged, month kept.
    world.clock.set(dec_1 + timedelta(days=9))
    world.double.set_subscription_prices(subscription, world.tier_prices(Tier.ENTERPRISE))
    await world.send("customer.subscription.updated", subscription)
    assert (await company_row(company_id)).tier is Tier.ENTERPRISE
    assert await rollup_tiers(company_id) == {"starter"}
    assert Flag.TIER_CHANGED_IN_STRIPE in await open_flag_kinds(company_id)


async def test_an_event_recorded_as_local_while_the_subscription_arrived_still_reaches_stripe(
    world: StripeWorld,
) -> None:
    company_id = uuid.uuid4()
    customer, subscription = world.subscribe(company_id, Tier.STARTER, start=NOV_20)
    world.clock.set(NOV_20 + timedelta(minutes=1))
    await world.send("customer.subscription.created", subscription)
    # The race: a request that read the company as free commits after the switch.
    await sql.execute(
        "INSERT INTO usage_events (id, company_id, event_type, quantity, occurred_at, month, "
        "sync_state) VALUES ($1, $2, 'sms_sent', 7, $3, $4, 'local_only')",
        uuid.uuid4(),
        company_id,
        NOV_20 + timedelta(seconds=30),
        NOV_20.date().replace(day=1),
    )
    client = make_client(world.api.settings, timeout=5.0)
    try:
        await SyncJob(client=client, clock=world.clock, company_ids=[company_id]).run()
    finally:
        await close_client(client)
    assert world.double.meter_total(customer, "sms_sent") == 7
