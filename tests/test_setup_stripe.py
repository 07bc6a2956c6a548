"""`meterline setup-stripe` against the Stripe double: creates the catalog once, finds it after,
moves lookup keys when the tiers table's prices change."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
import stripe

from meterline.billing.catalog import EventType, Tier
from meterline.db import sql
from meterline.db.tiers import forget_cached_plans, load_plans
from meterline.services.stripe_setup import (
    SNAPSHOT_EVENTS,
    THIN_EVENTS,
    Action,
    SetupError,
    SetupResult,
    decide_price,
    metered_price_spec,
    setup_stripe,
    webhook_urls,
)
from meterline.stripe_gateway.catalog import (
    PriceSpec,
    PriceTier,
    StripeCatalog,
    StripePrice,
    price_create_params,
    price_spec_of,
)
from meterline.stripe_gateway.client import make_client
from tests.commands import meterline
from tests.conftest import base_settings
from tests.stripe_double import StripeDouble

# The SDK's httpx client posts bytes with `data=`, which httpx deprecates: not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")

PAID = (Tier.STARTER, Tier.PROFESSIONAL, Tier.ENTERPRISE)
PUBLIC_URL = "https://meterline.example.com/"


def catalog_for(double: StripeDouble, database_url: str) -> StripeCatalog:
    settings = base_settings(
        database_url=database_url, stripe_secret_key=double.api_key, stripe_api_base=double.url
    )
    return StripeCatalog(make_client(settings, timeout=5.0))


async def run(double: StripeDouble, database_url: str, **kwargs: Any) -> SetupResult:
    return await setup_stripe(catalog_for(double, database_url), await load_plans(), **kwargs)


def posts(double: StripeDouble) -> int:
    return sum(1 for method, _ in double.requests if method == "POST")


def sync_client(double: StripeDouble) -> stripe.StripeClient:
    """For the test's own look-ups (Meterline's client is async only)."""
    return stripe.StripeClient(
        double.api_key, base_addresses={"api": double.url}, max_network_retries=0
    )


def price_by_key(double: StripeDouble, lookup_key: str) -> dict[str, Any]:
    client = sync_client(double)
    listing = client.v1.prices.list(params={"lookup_keys": [lookup_key], "expand": ["data.tiers"]})
    assert len(listing.data) == 1, listing
    return listing.data[0].to_dict(for_json=True)


def ids(result: SetupResult, kind: str) -> dict[str, str]:
    return {line.key: line.id for line in result.lines if line.kind == kind}


async def set_sms_price(tier: str, price: str) -> None:
    await sql.execute(
        "UPDATE tier_allowances SET unit_price = $1 WHERE tier = $2 AND event_type = 'sms_sent'",
        Decimal(price),
        tier,
    )
    forget_cached_plans()


# --- against the double ----------------------------------------------------------------------


async def test_first_run_creates_the_whole_catalog(double: StripeDouble, database_url: str) -> None:
    result = await run(double, database_url)

    assert {line.action for line in result.lines} == {Action.CREATED}
    assert result.count(Action.CREATED, "meter") == 5
    assert result.count(Action.CREATED, "product") == 3
    assert result.count(Action.CREATED, "price") == 18
    assert result.problems == []
    assert posts(double) == 5 + 3 + 18

    meters = ids(result, "meter")
    assert set(meters) == {t.value for t in EventType}
    sms_meter = double.get_object(meters["sms_sent"])
    assert sms_meter["event_name"] == "sms_sent"
    assert sms_meter["default_aggregation"] == {"formula": "sum"}
    assert sms_meter["customer_mapping"] == {
        "event_payload_key": "stripe_customer_id",
        "type": "by_id",
    }
    assert sms_meter["value_settings"] == {"event_payload_key": "value"}

    products = ids(result, "product")
    assert set(products) == {t.value for t in PAID}  # free has no Stripe objects
    assert double.get_object(products["starter"])["metadata"] == {"meterline_tier": "starter"}

    prices = ids(result, "price")
    assert set(prices) == {f"tier_{t.value}" for t in PAID} | {
        f"meter_{t.value}_{e.value}" for t in PAID for e in EventType
    }

    base = price_by_key(double, "tier_starter")
    assert base["product"] == products["starter"]
    assert base["unit_amount"] == 4900
    assert base["currency"] == "usd"
    assert base["recurring"]["interval"] == "month"
    assert base["recurring"]["usage_type"] == "licensed"

    sms = price_by_key(double, "meter_starter_sms_sent")
    assert sms["id"] == prices["meter_starter_sms_sent"]
    assert sms["product"] == products["starter"]
    assert sms["billing_scheme"] == "tiered"
    assert sms["tiers_mode"] == "graduated"
    assert sms["recurring"]["usage_type"] == "metered"
    assert sms["recurring"]["interval"] == "month"
    assert sms["recurring"]["meter"] == meters["sms_sent"]
    assert [(t["up_to"], t["unit_amount_decimal"], t["flat_amount"]) for t in sms["tiers"]] == [
        (1000, "0", None),
        (None, "5", None),
    ]

    pro_email = price_by_key(double, "meter_professional_email_sent")
    assert [(t["up_to"], t["unit_amount_decimal"]) for t in pro_email["tiers"]] == [
        (20000, "0"),
        (None, "1"),
    ]

    unlimited = price_by_key(double, "meter_enterprise_ai_query")  # included NULL
    assert unlimited["billing_scheme"] == "per_unit"
    assert unlimited["unit_amount"] == 0
    assert unlimited["recurring"]["meter"] == meters["ai_query"]
    assert unlimited["recurring"]["usage_type"] == "metered"


async def test_second_run_only_finds(double: StripeDouble, database_url: str) -> None:
    first = await run(double, database_url)
    writes = posts(double)

    second = await run(double, database_url)

    assert {line.action for line in second.lines} == {Action.FOUND}
    assert [(x.kind, x.key, x.id) for x in second.lines] == [
        (x.kind, x.key, x.id) for x in first.lines
    ]
    assert posts(double) == writes  # not one object written
    assert second.problems == []


async def test_a_price_change_moves_the_lookup_key(double: StripeDouble, database_url: str) -> None:
    first = await run(double, database_url)
    old_id = ids(first, "price")["meter_starter_sms_sent"]
    try:
        await set_sms_price("starter", "0.06")
        moved = await run(double, database_url)
        again = await run(double, database_url)
    finally:
        await set_sms_price("starter", "0.05")

    changed = [line for line in moved.lines if line.action is not Action.FOUND]
    assert len(changed) == 1
    line = changed[0]
    assert (line.action, line.kind, line.key) == (Action.MOVED, "price", "meter_starter_sms_sent")
    assert line.id != old_id
    assert str(line) == f"moved price meter_starter_sms_sent {line.id} (from {old_id})"

    new = price_by_key(double, "meter_starter_sms_sent")
    assert new["id"] == line.id
    assert [(t["up_to"], t["unit_amount_decimal"]) for t in new["tiers"]] == [
        (1000, "0"),
        (None, "6"),
    ]
    old = double.get_object(old_id)
    assert old["lookup_key"] is None  # the key moved; subscriptions on the old price keep it
    assert old["active"] is True
    # Other tiers' sms prices were left alone; a further run finds the new price.
    assert {x.action for x in again.lines} == {Action.FOUND}
    assert ids(again, "price")["meter_starter_sms_sent"] == line.id


async def test_an_archived_price_is_replaced(double: StripeDouble, database_url: str) -> None:
    first = await run(double, database_url)
    old_id = ids(first, "price")["tier_professional"]
    client = sync_client(double)
    client.v1.prices.update(old_id, params={"active": False})

    result = await run(double, database_url)

    [line] = [x for x in result.lines if x.action is not Action.FOUND]
    assert (line.action, line.key) == (Action.MOVED, "tier_professional")
    assert price_by_key(double, "tier_professional")["unit_amount"] == 14900


async def test_existing_objects_made_by_hand_are_used(
    double: StripeDouble, database_url: str
) -> None:
    client = sync_client(double)
    # A product without Meterline's metadata, holding a correct tier_starter price.
    product = client.v1.products.create(params={"name": "Starter (by hand)"})
    price = client.v1.prices.create(
        params={
            "product": product.id,
            "currency": "usd",
            "unit_amount_decimal": Decimal("4900.00"),
            "recurring": {"interval": "month"},
            "lookup_key": "tier_starter",
        }
    )
    # A meter that aggregates what the sync does not send.
    meter = client.v1.billing.meters.create(
        params={
            "display_name": "SMS",
            "event_name": "sms_sent",
            "default_aggregation": {"formula": "count"},
            "customer_mapping": {"type": "by_id", "event_payload_key": "customer"},
            "value_settings": {"event_payload_key": "value"},
        }
    )

    result = await run(double, database_url)

    found = {(x.kind, x.key): x.id for x in result.lines if x.action is Action.FOUND}
    assert found == {
        ("meter", "sms_sent"): meter.id,
        ("product", "starter"): product.id,
        ("price", "tier_starter"): price.id,
    }
    starter_sms = price_by_key(double, "meter_starter_sms_sent")
    assert starter_sms["product"] == product.id
    assert starter_sms["recurring"]["meter"] == meter.id
    assert len(result.problems) == 2
    assert all(p.startswith(f"meter sms_sent ({meter.id}) has ") for p in result.problems)
    assert "default_aggregation.formula='count'" in result.problems[0]
    assert "customer_mapping.event_payload_key='customer'" in result.problems[1]


async def test_webhook_url_creates_both_endpoints_once(
    double: StripeDouble, database_url: str
) -> None:
    first = await run(double, database_url, webhook_url=PUBLIC_URL)
    hooks = [x for x in first.lines if x.kind in ("webhook_endpoint", "event_destination")]
    assert [(x.action, x.kind, x.key) for x in hooks] == [
        (Action.CREATED, "webhook_endpoint", "https://meterline.example.com/webhooks/stripe"),
        (Action.CREATED, "event_destination", "https://meterline.example.com/webhooks/stripe/thin"),
    ]
    snapshot, thin = hooks
    assert snapshot.secret == double.signing_secrets[snapshot.key]
    assert thin.secret == double.signing_secrets[thin.key]

    endpoint = double.get_object(snapshot.id)
    assert endpoint["url"] == snapshot.key
    assert endpoint["api_version"] == stripe.api_version == "2026-10-28.endive"
    assert tuple(endpoint["enabled_events"]) == SNAPSHOT_EVENTS

    client = sync_client(double)
    destination = client.v2.core.event_destinations.retrieve(
        thin.id, params={"include": ["webhook_endpoint.url"]}
    )
    assert destination.event_payload == "thin"
    assert destination.type == "webhook_endpoint"
    assert destination.webhook_endpoint is not None
    assert destination.webhook_endpoint.url == thin.key
    assert tuple(destination.enabled_events) == THIN_EVENTS
    assert destination.snapshot_api_version is None

    writes = posts(double)
    second = await run(double, database_url, webhook_url="https://meterline.example.com")
    assert {x.action for x in second.lines} == {Action.FOUND}
    assert [x.id for x in second.lines if x.kind in ("webhook_endpoint", "event_destination")] == [
        snapshot.id,
        thin.id,
    ]
    assert all(x.secret is None for x in second.lines)
    assert posts(double) == writes


async def test_a_stripe_error_stops_the_run(double: StripeDouble, database_url: str) -> None:
    double.fail("500", 1.0, path_prefix="/v1/prices")
    with pytest.raises(stripe.APIError):
        await run(double, database_url)
    double.heal()
    result = await run(double, database_url)  # what was made before the error is found
    assert result.count(Action.FOUND, "meter") == 5
    assert result.count(Action.CREATED, "product") == 3
    assert result.count(Action.CREATED, "price") == 18


# --- the command, as an operator runs it -------------------------------------------------------


async def test_command_end_to_end(double: StripeDouble, database_url: str) -> None:
    env = {
        "DATABASE_URL": database_url,
        "STRIPE_SECRET_KEY": double.api_key,
        "STRIPE_API_BASE": double.url,
    }
    first = meterline("setup-stripe", "--webhook-url", PUBLIC_URL, env=env)
    assert first.returncode == 0, first.stderr
    lines = first.stdout.splitlines()
    objects = [line.split() for line in lines if not line.startswith(" ")]
    assert [o[0] for o in objects] == ["created"] * 28
    assert objects[0][:3] == ["created", "meter", "guest_invitation"]
    assert ["created", "price", "meter_starter_sms_sent"] in [o[:3] for o in objects]
    secrets = [line for line in lines if "signing secret" in line]
    assert len(secrets) == 2
    assert "STRIPE_WEBHOOK_SECRET" in secrets[0]
    assert "STRIPE_THIN_WEBHOOK_SECRET" in secrets[1]
    assert double.signing_secrets["https://meterline.example.com/webhooks/stripe"] in secrets[0]

    second = meterline("setup-stripe", "--webhook-url", PUBLIC_URL, env=env)
    assert second.returncode == 0, second.stderr
    assert [line.split()[0] for line in second.stdout.splitlines()] == ["found"] * 28
    assert "signing secret" not in second.stdout


async def test_command_warns_about_a_meter_it_cannot_use(
    double: StripeDouble, database_url: str
) -> None:
    sync_client(double).v1.billing.meters.create(
        params={
            "display_name": "Emails",
            "event_name": "email_sent",
            "default_aggregation": {"formula": "sum"},
            "customer_mapping": {"type": "by_id", "event_payload_key": "customer"},
            "value_settings": {"event_payload_key": "value"},
        }
    )
    env = {
        "DATABASE_URL": database_url,
        "STRIPE_SECRET_KEY": double.api_key,
        "STRIPE_API_BASE": double.url,
    }
    result = meterline("setup-stripe", env=env)
    assert result.returncode == 1
    assert len(result.stdout.splitlines()) == 26  # everything else is in place
    assert "meterline: warning: meter email_sent" in result.stderr
    assert "deactivate it in Stripe and run setup-stripe again" in result.stderr


async def test_command_refuses_without_a_secret_key(database_url: str) -> None:
    result = meterline("setup-stripe", env={"DATABASE_URL": database_url})
    assert result.returncode != 0
    assert "STRIPE_SECRET_KEY" in result.stderr
    assert result.stdout == ""


async def test_command_reports_stripe_errors(double: StripeDouble, database_url: str) -> None:
    env = {
        "DATABASE_URL": database_url,
        "STRIPE_SECRET_KEY": "sk_test_not_the_right_one",
        "STRIPE_API_BASE": double.url,
    }
    result = meterline("setup-stripe", env=env)
    assert result.returncode == 1
    assert "setup-stripe stopped on a Stripe error (HTTP 401)" in result.stderr
    assert "Traceback" not in result.stderr


async def test_command_refuses_a_bad_webhook_url(double: StripeDouble, database_url: str) -> None:
    env = {
        "DATABASE_URL": database_url,
        "STRIPE_SECRET_KEY": double.api_key,
        "STRIPE_API_BASE": double.url,
    }
    result = meterline("setup-stripe", "--webhook-url", "meterline.example.com", env=env)
    assert result.returncode == 1
    assert "--webhook-url must be an http(s) URL" in result.stderr
    assert double.requests == []  # refused before any call


# --- the decisions, without Stripe -------------------------------------------------------------


def test_graduated_price_in_cents() -> None:
    spec = metered_price_spec(1000, Decimal("0.05"), "mtr_1")
    assert spec.tiers == (PriceTier(1000, Decimal(0)), PriceTier(None, Decimal(5)))
    params = price_create_params(
        lookup_key="k",
        product="prod_1",
        spec=spec,
        nickname="n",
        metadata={},
        transfer_lookup_key=False,
    )
    assert [(t["up_to"], str(t["unit_amount_decimal"])) for t in params["tiers"]] == [
        (1000, "0"),
        ("inf", "5"),
    ]
    assert "transfer_lookup_key" not in params
    # Sub-cent prices stay exact: 0.0015 USD = 0.15 cents.
    fine = metered_price_spec(10, Decimal("0.0015"), "mtr_1")
    fine_params = price_create_params(
        lookup_key="k", product="p", spec=fine, nickname="n", metadata={}, transfer_lookup_key=True
    )
    assert str(fine_params["tiers"][1]["unit_amount_decimal"]) == "0.15"
    assert fine_params["transfer_lookup_key"] is True


def test_unlimited_and_nothing_included() -> None:
    unlimited = metered_price_spec(None, Decimal("0.20"), "mtr_1")
    assert (unlimited.tiers, unlimited.unit_amount_decimal) == ((), Decimal(0))
    params = price_create_params(
        lookup_key="k",
        product="p",
        spec=unlimited,
        nickname="n",
        metadata={},
        transfer_lookup_key=False,
    )
    assert params["unit_amount"] == 0 and params["billing_scheme"] == "per_unit"
    none_included = metered_price_spec(0, Decimal("0.20"), "mtr_1")
    assert (none_included.tiers, none_included.unit_amount_decimal) == ((), Decimal(20))


def test_decide_price_compares_decimals() -> None:
    desired = metered_price_spec(1000, Decimal("0.05"), "mtr_1")
    stripe_form = {
        "id": "price_1",
        "type": "recurring",
        "currency": "usd",
        "billing_scheme": "tiered",
        "tiers_mode": "graduated",
        "recurring": {
            "interval": "month",
            "interval_count": 1,
            "usage_type": "metered",
            "meter": "mtr_1",
        },
        "tiers": [
            {"up_to": 1000, "unit_amount": 0, "unit_amount_decimal": "0.000", "flat_amount": None},
            {"up_to": None, "unit_amount": 5, "unit_amount_decimal": "5.000000000000"},
        ],
    }
    existing = price_spec_of(stripe_form)
    assert existing == desired

    def price(spec: PriceSpec | None, active: bool = True) -> StripePrice:
        return StripePrice("price_1", "k", "prod_1", active, spec)

    assert decide_price(desired, None) is Action.CREATED
    assert decide_price(desired, price(existing)) is Action.FOUND
    assert decide_price(desired, price(existing, active=False)) is Action.MOVED
    assert decide_price(desired, price(None)) is Action.MOVED
    other_meter = metered_price_spec(1000, Decimal("0.05"), "mtr_2")
    assert decide_price(other_meter, price(existing)) is Action.MOVED
    more_included = metered_price_spec(1500, Decimal("0.05"), "mtr_1")
    assert decide_price(more_included, price(existing)) is Action.MOVED
    volume = {**stripe_form, "tiers_mode": "volume"}
    assert price_spec_of(volume) is None  # never mistaken for a graduated price


def test_webhook_urls() -> None:
    assert webhook_urls("https://api.example.com/") == (
        "https://api.example.com/webhooks/stripe",
        "https://api.example.com/webhooks/stripe/thin",
    )
    assert webhook_urls("https://example.com/meterline")[1] == (
        "https://example.com/meterline/webhooks/stripe/thin"
    )
    for bad in ("example.com", "ftp://example.com", "https://", "https://x.com/?a=1"):
        with pytest.raises(SetupError):
            webhook_urls(bad)
