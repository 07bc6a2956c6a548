"""The Stripe objects `meterline setup-stripe` finds or creates: Billing Meters, products,
prices (by lookup key), the snapshot webhook endpoint and the thin event destination.

Every Stripe call of the set-up lives here. What comes back is turned into small frozen
records (amounts as Decimal, in minor units), so the decisions in
`meterline.services.stripe_setup` never touch a Stripe object.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any, cast

import stripe

if TYPE_CHECKING:
    from stripe.params import PriceCreateParams, PriceCreateParamsTier, WebhookEndpointCreateParams
    from stripe.params.v2.core import EventDestinationCreateParams

# Stripe accepts at most 10 lookup keys per price list call.
LOOKUP_KEYS_PER_CALL = 10
PAGE_SIZE = 100
V2_PAGE_SIZE = 20


def decimal_of(value: Any) -> Decimal:
    """An amount as Stripe returns it (int, decimal string or Decimal) as an exact Decimal."""
    if isinstance(value, float):  # never: Stripe's JSON decimals are strings
        raise TypeError("float amount")
    return Decimal(str(value))


def plain(amount: Decimal) -> Decimal:
    """`Decimal("5.00")` -> `Decimal("5")`, `Decimal("500")` stays `500` (never `5E+2`): the
    SDK sends str(amount), and Stripe wants a plain decimal string."""
    return Decimal(format(amount.normalize(), "f"))


@dataclass(frozen=True)
class PriceTier:
    up_to: int | None  # None = "inf"
    unit_amount_decimal: Decimal  # minor units (cents) per unit
    flat_amount_decimal: Decimal = Decimal(0)


@dataclass(frozen=True)
class PriceSpec:
    """What a recurring price bills. Two prices with equal specs charge the same.

    Amounts are Decimal minor units (cents for USD); `==` on Decimal ignores trailing zeros.
    """

    currency: str
    usage_type: str  # "licensed" | "metered"
    interval: str = "month"
    interval_count: int = 1
    meter: str | None = None  # metered prices only
    unit_amount_decimal: Decimal | None = None  # per-unit prices
    tiers: tuple[PriceTier, ...] = ()  # graduated prices (tiers_mode=graduated)

    @property
    def billing_scheme(self) -> str:
        return "tiered" if self.tiers else "per_unit"


@dataclass(frozen=True)
class StripeMeter:
    id: str
    event_name: str
    display_name: str
    formula: str | None
    customer_payload_key: str | None
    value_payload_key: str | None


@dataclass(frozen=True)
class StripeProduct:
    id: str
    name: str
    metadata: Mapping[str, str]


# The plan version a price bills (billing/plans.py), in its metadata.
PLAN_VERSION_METADATA_KEY = "meterline_plan_version"


def price_version(metadata: Mapping[str, str]) -> int:
    """The plan version a Stripe price bills (version 1 when it predates versions)."""
    try:
        return max(1, int(metadata.get(PLAN_VERSION_METADATA_KEY, "1")))
    except ValueError:
        return 1


@dataclass(frozen=True)
class StripePrice:
    id: str
    lookup_key: str | None
    product: str
    active: bool
    spec: PriceSpec | None  # None: a shape Meterline never creates (volume tiers, one-off, ...)
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class StripeWebhookEndpoint:
    id: str
    url: str
    api_version: str | None
    enabled_events: tuple[str, ...]
    secret: str | None  # only in the answer to the create call


@dataclass(frozen=True)
class StripeEventDestination:
    id: str
    url: str | None
    event_payload: str
    enabled_events: tuple[str, ...]
    signing_secret: str | None  # only in the answer to the create call


# --- reading Stripe objects ----------------------------------------------------------------


def _data(obj: Any) -> dict[str, Any]:
    if isinstance(obj, dict):
        return obj
    return cast(dict[str, Any], obj.to_dict())


def _meter(obj: Any) -> StripeMeter:
    d = _data(obj)
    return StripeMeter(
        id=d["id"],
        event_name=d["event_name"],
        display_name=d.get("display_name") or "",
        formula=(d.get("default_aggregation") or {}).get("formula"),
        customer_payload_key=(d.get("customer_mapping") or {}).get("event_payload_key"),
        value_payload_key=(d.get("value_settings") or {}).get("event_payload_key"),
    )


def _product(obj: Any) -> StripeProduct:
    d = _data(obj)
    return StripeProduct(
        id=d["id"], name=d.get("name") or "", metadata=dict(d.get("metadata") or {})
    )


def _amount(decimal_field: Any, int_field: Any) -> Decimal | None:
    if decimal_field is not None:
        return decimal_of(decimal_field)
    if int_field is not None:
        return decimal_of(int_field)
    return None


def price_spec_of(d: Mapping[str, Any]) -> PriceSpec | None:
    """The spec of a Stripe price (its JSON/`to_dict()` form), or None when it is of a kind
    Meterline never creates, so that it can never be mistaken for a desired one."""
    recurring = d.get("recurring")
    if d.get("type") != "recurring" or not recurring:
        return None
    if d.get("transform_quantity") or d.get("custom_unit_amount"):
        return None
    tiers: tuple[PriceTier, ...] = ()
    unit_amount: Decimal | None = None
    if d.get("billing_scheme") == "tiered":
        raw_tiers = d.get("tiers")
        if d.get("tiers_mode") != "graduated" or not raw_tiers:
            return None
        parsed = []
        for tier in raw_tiers:
            amount = _amount(tier.get("unit_amount_decimal"), tier.get("unit_amount"))
            flat = _amount(tier.get("flat_amount_decimal"), tier.get("flat_amount"))
            parsed.append(
                PriceTier(
                    up_to=tier.get("up_to"),
                    unit_amount_decimal=amount if amount is not None else Decimal(0),
                    flat_amount_decimal=flat if flat is not None else Decimal(0),
                )
            )
        tiers = tuple(parsed)
    else:
        unit_amount = _amount(d.get("unit_amount_decimal"), d.get("unit_amount"))
        if unit_amount is None:
            return None
    return PriceSpec(
        currency=str(d.get("currency") or "").lower(),
        usage_type=recurring.get("usage_type") or "licensed",
        interval=recurring.get("interval") or "",
        interval_count=int(recurring.get("interval_count") or 1),
        meter=recurring.get("meter"),
        unit_amount_decimal=unit_amount,
        tiers=tiers,
    )


def _price(obj: Any) -> StripePrice:
    d = _data(obj)
    product = d.get("product")
    if isinstance(product, Mapping):  # expanded
        product = product.get("id")
    return StripePrice(
        id=d["id"],
        lookup_key=d.get("lookup_key"),
        product=str(product or ""),
        active=bool(d.get("active")),
        spec=price_spec_of(d),
        metadata={str(k): str(v) for k, v in (d.get("metadata") or {}).items()},
    )


def _webhook_endpoint(obj: Any) -> StripeWebhookEndpoint:
    d = _data(obj)
    return StripeWebhookEndpoint(
        id=d["id"],
        url=d.get("url") or "",
        api_version=d.get("api_version"),
        enabled_events=tuple(d.get("enabled_events") or ()),
        secret=d.get("secret"),
    )


def _event_destination(obj: Any) -> StripeEventDestination:
    d = _data(obj)
    endpoint = d.get("webhook_endpoint") or {}
    return StripeEventDestination(
        id=d["id"],
        url=endpoint.get("url"),
        event_payload=d.get("event_payload") or "",
        enabled_events=tuple(d.get("enabled_events") or ()),
        signing_secret=endpoint.get("signing_secret"),
    )


def _chunks(items: Sequence[str], size: int) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# --- writing -------------------------------------------------------------------------------


def price_create_params(
    *,
    lookup_key: str,
    product: str,
    spec: PriceSpec,
    nickname: str,
    metadata: Mapping[str, str],
    transfer_lookup_key: bool,
) -> PriceCreateParams:
    params: PriceCreateParams = {
        "currency": spec.currency,
        "product": product,
        "lookup_key": lookup_key,
        "nickname": nickname,
        "metadata": dict(metadata),
        "billing_scheme": spec.billing_scheme,
        "recurring": {
            "interval": spec.interval,
            "interval_count": spec.interval_count,
            "usage_type": spec.usage_type,
        },
    }
    if spec.meter is not None:
        params["recurring"]["meter"] = spec.meter
    if spec.tiers:
        params["tiers_mode"] = "graduated"
        tiers: list[PriceCreateParamsTier] = []
        for tier in spec.tiers:
            entry: PriceCreateParamsTier = {
                "up_to": "inf" if tier.up_to is None else tier.up_to,
                "unit_amount_decimal": plain(tier.unit_amount_decimal),
            }
            if tier.flat_amount_decimal:
                entry["flat_amount_decimal"] = plain(tier.flat_amount_decimal)
            tiers.append(entry)
        params["tiers"] = tiers
    elif spec.unit_amount_decimal is not None:
        amount = plain(spec.unit_amount_decimal)
        if amount == amount.to_integral_value():
            params["unit_amount"] = int(amount)  # whole cents: the plain integer field
        else:
            params["unit_amount_decimal"] = amount
    if transfer_lookup_key:
        params["transfer_lookup_key"] = True
    return params


class StripeCatalog:
    """The set-up's Stripe calls, on one `StripeClient` (see `client.make_client`)."""

    def __init__(self, client: stripe.StripeClient) -> None:
        self._client = client

    # Meters

    async def active_meters(self) -> list[StripeMeter]:
        page = await self._client.v1.billing.meters.list_async(
            params={"status": "active", "limit": PAGE_SIZE}
        )
        return [_meter(m) async for m in page.auto_paging_iter()]

    async def create_meter(
        self,
        *,
        event_name: str,
        display_name: str,
        customer_payload_key: str,
        value_payload_key: str,
    ) -> StripeMeter:
        meter = await self._client.v1.billing.meters.create_async(
            params={
                "display_name": display_name,
                "event_name": event_name,
                "default_aggregation": {"formula": "sum"},
                "customer_mapping": {
                    "type": "by_id",
                    "event_payload_key": customer_payload_key,
                },
                "value_settings": {"event_payload_key": value_payload_key},
            }
        )
        return _meter(meter)

    # Products

    async def active_products(self) -> list[StripeProduct]:
        page = await self._client.v1.products.list_async(
            params={"active": True, "limit": PAGE_SIZE}
        )
        return [_product(p) async for p in page.auto_paging_iter()]

    async def create_product(
        self, *, name: str, description: str, metadata: Mapping[str, str]
    ) -> StripeProduct:
        product = await self._client.v1.products.create_async(
            params={"name": name, "description": description, "metadata": dict(metadata)}
        )
        return _product(product)

    # Prices

    async def prices_by_lookup_key(self, lookup_keys: Sequence[str]) -> dict[str, StripePrice]:
        """The price holding each lookup key, active or not (a key stays on an archived price
        until it is transferred). Keys no price holds are absent."""
        found: dict[str, StripePrice] = {}
        for chunk in _chunks(list(lookup_keys), LOOKUP_KEYS_PER_CALL):
            page = await self._client.v1.prices.list_async(
                params={"lookup_keys": list(chunk), "limit": PAGE_SIZE, "expand": ["data.tiers"]}
            )
            async for obj in page.auto_paging_iter():
                price = _price(obj)
                key = price.lookup_key
                if key is None:
                    continue
                if price.spec is None and _data(obj).get("billing_scheme") == "tiered":
                    # `tiers` comes only when expanded: ask for this one price explicitly.
                    price = await self.price(price.id)
                found[key] = price
        return found

    async def price(self, price_id: str) -> StripePrice:
        obj = await self._client.v1.prices.retrieve_async(price_id, params={"expand": ["tiers"]})
        return _price(obj)

    async def create_price(
        self,
        *,
        lookup_key: str,
        product: str,
        spec: PriceSpec,
        nickname: str,
        metadata: Mapping[str, str],
        transfer_lookup_key: bool,
    ) -> StripePrice:
        params = price_create_params(
            lookup_key=lookup_key,
            product=product,
            spec=spec,
            nickname=nickname,
            metadata=metadata,
            transfer_lookup_key=transfer_lookup_key,
        )
        params["expand"] = ["tiers"]
        return _price(await self._client.v1.prices.create_async(params=params))

    # Webhooks

    async def webhook_endpoints(self) -> list[StripeWebhookEndpoint]:
        page = await self._client.v1.webhook_endpoints.list_async(params={"limit": PAGE_SIZE})
        return [_webhook_endpoint(w) async for w in page.auto_paging_iter()]

    async def create_webhook_endpoint(
        self, *, url: str, enabled_events: Sequence[str], api_version: str, description: str
    ) -> StripeWebhookEndpoint:
        # The SDK types `enabled_events` and `api_version` as closed literal lists.
        params = cast(
            "WebhookEndpointCreateParams",
            {
                "url": url,
                "enabled_events": list(enabled_events),
                "api_version": api_version,
                "description": description,
            },
        )
        return _webhook_endpoint(await self._client.v1.webhook_endpoints.create_async(params))

    async def event_destinations(self) -> list[StripeEventDestination]:
        # The URL is redacted unless asked for.
        page = await self._client.v2.core.event_destinations.list_async(
            params={"include": ["webhook_endpoint.url"], "limit": V2_PAGE_SIZE}
        )
        return [_event_destination(d) async for d in page.auto_paging_iter()]

    async def create_thin_event_destination(
        self, *, name: str, description: str, url: str, enabled_events: Sequence[str]
    ) -> StripeEventDestination:
        params: EventDestinationCreateParams = {
            "name": name,
            "description": description,
            "type": "webhook_endpoint",
            "event_payload": "thin",
            "enabled_events": list(enabled_events),
            "webhook_endpoint": {"url": url},
            # The signing secret comes back only when asked for, and only now.
            "include": ["webhook_endpoint.signing_secret", "webhook_endpoint.url"],
        }
        created = await self._client.v2.core.event_destinations.create_async(params)
        return _event_destination(created)
