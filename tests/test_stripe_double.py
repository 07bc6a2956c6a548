"""The Stripe double, driven by the real stripe SDK (sync and async over httpx)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import stripe
from stripe.events import (
    V1BillingMeterErrorReportTriggeredEvent,
    V1BillingMeterErrorReportTriggeredEventNotification,
    V1BillingMeterNoMeterFoundEventNotification,
)

from tests.stripe_double import StripeDouble, sign_payload

NOW = 1_800_000_000  # 2027-01-15 08:00 UTC
JAN_1 = 1_798_761_600  # 2027-01-01 00:00 UTC
FEB_1 = 1_801_440_000
MAR_1 = 1_803_859_200
DAY = 86_400

Connect = Callable[..., stripe.StripeClient]

# stripe 16.1 hands httpx its form body as `data=str`; httpx 0.28 warns about that on every call.
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")


@pytest.fixture
def double() -> Iterator[StripeDouble]:
    with StripeDouble() as server:
        server.now = lambda: NOW
        yield server


@pytest.fixture
def connect(double: StripeDouble) -> Iterator[Connect]:
    """StripeClients configured like Meterline's (no retries, httpx), closed afterwards."""
    opened: list[stripe.HTTPXClient] = []

    def make(*, timeout: float = 2.0, api_key: str | None = None) -> stripe.StripeClient:
        http = stripe.HTTPXClient(timeout=timeout, allow_sync_methods=True)
        opened.append(http)
        return stripe.StripeClient(
            api_key or double.api_key,
            base_addresses={"api": double.url, "meter_events": double.url},
            max_network_retries=0,
            http_client=http,
        )

    yield make
    for http in opened:
        http.close()


@pytest.fixture
def client(connect: Connect) -> stripe.StripeClient:
    return connect()


def event(customer: str, value: str = "5", **extra: Any) -> dict[str, Any]:
    return {
        "event_name": "sms_sent",
        "payload": {"stripe_customer_id": customer, "value": value},
        "timestamp": NOW - 60,
        **extra,
    }


def wait_for(condition: Callable[[], bool], seconds: float = 3.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


# --- meter events ------------------------------------------------------------------------------


async def test_meter_event_is_accepted_and_totalled(
    double: StripeDouble, client: stripe.StripeClient
) -> None:
    double.add_meter("sms_sent")
    customer = double.add_customer()
    created = await client.v1.billing.meter_events.create_async(
        params=event(customer, "7", identifier="batch-1")
    )
    await client.v1.billing.meter_events.create_async(
        params=event(customer, "5", identifier="batch-2", timestamp=NOW - 3 * DAY)
    )

    assert created.object == "billing.meter_event"
    assert (created.identifier, created.event_name, created.timestamp) == (
        "batch-1",
        "sms_sent",
        NOW - 60,
    )
    assert created.payload.to_dict() == {"stripe_customer_id": customer, "value": "7"}
    assert double.meter_total(customer, "sms_sent") == 12
    assert double.meter_total(customer, "ai_query") == 0
    assert double.meter_events() == [
        {
            "identifier": "batch-1",
            "event_name": "sms_sent",
            "customer": customer,
            "value": 7,
            "timestamp": NOW - 60,
        },
        {
            "identifier": "batch-2",
            "event_name": "sms_sent",
            "customer": customer,
            "value": 5,
            "timestamp": NOW - 3 * DAY,
        },
    ]
    assert double.identifiers_seen == {"batch-1": 1, "batch-2": 1}
    assert double.requests == [("POST", "/v1/billing/meter_events")] * 2


def test_repeat_identifier_is_refused_with_stripes_message(
    double: StripeDouble, client: stripe.StripeClient
) -> None:
    double.add_meter("sms_sent")
    client.v1.billing.meter_events.create(params=event("cus_a", identifier="mlb_1"))
    with pytest.raises(stripe.InvalidRequestError) as refused:
        client.v1.billing.meter_events.create(params=event("cus_a", "9", identifier="mlb_1"))
    assert refused.value.http_status == 400
    assert refused.value.user_message == "An event already exists with identifier mlb_1."
    assert double.meter_total("cus_a", "sms_sent") == 5
    assert double.identifiers_seen["mlb_1"] == 1


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"identifier": "x" * 101}, "identifier"),
        ({"payload": {"stripe_customer_id": "cus_a", "value": "1.5"}}, "payload[value]"),
        ({"payload": {"stripe_customer_id": "cus_a", "value": "ten"}}, "payload[value]"),
        ({"payload": {"stripe_customer_id": "cus_a", "value": "0"}}, "payload[value]"),
        ({"payload": {"value": "3"}}, "payload[stripe_customer_id]"),
        ({"timestamp": NOW - 36 * DAY}, "timestamp"),
        ({"timestamp": NOW + 301}, "timestamp"),
        ({"event_name": "no_such_meter"}, "event_name"),
        ({"quantity": 3}, "quantity"),
    ],
    ids=[
        "identifier-101",
        "decimal-value",
        "text-value",
        "zero-value",
        "no-customer",
        "36-days-old",
        "6-minutes-ahead",
        "unknown-event-name",
        "unknown-param",
    ],
)
def test_invalid_meter_events_are_refused(
    double: StripeDouble, client: stripe.StripeClient, change: dict[str, Any], param: str
) -> None:
    double.add_meter("sms_sent")
    with pytest.raises(stripe.InvalidRequestError) as refused:
        client.v1.billing.meter_events.create(params={**event("cus_a"), **change})
    assert refused.value.http_status == 400
    assert refused.value.param == param
    assert double.meter_events() == []
    assert not double.identifiers_seen


def test_limits_are_inclusive_and_defaults_apply(
    double: StripeDouble, client: stripe.StripeClient
) -> None:
    double.add_meter("sms_sent")
    for extra in (
        {"identifier": "x" * 100},
        {"timestamp": NOW - 35 * DAY},
        {"timestamp": NOW + 300},
    ):
        client.v1.billing.meter_events.create(params={**event("cus_a", "1"), **extra})
    generated = client.v1.billing.meter_events.create(
        params={"event_name": "sms_sent", "payload": {"stripe_customer_id": "cus_a", "value": "1"}}
    )
    assert generated.timestamp == NOW and generated.identifier
    assert double.meter_total("cus_a", "sms_sent") == 4


def test_unknown_customer_is_accepted(double: StripeDouble, client: stripe.StripeClient) -> None:
    double.add_meter("sms_sent")
    client.v1.billing.meter_events.create(params=event("cus_nobody_knows", "3"))
    assert double.meter_total("cus_nobody_knows", "sms_sent") == 3


def test_a_meter_with_other_payload_keys_reads_them(
    double: StripeDouble, client: stripe.StripeClient
) -> None:
    client.v1.billing.meters.create(
        params={
            "display_name": "AI",
            "event_name": "ai_query",
            "default_aggregation": {"formula": "sum"},
            "customer_mapping": {"event_payload_key": "customer", "type": "by_id"},
            "value_settings": {"event_payload_key": "tokens"},
        }
    )
    client.v1.billing.meter_events.create(
        params={"event_name": "ai_query", "payload": {"customer": "cus_a", "tokens": "40"}}
    )
    assert double.meter_total("cus_a", "ai_query") == 40


def test_wrong_or_missing_api_key_is_401(double: StripeDouble, connect: Connect) -> None:
    double.add_meter("sms_sent")
    with pytest.raises(stripe.AuthenticationError) as refused:
        connect(api_key="sk_test_other").v1.billing.meter_events.create(params=event("cus_a"))
    assert refused.value.http_status == 401
    bare = httpx.get(f"{double.url}/v1/billing/meters")
    assert bare.status_code == 401
    assert bare.json()["error"]["type"] == "authentication_error"
    assert double.meter_events() == []


async def test_second_concurrent_call_for_one_customer_and_meter_is_429(
    double: StripeDouble, client: stripe.StripeClient
) -> None:
    double.add_meter("sms_sent")
    double.delay = 0.3
    results = await asyncio.gather(
        client.v1.billing.meter_events.create_async(params=event("cus_a", "2", identifier="a")),
        client.v1.billing.meter_events.create_async(params=event("cus_a", "3", identifier="b")),
        return_exceptions=True,
    )
    refused = [r for r in results if isinstance(r, Exception)]
    assert len(refused) == 1 and isinstance(refused[0], stripe.RateLimitError)
    assert refused[0].http_status == 429
    assert refused[0].json_body["error"]["code"] == "rate_limit"
    assert double.max_concurrent_per_customer_meter == 2
    assert double.meter_total("cus_a", "sms_sent") in (2, 3)
    assert sum(double.identifiers_seen.values()) == 1


async def test_calls_for_different_customers_or_meters_run_concurrently(
    double: StripeDouble, client: stripe.StripeClient
) -> None:
    double.add_meter("sms_sent")
    double.add_meter("ai_query")
    double.delay = 0.3
    started = time.monotonic()
    await asyncio.gather(
        client.v1.billing.meter_events.create_async(params=event("cus_a")),
        client.v1.billing.meter_events.create_async(params=event("cus_b")),
        client.v1.billing.meter_events.create_async(
            params={**event("cus_a"), "event_name": "ai_query"}
        ),
    )
    assert time.monotonic() - started < 0.8  # in parallel, not one after another
    assert double.max_concurrent_per_customer_meter == 1
    assert len(double.meter_events()) == 3


# --- failure injection ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "error", "recorded"),
    [
        ("429", stripe.RateLimitError, False),
        ("500", stripe.APIError, False),
        ("stall", stripe.APIConnectionError, True),
        ("drop", stripe.APIConnectionError, True),
        ("drop_before", stripe.APIConnectionError, False),
    ],
)
async def test_injected_failures(
    double: StripeDouble,
    connect: Connect,
    kind: Any,
    error: type[stripe.StripeError],
    recorded: bool,
) -> None:
    double.add_meter("sms_sent")
    # Only a stall needs the client to give up first; the others fail by themselves, and a
    # short timeout on a loaded machine would give up before the double even read the call.
    client = connect(timeout=0.25 if kind == "stall" else 5.0)
    double.fail(kind, 1.0, stall_seconds=0.5)
    with pytest.raises(error):
        await client.v1.billing.meter_events.create_async(params=event("cus_a", identifier="b1"))
    client.v1.billing.meters.list()  # other paths are not affected
    wait_for(lambda: (double.meter_total("cus_a", "sms_sent") == 5) == recorded)
    if kind == "stall":
        assert double.meter_total("cus_a", "sms_sent") == 5  # processed after the client left

    double.heal()
    if recorded:  # the resend learns it was delivered
        with pytest.raises(stripe.InvalidRequestError, match="already exists"):
            await client.v1.billing.meter_events.create_async(
                params=event("cus_a", identifier="b1")
            )
    else:
        await client.v1.billing.meter_events.create_async(params=event("cus_a", identifier="b1"))
    assert double.meter_total("cus_a", "sms_sent") == 5
    assert double.identifiers_seen == {"b1": 1}


async def test_a_stalled_call_and_its_retry_count_once(
    double: StripeDouble, connect: Connect
) -> None:
    double.add_meter("sms_sent")
    client = connect(timeout=0.15)
    double.fail("stall", 1.0, stall_seconds=0.4)
    with pytest.raises(stripe.APIConnectionError):
        await client.v1.billing.meter_events.create_async(params=event("cus_a", identifier="b1"))
    double.heal()
    await client.v1.billing.meter_events.create_async(params=event("cus_a", identifier="b1"))
    assert double.meter_total("cus_a", "sms_sent") == 5  # the retry landed first
    await asyncio.sleep(0.6)  # the stalled original is processed by now: a duplicate
    assert double.meter_total("cus_a", "sms_sent") == 5
    assert double.identifiers_seen == {"b1": 1}
    assert double.max_concurrent_per_customer_meter == 1  # late work is not the client's


def outcomes(share: float, seed: int, calls: int = 20) -> tuple[list[bool], int]:
    with StripeDouble() as server:
        server.now = lambda: NOW
        server.add_meter("sms_sent")
        server.fail("500", share, seed=seed)
        client = stripe.StripeClient(
            server.api_key,
            base_addresses={"api": server.url, "meter_events": server.url},
            max_network_retries=0,
        )
        failed = []
        for n in range(calls):
            try:
                client.v1.billing.meter_events.create(params=event("cus_a", "1", identifier=f"{n}"))
                failed.append(False)
            except stripe.APIError:
                failed.append(True)
        return failed, server.meter_total("cus_a", "sms_sent")


def test_a_share_of_failures_is_deterministic_for_a_seed() -> None:
    first, total = outcomes(0.3, seed=7)
    again, _ = outcomes(0.3, seed=7)
    other, _ = outcomes(0.3, seed=8)
    assert first == again != other
    assert 0 < sum(first) < len(first)
    assert total == first.count(False)


def test_stop_does_not_wait_for_stalled_requests(connect: Connect, double: StripeDouble) -> None:
    double.add_meter("sms_sent")
    double.fail("stall", 1.0, stall_seconds=30)
    with pytest.raises(stripe.APIConnectionError):
        connect(timeout=0.2).v1.billing.meter_events.create(params=event("cus_a"))
    started = time.monotonic()
    double.stop()
    assert time.monotonic() - started < 2
    assert double.meter_events() == []  # stopped before the stall ended


def test_an_idempotency_key_replays_the_first_answer(
    double: StripeDouble, client: stripe.StripeClient
) -> None:
    double.add_meter("sms_sent")
    first = client.v1.billing.meter_events.create(
        params=event("cus_a", identifier="b1"), options={"idempotency_key": "key-1"}
    )
    again = client.v1.billing.meter_events.create(
        params=event("cus_a", identifier="b1"), options={"idempotency_key": "key-1"}
    )
    assert again.to_dict() == first.to_dict()
    assert double.identifiers_seen == {"b1": 1}
    with pytest.raises(stripe.IdempotencyError):
        client.v1.billing.meter_events.create(
            params=event("cus_a", "6", identifier="b2"), options={"idempotency_key": "key-1"}
        )


# --- meters, products, prices ---------------------------------------------------------------


def meter_params(event_name: str) -> dict[str, Any]:
    return {
        "display_name": event_name.title(),
        "event_name": event_name,
        "default_aggregation": {"formula": "sum"},
        "customer_mapping": {"event_payload_key": "stripe_customer_id", "type": "by_id"},
        "value_settings": {"event_payload_key": "value"},
    }


def test_meters_create_list_retrieve(client: stripe.StripeClient) -> None:
    made = [client.v1.billing.meters.create(params=meter_params(n)) for n in ("a", "b", "c")]
    assert made[0].id.startswith("mtr_")
    assert made[0].status == "active" and made[0].default_aggregation.formula == "sum"
    assert made[0].customer_mapping.event_payload_key == "stripe_customer_id"
    with pytest.raises(stripe.InvalidRequestError) as duplicate:
        client.v1.billing.meters.create(params=meter_params("a"))
    assert duplicate.value.param == "event_name"

    page = client.v1.billing.meters.list(params={"limit": 2})
    assert [m.event_name for m in page.data] == ["c", "b"] and page.has_more
    assert [m.event_name for m in page.auto_paging_iter()] == ["c", "b", "a"]
    assert client.v1.billing.meters.list(params={"status": "inactive"}).data == []
    assert client.v1.billing.meters.retrieve(made[1].id).event_name == "b"
    with pytest.raises(stripe.InvalidRequestError) as missing:
        client.v1.billing.meters.retrieve("mtr_missing")
    assert (missing.value.http_status, missing.value.code) == (404, "resource_missing")


def test_products_create_retrieve_list(client: stripe.StripeClient) -> None:
    pro = client.v1.products.create(params={"name": "Pro", "metadata": {"tier": "pro"}})
    starter = client.v1.products.create(params={"name": "Starter"})
    assert pro.id.startswith("prod_") and pro.metadata.to_dict() == {"tier": "pro"}
    assert client.v1.products.retrieve(pro.id).name == "Pro"
    listed = client.v1.products.list(params={"ids": [starter.id]})
    assert [p.id for p in listed.data] == [starter.id]
    assert len(client.v1.products.list().data) == 2


def graduated(
    product: str, meter: str, included: int, overage: str, **extra: Any
) -> dict[str, Any]:
    return {
        "product": product,
        "currency": "usd",
        "billing_scheme": "tiered",
        "tiers_mode": "graduated",
        "tiers": [
            {"up_to": included, "unit_amount_decimal": "0"},
            {"up_to": "inf", "unit_amount_decimal": overage},
        ],
        "recurring": {"interval": "month", "usage_type": "metered", "meter": meter},
        **extra,
    }


def test_prices_lookup_keys_and_transfer(client: stripe.StripeClient) -> None:
    product = client.v1.products.create(params={"name": "Pro"}).id
    old = client.v1.prices.create(
        params={
            "product": product,
            "currency": "usd",
            "unit_amount": 4900,
            "recurring": {"interval": "month"},
            "lookup_key": "tier_pro",
            "metadata": {"tier": "pro"},
        }
    )
    assert old.id.startswith("price_")
    assert (old.type, old.recurring.usage_type, old.unit_amount_decimal) == (
        "recurring",
        "licensed",
        4900,
    )
    new_params = {
        "product": product,
        "currency": "usd",
        "unit_amount": 5900,
        "recurring": {"interval": "month"},
        "lookup_key": "tier_pro",
    }
    with pytest.raises(stripe.InvalidRequestError) as taken:
        client.v1.prices.create(params=new_params)
    assert taken.value.param == "lookup_key"
    assert len(client.v1.prices.list().data) == 1  # the refused price was not kept

    new = client.v1.prices.create(params={**new_params, "transfer_lookup_key": True})
    assert client.v1.prices.retrieve(old.id).lookup_key is None
    by_key = client.v1.prices.list(params={"lookup_keys": ["tier_pro", "tier_none"]})
    assert [p.id for p in by_key.data] == [new.id]

    client.v1.prices.update(old.id, params={"active": False, "metadata": {"note": "replaced"}})
    inactive = client.v1.prices.list(params={"active": False}).data
    assert [p.id for p in inactive] == [old.id]
    assert inactive[0].metadata.to_dict() == {"tier": "pro", "note": "replaced"}
    moved = client.v1.prices.update(
        old.id, params={"lookup_key": "tier_pro", "transfer_lookup_key": True}
    )
    assert moved.lookup_key == "tier_pro"
    assert client.v1.prices.retrieve(new.id).lookup_key is None
    assert [p.id for p in client.v1.prices.list(params={"product": product, "limit": 1})] == [
        new.id
    ]


def test_graduated_metered_prices_and_their_tiers(
    double: StripeDouble, client: stripe.StripeClient
) -> None:
    meter = double.add_meter("sms_sent")
    product = client.v1.products.create(params={"name": "SMS"}).id
    price = client.v1.prices.create(
        params=graduated(product, meter, 1000, "5", lookup_key="meter_pro_sms")
    )
    assert (price.billing_scheme, price.tiers_mode, price.recurring.meter) == (
        "tiered",
        "graduated",
        meter,
    )
    assert "tiers" not in price.to_dict()  # like Stripe: tiers only when expanded
    expanded = client.v1.prices.retrieve(price.id, params={"expand": ["tiers"]})
    assert [(t.up_to, t.unit_amount_decimal) for t in expanded.tiers] == [
        (1000, 0),
        (None, 5),
    ]
    listed = client.v1.prices.list(
        params={"lookup_keys": ["meter_pro_sms"], "expand": ["data.tiers"]}
    )
    assert listed.data[0].tiers[1].unit_amount == 5
    metered = client.v1.prices.list(params={"recurring": {"usage_type": "metered"}}).data
    assert [p.id for p in metered] == [price.id]

    for broken, param in (
        ({"recurring": {"interval": "month", "usage_type": "metered"}}, "recurring[meter]"),
        ({"tiers_mode": None}, "tiers_mode"),
        ({"tiers": [{"up_to": 10, "unit_amount": 1}]}, "tiers[0][up_to]"),
        ({"product": "prod_missing"}, "product"),
    ):
        with pytest.raises(stripe.InvalidRequestError) as refused:
            client.v1.prices.create(params={**graduated(product, meter, 1000, "5"), **broken})
        assert refused.value.param == param


# --- webhooks -----------------------------------------------------------------------------------


def test_webhook_endpoints_show_their_secret_on_create_only(
    double: StripeDouble, client: stripe.StripeClient
) -> None:
    endpoint = client.v1.webhook_endpoints.create(
        params={
            "url": "https://meterline.example/webhooks/stripe",
            "enabled_events": ["invoice.paid", "customer.subscription.updated"],
            "api_version": stripe.api_version,
        }
    )
    assert endpoint.id.startswith("we_") and endpoint.secret.startswith("whsec_")
    assert endpoint.api_version == stripe.api_version
    listed = client.v1.webhook_endpoints.list().data
    assert [e.url for e in listed] == ["https://meterline.example/webhooks/stripe"]
    assert "secret" not in listed[0].to_dict()
    assert double.signing_secrets[endpoint.url] == endpoint.secret


def test_v2_event_destinations(double: StripeDouble, client: stripe.StripeClient) -> None:
    params: dict[str, Any] = {
        "name": "meterline-thin",
        "type": "webhook_endpoint",
        "event_payload": "thin",
        "enabled_events": ["v1.billing.meter.error_report_triggered"],
        "webhook_endpoint": {"url": "https://meterline.example/webhooks/stripe/thin"},
    }
    plain = client.v2.core.event_destinations.create(params=params)
    assert plain.webhook_endpoint.signing_secret is None
    shown = client.v2.core.event_destinations.create(
        params={**params, "include": ["webhook_endpoint.signing_secret"]}
    )
    assert shown.webhook_endpoint.signing_secret.startswith("whsec_")
    assert shown.object == "v2.core.event_destination" and shown.event_payload == "thin"

    listed = client.v2.core.event_destinations.list(params={"limit": 1})
    assert listed.data[0].id == shown.id and listed.next_page_url is not None
    assert listed.data[0].webhook_endpoint.url is None  # redacted unless included
    with_urls = client.v2.core.event_destinations.list(
        params={"limit": 1, "include": ["webhook_endpoint.url"]}
    )
    everything = list(with_urls.auto_paging_iter())
    assert [d.id for d in everything] == [shown.id, plain.id]
    assert {d.webhook_endpoint.url for d in everything} == {params["webhook_endpoint"]["url"]}
    assert client.v2.core.event_destinations.retrieve(plain.id).name == "meterline-thin"


# --- customers, subscriptions, invoices ---------------------------------------------------------


def test_customer_and_subscription(double: StripeDouble, client: stripe.StripeClient) -> None:
    meter = double.add_meter("sms_sent")
    product = client.v1.products.create(params={"name": "Pro"}).id
    base = client.v1.prices.create(
        params={
            "product": product,
            "currency": "usd",
            "unit_amount": 4900,
            "recurring": {"interval": "month"},
            "lookup_key": "tier_pro",
        }
    )
    sms = client.v1.prices.create(
        params=graduated(product, meter, 1000, "5", lookup_key="meter_pro_sms")
    )
    customer = double.add_customer()
    assert customer.startswith("cus_") and double.add_customer("cus_fixed") == "cus_fixed"
    subscription = double.add_subscription(
        customer, [base.id, sms.id], metadata={"company_id": "c-1"}
    )

    assert client.v1.customers.retrieve(customer).id == customer
    sub = client.v1.subscriptions.retrieve(subscription)
    assert (sub.customer, sub.status, sub.metadata.to_dict()) == (
        customer,
        "active",
        {"company_id": "c-1"},
    )
    items = sub["items"].data
    assert [(i.price.lookup_key, i.price.recurring.meter) for i in items] == [
        ("tier_pro", None),
        ("meter_pro_sms", meter),
    ]
    assert {(i.current_period_start, i.current_period_end) for i in items} == {(JAN_1, FEB_1)}
    with pytest.raises(stripe.InvalidRequestError) as missing:
        client.v1.subscriptions.retrieve("sub_missing")
    assert missing.value.http_status == 404


def test_invoices_list_and_filters(double: StripeDouble, client: stripe.StripeClient) -> None:
    assert client.v1.invoices.list(params={"customer": "cus_a"}).data == []
    double.add_customer("cus_a")
    first = double.add_invoice("cus_a", subscription="sub_1", status="paid", amount_due=100)
    second = double.add_invoice("cus_a", status="open")
    double.add_invoice("cus_b")
    assert [i.id for i in client.v1.invoices.list(params={"customer": "cus_a"})] == [
        second,
        first,
    ]
    by_sub = client.v1.invoices.list(params={"subscription": "sub_1"}).data
    assert [(i.id, i.amount_due, i.status) for i in by_sub] == [(first, 100, "paid")]
    assert by_sub[0].parent.subscription_details.subscription == "sub_1"
    assert client.v1.invoices.retrieve(second).status == "open"


async def test_create_preview_prices_graduated_lines_exactly(
    double: StripeDouble, client: stripe.StripeClient
) -> None:
    sms_meter = double.add_meter("sms_sent")
    ai_meter = double.add_meter("ai_query")
    product = (await client.v1.products.create_async(params={"name": "Pro"})).id
    base = await client.v1.prices.create_async(
        params={
            "product": product,
            "currency": "usd",
            "unit_amount": 4900,
            "recurring": {"interval": "month"},
        }
    )
    sms = await client.v1.prices.create_async(params=graduated(product, sms_meter, 1000, "5"))
    ai = await client.v1.prices.create_async(params=graduated(product, ai_meter, 10, "0.5"))
    customer = double.add_customer()
    subscription = double.add_subscription(customer, [base.id, sms.id, ai.id])
    for params in (
        event(customer, "1000", identifier="s1", timestamp=JAN_1),
        event(customer, "7", identifier="s2"),
        event(customer, "500", identifier="s3", timestamp=JAN_1 - 1),  # December: not billed
        {**event(customer, "17", identifier="a1"), "event_name": "ai_query"},
    ):
        await client.v1.billing.meter_events.create_async(params=params)

    preview = await client.v1.invoices.create_preview_async(
        params={"customer": customer, "subscription": subscription}
    )
    lines = [
        (line.pricing.price_details.price, line.quantity, line.amount, line.period.start)
        for line in preview.lines.data
    ]
    assert lines == [
        (base.id, 1, 4900, FEB_1),  # licensed: the coming month, in advance
        (sms.id, 1007, 35, JAN_1),  # 1000 free, 7 at 5 cents
        (ai.id, 17, 4, JAN_1),  # 7 at 0.5 cents = 3.5, rounded half-up
    ]
    assert preview.lines.data[0].period.end == MAR_1
    assert all(line.description for line in preview.lines.data)
    assert (preview.amount_due, preview.subtotal, preview.total) == (4939, 4939, 4939)
    assert (preview.period_start, preview.period_end) == (JAN_1, FEB_1)
    assert preview.parent.subscription_details.subscription == subscription

    with pytest.raises(stripe.InvalidRequestError) as missing:
        await client.v1.invoices.create_preview_async(
            params={"customer": customer, "subscription": "sub_missing"}
        )
    assert (missing.value.code, missing.value.param) == ("resource_missing", "subscription")
    lonely = double.add_customer()
    with pytest.raises(stripe.InvalidRequestError) as nothing:
        await client.v1.invoices.create_preview_async(params={"customer": lonely})
    assert nothing.value.code == "invoice_upcoming_none"


def test_unknown_routes_are_404(double: StripeDouble, client: stripe.StripeClient) -> None:
    response = httpx.get(
        f"{double.url}/v1/charges", headers={"Authorization": f"Bearer {double.api_key}"}
    )
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "resource_missing"
    with pytest.raises(stripe.InvalidRequestError) as missing:
        client.v1.coupons.retrieve("co_1")
    assert missing.value.http_status == 404
    assert ("GET", "/v1/coupons/co_1") in double.requests


# --- subscriptions for webhooks -----------------------------------------------------------------


def base_and_sms(client: stripe.StripeClient, double: StripeDouble) -> tuple[str, str]:
    """A $49 monthly base price and a graduated SMS price (1000 free, then 5 cents)."""
    meter = double.add_meter("sms_sent")
    product = client.v1.products.create(params={"name": "Pro"}).id
    base = client.v1.prices.create(
        params={
            "product": product,
            "currency": "usd",
            "unit_amount": 4900,
            "recurring": {"interval": "month"},
            "lookup_key": "tier_pro",
        }
    ).id
    sms = client.v1.prices.create(
        params=graduated(product, meter, 1000, "5", lookup_key="meter_pro_sms_sent")
    ).id
    return base, sms


async def test_subscriptions_list_filters_by_status_and_customer_and_pages(
    double: StripeDouble, client: stripe.StripeClient
) -> None:
    base, sms = base_and_sms(client, double)
    active = double.add_subscription("cus_a", [base, sms])
    past_due = double.add_subscription("cus_a", [base], status="past_due")
    canceled = double.add_subscription("cus_b", [base])
    double.cancel_subscription(canceled)
    expired = double.add_subscription("cus_b", [base], status="incomplete_expired")
    paused = double.add_subscription("cus_b", [base])
    double.update_subscription(paused, status="paused")

    async def ids(**params: Any) -> list[str]:
        listed = await client.v1.subscriptions.list_async(params=params)  # type: ignore[arg-type]
        return [s.id async for s in listed.auto_paging_iter()]

    assert await ids() == [paused, past_due, active]  # newest first, ended ones left out
    assert await ids(status="all") == [paused, expired, canceled, past_due, active]
    assert await ids(status="ended") == [expired, canceled]
    assert await ids(status="canceled") == [canceled]
    assert await ids(status="past_due", customer="cus_a") == [past_due]
    assert await ids(customer="cus_b", status="all", limit=1) == [paused, expired, canceled]
    assert await ids(price=sms) == [active]
    assert await ids(created={"gte": NOW + 1}) == []

    page = await client.v1.subscriptions.list_async(params={"status": "all", "limit": 2})
    assert [s.id for s in page.data] == [paused, expired] and page.has_more
    rest = await client.v1.subscriptions.list_async(
        params={"status": "all", "limit": 100, "starting_after": expired}
    )
    assert [s.id for s in rest.data] == [canceled, past_due, active] and not rest.has_more
    assert rest.data[0].canceled_at == NOW == rest.data[0].ended_at
    assert rest.data[2]["items"].data[1].price.lookup_key == "meter_pro_sms_sent"
    with pytest.raises(stripe.InvalidRequestError) as refused:
        await client.v1.subscriptions.list_async(params={"status": "gone"})
    assert refused.value.param == "status"


def test_subscription_started_mid_month_has_a_prorated_first_period(
    double: StripeDouble, client: stripe.StripeClient
) -> None:
    base, sms = base_and_sms(client, double)
    start = JAN_1 + 9 * DAY + 3600  # 10 January, 01:00
    sub_id = double.add_subscription("cus_a", [base, sms], start=start, status="trialing")
    sub = client.v1.subscriptions.retrieve(sub_id)
    assert (sub.created, sub.start_date, sub.billing_cycle_anchor, sub.status) == (
        start,
        start,
        FEB_1,
        "trialing",
    )
    items = sub["items"].data
    assert {(i.current_period_start, i.current_period_end) for i in items} == {(start, FEB_1)}
    assert [i.quantity for i in items] == [1, None]  # metered items have no quantity

    updated = double.update_subscription(
        sub_id, status="past_due", cancel_at_period_end=True, metadata={"company_id": "c-1"}
    )
    assert updated["status"] == "past_due" and updated["items"]["data"][0]["price"]["id"] == base
    again = client.v1.subscriptions.retrieve(sub_id)
    assert (again.status, again.cancel_at_period_end, again.metadata.to_dict()) == (
        "past_due",
        True,
        {"company_id": "c-1"},
    )

    double.set_subscription_prices(sub_id, [sms])
    swapped = client.v1.subscriptions.retrieve(sub_id)["items"]
    assert [i.price.id for i in swapped.data] == [sms] and swapped.total_count == 1
    assert swapped.data[0].current_period_start == start  # the period is kept
    assert swapped.data[0].subscription == sub_id

    with pytest.raises(ValueError, match="either period or start"):
        double.add_subscription("cus_a", [base], start=start, period=(JAN_1, FEB_1))
    month = double.add_subscription("cus_a", [base], period=(FEB_1, MAR_1))
    assert client.v1.subscriptions.retrieve(month).billing_cycle_anchor == FEB_1


# --- invoices for webhooks ----------------------------------------------------------------------


async def test_invoice_for_month_bills_the_months_meter_events_and_next_months_base(
    double: StripeDouble, client: stripe.StripeClient
) -> None:
    base, sms = base_and_sms(client, double)
    sub_id = double.add_subscription("cus_a", [base, sms], metadata={"company_id": "c-1"})
    for params in (
        event("cus_a", "1000", identifier="s1", timestamp=JAN_1),
        event("cus_a", "7", identifier="s2"),
        event("cus_a", "500", identifier="s3", timestamp=JAN_1 - 1),  # December
        event("cus_b", "900", identifier="s4"),  # another customer
    ):
        await client.v1.billing.meter_events.create_async(params=params)

    invoice_id = double.invoice_for_month(sub_id, JAN_1)
    invoice = await client.v1.invoices.retrieve_async(
        invoice_id, params={"expand": ["lines.data.pricing.price_details.price"]}
    )
    lines = [
        (
            line.pricing.price_details.price.lookup_key,
            line.quantity,
            line.amount,
            line.period.start,
            line.period.end,
        )
        for line in invoice.lines.data
    ]
    assert lines == [
        ("tier_pro", 1, 4900, FEB_1, MAR_1),  # the base fee of the coming month
        ("meter_pro_sms_sent", 1007, 35, JAN_1, FEB_1),  # 7 beyond the 1000 included
    ]
    assert invoice.lines.has_more is False
    assert all(line.id.startswith("il_") and line.invoice == invoice_id for line in invoice.lines)
    assert (invoice.amount_due, invoice.amount_remaining, invoice.subtotal, invoice.total) == (
        4935,
        4935,
        4935,
        4935,
    )
    assert (invoice.status, invoice.billing_reason, invoice.currency) == (
        "open",
        "subscription_cycle",
        "usd",
    )
    assert (invoice.period_start, invoice.period_end, invoice.created) == (JAN_1, FEB_1, FEB_1)
    assert invoice.status_transitions.finalized_at == FEB_1
    assert invoice.number == "MLD-0001"
    assert invoice_id in invoice.hosted_invoice_url and invoice_id in invoice.invoice_pdf
    assert invoice.hosted_invoice_url.startswith("https://")
    details = invoice.parent.subscription_details
    assert (details.subscription, details.metadata.to_dict()) == (sub_id, {"company_id": "c-1"})
    assert (await client.v1.subscriptions.retrieve_async(sub_id)).latest_invoice == invoice_id

    # the same amounts as the preview of that period
    preview = await client.v1.invoices.create_preview_async(params={"subscription": sub_id})
    assert [line.amount for line in preview.lines.data] == [4900, 35]

    unexpanded = await client.v1.invoices.retrieve_async(invoice_id)
    assert unexpanded.lines.data[0].pricing.price_details.price == base

    paid = double.invoice_for_month(sub_id, FEB_1, status="paid")
    draft = double.invoice_for_month(sub_id, MAR_1, status="draft", metadata={"k": "v"})
    listed = await client.v1.invoices.list_async(
        params={
            "subscription": sub_id,
            "limit": 100,
            "expand": ["data.lines.data.pricing.price_details.price"],
        }
    )
    assert [i.id for i in listed.data] == [draft, paid, invoice_id]
    assert listed.data[1].lines.data[0].pricing.price_details.price.id == base
    assert (listed.data[1].number, listed.data[1].status, listed.data[1].amount_paid) == (
        "MLD-0002",
        "paid",
        4900,  # no usage in February
    )
    assert listed.data[1].status_transitions.paid_at == MAR_1 + 3600
    assert (listed.data[0].number, listed.data[0].hosted_invoice_url) == (None, None)
    assert listed.data[0].status_transitions.finalized_at is None
    assert listed.data[0].metadata.to_dict() == {"k": "v"}
    by_created = await client.v1.invoices.list_async(params={"created": {"gte": MAR_1}})
    assert [i.id for i in by_created.data] == [draft, paid]


async def test_invoice_lines_page_beyond_the_embedded_ones(
    double: StripeDouble, client: stripe.StripeClient
) -> None:
    base, sms = base_and_sms(client, double)
    product = (await client.v1.products.create_async(params={"name": "AI"})).id
    ai = await client.v1.prices.create_async(
        params=graduated(product, double.add_meter("ai_query"), 10, "0.5")
    )
    sub_id = double.add_subscription("cus_a", [base, sms, ai.id])
    await client.v1.billing.meter_events.create_async(
        params={**event("cus_a", "17", identifier="a1"), "event_name": "ai_query"}
    )
    double.embedded_invoice_lines = 2
    invoice_id = double.invoice_for_month(sub_id, JAN_1)

    invoice = await client.v1.invoices.retrieve_async(invoice_id)
    assert len(invoice.lines.data) == 2 and invoice.lines.has_more
    assert invoice.total == 4900 + 0 + 4
    page = await client.v1.invoices.line_items.list_async(
        invoice_id, params={"limit": 2, "expand": ["data.pricing.price_details.price"]}
    )
    assert [line.pricing.price_details.price.id for line in page.data] == [base, sms]
    assert page.has_more and page.url == f"/v1/invoices/{invoice_id}/lines"
    rest = await client.v1.invoices.line_items.list_async(
        invoice_id, params={"limit": 100, "starting_after": page.data[-1].id}
    )
    assert [(line.pricing.price_details.price, line.quantity) for line in rest.data] == [
        (ai.id, 17)
    ]
    everything = [line.id async for line in page.auto_paging_iter()]
    assert everything == [line.id for line in [*page.data, *rest.data]]
    with pytest.raises(stripe.InvalidRequestError) as missing:
        await client.v1.invoices.line_items.list_async("in_missing")
    assert missing.value.http_status == 404


def test_invoice_payment_helpers(double: StripeDouble, client: stripe.StripeClient) -> None:
    base, _ = base_and_sms(client, double)
    sub_id = double.add_subscription("cus_a", [base])
    failing, voided, written_off = (double.invoice_for_month(sub_id, JAN_1) for _ in range(3))

    double.fail_invoice_payment(failing)
    failed = client.v1.invoices.retrieve(failing)
    assert (failed.status, failed.attempted, failed.attempt_count) == ("open", True, 1)
    assert failed.next_payment_attempt == NOW + 3 * DAY
    double.fail_invoice_payment(failing)
    paid = double.pay_invoice(failing)
    assert paid["attempt_count"] == 3
    got = client.v1.invoices.retrieve(failing)
    assert (got.status, got.amount_paid, got.amount_remaining, got.amount_due) == (
        "paid",
        4900,
        0,
        4900,
    )
    assert got.status_transitions.paid_at == NOW and got.next_payment_attempt is None

    double.void_invoice(voided)
    got = client.v1.invoices.retrieve(voided)
    assert (got.status, got.status_transitions.voided_at) == ("void", NOW)

    double.mark_uncollectible(written_off)
    got = client.v1.invoices.retrieve(written_off)
    assert (got.status, got.status_transitions.marked_uncollectible_at) == ("uncollectible", NOW)
    assert double.pay_invoice(written_off)["status"] == "paid"  # paid late, as Stripe allows

    for refused in (double.void_invoice, double.fail_invoice_payment, double.mark_uncollectible):
        with pytest.raises(ValueError, match="it is paid"):
            refused(failing)
    draft = double.invoice_for_month(sub_id, FEB_1, status="draft")
    with pytest.raises(ValueError, match="it is draft"):
        double.void_invoice(draft)
    finalized = double.finalize_invoice(draft)
    assert (finalized["status"], finalized["status_transitions"]["finalized_at"]) == ("open", NOW)
    assert finalized["number"] == "MLD-0004"
    updated = double.update_invoice(draft, status="draft", amount_due=1)
    assert (updated["status"], client.v1.invoices.retrieve(draft).amount_due) == ("draft", 1)


# --- events and signatures ----------------------------------------------------------------------

SECRET = "whsec_test_secret"


async def test_thin_meter_error_event_round_trip(
    double: StripeDouble, client: stripe.StripeClient
) -> None:
    meter = double.add_meter("sms_sent")
    data = double.meter_error_data(
        [
            ("meter_event_customer_not_found", "No customer cus_x.", "mlb_1"),
            ("meter_event_customer_not_found", "No customer cus_y.", "mlb_2"),
            ("timestamp_too_far_in_past", "Too old.", "mlb_3"),
        ]
    )
    event_id = double.add_thin_event(
        "v1.billing.meter.error_report_triggered",
        related_object={"id": meter, "type": "billing.meter", "url": f"/v1/billing/meters/{meter}"},
        data=data,
    )
    notification_body = double.thin_notification(event_id)
    assert "data" not in notification_body
    assert notification_body["created"] == "2027-01-15T08:00:00.000Z"
    payload = json.dumps(notification_body)
    header = sign_payload(payload.encode(), SECRET)
    assert stripe.WebhookSignature.verify_header(payload, header, SECRET, 300)

    notification = client.parse_event_notification(payload, header, SECRET)
    assert isinstance(notification, V1BillingMeterErrorReportTriggeredEventNotification)
    assert (notification.id, notification.related_object.id) == (event_id, meter)
    unverified = client.parse_event_notification_without_verification(payload)
    assert isinstance(unverified, V1BillingMeterErrorReportTriggeredEventNotification)

    fetched = await notification.fetch_event_async()
    assert isinstance(fetched, V1BillingMeterErrorReportTriggeredEvent)
    reason = fetched.data.reason
    assert reason.error_count == 3
    assert [(t.code, t.error_count) for t in reason.error_types] == [
        ("meter_event_customer_not_found", 2),
        ("timestamp_too_far_in_past", 1),
    ]
    assert reason.error_types[0].sample_errors[0].request.identifier == "mlb_1"
    assert reason.error_types[0].sample_errors[1].error_message == "No customer cus_y."
    assert fetched.data.developer_message_summary == "There are 3 invalid events"
    assert fetched.data.validation_end == "2027-01-15T08:00:00.000Z"
    again = await client.v2.core.events.retrieve_async(event_id)  # no leaked `usage` query
    assert isinstance(again, V1BillingMeterErrorReportTriggeredEvent)
    assert again.data.reason.error_count == 3
    assert notification.fetch_related_object().event_name == "sms_sent"
    # stripe 16.1's async raw request sends its `usage` telemetry as a query parameter, which a
    # v1 GET refuses like any unknown parameter
    with pytest.raises(stripe.InvalidRequestError, match="unknown parameter: usage"):
        await notification.fetch_related_object_async()
    assert ("GET", f"/v2/core/events/{event_id}") in double.requests

    no_meter = double.add_thin_event(
        "v1.billing.meter.no_meter_found",
        related_object=None,
        data=double.meter_error_data([("no_meter", "No meter for ai_query.", "mlb_9")]),
    )
    parsed = client.parse_event_notification_without_verification(
        json.dumps(double.thin_notification(no_meter))
    )
    assert isinstance(parsed, V1BillingMeterNoMeterFoundEventNotification)
    found = await parsed.fetch_event_async()
    assert found.data.reason.error_types[0].sample_errors[0].request.identifier == "mlb_9"
    assert found.data.developer_message_summary == "There is 1 invalid event"

    with pytest.raises(stripe.InvalidRequestError) as missing:
        await client.v2.core.events.retrieve_async("evt_test_missing")
    assert (missing.value.http_status, missing.value.code) == (404, "not_found")
    with pytest.raises(stripe.InvalidRequestError) as no_destination:
        await client.v2.core.event_destinations.retrieve_async("ed_missing")
    assert (no_destination.value.http_status, no_destination.value.code) == (404, "not_found")


def test_snapshot_event_is_signed_and_served(
    double: StripeDouble, client: stripe.StripeClient
) -> None:
    base, sms = base_and_sms(client, double)
    sub_id = double.add_subscription("cus_a", [base, sms])
    invoice_id = double.invoice_for_month(sub_id, JAN_1)
    double.pay_invoice(invoice_id)

    body = double.snapshot_event("invoice.paid", invoice_id, previous_attributes={"status": "open"})
    payload = json.dumps(body)
    header = sign_payload(payload, SECRET, schemes=("v1",))
    event = stripe.Webhook.construct_event(payload, header, SECRET)
    assert event.id.startswith("evt_") and event.type == "invoice.paid"
    assert (event.object, event.api_version, event.livemode) == (
        "event",
        stripe.api_version,
        False,
    )
    assert (event.created, event.pending_webhooks) == (NOW, 1)
    assert event.request.to_dict() == {"id": None, "idempotency_key": None}
    assert event.data.object.to_dict(for_json=True) == double.get_object(invoice_id)
    assert event.data.object.status == "paid"
    assert event.data.previous_attributes.to_dict() == {"status": "open"}

    served = client.v1.events.retrieve(event.id)
    assert served.to_dict(for_json=True) == body

    double.update_subscription(sub_id, status="past_due")
    sub_event = double.snapshot_event("customer.subscription.updated", sub_id, created=NOW - 5)
    assert sub_event["created"] == NOW - 5 and "previous_attributes" not in sub_event["data"]
    obj = sub_event["data"]["object"]
    assert obj["status"] == "past_due"
    assert obj["items"]["data"][0]["price"]["lookup_key"] == "tier_pro"  # as rendered
    with pytest.raises(stripe.InvalidRequestError) as missing:
        client.v1.events.retrieve("evt_missing")
    assert missing.value.http_status == 404


def test_signatures_verify_like_stripes() -> None:
    payload = b'{"id": "evt_1", "object": "event"}'
    header = sign_payload(payload, SECRET, timestamp=1_700_000_000)
    assert header.startswith("t=1700000000,v1=") and header.count(",") == 1
    assert stripe.WebhookSignature.verify_header(payload, header, SECRET)  # no tolerance
    fresh = sign_payload(payload, SECRET)
    assert stripe.WebhookSignature.verify_header(payload, fresh, SECRET, 300)
    assert stripe.WebhookSignature.verify_header(
        payload, sign_payload(payload, SECRET, schemes=("v0", "v1")), SECRET, 300
    )

    for bad, message in (
        (sign_payload(payload, SECRET, schemes=("v0",)), "expected scheme v1"),
        (sign_payload(payload, "whsec_other"), "matching the expected signature"),
        (sign_payload(payload, SECRET, timestamp=int(time.time()) - 301), "tolerance"),
        (sign_payload(payload + b" ", SECRET, timestamp=int(time.time())), "matching"),
    ):
        with pytest.raises(stripe.SignatureVerificationError, match=message):
            stripe.WebhookSignature.verify_header(payload, bad, SECRET, 300)


# --- checkout, schedules, the portal ------------------------------------------------------------


def tier_prices(client: stripe.StripeClient, double: StripeDouble) -> dict[str, str]:
    """Starter ($29, 1000 SMS free then 5 cents) and pro ($49, 5000 SMS free then 5 cents)."""
    meter = double.add_meter("sms_sent")
    product = client.v1.products.create(params={"name": "Meterline"}).id
    ids: dict[str, str] = {}
    for tier, amount, included in (("starter", 2900, 1000), ("pro", 4900, 5000)):
        ids[f"{tier}_base"] = client.v1.prices.create(
            params={
                "product": product,
                "currency": "usd",
                "unit_amount": amount,
                "recurring": {"interval": "month"},
                "lookup_key": f"tier_{tier}",
            }
        ).id
        ids[f"{tier}_sms"] = client.v1.prices.create(
            params=graduated(product, meter, included, "5", lookup_key=f"meter_{tier}_sms_sent")
        ).id
    return ids


def checkout_params(ids: dict[str, str], **extra: Any) -> dict[str, Any]:
    return {
        "mode": "subscription",
        "line_items": [
            {"price": ids["starter_base"], "quantity": 1},
            {"price": ids["starter_sms"]},
        ],
        "success_url": "https://app.example/billing/done",
        "cancel_url": "https://app.example/billing",
        "subscription_data": {
            "billing_cycle_anchor": FEB_1,
            "proration_behavior": "create_prorations",
            "metadata": {"company_id": "c-1"},
        },
        "metadata": {"company_id": "c-1"},
        **extra,
    }


@pytest.mark.parametrize(
    ("change", "param", "message"),
    [
        (
            lambda p, ids: p["line_items"][1].update(quantity=1),
            "line_items[1][quantity]",
            "Quantity should not be specified where usage_type is `metered`",
        ),
        (
            lambda p, ids: p["line_items"][0].pop("quantity"),
            "line_items[0][quantity]",
            "Quantity is required",
        ),
        (lambda p, ids: p.pop("success_url"), "success_url", "Missing required param"),
        (lambda p, ids: p.pop("line_items"), "line_items", "Missing required param"),
        (
            lambda p, ids: p["subscription_data"].update(billing_cycle_anchor=NOW - 1),
            "subscription_data[billing_cycle_anchor]",
            "must be a timestamp in the future",
        ),
        (
            lambda p, ids: p["subscription_data"].update(billing_cycle_anchor=NOW + 40 * DAY),
            "subscription_data[billing_cycle_anchor]",
            "next natural billing date",
        ),
        (
            lambda p, ids: p["line_items"][0].update(price="price_missing"),
            "line_items[0][price]",
            "No such price: 'price_missing'",
        ),
        (
            lambda p, ids: p["line_items"][0].update(prices="x"),
            "line_items[0][prices]",
            "Received unknown parameter",
        ),
        (
            lambda p, ids: p["subscription_data"].update(proration_behavior="always_invoice"),
            "subscription_data[proration_behavior]",
            "Invalid proration_behavior",
        ),
        (lambda p, ids: p.update(customer="cus_missing"), "customer", "No such customer"),
    ],
    ids=[
        "quantity-on-metered",
        "no-quantity-on-licensed",
        "no-success-url",
        "no-line-items",
        "anchor-in-the-past",
        "anchor-beyond-a-period",
        "unknown-price",
        "unknown-line-item-param",
        "bad-proration",
        "unknown-customer",
    ],
)
def test_checkout_session_validation(
    double: StripeDouble,
    client: stripe.StripeClient,
    change: Callable[[dict[str, Any], dict[str, str]], Any],
    param: str,
    message: str,
) -> None:
    ids = tier_prices(client, double)
    params = checkout_params(ids)
    change(params, ids)
    with pytest.raises(stripe.InvalidRequestError) as refused:
        client.v1.checkout.sessions.create(params=params)
    assert refused.value.http_status == 400
    assert refused.value.param == param
    assert message in (refused.value.user_message or "")
    assert not double._objects["checkout.session"]


async def test_completed_checkout_starts_an_anchored_prorated_subscription(
    double: StripeDouble, client: stripe.StripeClient
) -> None:
    ids = tier_prices(client, double)
    session = await client.v1.checkout.sessions.create_async(params=checkout_params(ids))
    assert session.object == "checkout.session" and session.id.startswith("cs_test_")
    assert session.url == f"https://checkout.stripe.com/c/pay/{session.id}"
    assert (session.status, session.mode, session.customer, session.subscription) == (
        "open",
        "subscription",
        None,
        None,
    )
    assert session.expires_at == NOW + DAY and session.metadata.to_dict() == {"company_id": "c-1"}
    assert session.success_url == "https://app.example/billing/done"

    completed = double.complete_checkout(session.id)
    assert completed["type"] == "checkout.session.completed"
    paid = completed["data"]["object"]
    assert (paid["status"], paid["payment_status"], paid["url"]) == ("complete", "paid", None)
    assert paid["customer"].startswith("cus_") and paid["subscription"].startswith("sub_")
    served = await client.v1.events.retrieve_async(completed["id"])
    assert served.data.object["subscription"] == paid["subscription"]

    again = await client.v1.checkout.sessions.retrieve_async(session.id)
    assert (again.status, again.customer, again.subscription) == (
        "complete",
        paid["customer"],
        paid["subscription"],
    )
    sub = await client.v1.subscriptions.retrieve_async(paid["subscription"])
    assert (sub.customer, sub.status, sub.start_date, sub.billing_cycle_anchor) == (
        paid["customer"],
        "active",
        NOW,
        FEB_1,
    )
    assert sub.metadata.to_dict() == {"company_id": "c-1"} and sub.schedule is None
    items = sub["items"].data
    assert [(i.price.id, i.quantity) for i in items] == [
        (ids["starter_base"], 1),
        (ids["starter_sms"], None),
    ]
    assert {(i.current_period_start, i.current_period_end) for i in items} == {(NOW, FEB_1)}
    with pytest.raises(ValueError, match="is complete"):
        double.complete_checkout(session.id)

    # an existing customer is kept; without an anchor the period is one natural month
    customer = double.add_customer()
    params = checkout_params(ids, customer=customer)
    del params["subscription_data"]
    plain = await client.v1.checkout.sessions.create_async(params=params)
    sub_id = double.complete_checkout(plain.id)["data"]["object"]["subscription"]
    plain_sub = double.get_object(sub_id)
    assert (plain_sub["customer"], plain_sub["billing_cycle_anchor"]) == (customer, NOW)
    assert plain_sub["items"]["data"][0]["current_period_end"] == NOW + 31 * DAY
    with pytest.raises(stripe.InvalidRequestError) as missing:
        await client.v1.checkout.sessions.retrieve_async("cs_test_missing")
    assert missing.value.http_status == 404


def two_phases(schedule: Any, ids: dict[str, str], tier: str = "pro") -> list[dict[str, Any]]:
    current = schedule.phases[0]
    return [
        {
            "items": [
                {"price": item.price, **({"quantity": item.quantity} if "quantity" in item else {})}
                for item in current["items"]
            ],
            "start_date": current.start_date,
            "end_date": current.end_date,
        },
        {"items": [{"price": ids[f"{tier}_base"], "quantity": 1}, {"price": ids[f"{tier}_sms"]}]},
    ]


def test_schedule_create_update_release_and_refusals(
    double: StripeDouble, client: stripe.StripeClient
) -> None:
    ids = tier_prices(client, double)
    sub_id = double.add_subscription("cus_a", [ids["starter_base"], ids["starter_sms"]])
    schedule = client.v1.subscription_schedules.create(params={"from_subscription": sub_id})
    assert schedule.id.startswith("sub_sched_") and schedule.object == "subscription_schedule"
    assert (schedule.status, schedule.end_behavior, schedule.subscription) == (
        "active",
        "release",
        sub_id,
    )
    assert (schedule.current_phase.start_date, schedule.current_phase.end_date) == (JAN_1, FEB_1)
    phase = schedule.phases[0]
    # Stripe leaves `quantity` out of a metered item: reading it as an attribute would raise.
    assert [(i.price, getattr(i, "quantity", None)) for i in phase["items"]] == [
        (ids["starter_base"], 1),
        (ids["starter_sms"], None),
    ]
    assert ["quantity" in i for i in phase["items"]] == [True, False]
    assert (phase.start_date, phase.end_date) == (JAN_1, FEB_1)
    assert client.v1.subscriptions.retrieve(sub_id).schedule == schedule.id

    with pytest.raises(stripe.InvalidRequestError) as twice:
        client.v1.subscription_schedules.create(params={"from_subscription": sub_id})
    assert twice.value.user_message == (
        "You cannot migrate a subscription that is already attached to a schedule"
    )
    with pytest.raises(stripe.InvalidRequestError) as direct:
        client.v1.subscriptions.update(sub_id, params={"cancel_at_period_end": True})
    assert direct.value.user_message == (
        f"The subscription is managed by the subscription schedule `{schedule.id}`, and updating "
        "any cancelation behavior directly is not allowed. Please update the schedule instead."
    )

    phases = two_phases(schedule, ids)
    refusals: list[tuple[Any, str]] = [
        ({**phases[0], "start_date": "now"}, "You can not modify the start date"),
        ({k: v for k, v in phases[0].items() if k != "start_date"}, "missing at least one phase"),
    ]
    for first, message in refusals:
        with pytest.raises(stripe.InvalidRequestError) as refused:
            client.v1.subscription_schedules.update(
                schedule.id, params={"phases": [first, phases[1]]}
            )
        assert message in (refused.value.user_message or "")
    for second, param in (
        ({**phases[1], "start_date": FEB_1 + 1}, "phases[1][start_date]"),
        ({**phases[1], "iterations": 1}, "phases[1][iterations]"),
        (
            {"items": [{"price": ids["pro_sms"], "quantity": 2}]},
            "phases[1][items][0][quantity]",
        ),
        ({"items": [{"price": "price_missing"}]}, "phases[1][items][0][price]"),
    ):
        with pytest.raises(stripe.InvalidRequestError) as refused:
            client.v1.subscription_schedules.update(
                schedule.id,
                params={"phases": [phases[0], second]},
            )
        assert refused.value.param == param

    updated = client.v1.subscription_schedules.update(
        schedule.id,
        params={
            "phases": phases,
            "end_behavior": "release",
            "proration_behavior": "none",
        },
    )
    assert [(ph.start_date, ph.end_date) for ph in updated.phases] == [
        (JAN_1, FEB_1),
        (FEB_1, MAR_1),  # no end given: one iteration of the monthly prices
    ]
    assert [(i.price, getattr(i, "quantity", None)) for i in updated.phases[1]["items"]] == [
        (ids["pro_base"], 1),
        (ids["pro_sms"], None),
    ]
    retrieved = client.v1.subscription_schedules.retrieve(
        schedule.id, params={"expand": ["subscription", "phases.items.price"]}
    )
    assert retrieved.subscription.id == sub_id
    assert retrieved.phases[1]["items"][1].price.lookup_key == "meter_pro_sms_sent"
    # the current phase is unchanged: so are the subscription's items
    assert [i["price"]["id"] for i in double.get_object(sub_id)["items"]["data"]] == [
        ids["starter_base"],
        ids["starter_sms"],
    ]

    released = client.v1.subscription_schedules.release(schedule.id)
    assert (released.status, released.released_subscription, released.subscription) == (
        "released",
        sub_id,
        None,
    )
    assert released.released_at == NOW and released.current_phase is None
    assert client.v1.subscriptions.retrieve(sub_id).schedule is None
    with pytest.raises(stripe.InvalidRequestError) as after:
        client.v1.subscription_schedules.update(schedule.id, params={"end_behavior": "cancel"})
    assert "`released` status" in (after.value.user_message or "")
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.subscription_schedules.release(schedule.id)
    # free again: a new schedule may take it
    assert client.v1.subscription_schedules.create(params={"from_subscription": sub_id}).id
    with pytest.raises(stripe.InvalidRequestError) as missing:
        client.v1.subscription_schedules.retrieve("sub_sched_missing")
    assert missing.value.http_status == 404


async def test_schedules_switch_prices_on_the_first_and_previews_follow(
    double: StripeDouble, client: stripe.StripeClient
) -> None:
    ids = tier_prices(client, double)
    sub_id = double.add_subscription(
        "cus_a", [ids["starter_base"], ids["starter_sms"]], metadata={"company_id": "c-1"}
    )
    schedule = await client.v1.subscription_schedules.create_async(
        params={"from_subscription": sub_id}
    )
    await client.v1.subscription_schedules.update_async(
        schedule.id,
        params={"phases": two_phases(schedule, ids)},
    )
    await client.v1.billing.meter_events.create_async(
        params=event("cus_a", "1500", identifier="jan")
    )

    def lines(preview: Any) -> list[tuple[str, int, int, int]]:
        return [
            (line.pricing.price_details.price, line.quantity, line.amount, line.period.start)
            for line in preview.lines.data
        ]

    mid_january = await client.v1.invoices.create_preview_async(params={"subscription": sub_id})
    assert lines(mid_january) == [
        (ids["starter_base"], 1, 2900, FEB_1),
        (ids["starter_sms"], 1500, 2500, JAN_1),  # 500 beyond starter's 1000, at 5 cents
    ]
    assert double.metered_subtotal(mid_january.to_dict()) == 2500
    assert double.apply_schedules() == []  # nothing is due yet

    double.advance_to(FEB_1 + 3600)
    events = double.apply_schedules()
    assert [(e["type"], e["created"]) for e in events] == [("customer.subscription.updated", FEB_1)]
    moved = events[0]["data"]["object"]
    assert [(i["price"]["id"], i["created"]) for i in moved["items"]["data"]] == [
        (ids["pro_base"], FEB_1),
        (ids["pro_sms"], FEB_1),
    ]
    previous = events[0]["data"]["previous_attributes"]["items"]["data"]
    assert [i["price"]["id"] for i in previous] == [ids["starter_base"], ids["starter_sms"]]
    sub = await client.v1.subscriptions.retrieve_async(sub_id)
    assert {(i.current_period_start, i.current_period_end) for i in sub["items"].data} == {
        (FEB_1, MAR_1)
    }
    assert sub.metadata.to_dict() == {"company_id": "c-1"} and sub.schedule == schedule.id
    current = (await client.v1.subscription_schedules.retrieve_async(schedule.id)).current_phase
    assert (current.start_date, current.end_date) == (FEB_1, MAR_1)

    await client.v1.billing.meter_events.create_async(
        params=event("cus_a", "6000", identifier="feb", timestamp=FEB_1 + 60)
    )
    february = await client.v1.invoices.create_preview_async(params={"subscription": sub_id})
    assert lines(february) == [
        (ids["pro_base"], 1, 4900, MAR_1),
        (ids["pro_sms"], 6000, 5000, FEB_1),  # January's 1500 are not in February
    ]
    assert double.metered_subtotal(february.to_dict()) == 5000
    assert double.metered_subtotal(double.invoice_for_month(sub_id, FEB_1, status="draft")) == 5000
    assert double.apply_schedules() == []  # idempotent at the same moment

    # at the last phase's end the schedule releases the subscription, which then renews
    double.advance_to(MAR_1)
    events = double.apply_schedules()
    assert [(e["type"], e["created"]) for e in events] == [
        ("customer.subscription.updated", MAR_1),
        ("customer.subscription.updated", MAR_1),
    ]
    assert events[0]["data"]["previous_attributes"] == {"schedule": schedule.id}
    assert events[0]["data"]["object"]["schedule"] is None
    released = await client.v1.subscription_schedules.retrieve_async(schedule.id)
    assert (released.status, released.released_at) == ("released", MAR_1)
    renewed = double.get_object(sub_id)["items"]["data"]
    assert [(i["price"]["id"], i["current_period_start"]) for i in renewed] == [
        (ids["pro_base"], MAR_1),
        (ids["pro_sms"], MAR_1),
    ]


def test_cancel_at_period_end_ends_the_subscription_at_the_period_end(
    double: StripeDouble, client: stripe.StripeClient
) -> None:
    ids = tier_prices(client, double)
    sub_id = double.add_subscription("cus_a", [ids["starter_base"], ids["starter_sms"]])
    other = double.add_subscription("cus_b", [ids["pro_base"]])
    asked = client.v1.subscriptions.update(
        sub_id, params={"cancel_at_period_end": True, "metadata": {"why": "downgrade"}}
    )
    assert (asked.status, asked.cancel_at_period_end, asked.cancel_at, asked.canceled_at) == (
        "active",
        True,
        FEB_1,
        NOW,
    )
    assert asked.metadata.to_dict() == {"why": "downgrade"}
    undone = client.v1.subscriptions.update(sub_id, params={"cancel_at_period_end": False})
    assert (undone.cancel_at_period_end, undone.cancel_at, undone.canceled_at) == (
        False,
        None,
        None,
    )
    client.v1.subscriptions.update(
        sub_id, params={"cancel_at_period_end": True, "proration_behavior": "none"}
    )
    with pytest.raises(stripe.InvalidRequestError) as unsupported:
        client.v1.subscriptions.update(sub_id, params={"items": [{"price": ids["pro_base"]}]})
    assert unsupported.value.param == "items"

    double.advance_to(FEB_1 + 60)
    events = double.apply_schedules()
    assert sorted((e["type"], e["data"]["object"]["id"]) for e in events) == [
        ("customer.subscription.deleted", sub_id),
        ("customer.subscription.updated", other),  # an ordinary subscription renews
    ]  # both at the same moment: in no particular order
    ended = client.v1.subscriptions.retrieve(sub_id)
    assert (ended.status, ended.ended_at, ended.canceled_at) == ("canceled", FEB_1, NOW)
    assert ended.cancellation_details.reason == "cancellation_requested"
    renewed = client.v1.subscriptions.retrieve(other)["items"].data[0]
    assert (renewed.current_period_start, renewed.current_period_end) == (FEB_1, MAR_1)

    with pytest.raises(stripe.InvalidRequestError) as canceled:
        client.v1.subscriptions.update(sub_id, params={"cancel_at_period_end": False})
    assert canceled.value.user_message == (
        "A canceled subscription can only update its cancellation_details and metadata."
    )
    kept = client.v1.subscriptions.update(
        sub_id, params={"metadata": {"why": ""}, "cancellation_details": {"comment": "bye"}}
    )
    assert kept.metadata.to_dict() == {} and kept.cancellation_details.comment == "bye"
    with pytest.raises(stripe.InvalidRequestError) as migrate:
        client.v1.subscription_schedules.create(params={"from_subscription": sub_id})
    assert migrate.value.param == "from_subscription"


def test_a_schedule_ending_with_cancel_cancels_at_its_end(
    double: StripeDouble, client: stripe.StripeClient
) -> None:
    ids = tier_prices(client, double)
    sub_id = double.add_subscription("cus_a", [ids["starter_base"], ids["starter_sms"]])
    schedule = client.v1.subscription_schedules.create(params={"from_subscription": sub_id})
    client.v1.subscription_schedules.update(schedule.id, params={"end_behavior": "cancel"})
    double.advance_to(FEB_1 + 5)
    events = double.apply_schedules()
    assert [(e["type"], e["created"]) for e in events] == [("customer.subscription.deleted", FEB_1)]
    ended = client.v1.subscriptions.retrieve(sub_id)
    assert (ended.status, ended.ended_at) == ("canceled", FEB_1)
    done = client.v1.subscription_schedules.retrieve(schedule.id)
    assert (done.status, done.completed_at) == ("completed", FEB_1)


def test_billing_portal_session(double: StripeDouble, client: stripe.StripeClient) -> None:
    customer = double.add_customer()
    session = client.v1.billing_portal.sessions.create(
        params={"customer": customer, "return_url": "https://app.example/billing"}
    )
    assert session.object == "billing_portal.session" and session.id.startswith("bps_")
    assert session.url == f"https://billing.stripe.com/p/session/{session.id}"
    assert (session.customer, session.return_url, session.created) == (
        customer,
        "https://app.example/billing",
        NOW,
    )
    assert session.configuration.startswith("bpc_")
    for params, code, param in (
        ({"return_url": "https://app.example"}, "parameter_missing", "customer"),
        ({"customer": "cus_missing"}, "resource_missing", "customer"),
    ):
        with pytest.raises(stripe.InvalidRequestError) as refused:
            client.v1.billing_portal.sessions.create(params=params)
        assert (refused.value.http_status, refused.value.code, refused.value.param) == (
            400,
            code,
            param,
        )
