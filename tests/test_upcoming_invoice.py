"""upcomingInvoice: Stripe's invoice preview through the real app, against the Stripe double."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import stripe

from meterline.app import create_app
from meterline.db import companies
from meterline.services import billing
from meterline.stripe_gateway.client import make_client
from meterline.stripe_gateway.invoices import to_major_units
from tests.conftest import Api, Clock, base_settings, client_for
from tests.stripe_double import FailureKind, StripeDouble

NOV_20 = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
NOV_1 = datetime(2026, 11, 1, tzinfo=UTC)
DEC_1 = datetime(2026, 12, 1, tzinfo=UTC)
PREVIEW_PATH = "/v1/invoices/create_preview"
TIMES = "\N{MULTIPLICATION SIGN}"  # as in Stripe's line descriptions, "7 x SMS"

INVOICE_FIELDS = """amountDue { amount currency } periodStart periodEnd
  lines { description quantity amount { amount currency } }"""
QUERY = f"{{ upcomingInvoice {{ {INVOICE_FIELDS} }} }}"


@pytest.fixture
def clock(double: StripeDouble) -> Clock:
    """The app's clock, and the double's: both on 20 November 2026."""
    moment = Clock(fixed=NOV_20)
    double.now = lambda: int(moment().timestamp())
    return moment


@pytest.fixture
async def stripe_api(database_url: str, clock: Clock, double: StripeDouble) -> AsyncIterator[Api]:
    settings = base_settings(
        database_url=database_url,
        stripe_secret_key=double.api_key,
        stripe_api_base=double.url,
    )
    app = create_app(settings, clock=clock, manage_database=False)
    async with client_for(app) as client:
        yield Api(client=client, clock=clock, settings=settings)


def sdk(api: Api) -> stripe.StripeClient:
    return make_client(api.settings, timeout=5.0)


def previews(double: StripeDouble) -> int:
    return sum(1 for method, path in double.requests if (method, path) == ("POST", PREVIEW_PATH))


async def metered_price(
    client: stripe.StripeClient, meter: str, name: str, included: int, cents: Decimal
) -> str:
    """the design's graduated metered price: the first `included` units at 0, then `cents` each."""
    price = await client.v1.prices.create_async(
        {
            "currency": "usd",
            "billing_scheme": "tiered",
            "tiers_mode": "graduated",
            "tiers": [
                {"up_to": included, "unit_amount": 0},
                {"up_to": "inf", "unit_amount_decimal": cents},
            ],
            "recurring": {"interval": "month", "usage_type": "metered", "meter": meter},
            "product_data": {"name": name},
        }
    )
    return price.id


async def report(
    client: stripe.StripeClient, customer: str, event_name: str, value: int, at: datetime
) -> None:
    await client.v1.billing.meter_events.create_async(
        {
            "event_name": event_name,
            "identifier": uuid.uuid4().hex,
            "timestamp": int(at.timestamp()),
            "payload": {"stripe_customer_id": customer, "value": str(value)},
        }
    )


@dataclass(frozen=True)
class Prices:
    """A starter-like plan: $29 a month, SMS beyond 1,000 at 5 cents, AI queries beyond 50 at
    20 cents."""

    base: str
    sms: str
    ai: str


@pytest.fixture
async def prices(stripe_api: Api, double: StripeDouble) -> Prices:
    client = sdk(stripe_api)
    base = await client.v1.prices.create_async(
        {
            "currency": "usd",
            "unit_amount": 2900,
            "recurring": {"interval": "month"},
            "product_data": {"name": "Starter"},
        }
    )
    sms = await metered_price(client, double.add_meter("sms_sent"), "SMS", 1000, Decimal(5))
    ai = await metered_price(client, double.add_meter("ai_query"), "AI queries", 50, Decimal(20))
    return Prices(base=base.id, sms=sms, ai=ai)


async def subscribed_company(api: Api, double: StripeDouble, prices: Prices) -> tuple[str, str]:
    """A company on that plan with 1,007 SMS and 53 AI queries this month in Stripe.
    Returns (customer, subscription)."""
    client = sdk(api)
    customer = double.add_customer()
    subscription = double.add_subscription(customer, [prices.base, prices.sms, prices.ai])
    await report(client, customer, "sms_sent", 1000, NOV_1 + timedelta(days=2))
    await report(client, customer, "sms_sent", 7, NOV_20 - timedelta(hours=1))
    await report(client, customer, "ai_query", 53, NOV_20 - timedelta(hours=2))
    await companies.get_or_create(api.company_id, now=api.clock())
    await companies.set_stripe_ids(
        api.company_id, customer_id=customer, subscription_id=subscription
    )
    return customer, subscription


def money(amount: str) -> dict[str, str]:
    return {"amount": amount, "currency": "usd"}


def only_error(body: dict[str, Any]) -> dict[str, Any]:
    errors = body.get("errors") or []
    assert len(errors) == 1, body
    error: dict[str, Any] = errors[0]
    return error


# --- the preview ------------------------------------------------------------------------------


async def test_preview_of_a_subscription(
    stripe_api: Api, double: StripeDouble, prices: Prices
) -> None:
    await subscribed_company(stripe_api, double, prices)
    invoice = (await stripe_api.data(QUERY))["upcomingInvoice"]
    assert invoice == {
        # 29.00 + 7 x 0.05 + 3 x 0.20
        "amountDue": money("29.95"),
        "periodStart": NOV_1.isoformat(),
        "periodEnd": DEC_1.isoformat(),
        "lines": [
            {"description": f"1 {TIMES} Starter", "quantity": 1, "amount": money("29.00")},
            {"description": f"1007 {TIMES} SMS", "quantity": 1007, "amount": money("0.35")},
            {"description": f"53 {TIMES} AI queries", "quantity": 53, "amount": money("0.60")},
        ],
    }
    assert previews(double) == 1


async def test_preview_matches_what_stripe_computes(
    stripe_api: Api, double: StripeDouble, prices: Prices
) -> None:
    customer, subscription = await subscribed_company(stripe_api, double, prices)
    invoice = (await stripe_api.data(QUERY))["upcomingInvoice"]
    stripe_invoice = await sdk(stripe_api).v1.invoices.create_preview_async(
        {"customer": customer, "subscription": subscription}
    )
    assert Decimal(invoice["amountDue"]["amount"]) * 100 == stripe_invoice.amount_due
    assert (
        invoice["periodStart"]
        == datetime.fromtimestamp(stripe_invoice.period_start, UTC).isoformat()
    )
    assert (
        invoice["periodEnd"] == datetime.fromtimestamp(stripe_invoice.period_end, UTC).isoformat()
    )
    assert [
        (line["description"], line["quantity"], Decimal(line["amount"]["amount"]) * 100)
        for line in invoice["lines"]
    ] == [
        (line.description, line.quantity, Decimal(line.amount))
        for line in stripe_invoice.lines.data
    ]


async def test_super_admin_sees_it_too(
    stripe_api: Api, double: StripeDouble, prices: Prices
) -> None:
    await subscribed_company(stripe_api, double, prices)
    invoice = (await stripe_api.data(QUERY, role="super_admin"))["upcomingInvoice"]
    assert invoice["amountDue"] == money("29.95")


async def test_null_without_a_subscription(stripe_api: Api, double: StripeDouble) -> None:
    body = await stripe_api.gql(QUERY)
    assert body == {"data": {"upcomingInvoice": None}}
    # a customer alone (checkout not finished) is no subscription either
    await companies.set_stripe_ids(stripe_api.company_id, customer_id=double.add_customer())
    body = await stripe_api.gql(QUERY)
    assert body == {"data": {"upcomingInvoice": None}}
    assert previews(double) == 0


async def test_null_when_stripe_has_no_upcoming_invoice(
    stripe_api: Api, double: StripeDouble, prices: Prices
) -> None:
    _, subscription = await subscribed_company(stripe_api, double, prices)
    with double._lock:  # the double has no cancel endpoint: end the subscription in place
        double._objects["subscription"][subscription]["status"] = "canceled"
    body = await stripe_api.gql(QUERY)
    assert body == {"data": {"upcomingInvoice": None}}
    assert previews(double) == 1


# --- Stripe failing -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["500", "429", "drop", "drop_before", "stall"])
async def test_stripe_down_is_an_error_on_that_field_only(
    stripe_api: Api,
    double: StripeDouble,
    prices: Prices,
    kind: FailureKind,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(billing, "PREVIEW_TIME_LIMIT_SECONDS", 0.5)
    await subscribed_company(stripe_api, double, prices)
    double.fail(kind, 1.0, path_prefix="/v1/invoices", stall_seconds=5.0)
    response = await stripe_api.post(
        f"{{ currentUsage {{ eventType used }} upcomingInvoice {{ {INVOICE_FIELDS} }} }}"
    )
    assert response.status_code == 200
    body = response.json()
    assert body["data"]["upcomingInvoice"] is None
    assert len(body["data"]["currentUsage"]) == 5  # the rest of the query still answers
    error = only_error(body)
    assert error["path"] == ["upcomingInvoice"]
    assert error["extensions"]["code"] == "STRIPE_UNAVAILABLE"
    assert "reason" not in error["extensions"]
    assert error["message"] == billing.UNREACHABLE
    assert previews(double) == 1  # no retries of our own within a request

    # a failure is not cached: once Stripe is back, the next query answers
    double.heal()
    invoice = (await stripe_api.data(QUERY))["upcomingInvoice"]
    assert invoice["amountDue"] == money("29.95")


async def test_stripe_refusing_is_request_rejected_not_unavailable(
    stripe_api: Api, double: StripeDouble, prices: Prices
) -> None:
    await subscribed_company(stripe_api, double, prices)
    # a subscription Stripe does not know (deleted there, or another account's)
    await companies.set_stripe_ids(stripe_api.company_id, subscription_id="sub_unknown")
    body = await stripe_api.gql(QUERY)
    assert body["data"] == {"upcomingInvoice": None}
    error = only_error(body)
    assert error["extensions"]["code"] == "STRIPE_REQUEST_REJECTED"
    assert error["message"].startswith(billing.REJECTED + " (HTTP 400, resource_missing")
    assert error["extensions"]["stripe"]["param"] == "subscription"
    assert "sub_unknown" not in error["message"]  # Stripe's words stay in the log


async def test_stripe_not_configured_says_so(api: Api) -> None:
    assert api.settings.stripe_secret_key is None
    body = await api.gql(f"{{ currentUsage {{ used }} upcomingInvoice {{ {INVOICE_FIELDS} }} }}")
    assert body["data"]["upcomingInvoice"] is None
    assert len(body["data"]["currentUsage"]) == 5
    error = only_error(body)
    assert error["extensions"]["code"] == "STRIPE_UNAVAILABLE"
    # A client (the usage portal) tells "not connected" from "not answering" by the reason.
    assert error["extensions"]["reason"] == "STRIPE_NOT_CONFIGURED"
    assert "STRIPE_SECRET_KEY" in error["message"]


# --- who may see it -------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["staff", "service"])
async def test_only_admins_see_it(
    stripe_api: Api, double: StripeDouble, prices: Prices, role: str
) -> None:
    await subscribed_company(stripe_api, double, prices)
    body = await stripe_api.gql(
        f"{{ currentUsage {{ used }} upcomingInvoice {{ {INVOICE_FIELDS} }} }}", role=role
    )
    assert body["data"]["upcomingInvoice"] is None
    assert len(body["data"]["currentUsage"]) == 5  # staff and services may read usage
    assert only_error(body)["extensions"]["code"] == "FORBIDDEN"
    assert previews(double) == 0


async def test_other_roles_are_refused(
    stripe_api: Api, double: StripeDouble, prices: Prices
) -> None:
    await subscribed_company(stripe_api, double, prices)
    body = await stripe_api.gql(QUERY, role="guest")
    assert body["data"] == {"upcomingInvoice": None}
    assert only_error(body)["extensions"]["code"] == "FORBIDDEN"
    assert previews(double) == 0


# --- the cache -----------------------------------------------------------------------------------


async def test_previews_are_cached_for_a_minute_per_company(
    stripe_api: Api, double: StripeDouble, prices: Prices
) -> None:
    await subscribed_company(stripe_api, double, prices)
    first = await stripe_api.data(QUERY)
    stripe_api.clock.set(NOV_20 + timedelta(seconds=59))
    assert await stripe_api.data(QUERY) == first
    assert previews(double) == 1

    other = stripe_api.new_company()  # another company has its own entry
    await subscribed_company(other, double, prices)
    await other.data(QUERY)
    assert previews(double) == 2

    stripe_api.clock.set(NOV_20 + timedelta(seconds=61))
    assert await stripe_api.data(QUERY) == first
    assert previews(double) == 3


async def test_a_new_subscription_is_not_served_from_the_cache(
    stripe_api: Api, double: StripeDouble, prices: Prices
) -> None:
    customer, _ = await subscribed_company(stripe_api, double, prices)
    await stripe_api.data(QUERY)
    base = await sdk(stripe_api).v1.prices.create_async(
        {
            "currency": "usd",
            "unit_amount": 9900,
            "recurring": {"interval": "month"},
            "product_data": {"name": "Professional"},
        }
    )
    subscription = double.add_subscription(customer, [base.id])
    await companies.set_stripe_ids(stripe_api.company_id, subscription_id=subscription)
    invoice = (await stripe_api.data(QUERY))["upcomingInvoice"]
    assert invoice["amountDue"] == money("99.00")
    assert previews(double) == 2


async def test_aliases_share_one_call(
    stripe_api: Api, double: StripeDouble, prices: Prices
) -> None:
    await subscribed_company(stripe_api, double, prices)
    data = await stripe_api.data(
        f"{{ a: upcomingInvoice {{ {INVOICE_FIELDS} }} b: upcomingInvoice {{ {INVOICE_FIELDS} }} }}"
    )
    assert data["a"] == data["b"]
    assert data["a"]["amountDue"] == money("29.95")
    assert previews(double) == 1


# --- units ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("minor", "currency", "major"),
    [
        (1234, "usd", "12.34"),
        (5, "usd", "0.05"),
        (0, "usd", "0.00"),
        (-250, "eur", "-2.50"),
        (1234, "JPY", "1234"),
        (1234, "kwd", "1.234"),
    ],
)
def test_minor_units_become_major_units(minor: int, currency: str, major: str) -> None:
    amount = to_major_units(minor, currency)
    assert amount == Decimal(major)
    assert str(amount) == major


@pytest.mark.parametrize(
    ("status", "headers", "rejected"),
    [
        (400, {}, True),
        (404, {}, True),
        (401, {}, True),  # our key: an operator must fix it
        (429, {}, False),
        (409, {}, False),  # idempotency_key_in_use: a concurrent request with the same key
        (500, {}, False),
        (None, {}, False),  # no answer at all
        (400, {"Stripe-Should-Retry": "true"}, False),  # Stripe's own verdict wins
        (409, {"Stripe-Should-Retry": "false"}, True),
        (503, {"stripe-should-retry": "false"}, False),  # a 5xx is never "rejected"
    ],
)
def test_what_counts_as_a_rejection(
    status: int | None, headers: dict[str, str], rejected: bool
) -> None:
    import stripe

    from meterline.stripe_gateway.client import rejection_of

    error = stripe.InvalidRequestError(
        "refused", "subscription", code="some_code", http_status=status, headers=headers
    )
    found = rejection_of(error)
    assert (found is not None) is rejected
    if found is not None:
        assert (found.status, found.code, found.param) == (status, "some_code", "subscription")
