"""`meterline setup-stripe`: make Stripe's catalog match the tiers table, idempotently.

Desired objects come from the plans (the `tiers` tables) and a few constants below; what Stripe
has comes from `meterline.stripe_gateway.catalog`. The decisions (what a price should be, whether
an existing one will do) are pure functions; `setup_stripe` only sequences them with the calls.

- one Billing Meter per event type (sum of `value`, customer by `stripe_customer_id`), found by
  `event_name` among the active meters;
- per paid tier a product (metadata `meterline_tier=<tier>`) with a monthly licensed base price
  (lookup key `tier_<tier>`) and one metered price per event type (`meter_<tier>_<event type>`):
  graduated, the first `included` units at 0 then the overage price; a plain price of 0 when the
  allowance is unlimited, so usage still shows on the invoice;
- an existing price whose amounts, tiers and meter match is left alone; otherwise a new price is
  created and the lookup key moved to it (`transfer_lookup_key`): subscriptions on the old price
  keep it;
- given a public URL, the snapshot webhook endpoint and the thin event destination.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from urllib.parse import urlsplit

import stripe

from meterline.billing.catalog import CURRENCY, EventType, Plan, Tier
from meterline.stripe_gateway.catalog import (
    PLAN_VERSION_METADATA_KEY,
    PriceSpec,
    PriceTier,
    StripeCatalog,
    StripeEventDestination,
    StripeMeter,
    StripePrice,
    StripeWebhookEndpoint,
    price_version,
)
from meterline.stripe_gateway.meter_events import meter_event_name

# The monthly base fee of each paid tier, in USD. The tiers table has no base-fee column yet, so
# the fees live here until it does; changing one here and running setup-stripe moves the
# `tier_<tier>` lookup key to a new price (existing subscriptions keep the old one).
BASE_FEES: Mapping[Tier, Decimal] = {
    Tier.STARTER: Decimal("49.00"),
    Tier.PROFESSIONAL: Decimal("149.00"),
    Tier.ENTERPRISE: Decimal("499.00"),
}

# The payload keys the usage sync sends (see stripe_gateway.meter_events.send_meter_event).
CUSTOMER_PAYLOAD_KEY = "stripe_customer_id"
VALUE_PAYLOAD_KEY = "value"
PRODUCT_METADATA_KEY = "meterline_tier"
EVENT_TYPE_METADATA_KEY = "meterline_event_type"
PRODUCT_NAME = "WeddingFlow Pro"
# USD amounts are sent to Stripe in cents.
MINOR_UNITS_PER_UNIT = Decimal(100)

METER_DISPLAY_NAMES: Mapping[EventType, str] = {
    EventType.GUEST_INVITATION: "Guest invitations",
    EventType.SMS_SENT: "SMS sent",
    EventType.AI_QUERY: "AI queries",
    EventType.WHATSAPP_MESSAGE: "WhatsApp messages",
    EventType.EMAIL_SENT: "Emails sent",
}

SNAPSHOT_WEBHOOK_PATH = "/webhooks/stripe"
THIN_WEBHOOK_PATH = "/webhooks/stripe/thin"
# The snapshot events Meterline handles (docs/design.md, "Webhooks").
SNAPSHOT_EVENTS: tuple[str, ...] = (
    "customer.subscription.created",
    "customer.subscription.updated",
    "customer.subscription.deleted",
    "customer.subscription.paused",
    "customer.subscription.resumed",
    "subscription_schedule.created",
    "subscription_schedule.updated",
    "subscription_schedule.released",
    "subscription_schedule.canceled",
    "subscription_schedule.completed",
    "subscription_schedule.aborted",
    "invoice.created",
    "invoice.finalized",
    "invoice.updated",
    "invoice.paid",
    "invoice.payment_failed",
    "invoice.voided",
    "invoice.marked_uncollectible",
    "checkout.session.completed",
)
THIN_EVENTS: tuple[str, ...] = (
    "v1.billing.meter.error_report_triggered",
    "v1.billing.meter.no_meter_found",
)
THIN_DESTINATION_NAME = "meterline-meter-errors"


class Action(StrEnum):
    CREATED = "created"
    FOUND = "found"
    MOVED = "moved"


@dataclass(frozen=True)
class Line:
    """One object of the set-up and what happened to it: `created price tier_starter price_1`."""

    action: Action
    kind: str  # meter | product | price | webhook_endpoint | event_destination
    key: str  # event name, tier, lookup key or URL
    id: str
    note: str = ""
    secret: str | None = None  # a signing secret, shown once when the endpoint is created

    def __str__(self) -> str:
        text = f"{self.action} {self.kind} {self.key} {self.id}"
        return f"{text} ({self.note})" if self.note else text


@dataclass
class SetupResult:
    lines: list[Line] = field(default_factory=list)
    # Things found in Stripe that Meterline cannot fix by itself (an operator must look).
    problems: list[str] = field(default_factory=list)

    def count(self, action: Action, kind: str | None = None) -> int:
        return sum(1 for x in self.lines if x.action is action and kind in (None, x.kind))


class SetupError(Exception):
    """The set-up cannot start (bad input); nothing was sent to Stripe."""


# --- pure decisions --------------------------------------------------------------------------


def base_price_lookup_key(tier: Tier) -> str:
    return f"tier_{tier.value}"


def metered_price_lookup_key(tier: Tier, event_type: EventType) -> str:
    return f"meter_{tier.value}_{event_type.value}"


def paid_plans(plans: Mapping[Tier, Plan]) -> list[Plan]:
    """The plans that have Stripe objects: all but free."""
    return [plan for plan in plans.values() if plan.tier is not Tier.FREE]


def to_minor_units(amount: Decimal) -> Decimal:
    """USD -> cents, exactly: Decimal("0.05") -> Decimal("5.00")."""
    return amount * MINOR_UNITS_PER_UNIT


def base_price_spec(fee: Decimal) -> PriceSpec:
    cents = to_minor_units(fee)
    if cents != cents.to_integral_value() or cents < 0:
        raise SetupError(f"a base fee must be a non-negative whole number of cents, got {fee}")
    return PriceSpec(currency=CURRENCY, usage_type="licensed", unit_amount_decimal=cents)


def metered_price_spec(included: int | None, unit_price: Decimal, meter_id: str) -> PriceSpec:
    """One tier's price for one meter: the first `included` units free, then `unit_price` each.

    Unlimited (None): a plain price of 0, so the usage still appears on the invoice. Nothing
    included (0): a plain per-unit price (Stripe's graduated tiers need `up_to` >= 1).
    """
    overage = to_minor_units(unit_price)
    if included is None:
        return PriceSpec(CURRENCY, "metered", meter=meter_id, unit_amount_decimal=Decimal(0))
    if included == 0:
        return PriceSpec(CURRENCY, "metered", meter=meter_id, unit_amount_decimal=overage)
    tiers = (PriceTier(up_to=included, unit_amount_decimal=Decimal(0)), PriceTier(None, overage))
    return PriceSpec(CURRENCY, "metered", meter=meter_id, tiers=tiers)


@dataclass(frozen=True)
class DesiredPrice:
    lookup_key: str
    tier: Tier
    event_type: EventType | None  # None: the base price
    nickname: str
    spec: PriceSpec
    version: int = 1

    @property
    def metadata(self) -> dict[str, str]:
        data = {PRODUCT_METADATA_KEY: self.tier.value, PLAN_VERSION_METADATA_KEY: str(self.version)}
        if self.event_type is not None:
            data[EVENT_TYPE_METADATA_KEY] = self.event_type.value
        return data


def desired_prices(
    plan: Plan, meters: Mapping[EventType, str], base_fees: Mapping[Tier, Decimal]
) -> list[DesiredPrice]:
    """The base price and the metered prices of one paid tier, given each event type's meter."""
    if plan.tier not in base_fees:
        raise SetupError(f"no base fee for tier {plan.tier.value} (see BASE_FEES)")
    title = plan.tier.value.capitalize()
    prices = [
        DesiredPrice(
            lookup_key=base_price_lookup_key(plan.tier),
            tier=plan.tier,
            event_type=None,
            nickname=f"{title} monthly fee",
            spec=base_price_spec(base_fees[plan.tier]),
            version=plan.version,
        )
    ]
    for event_type in EventType:
        allowance = plan.allowance(event_type)
        prices.append(
            DesiredPrice(
                lookup_key=metered_price_lookup_key(plan.tier, event_type),
                tier=plan.tier,
                event_type=event_type,
                nickname=f"{title}: {display_name(event_type)}",
                spec=metered_price_spec(
                    allowance.included, allowance.unit_price, meters[event_type]
                ),
                version=plan.version,
            )
        )
    return prices


def decide_price(desired: PriceSpec, existing: StripePrice | None, version: int = 1) -> Action:
    """FOUND: an active price already bills exactly this (Decimal equality, so "5" == "5.00")
    for this plan version. CREATED: no price holds the key. MOVED: a new price must take the
    key from `existing` (a new version moves every price of its tier: a subscription's version
    is the one all its prices carry)."""
    if existing is None:
        return Action.CREATED
    if existing.active and existing.spec == desired and price_version(existing.metadata) == version:
        return Action.FOUND
    return Action.MOVED


def display_name(event_type: EventType) -> str:
    return METER_DISPLAY_NAMES.get(event_type) or event_type.value.replace("_", " ").capitalize()


def meter_problems(meter: StripeMeter) -> list[str]:
    """A meter configured otherwise than the sync sends (Stripe cannot change these)."""
    expected = {
        "default_aggregation.formula": (meter.formula, "sum"),
        "customer_mapping.event_payload_key": (meter.customer_payload_key, CUSTOMER_PAYLOAD_KEY),
        "value_settings.event_payload_key": (meter.value_payload_key, VALUE_PAYLOAD_KEY),
    }
    return [
        f"meter {meter.event_name} ({meter.id}) has {name}={actual!r}, Meterline needs "
        f"{wanted!r}: deactivate it in Stripe and run setup-stripe again"
        for name, (actual, wanted) in expected.items()
        if actual != wanted
    ]


def webhook_urls(base_url: str) -> tuple[str, str]:
    """(snapshot URL, thin URL) under Meterline's public base URL."""
    parts = urlsplit(base_url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise SetupError(f"--webhook-url must be an http(s) URL, got {base_url!r}")
    if parts.query or parts.fragment:
        raise SetupError(f"--webhook-url must not have a query or fragment: {base_url!r}")
    base = f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"
    return base + SNAPSHOT_WEBHOOK_PATH, base + THIN_WEBHOOK_PATH


def webhook_problems(endpoint: StripeWebhookEndpoint, api_version: str) -> list[str]:
    problems = []
    if endpoint.api_version != api_version:
        problems.append(
            f"webhook endpoint {endpoint.id} uses API version {endpoint.api_version}, the SDK "
            f"pins {api_version}: delete it in Stripe and run setup-stripe again (then update "
            "STRIPE_WEBHOOK_SECRET)"
        )
    missing = missing_events(endpoint.enabled_events, SNAPSHOT_EVENTS)
    if missing:
        problems.append(f"webhook endpoint {endpoint.id} does not send {', '.join(missing)}")
    return problems


def missing_events(enabled: Sequence[str], wanted: Sequence[str]) -> list[str]:
    if "*" in enabled:
        return []
    return [event for event in wanted if event not in enabled]


# --- the run ---------------------------------------------------------------------------------


async def setup_stripe(
    catalog: StripeCatalog,
    plans: Mapping[Tier, Plan],
    *,
    webhook_url: str | None = None,
    base_fees: Mapping[Tier, Decimal] = BASE_FEES,
    api_version: str = stripe.api_version,
    emit: Callable[[Line], None] = lambda line: None,
) -> SetupResult:
    """Find or create every object; `emit` sees each line as soon as it is settled (so a run
    that fails half-way has shown what it did). Stripe errors propagate (`stripe.StripeError`)."""
    result = SetupResult()

    def record(line: Line) -> None:
        result.lines.append(line)
        emit(line)

    # Everything that can be refused without Stripe is checked before the first call.
    urls = webhook_urls(webhook_url) if webhook_url is not None else None
    paid = paid_plans(plans)
    for plan in paid:
        if plan.tier not in base_fees:
            raise SetupError(f"no base fee for tier {plan.tier.value} (see BASE_FEES)")
        missing_types = [t.value for t in EventType if t not in plan.allowances]
        if missing_types:
            raise SetupError(f"tier {plan.tier.value} has no allowance for {missing_types}")

    # Meters
    active: dict[str, StripeMeter] = {}
    for meter in await catalog.active_meters():
        active.setdefault(meter.event_name, meter)
    meter_ids: dict[EventType, str] = {}
    for event_type in EventType:
        name = meter_event_name(event_type)
        existing_meter = active.get(name)
        if existing_meter is not None:
            record(Line(Action.FOUND, "meter", name, existing_meter.id))
            result.problems.extend(meter_problems(existing_meter))
            meter_ids[event_type] = existing_meter.id
            continue
        created_meter = await catalog.create_meter(
            event_name=name,
            display_name=display_name(event_type),
            customer_payload_key=CUSTOMER_PAYLOAD_KEY,
            value_payload_key=VALUE_PAYLOAD_KEY,
        )
        record(Line(Action.CREATED, "meter", name, created_meter.id))
        meter_ids[event_type] = created_meter.id

    # Products and prices
    wanted = {plan.tier: desired_prices(plan, meter_ids, base_fees) for plan in paid}
    existing_prices = await catalog.prices_by_lookup_key(
        [price.lookup_key for prices in wanted.values() for price in prices]
    )
    products_by_tier: dict[str, str] = {}
    if paid:
        for product in await catalog.active_products():
            tier_value = product.metadata.get(PRODUCT_METADATA_KEY)
            if tier_value is not None:
                products_by_tier.setdefault(tier_value, product.id)
    for plan in paid:
        tier = plan.tier
        base_price = existing_prices.get(base_price_lookup_key(tier))
        product_id = products_by_tier.get(tier.value)
        if product_id is None and base_price is not None and base_price.product:
            product_id = base_price.product  # made before the metadata key, or edited
        if product_id is not None:
            record(Line(Action.FOUND, "product", tier.value, product_id))
        else:
            product = await catalog.create_product(
                name=f"{PRODUCT_NAME} {tier.value.capitalize()}",
                description=f"{PRODUCT_NAME} {tier.value} tier: monthly fee and usage",
                metadata={PRODUCT_METADATA_KEY: tier.value},
            )
            product_id = product.id
            record(Line(Action.CREATED, "product", tier.value, product_id))

        for desired in wanted[tier]:
            existing = existing_prices.get(desired.lookup_key)
            action = decide_price(desired.spec, existing, desired.version)
            if action is Action.FOUND and existing is not None:
                record(Line(Action.FOUND, "price", desired.lookup_key, existing.id))
                continue
            created = await catalog.create_price(
                lookup_key=desired.lookup_key,
                product=product_id,
                spec=desired.spec,
                nickname=desired.nickname,
                metadata=desired.metadata,
                transfer_lookup_key=action is Action.MOVED,
            )
            note = f"from {existing.id}" if existing is not None else ""
            record(Line(action, "price", desired.lookup_key, created.id, note=note))

    # Webhooks
    if urls is not None:
        snapshot_url, thin_url = urls
        endpoint = next(
            (e for e in await catalog.webhook_endpoints() if e.url == snapshot_url), None
        )
        if endpoint is not None:
            record(Line(Action.FOUND, "webhook_endpoint", snapshot_url, endpoint.id))
            result.problems.extend(webhook_problems(endpoint, api_version))
        else:
            endpoint = await catalog.create_webhook_endpoint(
                url=snapshot_url,
                enabled_events=SNAPSHOT_EVENTS,
                api_version=api_version,
                description="Meterline: subscriptions, invoices, checkout",
            )
            record(
                Line(
                    Action.CREATED,
                    "webhook_endpoint",
                    snapshot_url,
                    endpoint.id,
                    secret=endpoint.secret,
                )
            )

        destination: StripeEventDestination | None = next(
            (
                d
                for d in await catalog.event_destinations()
                if d.url == thin_url and d.event_payload == "thin"
            ),
            None,
        )
        if destination is not None:
            record(Line(Action.FOUND, "event_destination", thin_url, destination.id))
            missing = missing_events(destination.enabled_events, THIN_EVENTS)
            if missing:
                result.problems.append(
                    f"event destination {destination.id} does not send {', '.join(missing)}"
                )
        else:
            destination = await catalog.create_thin_event_destination(
                name=THIN_DESTINATION_NAME,
                description="Meterline: meter error reports (thin events)",
                url=thin_url,
                enabled_events=THIN_EVENTS,
            )
            record(
                Line(
                    Action.CREATED,
                    "event_destination",
                    thin_url,
                    destination.id,
                    secret=destination.signing_secret,
                )
            )
    return result
