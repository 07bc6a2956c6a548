"""The Stripe double, driven by the real stripe SDK (sync and async over httpx)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import stripe

from tests.stripe_double import StripeDouble

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
    client = connect(timeout=0.25)
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
