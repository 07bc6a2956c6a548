"""Invoices mirrored from Stripe's events: paymentHistory, MonthlySummary.invoice, and dunning."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from meterline.billing.catalog import Tier
from meterline.db import invoices
from tests.commands import meterline
from tests.conftest import make_token, service_token
from tests.webhook_support import StripeWorld

OCT_1 = datetime(2026, 10, 1, tzinfo=UTC)
NOV_1 = datetime(2026, 11, 1, tzinfo=UTC)
DEC_1 = datetime(2026, 12, 1, tzinfo=UTC)

HISTORY = """{ paymentHistory { id number status amountDue { amount currency }
  amountPaid { amount } periodStart periodEnd paidAt hostedInvoiceUrl invoicePdf } }"""
LIMITS = "{ usageLimits { billingStatus graceEndsAt gracePeriodDays } }"
RECORD = """mutation { recordUsage(input: {eventType: SMS_SENT}) { __typename
  ... on PaymentRequired { graceEndedAt message } } }"""


async def paid_company(world: StripeWorld, tier: Tier = Tier.STARTER) -> tuple[uuid.UUID, str]:
    company_id = uuid.uuid4()
    _, subscription = world.subscribe(company_id, tier, start=OCT_1)
    await world.send("customer.subscription.created", subscription)
    return company_id, subscription


def admin(company_id: uuid.UUID) -> str:
    return make_token(company_id, "company_admin")


async def history(world: StripeWorld, company_id: uuid.UUID) -> list[dict[str, Any]]:
    data = await world.api.data(HISTORY, token=admin(company_id))
    result: list[dict[str, Any]] = data["paymentHistory"]
    return result


async def limits(world: StripeWorld, company_id: uuid.UUID) -> dict[str, Any]:
    data = await world.api.data(LIMITS, token=admin(company_id))
    result: dict[str, Any] = data["usageLimits"]
    return result


async def record_sms(world: StripeWorld, company_id: uuid.UUID) -> dict[str, Any]:
    data = await world.api.data(RECORD, token=service_token(company_id))
    result: dict[str, Any] = data["recordUsage"]
    return result


def ts(moment: datetime) -> int:
    return int(moment.timestamp())


async def test_invoice_events_fill_the_mirror_and_payment_history(world: StripeWorld) -> None:
    company_id, subscription = await paid_company(world)
    world.clock.set(NOV_1 + timedelta(hours=2))
    october = world.double.invoice_for_month(subscription, ts(OCT_1), status="paid")
    world.clock.set(DEC_1 + timedelta(minutes=5))
    november = world.double.invoice_for_month(subscription, ts(NOV_1))
    for invoice, kind in ((october, "invoice.paid"), (november, "invoice.finalized")):
        await world.send(kind, invoice)
    shown = await history(world, company_id)
    assert [i["id"] for i in shown] == [november, october]  # newest first
    expected = world.double.get_object(october)
    paid = shown[1]
    assert paid["status"] == "paid" and paid["number"] == expected["number"]
    assert paid["amountDue"] == {"amount": "49.00", "currency": "usd"}  # the starter base fee
    assert paid["amountPaid"]["amount"] == "49.00"
    assert paid["paidAt"] is not None and paid["hostedInvoiceUrl"] == expected["hosted_invoice_url"]
    assert paid["invoicePdf"] == expected["invoice_pdf"]
    assert paid["periodStart"].startswith("2026-10-01") and paid["periodEnd"].startswith(
        "2026-11-01"
    )
    assert shown[0]["status"] == "open" and shown[0]["paidAt"] is None
    mirror = await invoices.get(november)
    assert mirror is not None and mirror.usage_month == NOV_1.date()
    assert mirror.subscription_id == subscription and mirror.billing_reason == "subscription_cycle"


async def test_monthly_summary_shows_the_invoice_carrying_that_months_usage(
    world: StripeWorld,
) -> None:
    company_id, subscription = await paid_company(world)
    world.clock.set(NOV_1 + timedelta(hours=2))
    october = world.double.invoice_for_month(subscription, ts(OCT_1), status="paid")
    await world.send("invoice.paid", october)
    query = """{ usageHistory(months: 3) { month invoice { id status } }
      monthlySummary(month: "2026-10") { invoice { id status } } }"""
    data = await world.api.data(query, token=admin(company_id))
    # The invoice issued on 1 November carries October's usage (and November's base fee).
    assert data["monthlySummary"]["invoice"] == {"id": october, "status": "paid"}
    by_month = {m["month"]: m["invoice"] for m in data["usageHistory"]}
    assert by_month["2026-11-01"] is None  # November's invoice is not issued yet


async def test_a_reissued_month_shows_the_invoice_that_is_not_void(world: StripeWorld) -> None:
    company_id, subscription = await paid_company(world)
    world.clock.set(NOV_1 + timedelta(hours=2))
    voided = world.double.invoice_for_month(subscription, ts(OCT_1), status="void")
    reissued = world.double.invoice_for_month(subscription, ts(OCT_1))
    await world.send("invoice.voided", voided)
    await world.send("invoice.finalized", reissued)
    data = await world.api.data(
        '{ monthlySummary(month: "2026-10") { invoice { id } } }', token=admin(company_id)
    )
    assert data["monthlySummary"]["invoice"] == {"id": reissued}


async def test_drafts_are_not_payment_history(world: StripeWorld) -> None:
    company_id, subscription = await paid_company(world)
    world.clock.set(NOV_1 + timedelta(minutes=1))
    draft = world.double.invoice_for_month(subscription, ts(OCT_1), status="draft")
    await world.send("invoice.created", draft)
    assert await history(world, company_id) == []
    world.double.finalize_invoice(draft)
    await world.send("invoice.finalized", draft)
    assert [i["status"] for i in await history(world, company_id)] == ["open"]


@pytest.mark.parametrize("role", ["staff", "service"])
async def test_billing_fields_are_for_admins_only(world: StripeWorld, role: str) -> None:
    company_id, subscription = await paid_company(world)
    world.clock.set(NOV_1 + timedelta(hours=2))
    await world.send(
        "invoice.paid", world.double.invoice_for_month(subscription, ts(OCT_1), status="paid")
    )
    token = service_token(company_id) if role == "service" else make_token(company_id, role)
    body = await world.api.gql("{ paymentHistory { id } }", token=token)
    assert body["data"] is None  # a non-null root field: its error nulls the data
    assert body["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    body = await world.api.gql(
        '{ monthlySummary(month: "2026-10") { month invoice { id } } }', token=token
    )
    assert body["data"]["monthlySummary"] == {"month": "2026-10-01", "invoice": None}
    assert body["errors"][0]["path"] == ["monthlySummary", "invoice"]
    assert body["errors"][0]["extensions"]["code"] == "FORBIDDEN"


async def test_super_admin_sees_payment_history_and_other_companies_see_nothing(
    world: StripeWorld,
) -> None:
    company_id, subscription = await paid_company(world)
    world.clock.set(NOV_1 + timedelta(hours=2))
    invoice = world.double.invoice_for_month(subscription, ts(OCT_1), status="paid")
    await world.send("invoice.paid", invoice)
    data = await world.api.data(
        "{ paymentHistory(limit: 1) { id } }", token=make_token(company_id, "super_admin")
    )
    assert data["paymentHistory"] == [{"id": invoice}]
    assert await history(world, uuid.uuid4()) == []


@pytest.mark.parametrize("limit", [0, -1, 101])
async def test_payment_history_limit_is_checked(world: StripeWorld, limit: int) -> None:
    body = await world.api.gql(
        f"{{ paymentHistory(limit: {limit}) {{ id }} }}", token=admin(uuid.uuid4())
    )
    assert body["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"


# --- dunning ------------------------------------------------------------------------------------


async def fail(world: StripeWorld, invoice: str, at: datetime) -> None:
    world.clock.set(at)
    world.double.fail_invoice_payment(invoice)
    await world.send("invoice.payment_failed", invoice)


async def test_the_dunning_timeline(world: StripeWorld) -> None:
    company_id, subscription = await paid_company(world)
    world.clock.set(NOV_1 + timedelta(hours=1))
    october = world.double.invoice_for_month(subscription, ts(OCT_1))
    await world.send("invoice.finalized", october)
    assert (await limits(world, company_id))["billingStatus"] == "OK"

    first_failure = NOV_1 + timedelta(hours=2)
    await fail(world, october, first_failure)
    grace_end = first_failure + timedelta(days=14)
    shown = await limits(world, company_id)
    assert shown == {
        "billingStatus": "PAST_DUE",
        "graceEndsAt": grace_end.isoformat(),
        "gracePeriodDays": 14,
    }
    assert (await record_sms(world, company_id))["__typename"] == "UsageRecorded"

    # A second failed invoice (a one-off, say) fails later: the grace is not extended.
    world.clock.set(NOV_1 + timedelta(days=5))
    extra = world.double.add_invoice(
        world.double.get_object(subscription)["customer"],
        subscription=subscription,
        status="open",
        amount_due=1500,
        amount_remaining=1500,
        currency="usd",
        billing_reason="manual",
    )
    await fail(world, extra, NOV_1 + timedelta(days=5))
    assert (await limits(world, company_id))["graceEndsAt"] == grace_end.isoformat()
    # A retry of the first invoice failing again changes nothing either.
    await fail(world, october, NOV_1 + timedelta(days=8))
    assert (await limits(world, company_id))["graceEndsAt"] == grace_end.isoformat()

    world.clock.set(grace_end - timedelta(seconds=1))
    assert (await record_sms(world, company_id))["__typename"] == "UsageRecorded"
    world.clock.set(grace_end)
    assert (await limits(world, company_id))["billingStatus"] == "RESTRICTED"
    refused = await record_sms(world, company_id)
    assert refused["__typename"] == "PaymentRequired"
    assert refused["graceEndedAt"] == grace_end.isoformat()
    # Everything else keeps working: it can see its invoices and pay.
    assert len(await history(world, company_id)) == 2

    world.double.pay_invoice(october)
    await world.send("invoice.paid", october)
    # The other invoice is still open with a failed payment, since day 5: past due, with the
    # grace counted from that failure (docs/design.md: the earliest failure of the OPEN invoices).
    shown = await limits(world, company_id)
    assert shown["billingStatus"] == "PAST_DUE"
    assert shown["graceEndsAt"] == (NOV_1 + timedelta(days=5 + 14)).isoformat()
    world.double.void_invoice(extra)
    await world.send("invoice.voided", extra)
    assert (await limits(world, company_id))["billingStatus"] == "OK"
    assert (await record_sms(world, company_id))["__typename"] == "UsageRecorded"


async def test_events_in_any_order_give_the_same_dunning_state(world: StripeWorld) -> None:
    company_id, subscription = await paid_company(world)
    world.clock.set(NOV_1 + timedelta(hours=1))
    invoice = world.double.invoice_for_month(subscription, ts(OCT_1))
    world.clock.set(NOV_1 + timedelta(hours=2))
    world.double.fail_invoice_payment(invoice)
    failed = world.double.snapshot_event("invoice.payment_failed", invoice)
    world.clock.set(NOV_1 + timedelta(days=3))
    world.double.pay_invoice(invoice)
    paid = world.double.snapshot_event("invoice.paid", invoice)
    # The payment's event arrives first, the old failure after it: Stripe says paid.
    for event in (paid, failed):
        assert (await world.deliver(event)).status_code == 200
    assert (await limits(world, company_id))["billingStatus"] == "OK"


async def test_uncollectible_keeps_counting_until_an_operator_clears_it(
    world: StripeWorld, database_url: str
) -> None:
    company_id, subscription = await paid_company(world)
    world.clock.set(NOV_1 + timedelta(hours=1))
    invoice = world.double.invoice_for_month(subscription, ts(OCT_1))
    first_failure = NOV_1 + timedelta(hours=2)
    await fail(world, invoice, first_failure)
    world.clock.set(NOV_1 + timedelta(days=2))
    world.double.mark_uncollectible(invoice)
    await world.send("invoice.marked_uncollectible", invoice)
    # Still unpaid after a failure: past due within the grace, restricted after it, and it
    # stays so (Stripe will not retry an uncollectible invoice; nothing clears it by itself).
    shown = await limits(world, company_id)
    assert shown["billingStatus"] == "PAST_DUE"
    assert shown["graceEndsAt"] == (first_failure + timedelta(days=14)).isoformat()
    cleared_at = first_failure + timedelta(days=30)
    world.clock.set(cleared_at)
    assert (await limits(world, company_id))["billingStatus"] == "RESTRICTED"
    assert (await record_sms(world, company_id))["__typename"] == "PaymentRequired"

    result = meterline(
        "company", "clear-dunning", str(company_id), env=world.cli_env(), clock=world.clock
    )
    assert result.returncode == 0, result.stderr
    assert "status=ok" in result.stdout
    assert (await limits(world, company_id))["billingStatus"] == "OK"
    # A later event of that same invoice does not bring the old facts back ...
    await world.send("invoice.updated", invoice)
    assert (await limits(world, company_id))["billingStatus"] == "OK"
    # ... but a new failure after the clearing (the operator's moment, not the machine's)
    # counts again.
    world.clock.set(cleared_at + timedelta(hours=1))
    november = world.double.invoice_for_month(subscription, ts(NOV_1))
    await fail(world, november, cleared_at + timedelta(hours=2))
    assert (await limits(world, company_id))["billingStatus"] == "PAST_DUE"


async def test_an_uncollectible_invoice_without_a_failure_starts_the_grace(
    world: StripeWorld,
) -> None:
    company_id, subscription = await paid_company(world)
    world.clock.set(NOV_1 + timedelta(hours=1))
    invoice = world.double.invoice_for_month(subscription, ts(OCT_1))
    world.clock.set(NOV_1 + timedelta(days=1))
    world.double.mark_uncollectible(invoice)
    await world.send("invoice.marked_uncollectible", invoice)
    shown = await limits(world, company_id)
    assert shown["billingStatus"] == "PAST_DUE"
    assert shown["graceEndsAt"] == (NOV_1 + timedelta(days=15)).isoformat()
    world.double.pay_invoice(invoice)  # an uncollectible invoice can still be paid
    await world.send("invoice.paid", invoice)
    assert (await limits(world, company_id))["billingStatus"] == "OK"


async def test_an_invoice_before_its_subscription_event_links_the_company(
    world: StripeWorld,
) -> None:
    company_id = uuid.uuid4()
    _, subscription = world.subscribe(company_id, Tier.STARTER, start=OCT_1)
    world.clock.set(NOV_1 + timedelta(hours=1))
    invoice = world.double.invoice_for_month(subscription, ts(OCT_1))
    await world.send("invoice.finalized", invoice)  # no subscription event delivered yet
    assert [i["id"] for i in await history(world, company_id)] == [invoice]
    mirror = await invoices.get(invoice)
    assert mirror is not None and mirror.company_id == company_id


async def test_an_invoice_of_an_unknown_customer_is_flagged_not_applied(
    world: StripeWorld,
) -> None:
    customer = world.double.add_customer()
    invoice = world.double.add_invoice(customer, status="open", currency="usd")
    response = await world.send("invoice.finalized", invoice)
    assert response.json()["status"] == "ignored"
    assert await invoices.get(invoice) is None


async def test_a_canceled_subscription_keeps_the_grace_its_tier_gave(world: StripeWorld) -> None:
    company_id, subscription = await paid_company(world)
    world.clock.set(NOV_1 + timedelta(hours=1))
    invoice = world.double.invoice_for_month(subscription, ts(OCT_1))
    world.double.cancel_subscription(subscription)
    await world.send("customer.subscription.deleted", subscription)
    await fail(world, invoice, NOV_1 + timedelta(hours=2))  # free now: its grace would be 0
    shown = await limits(world, company_id)
    assert shown["billingStatus"] == "PAST_DUE"
    assert shown["graceEndsAt"] == (NOV_1 + timedelta(hours=2, days=14)).isoformat()


async def test_invoices_acknowledged_before_the_link_are_mirrored_when_it_comes(
    world: StripeWorld,
) -> None:
    from tests.test_webhooks_subscriptions import checkout_completed

    company_id = uuid.uuid4()
    customer = world.double.add_customer()
    # A checkout whose subscription carries no company: only the session names it.
    subscription = world.double.add_subscription(customer, world.tier_prices(Tier.STARTER))
    world.clock.set(NOV_1 + timedelta(hours=1))
    invoice = world.double.invoice_for_month(subscription, ts(OCT_1))
    world.double.fail_invoice_payment(invoice)
    early = await world.send("invoice.payment_failed", invoice)
    assert early.json()["status"] == "ignored"  # nobody to link it to yet
    response = await world.deliver(checkout_completed(world, subscription, company_id))
    assert response.json()["status"] == "applied"
    assert [i["id"] for i in await history(world, company_id)] == [invoice]
    # Its failed attempt counts (from the invoice's finalisation: the list says no more).
    assert (await limits(world, company_id))["billingStatus"] == "PAST_DUE"
