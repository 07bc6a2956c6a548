"""Issue 12, case 2 (second half): two subscriptions of one company live at once (paid in two
tabs within seconds, or made in the dashboard). The newer is cancelled in Stripe at once, what it
charged is refunded (a paid invoice) or voided (an open or draft one), the older stays the
company's, the operator sees a `second_live_subscription` flag, and /metrics counts it.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import stripe

from meterline.billing.catalog import EventType, Tier
from meterline.db import flags
from meterline.services.duplicates import DUPLICATE_OF, SETTLED
from meterline.services.lifecycle import plan_lookup_keys
from meterline.services.subscriptions import Flag
from meterline.stripe_gateway.client import close_client, make_client
from meterline.stripe_gateway.lifecycle import StripeLifecycle
from tests.commands import meterline
from tests.test_lifecycle import (
    CHECKOUT,
    DEC_1,
    NOV_1,
    checked_out,
    limits,
    overage,
    record,
    result,
)
from tests.webhook_support import APP_ORIGIN, NOV_20, StripeWorld, company_row

FIRST_INVOICE_CENTS = 1_233  # the prorated base fee Checkout charges at once


async def cancelled_count(world: StripeWorld) -> float:
    body = (await world.client.get("/metrics")).text
    found = re.search(r"^meterline_duplicate_subscriptions_cancelled_total (\S+)$", body, re.M)
    return float(found.group(1)) if found else 0.0


async def open_flags(company_id: uuid.UUID) -> dict[str, str]:
    """Open flags of the company: object id -> kind."""
    return {f.object_id: f.kind for f in await flags.open_flags(company_id)}


def calls(world: StripeWorld, method: str, path: str) -> int:
    return world.double.requests.count((method, path))


async def other_tab(world: StripeWorld, company_id: uuid.UUID, tier: Tier) -> str:
    """A second open Checkout Session of the company, as Meterline made it in another tab before
    the first could be expired (it was being paid): the company's customer, its metadata."""
    company = await company_row(company_id)
    client = make_client(world.api.settings, timeout=5.0)
    try:
        gateway = StripeLifecycle(client)
        keys = plan_lookup_keys(tier)
        found = await gateway.plan_prices(keys)
        session = await gateway.create_checkout(
            prices=[found[k] for k in keys],
            customer=company.stripe_customer_id,
            company_id=str(company_id),
            anchor=DEC_1,
            success_url=f"{APP_ORIGIN}/billing?checkout=success",
            cancel_url=None,
            expires_at=world.clock() + timedelta(hours=2),
            idempotency_key=f"other-tab-{company_id}",
        )
    finally:
        await close_client(client)
    return session.id


def pay_first_invoice(world: StripeWorld, subscription: str) -> str:
    """The invoice that opened the subscription (Checkout charges it at once), paid."""
    customer = world.double.get_object(subscription)["customer"]
    invoice = world.double.add_invoice(
        customer,
        subscription=subscription,
        billing_reason="subscription_create",
        currency="usd",
        amount_due=FIRST_INVOICE_CENTS,
        amount_remaining=FIRST_INVOICE_CENTS,
        subtotal=FIRST_INVOICE_CENTS,
        total=FIRST_INVOICE_CENTS,
    )
    world.double.pay_invoice(invoice)
    return invoice


def payment_intent_of(world: StripeWorld, invoice: str) -> str:
    [payment] = world.double.invoice_payments(invoice)
    return str(payment["payment"]["payment_intent"])


def refunded(world: StripeWorld) -> list[tuple[str, int]]:
    return [(r["payment_intent"], r["amount"]) for r in world.double.refunds()]


async def two_tabs_paid(
    world: StripeWorld, gap: timedelta
) -> tuple[uuid.UUID, dict[str, list[dict[str, Any]]], dict[str, str]]:
    """A free company pays starter in one tab and professional in another, `gap` apart, before
    any webhook arrives: (company, the events Stripe sends per subscription, each one's paid
    first invoice)."""
    company_id = uuid.uuid4()
    first = await result(world, company_id, CHECKOUT, tier="STARTER")
    assert first["__typename"] == "CheckoutStarted", first
    second = await other_tab(world, company_id, Tier.PROFESSIONAL)
    events: dict[str, list[dict[str, Any]]] = {}
    invoices: dict[str, str] = {}
    for index, session in enumerate((first["sessionId"], second)):
        if index:
            world.clock.set(world.clock() + gap)
        completed = world.double.complete_checkout(session)
        subscription = completed["data"]["object"]["subscription"]
        invoices[subscription] = pay_first_invoice(world, subscription)
        events[subscription] = [completed]
    for subscription in events:  # both are live in Stripe when the webhooks go out
        events[subscription].append(
            world.double.snapshot_event("customer.subscription.created", subscription)
        )
    return company_id, events, invoices


def older_and_newer(world: StripeWorld, subscriptions: list[str]) -> tuple[str, str]:
    """By creation, then id (Stripe's `created` has one-second resolution)."""
    ordered = sorted(subscriptions, key=lambda s: (world.double.get_object(s)["created"], s))
    return ordered[0], ordered[1]


@pytest.mark.parametrize("gap", [timedelta(seconds=3), timedelta(0)], ids=["3s", "same-second"])
@pytest.mark.parametrize("order", ["older-first", "newer-first"])
async def test_two_tabs_paid_the_newer_is_cancelled_and_refunded(
    world: StripeWorld, gap: timedelta, order: str, caplog: pytest.LogCaptureFixture
) -> None:
    before = await cancelled_count(world)
    company_id, events, invoices = await two_tabs_paid(world, gap)
    older, newer = older_and_newer(world, list(events))
    assert {world.double.get_object(s)["status"] for s in events} == {"active"}
    world.clock.set(world.clock() + timedelta(seconds=30))
    first, then = (older, newer) if order == "older-first" else (newer, older)
    for event in events[first] + events[then]:
        for _ in range(2):  # every delivery duplicated
            response = await world.deliver(event)
            assert response.status_code == 200, response.text

    assert world.double.get_object(older)["status"] == "active"
    cancelled = world.double.get_object(newer)
    assert cancelled["status"] == "canceled"
    assert cancelled["metadata"][DUPLICATE_OF] == older
    assert SETTLED in cancelled["metadata"]
    # What the newer one charged goes back, once; the older one's payment stays.
    assert refunded(world) == [(payment_intent_of(world, invoices[newer]), FIRST_INVOICE_CENTS)]
    company = await company_row(company_id)
    kept_tier = Tier.STARTER if older == next(iter(events)) else Tier.PROFESSIONAL
    assert (company.stripe_subscription_id, company.tier) == (older, kept_tier)
    shown = await limits(world, company_id)
    assert (shown["tier"], shown["subscriptionStatus"]) == (kept_tier.name, "ACTIVE")
    assert (await open_flags(company_id)).get(newer) == Flag.SECOND_LIVE
    assert await cancelled_count(world) == before + 1
    [logged] = [
        r.getMessage()
        for r in caplog.records
        if r.name == "meterline.services.duplicates" and r.levelno == logging.ERROR
    ]
    assert older in logged and newer in logged

    # Later events of either subscription change nothing more, in Meterline or in Stripe.
    for subscription in (newer, older):
        await world.send("customer.subscription.updated", subscription)
    await world.send("customer.subscription.deleted", newer)
    assert calls(world, "DELETE", f"/v1/subscriptions/{newer}") == 1
    assert calls(world, "DELETE", f"/v1/subscriptions/{older}") == 0
    assert len(world.double.refunds()) == 1
    assert (await company_row(company_id)).stripe_subscription_id == older
    assert await cancelled_count(world) == before + 1


async def test_after_the_duplicate_the_usage_is_billed_once_and_matches_the_summary(
    world: StripeWorld,
) -> None:
    company_id, events, _ = await two_tabs_paid(world, timedelta(seconds=2))
    older, newer = older_and_newer(world, list(events))
    for event in events[older] + events[newer]:
        assert (await world.deliver(event)).status_code == 200
    customer = world.double.get_object(older)["customer"]

    world.clock.set(NOV_20 + timedelta(hours=2))
    await record(company_id, EventType.SMS_SENT, 1_300, world.clock())
    await record(company_id, EventType.AI_QUERY, 61, world.clock())
    await world.sync(company_id)
    # One customer, one live subscription: Stripe holds each unit once and bills it once.
    assert world.double.meter_total(customer, "sms_sent") == 1_300
    assert world.double.meter_total(customer, "ai_query") == 61
    client = make_client(world.api.settings, timeout=5.0)
    try:
        with pytest.raises(stripe.InvalidRequestError) as nothing:
            await client.v1.invoices.create_preview_async(
                {"customer": customer, "subscription": newer}
            )
    finally:
        await close_client(client)
    assert nothing.value.code == "invoice_upcoming_none"  # the cancelled one bills nothing more

    world.clock.set(DEC_1 - timedelta(seconds=1))
    summary = await overage(world, company_id, "2026-11")
    assert summary > 0
    invoice = world.double.invoice_for_month(older, int(NOV_1.timestamp()), status="draft")
    assert Decimal(world.double.metered_subtotal(invoice)) / 100 == summary


@pytest.mark.parametrize(
    ("kind", "path"),
    [
        ("500", "/v1/invoices"),
        ("500", "/v1/invoice_payments"),
        ("500", "/v1/refunds"),
        ("drop", "/v1/refunds"),  # Stripe refunded; its answer never came back
    ],
)
async def test_a_stripe_failure_while_cancelling_answers_500_and_the_redelivery_finishes_it(
    world: StripeWorld, kind: Any, path: str
) -> None:
    before = await cancelled_count(world)
    company_id, older = await checked_out(world, Tier.STARTER)
    customer = world.double.get_object(older)["customer"]
    world.clock.set(NOV_20 + timedelta(minutes=5))
    _, newer = world.subscribe(  # in the dashboard
        company_id, Tier.PROFESSIONAL, customer=customer, start=world.clock()
    )
    invoice = pay_first_invoice(world, newer)
    event = world.double.snapshot_event("customer.subscription.created", newer)

    world.double.fail(kind, 1.0, path_prefix=path, times=1)
    failed = await world.deliver(event)
    assert failed.status_code == 500, failed.text
    assert failed.json()["status"] == "failed"
    assert world.double.get_object(newer)["status"] == "canceled"  # cancelled before it failed
    assert (await company_row(company_id)).stripe_subscription_id == older

    world.clock.set(NOV_20 + timedelta(minutes=6))
    again = await world.deliver(event)  # Stripe's next delivery
    assert again.status_code == 200, again.text
    assert again.json()["status"] == "applied"
    assert refunded(world) == [(payment_intent_of(world, invoice), FIRST_INVOICE_CENTS)]
    assert calls(world, "DELETE", f"/v1/subscriptions/{newer}") == 1
    assert SETTLED in world.double.get_object(newer)["metadata"]
    company = await company_row(company_id)
    assert (company.stripe_subscription_id, company.tier) == (older, Tier.STARTER)
    assert (await open_flags(company_id)).get(newer) == Flag.SECOND_LIVE
    assert await cancelled_count(world) == before + 1
    # Once more (a replay): nothing more happens in Stripe.
    await world.send("customer.subscription.deleted", newer)
    assert len(world.double.refunds()) == 1


async def test_a_dashboard_subscription_is_cancelled_and_its_unpaid_invoices_voided(
    world: StripeWorld, database_url: str
) -> None:
    company_id, older = await checked_out(world, Tier.PROFESSIONAL)
    customer = world.double.get_object(older)["customer"]
    world.clock.set(NOV_20 + timedelta(days=1))
    _, newer = world.subscribe(company_id, Tier.ENTERPRISE, customer=customer, start=world.clock())
    unpaid = world.double.add_invoice(
        customer,
        subscription=newer,
        billing_reason="subscription_create",
        currency="usd",
        amount_due=9_900,
        amount_remaining=9_900,
    )
    world.double.finalize_invoice(unpaid)
    draft = world.double.add_invoice(customer, subscription=newer, currency="usd")
    await world.send("customer.subscription.created", newer)

    assert world.double.get_object(newer)["status"] == "canceled"
    assert world.double.get_object(unpaid)["status"] == "void"
    assert world.double.get_object(draft)["status"] == "void"  # finalized, then voided
    assert world.double.refunds() == []  # nothing was paid
    company = await company_row(company_id)
    assert (company.stripe_subscription_id, company.tier) == (older, Tier.PROFESSIONAL)
    assert (await limits(world, company_id))["tier"] == "PROFESSIONAL"
    env = {"DATABASE_URL": database_url}
    shown = meterline("company", "show", str(company_id), env=env, clock=world.clock)
    assert f"FLAG {Flag.SECOND_LIVE} ({newer}" in shown.stdout, shown.stderr
    assert f"voided invoice {unpaid}" in shown.stdout


async def test_an_older_subscription_going_live_late_is_kept_and_the_newer_cancelled(
    world: StripeWorld,
) -> None:
    """The first tab's payment needed authentication (`incomplete`) while the second tab's went
    through: the second became current; once the first is paid, the rule is the same, the
    newer one goes."""
    company_id = uuid.uuid4()
    customer, older = world.subscribe(
        company_id, Tier.STARTER, status="incomplete", start=world.clock()
    )
    await world.send("customer.subscription.created", older)
    world.clock.set(NOV_20 + timedelta(minutes=2))
    _, newer = world.subscribe(
        company_id, Tier.PROFESSIONAL, customer=customer, start=world.clock()
    )
    invoice = pay_first_invoice(world, newer)
    await world.send("customer.subscription.created", newer)
    assert (await company_row(company_id)).stripe_subscription_id == newer  # the only live one

    world.clock.set(NOV_20 + timedelta(minutes=3))
    world.double.update_subscription(older, status="active")
    await world.send("customer.subscription.updated", older)
    assert world.double.get_object(newer)["status"] == "canceled"
    assert refunded(world) == [(payment_intent_of(world, invoice), FIRST_INVOICE_CENTS)]
    company = await company_row(company_id)
    assert (company.stripe_subscription_id, company.tier) == (older, Tier.STARTER)
    assert (await open_flags(company_id)).get(newer) == Flag.SECOND_LIVE


async def test_a_subscription_cancelled_by_its_customer_is_never_refunded(
    world: StripeWorld,
) -> None:
    """Only a subscription Meterline cancelled as a duplicate is settled: an ordinary one that
    ends keeps what it charged."""
    company_id, subscription = await checked_out(world, Tier.STARTER)
    invoice = pay_first_invoice(world, subscription)
    world.clock.set(datetime(2026, 11, 25, tzinfo=UTC))
    world.double.cancel_subscription(subscription)
    await world.send("customer.subscription.deleted", subscription)
    assert world.double.refunds() == []
    assert world.double.get_object(invoice)["status"] == "paid"
    assert (await company_row(company_id)).tier is Tier.FREE


async def test_both_tabs_webhooks_at_once_leave_one_subscription(world: StripeWorld) -> None:
    before = await cancelled_count(world)
    company_id, events, invoices = await two_tabs_paid(world, timedelta(seconds=1))
    older, newer = older_and_newer(world, list(events))
    created = [events[s][1] for s in (newer, older)]
    answers = await asyncio.gather(*(world.deliver(e) for e in created))
    assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
    for event in events[newer][:1] + events[older][:1]:  # then the checkouts' events
        assert (await world.deliver(event)).status_code == 200
    assert world.double.get_object(newer)["status"] == "canceled"
    assert world.double.get_object(older)["status"] == "active"
    assert refunded(world) == [(payment_intent_of(world, invoices[newer]), FIRST_INVOICE_CENTS)]
    assert (await company_row(company_id)).stripe_subscription_id == older
    assert await cancelled_count(world) == before + 1


async def test_a_marked_subscription_that_ended_otherwise_is_never_refunded(
    world: StripeWorld,
) -> None:
    """Marked by a pass whose cancellation then failed; before the next delivery the older one
    ended: the marked one is the company's only live subscription and stays. Ended later by
    its customer, it keeps what it charged: only Meterline's own cancellation is refunded."""
    company_id, older = await checked_out(world, Tier.STARTER)
    customer = world.double.get_object(older)["customer"]
    world.clock.set(NOV_20 + timedelta(minutes=5))
    _, newer = world.subscribe(
        company_id, Tier.PROFESSIONAL, customer=customer, start=world.clock()
    )
    invoice = pay_first_invoice(world, newer)
    world.double.update_subscription(
        newer, metadata={"company_id": str(company_id), DUPLICATE_OF: older}
    )
    world.double.cancel_subscription(older)
    await world.send("customer.subscription.deleted", older)
    await world.send("customer.subscription.created", newer)
    assert world.double.get_object(newer)["status"] == "active"
    company = await company_row(company_id)
    assert (company.stripe_subscription_id, company.tier) == (newer, Tier.PROFESSIONAL)

    world.clock.set(NOV_20 + timedelta(days=3))
    world.double.cancel_subscription(newer)
    await world.send("customer.subscription.deleted", newer)
    assert world.double.refunds() == []
    assert world.double.get_object(invoice)["status"] == "paid"
    assert (await company_row(company_id)).tier is Tier.FREE


async def test_a_duplicate_that_billed_a_past_period_keeps_its_renewals(
    world: StripeWorld,
) -> None:
    """A renewal (`subscription_cycle`) of the cancelled one billed a past period's usage (it
    was the company's for a while): never refunded blindly; only its opening invoice is, and
    the flag tells the operator about the renewal."""
    company_id, events, invoices = await two_tabs_paid(world, timedelta(seconds=3))
    older, newer = older_and_newer(world, list(events))
    renewal = world.double.invoice_for_month(
        newer, int(datetime(2026, 10, 1, tzinfo=UTC).timestamp()), status="paid"
    )
    world.clock.set(world.clock() + timedelta(seconds=30))
    for event in events[older] + events[newer]:
        assert (await world.deliver(event)).status_code == 200
    assert world.double.get_object(newer)["status"] == "canceled"
    assert refunded(world) == [(payment_intent_of(world, invoices[newer]), FIRST_INVOICE_CENTS)]
    assert world.double.get_object(renewal)["status"] == "paid"
    flag = next(f for f in await flags.open_flags(company_id) if f.object_id == newer)
    assert renewal in flag.message and "renewal" in flag.message
