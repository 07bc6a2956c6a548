"""A Stripe double: a real HTTP server on 127.0.0.1 that the real stripe SDK talks to.

Point a `stripe.StripeClient` at it with `base_addresses={"api": double.url, "meter_events":
double.url}` (or `STRIPE_API_BASE=double.url`). It serves the endpoints Meterline calls, shaped
like Stripe's: objects are built from Stripe's own fixtures (`fixtures3.json`, see
/work/shared/stripe/README.md) with the fields the double knows about set, v1 bodies are
form-encoded (`a[b]=c`, `a[0]=c`), v2 bodies JSON, errors are `{"error": {...}}` with Stripe's
status codes. Parameters are checked against the SDK's own `*Params` TypedDicts: an unknown
parameter or a missing required one is a 400, as on Stripe.

Behaviours that matter to an exactly-once sync:
- v1 meter events: validated synchronously (identifier <= 100 characters, value a whole number,
  timestamp within the past 35 days and at most 5 minutes ahead of `now`, an active meter for
  the event name); an unknown customer is accepted (Stripe checks it asynchronously); a repeated
  identifier answers 400 "An event already exists with identifier ..."; a second call for one
  (customer, meter) while one is in flight answers 429 (`code=rate_limit`).
- `Idempotency-Key` on POST replays the first answer, as Stripe does.
- Failure injection (`fail`): answer 429 or 500, stall past the client's timeout and then
  process, process and drop the connection unanswered, or drop it before processing; for
  every matching request, or only the next `times` of them.

Subscriptions and invoices (for the webhooks work):
- GET /v1/subscriptions filters by `customer`, `price`, `created` and `status` (default: all but
  canceled and incomplete_expired; `all`; `ended` = canceled + incomplete_expired), newest first.
- Invoices embed at most `embedded_invoice_lines` (10) lines, `has_more` when there are more;
  GET /v1/invoices/{id}/lines pages over all of them, in the invoice's order.
- Expansion follows any path through lists and objects (`lines.data.pricing.price_details.price`
  on an invoice, `data.`-prefixed on lists); a null on the way ends that branch, as on Stripe.
- `invoice_for_month` issues a month's subscription_cycle invoice as Stripe does on the 1st after
  it: metered lines priced from the meter events the double received in that month, licensed
  lines for the next month; `finalize_invoice`, `pay_invoice`, `fail_invoice_payment`,
  `void_invoice`, `mark_uncollectible` move it on; `update_*` override fields.

Plan changes (checkout, schedules, the portal):
- POST /v1/checkout/sessions (mode=subscription, hosted): `line_items` with an active recurring
  `price`, `quantity` required for licensed prices and refused for metered ones (Stripe's
  messages), `success_url` required, `customer` must exist, `subscription_data` with
  `billing_cycle_anchor` (in the future, before the next natural billing date), `metadata`,
  `proration_behavior`. GET /v1/checkout/sessions/{id}. `complete_checkout` is the customer
  paying: customer created if none, subscription started now with the anchor and a prorated
  first period [now, anchor), session "complete"; returns the checkout.session.completed event.
  An open session past its `expires_at` reads as "expired". POST
  /v1/checkout/sessions/{id}/expire expires an open session and refuses (400) one that is
  expired or complete, as Stripe does.
- POST /v1/subscriptions/{id}: `cancel_at_period_end` (refused while a schedule manages the
  subscription), `metadata`, `cancellation_details`, `proration_behavior`; a canceled
  subscription only takes metadata and cancellation_details. DELETE /v1/subscriptions/{id}
  cancels now (`prorate`/`invoice_now` false only, `cancellation_details`); an ended one is 404
  "No such subscription", as on Stripe.
- Payments (API 2025-03-31+: an invoice no longer names its payment_intent or charge): paying an
  invoice records a PaymentIntent and an invoice payment, GET /v1/invoice_payments (`invoice`,
  `status`); POST /v1/refunds by `payment_intent` (whole or `amount`, `reason`, `metadata`;
  `charge_already_refunded` / `amount_too_large` when nothing or less is left). POST
  /v1/invoices/{id}/finalize (`auto_advance`) takes a draft; POST /v1/invoices/{id}/void an open
  or uncollectible invoice only.
- POST /v1/subscription_schedules `from_subscription` (one phase = the current items and period,
  end_behavior "release"); POST /v1/subscription_schedules/{id} `phases` (the first keeps the
  current phase's start, each next starts at the previous end; ends by `end_date`, `duration`
  or one interval), `end_behavior` release/cancel; .../release; GET.
- `advance_to(moment)` freezes `now`; `apply_schedules()` does what Stripe does by then in time
  order (phase changes on the boundary, release/cancel after the last phase, cancel_at_period_end
  at the period end, renewals) and returns the customer.subscription.* events.
- Previews bill the subscription's current items over their current period, so a preview after
  the 1st's phase change prices the new month with the new tier; `metered_subtotal` sums an
  invoice's or preview's metered lines.
- POST /v1/billing_portal/sessions (`customer` required and existing, `return_url`).
- Parameters Stripe knows but the double does not model are refused (400 naming them), never
  silently ignored; nested hashes are checked against the SDK's TypedDicts too.

Events and signatures:
- `snapshot_event` builds a v1 event as Stripe POSTs it to a webhook endpoint (the object's
  current rendering, the SDK's pinned API version) and GET /v1/events/{id} serves it.
- `add_thin_event` stores a v2 event served by GET /v2/core/events/{id} (404 `not_found` in
  the v2 error shape when unknown); `thin_notification` is the payload Stripe POSTs for it;
  `meter_error_data` builds the data of the meter error report events.
- `sign_payload` makes a `Stripe-Signature` header (`t=...,v1=...`) as Stripe signs deliveries.

The server runs in its own threads (never on the test's event loop); state is guarded by one
lock, so tests may read it at any time.
"""

from __future__ import annotations

import calendar
import collections
import contextlib
import copy
import hashlib
import hmac
import json
import operator
import os
import random
import re
import secrets
import socket
import string
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit

import stripe
import stripe.params as p1
import stripe.params.billing as pbilling
import stripe.params.billing_portal as pportal
import stripe.params.checkout as pcheckout
import stripe.params.v2.core as p2core

FailureKind = Literal["429", "500", "stall", "drop", "drop_before"]
Handler = Callable[["StripeDouble", "_Request"], dict[str, Any]]

DAY = 86_400
EVENT_MAX_AGE = 35 * DAY
EVENT_MAX_AHEAD = 5 * 60
ID_MAX_LENGTH = 100

# Request options the SDK's *Params TypedDicts carry for the old global API; never sent.
_REQUEST_OPTIONS = frozenset(
    {
        "api_key",
        "content_type",
        "headers",
        "idempotency_key",
        "max_network_retries",
        "stripe_account",
        "stripe_context",
        "stripe_version",
    }
)


# --- fixtures -------------------------------------------------------------------------------------


def _fixture_candidates() -> list[Path]:
    here = Path(__file__).resolve()
    found = [Path(os.environ["STRIPE_FIXTURES"])] if os.environ.get("STRIPE_FIXTURES") else []
    return [
        *found,
        here.with_name("fixtures3.json"),
        here.parents[2] / "shared" / "stripe" / "fixtures3.json",
    ]


@cache
def _fixtures() -> dict[str, Any]:
    for path in _fixture_candidates():
        if path.is_file():
            resources: dict[str, Any] = json.loads(path.read_text())["resources"]
            return resources
    raise FileNotFoundError(
        "Stripe fixtures3.json not found (set STRIPE_FIXTURES); looked in "
        + ", ".join(str(p) for p in _fixture_candidates())
    )


def _fixture(name: str) -> dict[str, Any]:
    return copy.deepcopy(_fixtures()[name])


# --- small helpers --------------------------------------------------------------------------------

_ALNUM = string.ascii_letters + string.digits


def _new_id(prefix: str) -> str:
    return f"{prefix}_" + "".join(secrets.choice(_ALNUM) for _ in range(24))


def _month_bounds(ts: int) -> tuple[int, int]:
    moment = datetime.fromtimestamp(ts, UTC)
    start = datetime(moment.year, moment.month, 1, tzinfo=UTC)
    return calendar.timegm(start.timetuple()), _add_month(calendar.timegm(start.timetuple()))


def _add_month(ts: int) -> int:
    moment = datetime.fromtimestamp(ts, UTC)
    year, month = (moment.year + 1, 1) if moment.month == 12 else (moment.year, moment.month + 1)
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return calendar.timegm(moment.replace(year=year, month=month, day=day).timetuple())


def _iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _fmt_decimal(value: Decimal) -> str:
    return format(value.normalize(), "f")


class StripeApiError(Exception):
    """An error answer, rendered as Stripe renders it."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"type": self.type, "message": self.message}
        if self.param is not None:
            error["param"] = self.param
        if self.code is not None:
            error["code"] = self.code
        return {"error": error}


def _invalid(message: str, param: str | None = None, code: str | None = None) -> StripeApiError:
    return StripeApiError(400, message, param=param, code=code)


def _missing(param: str) -> StripeApiError:
    return _invalid(f"Missing required param: {param}.", param, "parameter_missing")


def _no_such(kind: str, object_id: str, param: str = "id", status: int = 404) -> StripeApiError:
    noun = _KINDS[kind].noun if kind in _KINDS else _NOUNS.get(kind, kind)
    return StripeApiError(
        status, f"No such {noun}: '{object_id}'", param=param, code="resource_missing"
    )


def _v2_not_found(kind: str, object_id: str) -> StripeApiError:
    """A v2 404: `{"error": {"type", "code": "not_found", "message"}}`, no `param`."""
    return StripeApiError(404, f"No such {_NOUNS[kind]}: '{object_id}'", code="not_found")


# --- webhook signatures ---------------------------------------------------------------------------


def sign_payload(
    payload: bytes | str,
    secret: str,
    *,
    timestamp: int | None = None,
    schemes: tuple[str, ...] = ("v1",),
) -> str:
    """A `Stripe-Signature` header for `payload`: `t=<ts>,v1=<hex HMAC-SHA256 of "<ts>.<payload>">`,
    one signature per scheme (("v0",) makes a header the SDK refuses). `timestamp` defaults to
    the real time, which the SDK's tolerance check uses (not the double's `now`)."""
    ts = int(time.time()) if timestamp is None else timestamp
    body = payload.decode("utf-8") if isinstance(payload, bytes) else payload
    signature = hmac.new(secret.encode(), f"{ts}.{body}".encode(), hashlib.sha256).hexdigest()
    return ",".join([f"t={ts}", *(f"{scheme}={signature}" for scheme in schemes)])


# --- request parameters ---------------------------------------------------------------------------

_KEY = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$")
_SEGMENT = re.compile(r"\[([^\[\]]*)\]")


def parse_form(text: str) -> dict[str, Any]:
    """Decode Stripe's form encoding: `a[b]=c` nests, `a[0]=c` and `a[]=c` make lists."""
    root: dict[str, Any] = {}
    for key, value in parse_qsl(text, keep_blank_values=True):
        match = _KEY.match(key)
        if match is None:
            raise _invalid(f"Invalid parameter name: {key}", key)
        path = [match.group(1), *_SEGMENT.findall(match.group(2))]
        node = root
        for depth, segment in enumerate(path):
            name = str(len(node)) if segment == "" else segment
            if depth == len(path) - 1:
                node[name] = value
                break
            child = node.setdefault(name, {})
            if not isinstance(child, dict):
                raise _invalid(f"Invalid hash: {key}", key)
            node = child
    result: dict[str, Any] = _listify(root)
    return result


def _listify(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    converted = {k: _listify(v) for k, v in node.items()}
    if converted and all(k.isdigit() for k in converted):
        return [converted[k] for k in sorted(converted, key=int)]
    return converted


def _name(parent: str, key: str) -> str:
    return f"{parent}[{key}]" if parent else key


class _Params:
    """Typed access to one level of request parameters, with Stripe's error messages."""

    def __init__(self, data: dict[str, Any], prefix: str = "") -> None:
        self.data = data
        self.prefix = prefix

    def __contains__(self, key: str) -> bool:
        return self.data.get(key) not in (None, "")

    def text(self, key: str, *, required: bool = False, max_length: int | None = None) -> Any:
        value = self.data.get(key)
        param = _name(self.prefix, key)
        if value is None or value == "":
            if required:
                raise _missing(param)
            return None
        if not isinstance(value, str):
            raise _invalid(f"Invalid string: {value!r}", param)
        if max_length is not None and len(value) > max_length:
            raise _invalid(
                f"Invalid string: {value[:20]}...; must be at most {max_length} characters",
                param,
            )
        return value

    def choice(self, key: str, options: tuple[str, ...], *, default: str | None = None) -> Any:
        value = self.text(key, required=default is None) or default
        if value not in options:
            raise _invalid(
                f"Invalid {key}: must be one of {', '.join(options)}", _name(self.prefix, key)
            )
        return value

    def integer(self, key: str, *, required: bool = False) -> int | None:
        value = self.data.get(key)
        if value is None or value == "":
            if required:
                raise _missing(_name(self.prefix, key))
            return None
        if isinstance(value, bool) or not re.fullmatch(r"-?\d+", str(value)):
            raise _invalid(f"Invalid integer: {value}", _name(self.prefix, key))
        return int(value)

    def decimal(self, key: str) -> Decimal | None:
        value = self.data.get(key)
        if value is None or value == "":
            return None
        try:
            number = Decimal(str(value))
        except InvalidOperation:
            number = Decimal("NaN")
        if not number.is_finite():
            raise _invalid(f"Invalid decimal: {value}", _name(self.prefix, key))
        return number

    def boolean(self, key: str) -> bool | None:
        value = self.data.get(key)
        if value is None or value == "":
            return None
        if isinstance(value, bool):
            return value
        if value in ("true", "false"):
            return bool(value == "true")
        raise _invalid(f"Invalid boolean: {value}", _name(self.prefix, key))

    def array(self, key: str, *, required: bool = False) -> list[Any]:
        value = self.data.get(key)
        if value is None or value == "":
            if required:
                raise _missing(_name(self.prefix, key))
            return []
        if not isinstance(value, list):
            raise _invalid("Invalid array", _name(self.prefix, key))
        return value

    def hash(self, key: str, *, required: bool = False) -> _Params:
        value = self.data.get(key)
        if value is None or value == "":
            if required:
                raise _missing(_name(self.prefix, key))
            value = {}
        if not isinstance(value, dict):
            raise _invalid("Invalid hash", _name(self.prefix, key))
        return _Params(value, _name(self.prefix, key))

    def metadata(self, current: dict[str, str] | None = None) -> dict[str, str]:
        """Merge `metadata[...]` into `current`; an empty value unsets a key, as on Stripe."""
        merged = dict(current or {})
        raw = self.data.get("metadata")
        if raw == "":
            return {}
        for key, value in self.hash("metadata").data.items():
            if value in ("", None):
                merged.pop(key, None)
            else:
                merged[key] = str(value)
        return merged


@dataclass
class _Request:
    method: str
    path: str
    args: dict[str, str]
    params: _Params
    v2: bool

    @property
    def expand(self) -> list[str]:
        return [str(path) for path in self.params.array("expand")]


# --- object kinds ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Kind:
    prefix: str
    fixture: str
    noun: str
    blank: dict[str, Any] = field(default_factory=dict)


_KINDS: dict[str, _Kind] = {
    "billing.meter": _Kind(
        "mtr",
        "billing.meter",
        "billing meter",
        {"event_time_window": None, "status": "active", "status_transitions": {}},
    ),
    "product": _Kind(
        "prod",
        "product",
        "product",
        {
            "default_price": None,
            "description": None,
            "images": [],
            "marketing_features": [],
            "metadata": {},
            "package_dimensions": None,
            "shippable": None,
            "statement_descriptor": None,
            "tax_code": None,
            "type": "service",
            "unit_label": None,
            "url": None,
        },
    ),
    "price": _Kind(
        "price",
        "price",
        "price",
        {
            "custom_unit_amount": None,
            "lookup_key": None,
            "metadata": {},
            "nickname": None,
            "recurring": None,
            "tax_behavior": "unspecified",
            "tiers_mode": None,
            "transform_quantity": None,
            "type": "one_time",
            "unit_amount": None,
            "unit_amount_decimal": None,
        },
    ),
    "webhook_endpoint": _Kind(
        "we",
        "webhook_endpoint",
        "webhook endpoint",
        {"api_version": None, "application": None, "description": None, "metadata": {}},
    ),
    "customer": _Kind(
        "cus",
        "customer",
        "customer",
        {"description": None, "discount": None, "email": None, "metadata": {}, "name": None},
    ),
    "subscription": _Kind(
        "sub",
        "subscription",
        "subscription",
        {
            "application": None,
            "application_fee_percent": None,
            "billing_cycle_anchor_config": None,
            "billing_thresholds": None,
            "cancel_at": None,
            "cancel_at_period_end": False,
            "canceled_at": None,
            "cancellation_details": {"comment": None, "feedback": None, "reason": None},
            "days_until_due": None,
            "description": None,
            "discounts": [],
            "ended_at": None,
            "latest_invoice": None,
            "next_pending_invoice_item_invoice": None,
            "pause_collection": None,
            "pending_invoice_item_interval": None,
            "pending_setup_intent": None,
            "pending_update": None,
            "schedule": None,
            "status": "active",
            "test_clock": None,
            "transfer_data": None,
            "trial_end": None,
            "trial_start": None,
        },
    ),
    "invoice": _Kind(
        "in",
        "invoice",
        "invoice",
        {
            "amount_overpaid": 0,
            "amount_paid": 0,
            "automatically_finalizes_at": None,
            "billing_reason": "subscription_cycle",
            "discounts": [],
            "due_date": None,
            "effective_at": None,
            "from_invoice": None,
            "last_finalization_error": None,
            "metadata": {},
            "number": None,
            "shipping_cost": None,
            "status_transitions": {
                "finalized_at": None,
                "marked_uncollectible_at": None,
                "paid_at": None,
                "voided_at": None,
            },
            "total_discount_amounts": [],
            "total_pretax_credit_amounts": [],
            "total_taxes": [],
            "webhooks_delivered_at": None,
        },
    ),
    "checkout.session": _Kind(
        "cs_test",
        "checkout.session",
        "checkout.session",
        {
            "adaptive_pricing": {"enabled": False},
            "after_expiration": None,
            "allow_promotion_codes": None,
            "amount_subtotal": None,
            "amount_total": None,
            "automatic_tax": {
                "enabled": False,
                "liability": None,
                "provider": None,
                "status": None,
            },
            "cancel_url": None,
            "client_reference_id": None,
            "collected_information": None,
            "consent": None,
            "consent_collection": None,
            "currency": None,
            "currency_conversion": None,
            "custom_fields": [],
            "custom_text": {
                "after_submit": None,
                "shipping_address": None,
                "submit": None,
                "terms_of_service_acceptance": None,
            },
            "customer": None,
            "customer_creation": None,
            "customer_details": None,
            "customer_email": None,
            "discounts": [],
            "invoice": None,
            "invoice_creation": None,
            "metadata": {},
            "mode": "subscription",
            "origin_context": None,
            "payment_intent": None,
            "payment_method_configuration_details": None,
            "payment_method_options": {},
            "payment_status": "unpaid",
            "permissions": None,
            "phone_number_collection": {"enabled": False},
            "recovered_from": None,
            "saved_payment_method_options": None,
            "setup_intent": None,
            "shipping_address_collection": None,
            "shipping_cost": None,
            "shipping_options": [],
            "status": "open",
            "subscription": None,
            "total_details": None,
            "ui_mode": "hosted_page",
            "wallet_options": None,
        },
    ),
    "subscription_schedule": _Kind(
        "sub_sched",
        "subscription_schedule",
        "subscription schedule",
        {
            "application": None,
            "billing_mode": {"type": "classic", "flexible": None},
            "canceled_at": None,
            "completed_at": None,
            "current_phase": None,
            "customer_account": None,
            "default_settings": {
                "application_fee_percent": None,
                "automatic_tax": {"enabled": False, "liability": None, "disabled_reason": None},
                "billing_cycle_anchor": "automatic",
                "billing_thresholds": None,
                "collection_method": "charge_automatically",
                "default_payment_method": None,
                "description": None,
                "invoice_settings": {
                    "account_tax_ids": None,
                    "days_until_due": None,
                    "issuer": {"type": "self"},
                },
                "on_behalf_of": None,
                "transfer_data": None,
            },
            "end_behavior": "release",
            "metadata": {},
            "pause_schedules": [],
            "phases": [],
            "released_at": None,
            "released_subscription": None,
            "status": "not_started",
            "subscription": None,
            "test_clock": None,
        },
    ),
    "billing_portal.session": _Kind(
        "bps",
        "billing_portal.session",
        "billing portal session",
        {
            "after_expiration": None,
            "customer_account": None,
            "flow": None,
            "locale": None,
            "on_behalf_of": None,
            "return_url": None,
        },
    ),
    "payment_intent": _Kind(
        "pi",
        "payment_intent",
        "payment_intent",
        {
            "amount_capturable": 0,
            "canceled_at": None,
            "cancellation_reason": None,
            "description": None,
            "last_payment_error": None,
            "metadata": {},
            "next_action": None,
            "processing": None,
            "shipping": None,
            "status": "succeeded",
            "transfer_data": None,
        },
    ),
    "invoice_payment": _Kind("inpay", "invoice_payment", "invoice payment"),
    "refund": _Kind(
        "re",
        "refund",
        "refund",
        {
            "balance_transaction": None,
            "metadata": {},
            "reason": None,
            "receipt_number": None,
            "source_transfer_reversal": None,
            "transfer_reversal": None,
        },
    ),
    "event": _Kind(
        "evt",
        "event",
        "event",
        {
            "api_version": None,
            "pending_webhooks": 1,
            "request": {"id": None, "idempotency_key": None},
        },
    ),
}

_V2_DESTINATION = "v2.core.event_destination"
_V2_EVENT = "v2.core.event"
_LINE_ITEM = "line_item"
# Nouns of what is not stored as a _Kind (error messages).
_NOUNS = {_V2_DESTINATION: "event destination", _V2_EVENT: "event", _LINE_ITEM: "line item"}
_INVOICE_STATUSES = ("draft", "open", "paid", "uncollectible", "void")
_SUBSCRIPTION_STATUSES = (
    "active",
    "canceled",
    "incomplete",
    "incomplete_expired",
    "past_due",
    "paused",
    "trialing",
    "unpaid",
)
_ENDED = ("canceled", "incomplete_expired")
# statuses whose periods Stripe keeps advancing
_RENEWING = ("active", "past_due", "trialing", "unpaid")
PAYMENT_RETRY_DELAY = 3 * DAY  # Smart Retries' next attempt after a failed payment
FIRST_ATTEMPT_DELAY = 3600  # Stripe attempts payment about an hour after finalizing


# --- routing --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Route:
    method: str
    pattern: re.Pattern[str]
    handler: Handler
    params: Any  # the SDK's *Params TypedDict: the parameters Stripe knows for this call
    # (customer, event_name) of a meter event: at most one such call in flight
    concurrency: Callable[[StripeDouble, _Params], tuple[str, str] | None] | None = None


def _route(
    method: str,
    template: str,
    handler: Handler,
    params: Any,
    concurrency: Callable[[StripeDouble, _Params], tuple[str, str] | None] | None = None,
) -> _Route:
    pattern = re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", template) + "$")
    return _Route(method, pattern, handler, params, concurrency)


def _check_params(route: _Route, params: _Params, v2: bool) -> None:
    known = (route.params.__required_keys__ | route.params.__optional_keys__) - _REQUEST_OPTIONS
    # v2 list pages come back as `page` tokens; stripe 16.1's async raw requests (thin events'
    # fetch_event_async) leak their `usage` telemetry into v2 queries: accepted there (Stripe's
    # answer is unverified), refused on v1 as any unknown parameter is
    known |= {"page", "usage"} if v2 else {"expand"}
    for key in params.data:
        if key not in known:
            raise _invalid(f"Received unknown parameter: {key}", key)
    for key in sorted(route.params.__required_keys__ - _REQUEST_OPTIONS):
        if key not in params.data:
            raise _missing(key)


def _check_keys(params: _Params, typed: Any) -> _Params:
    """Check a nested hash (`line_items[0]`, `phases[1][items][0]`, ...) against the SDK's
    TypedDict for it: unknown keys and missing required ones are 400s, as at the top level."""
    known = typed.__required_keys__ | typed.__optional_keys__
    for key in params.data:
        if key not in known:
            name = _name(params.prefix, key)
            raise _invalid(f"Received unknown parameter: {name}", name)
    for key in sorted(typed.__required_keys__):
        if params.data.get(key) in (None, ""):
            raise _missing(_name(params.prefix, key))
    return params


def _element(value: Any, prefix: str) -> _Params:
    if not isinstance(value, dict):
        raise _invalid("Invalid hash", prefix)
    return _Params(value, prefix)


def _only(params: _Params, supported: set[str]) -> None:
    """Refuse parameters Stripe knows but the double does not model (rather than ignore them)."""
    for key in params.data:
        if key not in supported and key != "expand":
            name = _name(params.prefix, key)
            raise _invalid(f"The Stripe double does not support {name} on this call.", name)


def _add_interval(ts: int, interval: str, count: int = 1) -> int:
    if interval in ("day", "week"):
        return ts + count * (DAY if interval == "day" else 7 * DAY)
    for _ in range(count * (12 if interval == "year" else 1)):
        ts = _add_month(ts)
    return ts


@dataclass
class _CheckoutPlan:
    """What a Checkout Session will subscribe the customer to (kept off the rendered session)."""

    lines: list[tuple[str, int | None]]  # (price id, quantity; None for metered)
    anchor: int | None
    proration_behavior: str
    metadata: dict[str, str]


@dataclass
class _FailureRule:
    kind: FailureKind
    share: float
    path_prefix: str
    stall_seconds: float
    rng: random.Random
    times: int | None = None  # hits left before the rule lifts itself; None = no limit

    def hits(self, path: str) -> bool:
        return path.startswith(self.path_prefix) and self.rng.random() < self.share


class _Dropped(Exception):
    """Close the connection without an answer."""


# --- the double -----------------------------------------------------------------------------------


class StripeDouble:
    """A fake Stripe API on 127.0.0.1 (a random free port), for the real stripe SDK."""

    api_key: str = "sk_test_double"

    def __init__(self) -> None:
        self.url = ""
        self.now: Callable[[], int] | None = None
        self.delay = 0.0
        self.identifiers_seen: collections.Counter[str] = collections.Counter()
        self.requests: list[tuple[str, str]] = []
        self.max_concurrent_per_customer_meter = 0
        # url -> signing secret of every webhook endpoint / event destination created
        self.signing_secrets: dict[str, str] = {}
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._objects: dict[str, dict[str, dict[str, Any]]] = {kind: {} for kind in _KINDS}
        self._objects[_V2_DESTINATION] = {}
        self._objects[_V2_EVENT] = {}
        # lines an invoice embeds (`lines.has_more` beyond); GET /v1/invoices/{id}/lines has all
        self.embedded_invoice_lines = 10
        self._invoice_numbers = 0
        self._checkouts: dict[str, _CheckoutPlan] = {}
        self._portal_configuration = _new_id("bpc")
        self._events: list[dict[str, Any]] = []
        self._in_flight: collections.Counter[tuple[str, str]] = collections.Counter()
        self._failures: list[_FailureRule] = []
        self._idempotent: dict[str, tuple[str, dict[str, Any], int, dict[str, Any]]] = {}
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()

    # lifecycle

    def start(self) -> None:
        if self._server is not None:
            return
        self._stopping.clear()
        self._server = _Server(("127.0.0.1", 0), _HTTPHandler)
        self._server.double = self
        host, port = self._server.server_address[:2]
        self.url = f"http://{host!s}:{port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="stripe-double",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()  # wakes stalled and delayed requests
        server.shutdown()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> StripeDouble:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # failure injection

    def fail(
        self,
        kind: FailureKind,
        share: float,
        *,
        path_prefix: str = "/v1/billing/meter_events",
        seed: int = 0,
        stall_seconds: float = 30.0,
        times: int | None = None,
    ) -> None:
        """Fail `share` of the requests whose path starts with `path_prefix` (a seeded draw per
        request), the first `times` of them only when given. A rule replaces one of the same
        kind and prefix; rules of other kinds add up (the first whose draw hits applies)."""
        if kind not in ("429", "500", "stall", "drop", "drop_before"):
            raise ValueError(f"unknown failure kind {kind!r}")
        rule = _FailureRule(kind, share, path_prefix, stall_seconds, random.Random(seed), times)
        with self._lock:
            self._failures = [
                r for r in self._failures if (r.kind, r.path_prefix) != (kind, path_prefix)
            ]
            self._failures.append(rule)

    def heal(self) -> None:
        with self._lock:
            self._failures = []

    # state for assertions

    def meter_total(self, customer: str, event_name: str) -> int:
        with self._lock:
            return sum(
                e["value"]
                for e in self._events
                if e["customer"] == customer and e["event_name"] == event_name
            )

    def meter_events(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(e) for e in self._events]

    def invoice_payments(self, invoice_id: str) -> list[dict[str, Any]]:
        """The invoice payments of an invoice (one per payment made on it), oldest first."""
        with self._lock:
            return [
                self._render("invoice_payment", p)
                for p in self._objects["invoice_payment"].values()
                if p["invoice"] == invoice_id
            ]

    def refunds(self) -> list[dict[str, Any]]:
        """Every refund made (POST /v1/refunds), oldest first."""
        with self._lock:
            return [self._render("refund", r) for r in self._objects["refund"].values()]

    def get_object(self, object_id: str) -> dict[str, Any]:
        """The stored object with that id, as the API renders it (without expansions)."""
        with self._lock:
            kind, obj = self._find(object_id)
            return self._render(kind, obj)

    # seeding

    def add_customer(self, customer_id: str | None = None) -> str:
        with self._lock:
            return str(self._new("customer", {"id": customer_id} if customer_id else {})["id"])

    def add_meter(self, event_name: str, *, display_name: str | None = None) -> str:
        """An active sum meter keyed by `stripe_customer_id` / `value`."""
        with self._lock:
            params = {
                "display_name": display_name or event_name,
                "event_name": event_name,
                "default_aggregation": {"formula": "sum"},
            }
            return str(self._create_meter(_Params(params))["id"])

    def add_subscription(
        self,
        customer: str,
        price_ids: list[str],
        *,
        metadata: dict[str, str] | None = None,
        period: tuple[int, int] | None = None,
        start: int | None = None,
        status: str = "active",
    ) -> str:
        """A subscription with one item per price. Its period is this UTC month of `now`, unless
        `period` = (start, end) says otherwise, or `start` starts it then with a prorated first
        period up to the next UTC 1st (the billing cycle anchor), as Meterline's checkout does.
        An unknown customer is created."""
        if period is not None and start is not None:
            raise ValueError("give either period or start, not both")
        with self._lock:
            if customer not in self._objects["customer"]:
                self.add_customer(customer)
            prices = [self._get("price", price_id, param="price") for price_id in price_ids]
            if start is not None:
                period = (start, _month_bounds(start)[1])
            begin, end = period or _month_bounds(self._now())
            subscription = self._make_subscription(
                customer,
                [(price, None) for price in prices],
                metadata=metadata,
                period=(begin, end),
                anchor=end if start is not None else begin,
                status=status,
            )
            return str(subscription["id"])

    def update_subscription(self, sub_id: str, **fields: Any) -> dict[str, Any]:
        """Override top-level fields (status="past_due", cancel_at_period_end=True, ...)."""
        with self._lock:
            subscription = self._get("subscription", sub_id)
            subscription.update(copy.deepcopy(fields))
            return self._render("subscription", subscription)

    def cancel_subscription(self, sub_id: str) -> dict[str, Any]:
        """Cancel now: status "canceled", canceled_at and ended_at = now."""
        with self._lock:
            now = self._now()
            return self.update_subscription(
                sub_id, status="canceled", canceled_at=now, ended_at=now
            )

    def set_subscription_prices(self, sub_id: str, price_ids: list[str]) -> dict[str, Any]:
        """Replace the items with one per price (created now), keeping the current period."""
        with self._lock:
            subscription = self._get("subscription", sub_id)
            prices = [self._get("price", price_id, param="price") for price_id in price_ids]
            current = subscription["items"]["data"]
            begin, end = (
                (current[0]["current_period_start"], current[0]["current_period_end"])
                if current
                else _month_bounds(self._now())
            )
            # New items are created now (as Stripe does on an update or a schedule's phase).
            items = [
                self._subscription_item(sub_id, p, begin, end, created=self._now()) for p in prices
            ]
            subscription["items"].update(data=items, total_count=len(items))
            return self._render("subscription", subscription)

    # checkout, schedules and time

    def complete_checkout(self, session_id: str) -> dict[str, Any]:
        """The customer pays an open Checkout Session now: its customer is created if it named
        none; a subscription starts now with one item per line item, the session's
        subscription_data metadata, and its billing cycle anchor (a prorated first period
        [now, anchor)); the session becomes "complete". Returns the checkout.session.completed
        snapshot event. ValueError if the session is not open or has expired."""
        with self._lock:
            session = self._get("checkout.session", session_id)
            now = self._now()
            if session["status"] != "open":
                raise ValueError(f"checkout session {session_id} is {session['status']}")
            if now >= session["expires_at"]:
                session.update(status="expired", url=None)
                raise ValueError(f"checkout session {session_id} has expired")
            plan = self._checkouts[session_id]
            customer_id = session["customer"]
            if customer_id is None:
                customer = self._new("customer", {"email": session["customer_email"]})
                customer_id = customer["id"]
            email = self._objects["customer"][customer_id]["email"]
            lines = [(self._objects["price"][pid], quantity) for pid, quantity in plan.lines]
            recurring = next(p for p, _ in lines if p["recurring"])["recurring"]
            natural = _add_interval(now, recurring["interval"], recurring["interval_count"])
            end = natural if plan.anchor is None else plan.anchor
            subscription = self._make_subscription(
                customer_id,
                lines,
                metadata=plan.metadata,
                period=(now, end),
                anchor=now if plan.anchor is None else plan.anchor,
            )
            free_first_period = plan.anchor is not None and plan.proration_behavior == "none"
            session.update(
                status="complete",
                payment_status="no_payment_required" if free_first_period else "paid",
                customer=customer_id,
                customer_details={
                    "address": None,
                    "business_name": None,
                    "email": email,
                    "individual_name": None,
                    "name": None,
                    "phone": None,
                    "tax_exempt": "none",
                    "tax_ids": [],
                },
                subscription=subscription["id"],
                url=None,
            )
            return self.snapshot_event("checkout.session.completed", session_id)

    def advance_to(self, moment: int) -> None:
        """Freeze `now` at `moment` (`double.now` stays a callable). Nothing else happens until
        `apply_schedules()`."""
        self.now = lambda: moment

    def apply_schedules(self) -> list[dict[str, Any]]:
        """Do what Stripe does by `now`, in time order: an active schedule whose current phase
        ended moves to its next phase (the subscription's items replaced by the phase's prices,
        created at the phase start, period [phase start, +1 month)) or, after its last phase,
        releases the subscription (end_behavior "release") or cancels it ("cancel"); a
        subscription with cancel_at_period_end whose period ended is canceled at the period end;
        any other live subscription whose period ended renews for a month. Returns the
        customer.subscription.updated / .deleted snapshot events Stripe sends, oldest first."""
        with self._lock:
            now = self._now()
            events: list[dict[str, Any]] = []
            while (due := self._next_due(now)) is not None:
                _, kind, object_id = due
                if kind == "subscription_schedule":
                    events.append(self._advance_schedule(self._objects[kind][object_id]))
                else:
                    events.append(self._advance_period(self._objects[kind][object_id]))
            return events

    def metered_subtotal(self, invoice: dict[str, Any] | str) -> int:
        """The sum (cents) of the lines of an invoice or preview whose price is metered: the
        figure Meterline's monthly overage total must equal. Takes an invoice id, or a rendered
        invoice / preview (`obj.to_dict()`); a stored invoice's lines are all read even when the
        rendering embeds only some of them."""
        with self._lock:
            if isinstance(invoice, str):
                lines = self._get("invoice", invoice)["lines"]["data"]
            elif invoice["lines"].get("has_more") and invoice.get("id") in self._objects["invoice"]:
                lines = self._objects["invoice"][invoice["id"]]["lines"]["data"]
            else:
                lines = invoice["lines"]["data"]
            total = 0
            for line in lines:
                price = ((line.get("pricing") or {}).get("price_details") or {}).get("price")
                price_id = price["id"] if isinstance(price, dict) else price
                known = self._objects["price"].get(str(price_id))
                if known is not None and _is_metered(known):
                    total += int(line["amount"])
            return total

    def add_invoice(self, customer: str, *, subscription: str | None = None, **fields: Any) -> str:
        """An invoice for GET /v1/invoices; `fields` override the invoice's top-level fields."""
        with self._lock:
            invoice = self._blank_invoice(_new_id("in"), customer, subscription)
            invoice.update(fields)
            self._objects["invoice"][invoice["id"]] = invoice
            return str(invoice["id"])

    def invoice_for_month(
        self, subscription_id: str, month_start: int, *, status: str = "open", **fields: Any
    ) -> str:
        """The subscription_cycle invoice Stripe issues on the 1st after [month_start, next UTC
        1st): metered lines for that month, licensed lines for the next; finalized (numbered,
        hosted URL, PDF) on that 1st unless `status` is "draft"; "paid", "void" and
        "uncollectible" happen an hour later. `fields` override top-level fields last."""
        if status not in _INVOICE_STATUSES:
            raise ValueError(f"unknown invoice status {status!r}")
        with self._lock:
            sub = self._get("subscription", subscription_id, param="subscription")
            begin, end = month_start, _month_bounds(month_start)[1]
            invoice_id = _new_id("in")
            invoice = self._blank_invoice(invoice_id, sub["customer"], sub)
            lines = [
                self._subscription_line(invoice_id, sub, item, (begin, end), line_id=_new_id("il"))
                for item in sub["items"]["data"]
            ]
            total = sum(line["amount"] for line in lines)
            invoice.update(
                amount_due=total,
                amount_paid=0,
                amount_remaining=total,
                attempt_count=0,
                attempted=False,
                auto_advance=True,
                automatically_finalizes_at=end + FIRST_ATTEMPT_DELAY,
                billing_reason="subscription_cycle",
                collection_method="charge_automatically",
                created=end,
                currency=sub["currency"],
                hosted_invoice_url=None,
                invoice_pdf=None,
                next_payment_attempt=end + FIRST_ATTEMPT_DELAY,
                period_start=begin,
                period_end=end,
                subtotal=total,
                subtotal_excluding_tax=total,
                total=total,
                total_excluding_tax=total,
            )
            invoice["lines"]["data"] = lines
            self._objects["invoice"][invoice_id] = invoice
            sub["latest_invoice"] = invoice_id
            if status != "draft":
                self._finalize(invoice, end)
            action = {"paid": "pay", "void": "void", "uncollectible": "uncollectible"}.get(status)
            if action is not None:  # on the first payment attempt, an hour after finalizing
                self._settle(invoice_id, action, end + FIRST_ATTEMPT_DELAY)
            invoice.update(copy.deepcopy(fields))
            return invoice_id

    def update_invoice(self, invoice_id: str, **fields: Any) -> dict[str, Any]:
        """Override top-level fields of a stored invoice."""
        with self._lock:
            invoice = self._get("invoice", invoice_id)
            invoice.update(copy.deepcopy(fields))
            return self._render("invoice", invoice)

    def finalize_invoice(self, invoice_id: str) -> dict[str, Any]:
        """A draft becomes open now: numbered, hosted URL and PDF, payment attempted in 1 h."""
        return self._settle(invoice_id, "finalize", None)

    def pay_invoice(self, invoice_id: str) -> dict[str, Any]:
        """Paid now (a draft is finalized first): amount_paid = amount_due, nothing remaining."""
        return self._settle(invoice_id, "pay", None)

    def fail_invoice_payment(self, invoice_id: str) -> dict[str, Any]:
        """A failed attempt: still open, attempted, attempt_count + 1, next attempt in 3 days."""
        return self._settle(invoice_id, "fail", None)

    def void_invoice(self, invoice_id: str) -> dict[str, Any]:
        """Voided now (an open or uncollectible invoice)."""
        return self._settle(invoice_id, "void", None)

    def mark_uncollectible(self, invoice_id: str) -> dict[str, Any]:
        """Marked uncollectible now (an open invoice)."""
        return self._settle(invoice_id, "uncollectible", None)

    # events

    def snapshot_event(
        self,
        event_type: str,
        object_id: str,
        *,
        created: int | None = None,
        previous_attributes: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """A v1 event as Stripe POSTs it to a webhook endpoint (the object as it is now), also
        served by GET /v1/events/{id}."""
        with self._lock:
            kind, obj = self._find(object_id)
            data: dict[str, Any] = {"object": self._render(kind, obj)}
            if previous_attributes is not None:
                data["previous_attributes"] = copy.deepcopy(previous_attributes)
            event = self._new(
                "event",
                {
                    "api_version": stripe.api_version,
                    "created": self._now() if created is None else created,
                    "data": data,
                    "type": event_type,
                },
            )
            return self._render("event", event)

    def add_thin_event(
        self,
        event_type: str,
        *,
        related_object: dict[str, Any] | None,
        data: dict[str, Any],
        reason: dict[str, Any] | None = None,
    ) -> str:
        """A v2 event for GET /v2/core/events/{id}; returns its id."""
        with self._lock:
            event_id = _new_id("evt_test")
            self._objects[_V2_EVENT][event_id] = {
                "id": event_id,
                "object": _V2_EVENT,
                "changes": None,
                "context": None,
                "created": _iso(self._now()),
                "data": copy.deepcopy(data),
                "livemode": False,
                "reason": copy.deepcopy(reason),
                "related_object": copy.deepcopy(related_object),
                "type": event_type,
            }
            return event_id

    def thin_notification(self, event_id: str) -> dict[str, Any]:
        """The thin payload Stripe POSTs to an event destination for a stored v2 event."""
        with self._lock:
            event = self._objects[_V2_EVENT][event_id]
            keys = ("id", "object", "type", "created", "livemode", "context", "reason")
            return copy.deepcopy(
                {**{k: event[k] for k in keys}, "related_object": event["related_object"]}
            )

    def meter_error_data(self, samples: list[tuple[str, str, str]]) -> dict[str, Any]:
        """The `data` of a v1.billing.meter.error_report_triggered / no_meter_found event for
        (code, error message, identifier) samples, the window ending at `now`."""
        by_code: dict[str, list[dict[str, Any]]] = {}
        for code, message, identifier in samples:
            by_code.setdefault(code, []).append(
                {"error_message": message, "request": {"identifier": identifier}}
            )
        count = len(samples)
        with self._lock:
            now = self._now()
        return {
            "developer_message_summary": (
                "There is 1 invalid event" if count == 1 else f"There are {count} invalid events"
            ),
            "reason": {
                "error_count": count,
                "error_types": [
                    {"code": code, "error_count": len(errors), "sample_errors": errors}
                    for code, errors in by_code.items()
                ],
            },
            "validation_start": _iso(now - 60),
            "validation_end": _iso(now),
        }

    # internals: subscriptions and invoices

    def _make_subscription(
        self,
        customer: str,
        lines: list[tuple[dict[str, Any], int | None]],
        *,
        metadata: dict[str, str] | None,
        period: tuple[int, int],
        anchor: int,
        status: str = "active",
    ) -> dict[str, Any]:
        """A subscription with one item per (price, quantity) (licensed quantity 1 when None),
        started at the period's start."""
        begin, end = period
        subscription_id = _new_id("sub")
        items = []
        for price, quantity in lines:
            item = self._subscription_item(subscription_id, price, begin, end)
            if quantity is not None and not _is_metered(price):
                item["quantity"] = quantity
            items.append(item)
        return self._new(
            "subscription",
            {
                "id": subscription_id,
                "customer": customer,
                "currency": lines[0][0]["currency"] if lines else "usd",
                "metadata": dict(metadata or {}),
                "billing_cycle_anchor": anchor,
                "created": begin,
                "start_date": begin,
                "status": status,
                "items": {
                    "object": "list",
                    "data": items,
                    "has_more": False,
                    "total_count": len(items),
                    "url": f"/v1/subscription_items?subscription={subscription_id}",
                },
            },
        )

    def _replace_items(
        self,
        sub: dict[str, Any],
        lines: list[tuple[str, int | None]],
        begin: int,
        end: int,
        at: int,
    ) -> None:
        """New items (created `at`) for (price id, quantity) lines, with period [begin, end)."""
        items = []
        for price_id, quantity in lines:
            price = self._objects["price"][price_id]
            item = self._subscription_item(sub["id"], price, begin, end, created=at)
            if quantity is not None and not _is_metered(price):
                item["quantity"] = quantity
            items.append(item)
        sub["items"].update(data=items, total_count=len(items))

    def _next_due(self, now: int) -> tuple[int, str, str] | None:
        """The earliest (moment, kind, id) of what Stripe has to do by `now`: a schedule's phase
        ending before a subscription's period ending at the same moment."""
        due: list[tuple[int, int, str, str]] = []
        for schedule in self._objects["subscription_schedule"].values():
            phase = schedule["current_phase"]
            if schedule["status"] == "active" and phase and phase["end_date"] <= now:
                due.append((phase["end_date"], 0, "subscription_schedule", schedule["id"]))
        for sub in self._objects["subscription"].values():
            period = _period(sub)
            if sub["status"] in _RENEWING and period is not None and period[1] <= now:
                due.append((period[1], 1, "subscription", sub["id"]))
        if not due:
            return None
        moment, _, kind, object_id = min(due)
        return moment, kind, object_id

    def _advance_schedule(self, schedule: dict[str, Any]) -> dict[str, Any]:
        current = schedule["current_phase"]
        at = current["end_date"]
        phases = schedule["phases"]
        index = next(i for i, ph in enumerate(phases) if ph["start_date"] == current["start_date"])
        sub = self._objects["subscription"][schedule["subscription"]]
        if index + 1 < len(phases):
            phase = phases[index + 1]
            before = self._render("subscription", sub)["items"]
            lines = [(item["price"], item.get("quantity")) for item in phase["items"]]
            self._replace_items(sub, lines, at, _add_month(at), at)
            merged = dict(sub["metadata"])
            for key, value in phase["metadata"].items():
                if value in ("", None):
                    merged.pop(key, None)
                else:
                    merged[key] = value
            sub["metadata"] = merged
            schedule["current_phase"] = {
                "start_date": phase["start_date"],
                "end_date": phase["end_date"],
            }
            return self.snapshot_event(
                "customer.subscription.updated",
                sub["id"],
                created=at,
                previous_attributes={"items": before},
            )
        if schedule["end_behavior"] == "cancel":
            schedule.update(status="completed", completed_at=at, current_phase=None)
            self._end_subscription(sub, at)
            return self.snapshot_event("customer.subscription.deleted", sub["id"], created=at)
        self._release(schedule, at)
        return self.snapshot_event(
            "customer.subscription.updated",
            sub["id"],
            created=at,
            previous_attributes={"schedule": schedule["id"]},
        )

    def _advance_period(self, sub: dict[str, Any]) -> dict[str, Any]:
        period = _period(sub)
        assert period is not None
        end = period[1]
        if sub["cancel_at_period_end"]:
            self._end_subscription(sub, end)
            return self.snapshot_event("customer.subscription.deleted", sub["id"], created=end)
        before = self._render("subscription", sub)["items"]
        for item in sub["items"]["data"]:
            item.update(current_period_start=end, current_period_end=_add_month(end))
        return self.snapshot_event(
            "customer.subscription.updated",
            sub["id"],
            created=end,
            previous_attributes={"items": before},
        )

    def _end_subscription(self, sub: dict[str, Any], at: int) -> None:
        sub.update(status="canceled", ended_at=at, canceled_at=sub["canceled_at"] or at)
        details = sub["cancellation_details"]
        if details.get("reason") is None:
            sub["cancellation_details"] = {**details, "reason": "cancellation_requested"}

    def _release(self, schedule: dict[str, Any], at: int) -> None:
        sub = self._objects["subscription"].get(schedule["subscription"] or "")
        if sub is not None and sub["schedule"] == schedule["id"]:
            sub["schedule"] = None
        schedule.update(
            status="released",
            released_at=at,
            released_subscription=schedule["subscription"],
            subscription=None,
            current_phase=None,
        )

    def _phase(
        self,
        currency: str,
        lines: list[tuple[str, int | None]],
        start: int,
        end: int,
        *,
        metadata: dict[str, str] | None = None,
        proration_behavior: str = "create_prorations",
    ) -> dict[str, Any]:
        """A schedule phase as Stripe renders it (item prices as ids)."""
        phase: dict[str, Any] = _fixture("subscription_schedule")["phases"][0]
        phase.update(
            add_invoice_items=[],
            application_fee_percent=None,
            automatic_tax=None,
            billing_cycle_anchor=None,
            billing_thresholds=None,
            collection_method=None,
            currency=currency,
            default_payment_method=None,
            default_tax_rates=[],
            description=None,
            discounts=[],
            end_date=end,
            invoice_settings=None,
            # Stripe leaves `quantity` out of a metered price's item (no null: no key at all).
            items=[
                {
                    "billing_thresholds": None,
                    "discounts": [],
                    "metadata": {},
                    "plan": price_id,
                    "price": price_id,
                    **({} if quantity is None else {"quantity": quantity}),
                    "tax_rates": [],
                }
                for price_id, quantity in lines
            ],
            metadata=dict(metadata or {}),
            on_behalf_of=None,
            proration_behavior=proration_behavior,
            start_date=start,
            transfer_data=None,
            trial_end=None,
        )
        return phase

    def _subscription_item(
        self,
        subscription_id: str,
        price: dict[str, Any],
        start: int,
        end: int,
        *,
        created: int | None = None,
    ) -> dict[str, Any]:
        item = _fixture("subscription_item")
        item.update(
            id=_new_id("si"),
            created=start if created is None else created,
            metadata={},
            price=price["id"],  # rendered as the price object
            quantity=None if _is_metered(price) else 1,
            subscription=subscription_id,
            current_period_start=start,
            current_period_end=end,
            billing_thresholds=None,
        )
        return item

    def _settle(self, invoice_id: str, action: str, at: int | None) -> dict[str, Any]:
        """Move an invoice on as Stripe does (`at` defaults to now); ValueError when Stripe
        would refuse (paying a void invoice, voiding a draft, ...)."""
        allowed = {
            "finalize": ("draft",),
            "pay": ("draft", "open", "uncollectible"),
            "fail": ("open",),
            "void": ("open", "uncollectible"),
            "uncollectible": ("open",),
        }[action]
        with self._lock:
            invoice = self._get("invoice", invoice_id)
            if invoice["status"] not in allowed:
                raise ValueError(f"cannot {action} invoice {invoice_id}: it is {invoice['status']}")
            at = self._now() if at is None else at
            transitions = invoice["status_transitions"]
            if invoice["status"] == "draft":
                self._finalize(invoice, at)
            if action == "pay":
                invoice.update(
                    status="paid",
                    amount_paid=invoice["amount_due"],
                    amount_remaining=0,
                    attempted=True,
                    attempt_count=(invoice["attempt_count"] or 0) + 1,
                    auto_advance=False,
                    next_payment_attempt=None,
                )
                transitions["paid_at"] = at
                self._record_payment(invoice, at)
            elif action == "fail":
                invoice.update(
                    attempted=True,
                    attempt_count=(invoice["attempt_count"] or 0) + 1,
                    next_payment_attempt=at + PAYMENT_RETRY_DELAY,
                )
            elif action == "void":
                invoice.update(status="void", auto_advance=False, next_payment_attempt=None)
                transitions["voided_at"] = at
            elif action == "uncollectible":
                invoice.update(
                    status="uncollectible", auto_advance=False, next_payment_attempt=None
                )
                transitions["marked_uncollectible_at"] = at
            return self._render("invoice", invoice)

    def _record_payment(self, invoice: dict[str, Any], at: int) -> None:
        """How Stripe records an invoice's payment since API 2025-03-31 (the invoice no longer
        names its `payment_intent` or `charge`): a PaymentIntent that succeeded, and the invoice
        payment linking it to the invoice (GET /v1/invoice_payments?invoice=...)."""
        amount = invoice["amount_paid"]
        if amount <= 0:
            return
        intent = self._new(
            "payment_intent",
            {
                "amount": amount,
                "amount_received": amount,
                "created": at,
                "currency": invoice["currency"],
                "customer": invoice["customer"],
                "latest_charge": _new_id("ch"),
                "payment_method_types": ["card"],
            },
        )
        self._new(
            "invoice_payment",
            {
                "amount_paid": amount,
                "amount_requested": amount,
                "created": at,
                "currency": invoice["currency"],
                "invoice": invoice["id"],
                "is_default": True,
                "payment": {"type": "payment_intent", "payment_intent": intent["id"]},
                "status": "paid",
                "status_transitions": {"canceled_at": None, "paid_at": at},
            },
        )

    def _finalize(self, invoice: dict[str, Any], at: int) -> None:
        self._invoice_numbers += 1
        invoice_id = invoice["id"]
        invoice.update(
            status="open",
            number=f"MLD-{self._invoice_numbers:04d}",
            hosted_invoice_url=f"https://invoice.stripe.com/i/acct_double/test_{invoice_id}",
            invoice_pdf=f"https://pay.stripe.com/invoice/acct_double/test_{invoice_id}/pdf",
            automatically_finalizes_at=None,
            effective_at=at,
            next_payment_attempt=at + FIRST_ATTEMPT_DELAY,
        )
        invoice["status_transitions"]["finalized_at"] = at

    # internals: time, store, rendering

    def _now(self) -> int:
        return int(self.now()) if self.now is not None else int(time.time())

    def _new(self, kind: str, fields: dict[str, Any]) -> dict[str, Any]:
        spec = _KINDS[kind]
        obj = _fixture(spec.fixture)
        obj.update(copy.deepcopy(spec.blank))
        obj.update(id=_new_id(spec.prefix), created=self._now(), livemode=False)
        if "updated" in obj:
            obj["updated"] = obj["created"]
        obj.update(fields)
        if obj["id"] in self._objects[kind]:
            raise _invalid(f"A {spec.noun} with id {obj['id']} already exists.", "id")
        self._objects[kind][obj["id"]] = obj
        return obj

    def _get(self, kind: str, object_id: str, *, param: str = "id") -> dict[str, Any]:
        obj = self._objects[kind].get(object_id)
        if obj is None:
            raise _no_such(kind, object_id, param, status=404 if param == "id" else 400)
        return obj

    def _find(self, object_id: str) -> tuple[str, dict[str, Any]]:
        for kind, objects in self._objects.items():
            if object_id in objects:
                return kind, objects[object_id]
        raise KeyError(object_id)

    def _render(self, kind: str, obj: dict[str, Any]) -> dict[str, Any]:
        out = copy.deepcopy(obj)
        if kind == "price":
            out.pop("tiers", None)  # only with expand=["tiers"], as on Stripe
        elif kind == "subscription":
            for item in out["items"]["data"]:
                price = self._objects["price"][item["price"]]
                item["price"] = self._render("price", price)
                item["plan"] = _plan(item.get("plan") or {}, price)
        elif kind == "invoice":
            lines = out["lines"]
            if len(lines["data"]) > self.embedded_invoice_lines:
                lines.update(data=lines["data"][: self.embedded_invoice_lines], has_more=True)
        elif kind == _V2_DESTINATION:
            out["webhook_endpoint"] = {"signing_secret": None, "url": None}
        return out

    def _expand(self, obj: dict[str, Any], paths: list[str]) -> dict[str, Any]:
        for path in paths:
            self._expand_path(obj, path.split("."), path)
        return obj

    def _expand_path(self, node: Any, segments: list[str], path: str) -> None:
        if isinstance(node, list):
            for element in node:
                self._expand_path(element, segments, path)
            return
        if not isinstance(node, dict) or (segments[0] not in node and segments[0] != "tiers"):
            raise _invalid(f"This property cannot be expanded ({path}).", "expand")
        head, rest = segments[0], segments[1:]
        if rest:
            if node[head] is not None:  # a null on the way: nothing to expand there
                self._expand_path(node[head], rest, path)
        elif head == "tiers" and node.get("object") == "price":
            node["tiers"] = copy.deepcopy(self._objects["price"][node["id"]].get("tiers"))
        elif isinstance(node[head], str):
            try:
                kind, target = self._find(node[head])
            except KeyError:
                raise _invalid(f"This property cannot be expanded ({path}).", "expand") from None
            node[head] = self._render(kind, target)
        elif node[head] is not None and not isinstance(node[head], dict):
            raise _invalid(f"This property cannot be expanded ({path}).", "expand")

    def _reply(self, kind: str, obj: dict[str, Any], req: _Request) -> dict[str, Any]:
        return self._expand(self._render(kind, obj), req.expand)

    def _list(
        self,
        req: _Request,
        kind: str,
        keep: Callable[[dict[str, Any]], bool] = lambda _: True,
        *,
        ordered: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """A v1 list, newest first (or in the given order), with `limit`, `starting_after`,
        `ending_before`."""
        p = req.params
        limit = p.integer("limit")
        limit = 10 if limit is None else limit
        if not 1 <= limit <= 100:
            raise _invalid("Invalid limit: must be between 1 and 100", "limit")
        if ordered is None:
            ordered = list(reversed(self._objects[kind].values()))
        ids = [o["id"] for o in ordered]
        for cursor in ("starting_after", "ending_before"):
            object_id = p.text(cursor)
            if object_id is None:
                continue
            if object_id not in ids:
                raise _no_such(kind, object_id, cursor, status=400)
            at = ids.index(object_id)
            ordered = ordered[at + 1 :] if cursor == "starting_after" else ordered[:at]
        matching = [o for o in ordered if keep(o)]
        page = matching[-limit:] if "ending_before" in p else matching[:limit]
        listing = {
            "object": "list",
            "data": [self._render(kind, o) for o in page],
            "has_more": len(matching) > limit,
            "url": req.path,
        }
        return self._expand(listing, req.expand)

    # meter events

    def _meter_for(self, event_name: str | None) -> dict[str, Any] | None:
        for meter in self._objects["billing.meter"].values():
            if meter["event_name"] == event_name and meter["status"] == "active":
                return meter
        return None

    def _payload_keys(self, event_name: str | None) -> tuple[str, str]:
        meter = self._meter_for(event_name)
        if meter is None:
            return "stripe_customer_id", "value"
        return (
            meter["customer_mapping"]["event_payload_key"],
            meter["value_settings"]["event_payload_key"],
        )

    def _meter_event_slot(self, p: _Params) -> tuple[str, str] | None:
        event_name = p.data.get("event_name")
        payload = p.data.get("payload")
        if not isinstance(event_name, str) or not isinstance(payload, dict):
            return None
        customer = payload.get(self._payload_keys(event_name)[0])
        return (customer, event_name) if isinstance(customer, str) else None

    def _create_meter_event(self, req: _Request) -> dict[str, Any]:
        p = req.params
        event_name = p.text("event_name", required=True, max_length=100)
        payload = p.hash("payload", required=True)
        identifier = p.text("identifier", max_length=ID_MAX_LENGTH) or _new_id("mev")
        now = self._now()
        timestamp = p.integer("timestamp")
        timestamp = now if timestamp is None else timestamp
        if not now - EVENT_MAX_AGE <= timestamp <= now + EVENT_MAX_AHEAD:
            raise _invalid(
                "The timestamp must be within the past 35 calendar days and no more than "
                "5 minutes in the future.",
                "timestamp",
            )
        meter = self._meter_for(event_name)
        if meter is None:
            raise _invalid(
                f"No active meter was found for event_name '{event_name}'.", "event_name"
            )
        customer_key, value_key = self._payload_keys(event_name)
        customer = payload.text(customer_key, required=True)
        raw_value = payload.text(value_key, required=True)
        if not re.fullmatch(r"\d+", raw_value) or int(raw_value) <= 0:
            raise _invalid(
                f"Invalid value for payload[{value_key}]: must be a positive whole number.",
                f"payload[{value_key}]",
            )
        if identifier in self.identifiers_seen:
            raise _invalid(f"An event already exists with identifier {identifier}.", "identifier")
        self.identifiers_seen[identifier] += 1
        self._events.append(
            {
                "identifier": identifier,
                "event_name": event_name,
                "customer": customer,
                "value": int(raw_value),
                "timestamp": timestamp,
            }
        )
        event = _fixture("billing.meter_event")
        event.update(
            created=now,
            event_name=event_name,
            identifier=identifier,
            livemode=False,
            payload=dict(payload.data),
            timestamp=timestamp,
        )
        return event

    # meters

    def _create_meter(self, p: _Params) -> dict[str, Any]:
        display_name = p.text("display_name", required=True, max_length=250)
        event_name = p.text("event_name", required=True, max_length=100)
        formula = p.hash("default_aggregation", required=True).choice(
            "formula", ("count", "last", "sum")
        )
        mapping = p.hash("customer_mapping")
        values = p.hash("value_settings")
        window = p.text("event_time_window")
        if window not in (None, "day", "hour"):
            raise _invalid(
                "Invalid event_time_window: must be one of day, hour", "event_time_window"
            )
        if self._meter_for(event_name) is not None:
            raise _invalid(
                f"An active meter with event_name '{event_name}' already exists.", "event_name"
            )
        return self._new(
            "billing.meter",
            {
                "display_name": display_name,
                "event_name": event_name,
                "default_aggregation": {"formula": formula},
                "customer_mapping": {
                    "event_payload_key": mapping.text("event_payload_key", max_length=100)
                    or "stripe_customer_id",
                    "type": mapping.choice("type", ("by_id",), default="by_id"),
                },
                "value_settings": {
                    "event_payload_key": values.text("event_payload_key", max_length=100) or "value"
                },
                "event_time_window": window,
                "status_transitions": {"deactivated_at": None},
            },
        )

    def _meters_create(self, req: _Request) -> dict[str, Any]:
        return self._reply("billing.meter", self._create_meter(req.params), req)

    def _meters_list(self, req: _Request) -> dict[str, Any]:
        status = req.params.text("status")
        return self._list(req, "billing.meter", lambda m: status in (None, m["status"]))

    # products

    def _create_product(self, p: _Params) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "name": p.text("name", required=True, max_length=250),
            "active": p.boolean("active") is not False,
            "description": p.text("description"),
            "metadata": p.metadata(),
            "unit_label": p.text("unit_label"),
        }
        if "id" in p:
            fields["id"] = p.text("id")
        return self._new("product", fields)

    def _products_create(self, req: _Request) -> dict[str, Any]:
        return self._reply("product", self._create_product(req.params), req)

    def _products_list(self, req: _Request) -> dict[str, Any]:
        ids = set(req.params.array("ids"))
        active = req.params.boolean("active")
        return self._list(
            req,
            "product",
            lambda o: (not ids or o["id"] in ids) and active in (None, o["active"]),
        )

    # prices

    def _claim_lookup_key(self, price: dict[str, Any], key: str | None, transfer: bool) -> None:
        if key is None or key == price.get("lookup_key"):
            return
        for other in self._objects["price"].values():
            if other is not price and other["lookup_key"] == key:
                if not transfer:
                    raise _invalid(
                        f"A price (`{other['id']}`) already uses that lookup key.", "lookup_key"
                    )
                other["lookup_key"] = None
        price["lookup_key"] = key

    def _prices_create(self, req: _Request) -> dict[str, Any]:
        p = req.params
        currency = p.text("currency", required=True).lower()
        if "product" in p:
            product = self._get("product", p.text("product"), param="product")
        elif "product_data" in p:
            product = self._create_product(p.hash("product_data"))
        else:
            raise _missing("product")
        scheme = p.choice("billing_scheme", ("per_unit", "tiered"), default="per_unit")
        fields: dict[str, Any] = {
            "active": p.boolean("active") is not False,
            "billing_scheme": scheme,
            "currency": currency,
            "metadata": p.metadata(),
            "nickname": p.text("nickname"),
            "product": product["id"],
            "tax_behavior": p.text("tax_behavior") or "unspecified",
        }
        if scheme == "tiered":
            if "unit_amount" in p or "unit_amount_decimal" in p:
                raise _invalid(
                    "You may not specify unit_amount for a price with billing_scheme=tiered.",
                    "unit_amount",
                )
            fields["tiers_mode"] = p.choice("tiers_mode", ("graduated", "volume"))
            fields["tiers"] = _parse_tiers(p)
        else:
            if "tiers" in p or "tiers_mode" in p:
                raise _invalid("Tiers require billing_scheme=tiered.", "tiers")
            fields.update(_unit_amount(p, "unit_amount", "unit_amount_decimal", required=True))
        if "recurring" in p:
            fields.update(type="recurring", recurring=self._recurring(p.hash("recurring")))
        price = self._new("price", fields)
        key = p.text("lookup_key", max_length=200)
        try:
            self._claim_lookup_key(price, key, bool(p.boolean("transfer_lookup_key")))
        except StripeApiError:
            del self._objects["price"][price["id"]]
            raise
        return self._reply("price", price, req)

    def _recurring(self, r: _Params) -> dict[str, Any]:
        usage_type = r.choice("usage_type", ("licensed", "metered"), default="licensed")
        meter_id = r.text("meter")
        if usage_type == "metered" and meter_id is None:
            raise _invalid(
                "A metered price requires a meter: set recurring[meter].", "recurring[meter]"
            )
        if meter_id is not None:
            meter = self._get("billing.meter", meter_id, param="recurring[meter]")
            if meter["status"] != "active":
                raise _invalid("The meter is not active.", "recurring[meter]")
        interval_count = r.integer("interval_count")
        return {
            "interval": r.choice("interval", ("day", "month", "week", "year")),
            "interval_count": 1 if interval_count is None else interval_count,
            "meter": meter_id,
            "usage_type": usage_type,
            "trial_period_days": r.integer("trial_period_days"),
        }

    def _prices_update(self, req: _Request) -> dict[str, Any]:
        p = req.params
        price = self._get("price", req.args["id"])
        if "lookup_key" in p or p.data.get("lookup_key") == "":
            key = p.text("lookup_key", max_length=200)
            if key is None:
                price["lookup_key"] = None
            else:
                self._claim_lookup_key(price, key, bool(p.boolean("transfer_lookup_key")))
        if p.boolean("active") is not None:
            price["active"] = p.boolean("active")
        if "nickname" in p:
            price["nickname"] = p.text("nickname")
        if "tax_behavior" in p:
            price["tax_behavior"] = p.text("tax_behavior")
        price["metadata"] = p.metadata(price["metadata"])
        return self._reply("price", price, req)

    def _prices_list(self, req: _Request) -> dict[str, Any]:
        p = req.params
        lookup_keys = set(p.array("lookup_keys"))
        if len(lookup_keys) > 10:
            raise _invalid("You may pass at most 10 lookup_keys.", "lookup_keys")
        active = p.boolean("active")
        recurring = p.hash("recurring")
        wanted = {
            "product": p.text("product"),
            "currency": p.text("currency"),
            "type": p.text("type"),
        }
        wanted_recurring = {
            k: recurring.text(k) for k in ("interval", "meter", "usage_type") if k in recurring
        }

        def keep(price: dict[str, Any]) -> bool:
            return (
                (not lookup_keys or price["lookup_key"] in lookup_keys)
                and active in (None, price["active"])
                and all(v in (None, price[k]) for k, v in wanted.items())
                and all((price["recurring"] or {}).get(k) == v for k, v in wanted_recurring.items())
            )

        return self._list(req, "price", keep)

    # webhook endpoints (v1) and event destinations (v2)

    def _webhook_endpoints_create(self, req: _Request) -> dict[str, Any]:
        p = req.params
        url = p.text("url", required=True, max_length=5000)
        events = [str(e) for e in p.array("enabled_events", required=True)]
        if not events:
            raise _missing("enabled_events")
        endpoint = self._new(
            "webhook_endpoint",
            {
                "url": url,
                "enabled_events": events,
                "api_version": p.text("api_version"),
                "description": p.text("description"),
                "metadata": p.metadata(),
                "status": "enabled",
            },
        )
        secret = "whsec_" + secrets.token_hex(24)
        self.signing_secrets[url] = secret
        return {**self._reply("webhook_endpoint", endpoint, req), "secret": secret}

    def _destinations_create(self, req: _Request) -> dict[str, Any]:
        p = req.params
        kind = p.choice("type", ("amazon_eventbridge", "azure_event_grid", "webhook_endpoint"))
        payload = p.choice("event_payload", ("snapshot", "thin"))
        if kind != "webhook_endpoint":
            raise _invalid("The Stripe double only supports type=webhook_endpoint.", "type")
        url = p.hash("webhook_endpoint", required=True).text("url", required=True)
        api_version = p.text("snapshot_api_version")
        if payload == "thin" and api_version is not None:
            raise _invalid(
                "snapshot_api_version is only allowed for snapshot events.",
                "snapshot_api_version",
            )
        now = self._now()
        destination = {
            "id": _new_id("ed"),
            "object": _V2_DESTINATION,
            "amazon_eventbridge": None,
            "azure_event_grid": None,
            "created": _iso(now),
            "description": p.text("description") or "",
            "enabled_events": [str(e) for e in p.array("enabled_events", required=True)],
            "event_payload": payload,
            "events_from": p.array("events_from") or None,
            "livemode": False,
            "metadata": dict(p.hash("metadata").data),
            "name": p.text("name", required=True),
            "snapshot_api_version": api_version,
            "status": "enabled",
            "status_details": None,
            "type": kind,
            "updated": _iso(now),
            "url": url,  # internal: shown only with include=["webhook_endpoint.url"]
        }
        self._objects[_V2_DESTINATION][destination["id"]] = destination
        secret = "whsec_" + secrets.token_hex(24)
        self.signing_secrets[url] = secret
        out = self._render_destination(destination, p.array("include"))
        if "webhook_endpoint.signing_secret" in p.array("include"):
            out["webhook_endpoint"]["signing_secret"] = secret
        return out

    def _render_destination(
        self, destination: dict[str, Any], include: list[Any]
    ) -> dict[str, Any]:
        out = self._render(_V2_DESTINATION, destination)
        url = out.pop("url")
        if "webhook_endpoint.url" in include:
            out["webhook_endpoint"]["url"] = url
        return out

    def _destinations_list(self, req: _Request) -> dict[str, Any]:
        """A v2 list: `data` and `next_page_url` (page tokens are offsets)."""
        p = req.params
        limit = p.integer("limit") or 20
        offset = p.integer("page") or 0
        include = p.array("include")
        ordered = list(reversed(self._objects[_V2_DESTINATION].values()))
        page = ordered[offset : offset + limit]
        next_url = None
        if offset + limit < len(ordered):
            extra = "".join(f"&include[{i}]={value}" for i, value in enumerate(include))
            next_url = f"{req.path}?limit={limit}&page={offset + limit}{extra}"
        return {
            "data": [self._render_destination(d, include) for d in page],
            "next_page_url": next_url,
            "previous_page_url": None,
        }

    def _destinations_retrieve(self, req: _Request) -> dict[str, Any]:
        destination = self._objects[_V2_DESTINATION].get(req.args["id"])
        if destination is None:
            raise _v2_not_found(_V2_DESTINATION, req.args["id"])
        return self._render_destination(destination, req.params.array("include"))

    def _v2_events_retrieve(self, req: _Request) -> dict[str, Any]:
        event = self._objects[_V2_EVENT].get(req.args["id"])
        if event is None:
            raise _v2_not_found(_V2_EVENT, req.args["id"])
        return self._render(_V2_EVENT, event)

    # customers, subscriptions, invoices

    def _customers_create(self, req: _Request) -> dict[str, Any]:
        p = req.params
        fields = {"email": p.text("email"), "name": p.text("name"), "metadata": p.metadata()}
        return self._reply("customer", self._new("customer", fields), req)

    def _subscriptions_list(self, req: _Request) -> dict[str, Any]:
        p = req.params
        status = p.text("status")
        if status not in (None, "all", "ended", *_SUBSCRIPTION_STATUSES):
            options = ", ".join(("all", "ended", *_SUBSCRIPTION_STATUSES))
            raise _invalid(f"Invalid status: must be one of {options}", "status")
        customer, price = p.text("customer"), p.text("price")
        created = _range(p, "created")

        def keep(sub: dict[str, Any]) -> bool:
            if status is None:  # every status but the ended ones, as Stripe
                wanted = sub["status"] not in _ENDED
            elif status == "ended":
                wanted = sub["status"] in _ENDED
            else:
                wanted = status in ("all", sub["status"])
            return (
                wanted
                and customer in (None, sub["customer"])
                and (price is None or any(i["price"] == price for i in sub["items"]["data"]))
                and created(sub["created"])
            )

        return self._list(req, "subscription", keep)

    def _subscriptions_update(self, req: _Request) -> dict[str, Any]:
        p = req.params
        sub = self._get("subscription", req.args["id"])
        if sub["status"] in _ENDED and set(p.data) - {"cancellation_details", "metadata", "expand"}:
            raise _invalid(
                "A canceled subscription can only update its cancellation_details and metadata."
            )
        _only(p, {"cancel_at_period_end", "cancellation_details", "metadata", "proration_behavior"})
        if "proration_behavior" in p:
            p.choice("proration_behavior", ("always_invoice", "create_prorations", "none"))
        at_period_end = p.boolean("cancel_at_period_end")
        if at_period_end is not None:
            if sub["schedule"] is not None:
                raise _invalid(
                    f"The subscription is managed by the subscription schedule "
                    f"`{sub['schedule']}`, and updating any cancelation behavior directly is not "
                    "allowed. Please update the schedule instead.",
                    "cancel_at_period_end",
                )
            period = _period(sub)
            if at_period_end:
                sub.update(
                    cancel_at_period_end=True,
                    cancel_at=period[1] if period else None,
                    canceled_at=self._now(),
                )
                sub["cancellation_details"]["reason"] = "cancellation_requested"
            else:
                sub.update(cancel_at_period_end=False, cancel_at=None, canceled_at=None)
                sub["cancellation_details"]["reason"] = None
        if isinstance(p.data.get("cancellation_details"), dict):
            details = _check_keys(
                p.hash("cancellation_details"), p1.SubscriptionUpdateParamsCancellationDetails
            )
            _only(details, {"comment", "feedback"})
            for key in ("comment", "feedback"):
                if key in details.data:
                    sub["cancellation_details"][key] = details.text(key)
        sub["metadata"] = p.metadata(sub["metadata"])
        return self._reply("subscription", sub, req)

    # checkout sessions and the customer portal

    def _subscriptions_cancel(self, req: _Request) -> dict[str, Any]:
        """DELETE /v1/subscriptions/{id}: canceled now. Stripe answers an ended subscription
        404 "No such subscription" (it is gone for this call). A final invoice (`invoice_now`)
        or a proration credit (`prorate`) is not modelled: asking for one is refused."""
        p = req.params
        sub = self._objects["subscription"].get(req.args["id"])
        if sub is None or sub["status"] in _ENDED:
            raise _no_such("subscription", req.args["id"])
        _only(p, {"cancellation_details", "invoice_now", "prorate"})
        for flag in ("invoice_now", "prorate"):
            if p.boolean(flag):
                raise _invalid(
                    f"The Stripe double does not support {flag}=true on this call.", flag
                )
        details: _Params | None = None
        if "cancellation_details" in p:
            details = _check_keys(
                p.hash("cancellation_details"), p1.SubscriptionCancelParamsCancellationDetails
            )
            _only(details, {"comment", "feedback"})
        now = self._now()
        schedule = self._objects["subscription_schedule"].get(sub["schedule"] or "")
        if schedule is not None:  # a schedule ends with its subscription
            schedule.update(status="canceled", canceled_at=now, current_phase=None)
        sub.update(cancel_at_period_end=False, cancel_at=None, canceled_at=now)
        self._end_subscription(sub, now)
        if details is not None:
            for key in ("comment", "feedback"):
                if key in details.data:
                    sub["cancellation_details"][key] = details.text(key)
        return self._reply("subscription", sub, req)

    def _recurring_price(self, param: str, price_id: str) -> dict[str, Any]:
        price = self._get("price", price_id, param=param)
        if not price["active"]:
            raise _invalid(
                "The price specified is inactive. This field only accepts active prices.", param
            )
        if price["recurring"] is None:
            raise _invalid(
                "The price specified is set to `type=one_time` but this field only accepts "
                "prices with `type=recurring`.",
                param,
            )
        return price

    def _checkout_sessions_create(self, req: _Request) -> dict[str, Any]:
        p = req.params
        _only(
            p,
            {
                "cancel_url",
                "client_reference_id",
                "customer",
                "customer_email",
                "expires_at",
                "line_items",
                "metadata",
                "mode",
                "subscription_data",
                "success_url",
                "ui_mode",
            },
        )
        mode = p.choice("mode", ("payment", "setup", "subscription"))
        if mode != "subscription":
            raise _invalid("The Stripe double only supports mode=subscription.", "mode")
        ui_mode = p.choice(
            "ui_mode", ("elements", "embedded_page", "form", "hosted_page"), default="hosted_page"
        )
        if ui_mode != "hosted_page":
            raise _invalid("The Stripe double only supports ui_mode=hosted_page.", "ui_mode")
        customer = p.text("customer")
        if customer is not None:
            self._get("customer", customer, param="customer")
        raw_items = p.array("line_items", required=True)
        lines: list[tuple[str, int | None]] = []
        prices: list[dict[str, Any]] = []
        for index, raw in enumerate(raw_items):
            line = _check_keys(
                _element(raw, f"line_items[{index}]"), pcheckout.SessionCreateParamsLineItem
            )
            _only(line, {"price", "quantity"})
            price = self._recurring_price(
                f"line_items[{index}][price]", line.text("price", required=True)
            )
            quantity = line.integer("quantity")
            if _is_metered(price):
                if quantity is not None:
                    raise _invalid(
                        "Quantity should not be specified where usage_type is `metered`. Remove "
                        f"quantity from `line_items[{index}]`",
                        f"line_items[{index}][quantity]",
                    )
            elif quantity is None:
                raise _invalid(
                    f"Quantity is required. Add `quantity` to `line_items[{index}]`",
                    f"line_items[{index}][quantity]",
                )
            elif quantity < 1:
                raise _invalid(
                    "Invalid quantity: must be at least 1", f"line_items[{index}][quantity]"
                )
            lines.append((price["id"], quantity))
            prices.append(price)
        if not lines:
            raise _missing("line_items")
        success_url = p.text("success_url", required=True, max_length=5000)
        data = _check_keys(
            p.hash("subscription_data"), pcheckout.SessionCreateParamsSubscriptionData
        )
        _only(data, {"billing_cycle_anchor", "metadata", "proration_behavior"})
        now = self._now()
        anchor = data.integer("billing_cycle_anchor")
        if anchor is not None:
            natural = min(
                _add_interval(now, pr["recurring"]["interval"], pr["recurring"]["interval_count"])
                for pr in prices
            )
            if anchor <= now:
                raise _invalid(
                    "`subscription_data[billing_cycle_anchor]` must be a timestamp in the future.",
                    "subscription_data[billing_cycle_anchor]",
                )
            if anchor >= natural:
                raise _invalid(
                    "`subscription_data[billing_cycle_anchor]` must be before the subscription's "
                    "next natural billing date.",
                    "subscription_data[billing_cycle_anchor]",
                )
        proration = data.choice(
            "proration_behavior", ("create_prorations", "none"), default="create_prorations"
        )
        expires_at = p.integer("expires_at")
        if expires_at is None:
            expires_at = now + DAY
        elif not now + 30 * 60 <= expires_at <= now + DAY:
            raise _invalid(
                "The `expires_at` timestamp must be less than 24 hours from Checkout Session "
                "creation and at least 30 minutes in the future.",
                "expires_at",
            )
        session = self._new(
            "checkout.session",
            {
                "cancel_url": p.text("cancel_url", max_length=5000),
                "client_reference_id": p.text("client_reference_id", max_length=200),
                "currency": prices[0]["currency"],
                "customer": customer,
                "customer_email": p.text("customer_email"),
                "expires_at": expires_at,
                "metadata": p.metadata(),
                "mode": mode,
                "success_url": success_url,
            },
        )
        session["url"] = f"https://checkout.stripe.com/c/pay/{session['id']}"
        self._checkouts[session["id"]] = _CheckoutPlan(
            lines=lines, anchor=anchor, proration_behavior=proration, metadata=data.metadata()
        )
        return self._reply("checkout.session", session, req)

    def _lapse(self, session: dict[str, Any]) -> dict[str, Any]:
        """An open session past its `expires_at` is expired, as Stripe expires it then."""
        if session["status"] == "open" and self._now() >= session["expires_at"]:
            session.update(status="expired", url=None)
        return session

    def _checkout_sessions_retrieve(self, req: _Request) -> dict[str, Any]:
        session = self._lapse(self._get("checkout.session", req.args["id"]))
        return self._reply("checkout.session", session, req)

    def _checkout_sessions_expire(self, req: _Request) -> dict[str, Any]:
        """Only an open session can be expired (Stripe: "A Checkout Session can be expired
        when it is in one of these statuses: open"); an expired or complete one is a 400."""
        session = self._lapse(self._get("checkout.session", req.args["id"]))
        if session["status"] != "open":
            raise _invalid(
                "Only Checkout Sessions with a status in [open] can be expired. This Checkout "
                f"Session has a status of `{session['status']}`."
            )
        session.update(status="expired", url=None)
        return self._reply("checkout.session", session, req)

    def _portal_sessions_create(self, req: _Request) -> dict[str, Any]:
        p = req.params
        _only(p, {"configuration", "customer", "return_url"})
        customer = p.text("customer", required=True)
        configuration = p.text("configuration")
        self._get("customer", customer, param="customer")
        if configuration is not None and configuration != self._portal_configuration:
            # Stripe: a configuration of another account, or a typo, is no such object.
            raise StripeApiError(
                400,
                f"No such configuration: '{configuration}'",
                param="configuration",
                code="resource_missing",
            )
        session = self._new(
            "billing_portal.session",
            {
                "configuration": configuration or self._portal_configuration,
                "customer": customer,
                "return_url": p.text("return_url"),
            },
        )
        session["url"] = f"https://billing.stripe.com/p/session/{session['id']}"
        return self._reply("billing_portal.session", session, req)

    # subscription schedules

    def _schedules_create(self, req: _Request) -> dict[str, Any]:
        p = req.params
        sub_id = p.text("from_subscription")
        if sub_id is None:
            raise _invalid(
                "The Stripe double only supports creating a schedule from_subscription.",
                "from_subscription",
            )
        for key in p.data:
            if key not in ("from_subscription", "expand"):
                # Stripe: "other parameters (such as phase values) cannot be set"
                raise _invalid(
                    f"You cannot set `{key}` when creating a schedule from a subscription.", key
                )
        sub = self._get("subscription", sub_id, param="from_subscription")
        if sub["status"] in _ENDED:
            raise _invalid(
                f"You cannot migrate a subscription with status `{sub['status']}`.",
                "from_subscription",
            )
        if sub["schedule"] is not None:
            raise _invalid(
                "You cannot migrate a subscription that is already attached to a schedule",
                "from_subscription",
            )
        period = _period(sub) or _month_bounds(self._now())
        lines = [(item["price"], item["quantity"]) for item in sub["items"]["data"]]
        phase = self._phase(sub["currency"], lines, *period)
        schedule = self._new(
            "subscription_schedule",
            {
                "current_phase": {"start_date": period[0], "end_date": period[1]},
                "customer": sub["customer"],
                "end_behavior": "cancel" if sub["cancel_at_period_end"] else "release",
                "phases": [phase],
                "status": "active",
                "subscription": sub["id"],
            },
        )
        sub["schedule"] = schedule["id"]
        # The schedule manages the cancellation from now on (its end_behavior).
        sub["cancel_at_period_end"] = False
        return self._reply("subscription_schedule", schedule, req)

    def _schedule_phases(self, p: _Params, schedule: dict[str, Any]) -> list[dict[str, Any]]:
        """The `phases` of an update: the first is the current phase (same start), each next one
        starts when the previous ends; an end is `end_date`, `duration`, or one interval of the
        phase's first price."""
        now = self._now()
        current = schedule["current_phase"]
        currency = schedule["phases"][0]["currency"] if schedule["phases"] else "usd"
        phases: list[dict[str, Any]] = []
        previous_end: int | None = None
        for index, raw in enumerate(p.array("phases", required=True)):
            prefix = f"phases[{index}]"
            ph = _check_keys(_element(raw, prefix), p1.SubscriptionScheduleUpdateParamsPhase)
            _only(
                ph,
                {"duration", "end_date", "items", "metadata", "proration_behavior", "start_date"},
            )
            raw_start = ph.data.get("start_date")
            given = None
            if raw_start not in (None, ""):
                given = now if raw_start == "now" else ph.integer("start_date")
            if previous_end is None:
                if given is None:
                    raise _invalid(
                        "The subscription schedule update is missing at least one phase with a "
                        "`start_date` to anchor end dates to.",
                        f"{prefix}[start_date]",
                    )
                if current is not None and given != current["start_date"]:
                    raise _invalid(
                        "You can not modify the start date of the current phase.",
                        f"{prefix}[start_date]",
                    )
                start = given
            else:
                if given is not None and given != previous_end:
                    raise _invalid(
                        "Each phase must start when the previous phase ends.",
                        f"{prefix}[start_date]",
                    )
                start = previous_end
            lines: list[tuple[str, int | None]] = []
            first_price: dict[str, Any] | None = None
            for j, raw_item in enumerate(ph.array("items", required=True)):
                item_prefix = f"{prefix}[items][{j}]"
                item = _check_keys(
                    _element(raw_item, item_prefix), p1.SubscriptionScheduleUpdateParamsPhaseItem
                )
                _only(item, {"plan", "price", "quantity"})
                price_id = item.text("price") or item.text("plan")
                if price_id is None:
                    raise _missing(f"{item_prefix}[price]")
                price = self._recurring_price(f"{item_prefix}[price]", price_id)
                first_price = first_price or price
                quantity = item.integer("quantity")
                if _is_metered(price):
                    if quantity is not None:
                        raise _invalid(
                            "You cannot set the quantity for metered plans.",
                            f"{item_prefix}[quantity]",
                        )
                elif quantity is None:
                    quantity = 1
                lines.append((price_id, quantity))
            if first_price is None:
                raise _missing(f"{prefix}[items]")
            currency = first_price["currency"]
            if "end_date" in ph and "duration" in ph:
                raise _invalid(
                    "You may only specify one of these parameters: duration, end_date.",
                    f"{prefix}[end_date]",
                )
            if ph.data.get("end_date") == "now":
                raise _invalid(
                    "The Stripe double does not support end_date=now.", f"{prefix}[end_date]"
                )
            if "end_date" in ph:
                end = ph.integer("end_date")
                assert end is not None
            elif "duration" in ph:
                duration = _check_keys(
                    ph.hash("duration"), p1.SubscriptionScheduleUpdateParamsPhaseDuration
                )
                end = _add_interval(
                    start,
                    duration.choice("interval", ("day", "month", "week", "year")),
                    duration.integer("interval_count") or 1,
                )
            else:  # one iteration of the phase's prices
                recurring = first_price["recurring"]
                end = _add_interval(start, recurring["interval"], recurring["interval_count"])
            if end <= start or (previous_end is None and end <= now):
                raise _invalid(
                    "A phase must end after it starts, and the current phase in the future.",
                    f"{prefix}[end_date]",
                )
            phases.append(
                self._phase(
                    currency,
                    lines,
                    start,
                    end,
                    metadata=ph.metadata(),
                    proration_behavior=ph.choice(
                        "proration_behavior",
                        ("always_invoice", "create_prorations", "none"),
                        default="create_prorations",
                    ),
                )
            )
            previous_end = end
        return phases

    def _schedules_update(self, req: _Request) -> dict[str, Any]:
        p = req.params
        schedule = self._get("subscription_schedule", req.args["id"])
        if schedule["status"] not in ("not_started", "active"):
            raise _invalid(
                "You cannot update a subscription schedule that is currently in the "
                f"`{schedule['status']}` status. It must be in `not_started`, `active` status "
                "to be updated."
            )
        _only(p, {"end_behavior", "metadata", "phases", "proration_behavior"})
        if "proration_behavior" in p:
            p.choice("proration_behavior", ("always_invoice", "create_prorations", "none"))
        end_behavior = schedule["end_behavior"]
        if "end_behavior" in p:
            end_behavior = p.choice("end_behavior", ("cancel", "none", "release", "renew"))
            if end_behavior not in ("cancel", "release"):
                raise _invalid(
                    "The Stripe double only supports end_behavior release or cancel.",
                    "end_behavior",
                )
        phases = self._schedule_phases(p, schedule) if "phases" in p else None
        schedule["end_behavior"] = end_behavior
        schedule["metadata"] = p.metadata(schedule["metadata"])
        if phases is not None:
            current = phases[0]
            past = [ph for ph in schedule["phases"] if ph["end_date"] <= current["start_date"]]
            schedule["phases"] = past + phases
            schedule["current_phase"] = {
                "start_date": current["start_date"],
                "end_date": current["end_date"],
            }
            sub = self._objects["subscription"][schedule["subscription"]]
            wanted = [(item["price"], item.get("quantity")) for item in current["items"]]
            if wanted != [(i["price"], i["quantity"]) for i in sub["items"]["data"]]:
                # a change to the current phase applies now, as Stripe does
                begin, end = _period(sub) or (current["start_date"], current["end_date"])
                self._replace_items(sub, wanted, begin, end, self._now())
        return self._reply("subscription_schedule", schedule, req)

    def _schedules_release(self, req: _Request) -> dict[str, Any]:
        schedule = self._get("subscription_schedule", req.args["id"])
        req.params.boolean("preserve_cancel_date")
        if schedule["status"] not in ("not_started", "active"):
            raise _invalid(
                "You cannot release a subscription schedule that is currently in the "
                f"`{schedule['status']}` status. It must be in `not_started`, `active` status "
                "to be released."
            )
        self._release(schedule, self._now())
        return self._reply("subscription_schedule", schedule, req)

    def _invoices_list(self, req: _Request) -> dict[str, Any]:
        wanted = {k: req.params.text(k) for k in ("customer", "subscription", "status")}
        created = _range(req.params, "created")

        def keep(invoice: dict[str, Any]) -> bool:
            actual = {
                "customer": invoice["customer"],
                "subscription": _invoice_subscription(invoice),
                "status": invoice["status"],
            }
            return all(v in (None, actual[k]) for k, v in wanted.items()) and created(
                invoice["created"]
            )

        return self._list(req, "invoice", keep)

    def _invoices_finalize(self, req: _Request) -> dict[str, Any]:
        """A draft becomes open now; `auto_advance=false` leaves its collection to the caller."""
        p = req.params
        _only(p, {"auto_advance"})
        invoice = self._get("invoice", req.args["id"])
        if invoice["status"] != "draft":
            raise _invalid(
                "This invoice is already finalized, you can't re-finalize a non-draft invoice."
            )
        auto_advance = p.boolean("auto_advance")
        self._finalize(invoice, self._now())
        if auto_advance is not None:
            invoice["auto_advance"] = auto_advance
        if auto_advance is False:
            invoice["next_payment_attempt"] = None
        return self._reply("invoice", invoice, req)

    def _invoices_void(self, req: _Request) -> dict[str, Any]:
        """Only a finalized, unpaid invoice (open or uncollectible) can be voided; a draft is
        finalized or deleted first, a paid one refunded."""
        invoice = self._get("invoice", req.args["id"])
        if invoice["status"] not in ("open", "uncollectible"):
            raise _invalid(
                f"You can only void an open or uncollectible invoice; invoice {invoice['id']} "
                f"is {invoice['status']}."
            )
        self._settle(invoice["id"], "void", None)
        return self._reply("invoice", invoice, req)

    def _invoice_payments_list(self, req: _Request) -> dict[str, Any]:
        p = req.params
        _only(p, {"ending_before", "invoice", "limit", "starting_after", "status"})
        invoice, status = p.text("invoice"), p.text("status")
        if status not in (None, "canceled", "open", "paid"):
            raise _invalid("Invalid status: must be one of canceled, open, paid", "status")
        if invoice is not None:
            self._get("invoice", invoice, param="invoice")

        def keep(payment: dict[str, Any]) -> bool:
            return invoice in (None, payment["invoice"]) and status in (None, payment["status"])

        return self._list(req, "invoice_payment", keep)

    def _refunds_create(self, req: _Request) -> dict[str, Any]:
        """A refund of a PaymentIntent (the whole unrefunded amount unless `amount` says
        less); Stripe refuses one that is refunded already (`charge_already_refunded`) or more
        than is left (`amount_too_large`). Refunding by `charge` is not modelled."""
        p = req.params
        _only(p, {"amount", "metadata", "payment_intent", "reason"})
        intent_id = p.text("payment_intent")
        if intent_id is None:
            raise _invalid(
                "One of the following params should be provided for this request: "
                "payment_intent or charge."
            )
        intent = self._get("payment_intent", intent_id, param="payment_intent")
        reason = p.text("reason")
        if reason not in (None, "duplicate", "fraudulent", "requested_by_customer"):
            raise _invalid(
                "Invalid reason: must be one of duplicate, fraudulent, or requested_by_customer",
                "reason",
            )
        refunded = sum(
            r["amount"]
            for r in self._objects["refund"].values()
            if r["payment_intent"] == intent_id and r["status"] in ("pending", "succeeded")
        )
        left = intent["amount_received"] - refunded
        if left <= 0:
            raise _invalid(
                f"Charge {intent['latest_charge']} has already been refunded.",
                code="charge_already_refunded",
            )
        amount = p.integer("amount")
        if amount is not None and amount <= 0:
            raise _invalid("Invalid positive integer", "amount")
        if amount is not None and amount > left:
            raise _invalid(
                f"Refund amount (${amount / 100:.2f}) is greater than unrefunded amount on "
                f"charge (${left / 100:.2f})",
                "amount",
                code="amount_too_large",
            )
        refund = self._new(
            "refund",
            {
                "amount": left if amount is None else amount,
                "charge": intent["latest_charge"],
                "currency": intent["currency"],
                "metadata": p.metadata(),
                "payment_intent": intent_id,
                "reason": reason,
                "status": "succeeded",
            },
        )
        return self._reply("refund", refund, req)

    def _invoice_lines_list(self, req: _Request) -> dict[str, Any]:
        invoice = self._get("invoice", req.args["id"])
        return self._list(req, _LINE_ITEM, ordered=list(invoice["lines"]["data"]))

    def _blank_invoice(
        self, invoice_id: str, customer: str, subscription: dict[str, Any] | str | None
    ) -> dict[str, Any]:
        invoice = _fixture("invoice")
        invoice.update(copy.deepcopy(_KINDS["invoice"].blank))
        invoice.pop("subscription", None)  # gone from the API since 2025-03-31
        sub = (
            self._objects["subscription"].get(subscription)
            if isinstance(subscription, str)
            else subscription
        )
        now = self._now()
        invoice.update(
            id=invoice_id,
            created=now,
            customer=customer,
            livemode=False,
            lines={
                "object": "list",
                "data": [],
                "has_more": False,
                "url": f"/v1/invoices/{invoice_id}/lines",
            },
            parent=None,
            period_start=now,
            period_end=now,
            status="draft",
        )
        if sub is not None:
            invoice["parent"] = {
                "type": "subscription_details",
                "quote_details": None,
                "subscription_details": {
                    "metadata": dict(sub["metadata"]),
                    "subscription": sub["id"],
                },
            }
        elif subscription is not None:
            invoice["parent"] = {
                "type": "subscription_details",
                "quote_details": None,
                "subscription_details": {"metadata": {}, "subscription": subscription},
            }
        return invoice

    def _invoices_preview(self, req: _Request) -> dict[str, Any]:
        p = req.params
        customer_id = p.text("customer")
        subscription_id = p.text("subscription")
        if subscription_id is not None:
            sub = self._get("subscription", subscription_id, param="subscription")
            if customer_id is not None and customer_id != sub["customer"]:
                raise _invalid(
                    f"The subscription {subscription_id} does not belong to customer "
                    f"{customer_id}.",
                    "subscription",
                )
        elif customer_id is not None:
            self._get("customer", customer_id, param="customer")
            subs = [
                s
                for s in self._objects["subscription"].values()
                if s["customer"] == customer_id and s["status"] != "canceled"
            ]
            if not subs:
                raise _invalid(
                    f"No upcoming invoices for customer: {customer_id}",
                    code="invoice_upcoming_none",
                )
            sub = subs[-1]
        else:
            raise _missing("customer")
        if sub["status"] == "canceled":
            raise _invalid(
                f"No upcoming invoices for customer: {sub['customer']}",
                code="invoice_upcoming_none",
            )
        invoice_id = _new_id("upcoming_in")
        invoice = self._blank_invoice(invoice_id, sub["customer"], sub)
        items = sub["items"]["data"]
        lines = [
            self._subscription_line(
                invoice_id,
                sub,
                item,
                (item["current_period_start"], item["current_period_end"]),
                line_id=_new_id("il_tmp"),
            )
            for item in items
        ]
        total = sum(line["amount"] for line in lines)
        start = items[0]["current_period_start"] if items else invoice["period_start"]
        end = items[0]["current_period_end"] if items else invoice["period_end"]
        invoice.update(
            amount_due=total,
            amount_remaining=total,
            currency=sub["currency"],
            next_payment_attempt=end + 3600,
            period_start=start,
            period_end=end,
            subtotal=total,
            subtotal_excluding_tax=total,
            total=total,
            total_excluding_tax=total,
        )
        invoice["lines"]["data"] = lines
        return self._expand(invoice, req.expand)

    def _usage(self, customer: str, meter: dict[str, Any], start: int, end: int) -> int:
        """The meter's aggregate of the customer's events received for [start, end)."""
        values = [
            e["value"]
            for e in self._events
            if e["customer"] == customer
            and e["event_name"] == meter["event_name"]
            and start <= e["timestamp"] < end
        ]
        return _aggregate(meter["default_aggregation"]["formula"], values)

    def _subscription_line(
        self,
        invoice_id: str,
        sub: dict[str, Any],
        item: dict[str, Any],
        usage_period: tuple[int, int],
        *,
        line_id: str,
    ) -> dict[str, Any]:
        """The invoice line of a subscription item: a metered price bills its usage over
        `usage_period`, a licensed one the period after it, in advance."""
        price = self._objects["price"][item["price"]]
        product = self._objects["product"].get(price["product"], {})
        start, end = usage_period
        if _is_metered(price):
            meter = self._objects["billing.meter"][price["recurring"]["meter"]]
            quantity = self._usage(sub["customer"], meter, start, end)
        else:
            quantity = item["quantity"] or 1
            start, end = end, _add_month(end)  # licensed prices bill the coming period
        description = f"{quantity} \N{MULTIPLICATION SIGN} {product.get('name', price['id'])}"
        amount = _amount(price, quantity)
        line: dict[str, Any] = _fixture("invoice")["lines"]["data"][0]
        line.update(
            id=line_id,
            amount=amount,
            currency=price["currency"],
            description=description,
            discount_amounts=[],
            invoice=invoice_id,
            livemode=False,
            metadata={},
            period={"start": start, "end": end},
            pretax_credit_amounts=[],
            quantity=quantity,
            quantity_decimal=str(quantity),
            subscription=sub["id"],
            subtotal=amount,
            taxes=[],
            parent={
                "type": "subscription_item_details",
                "invoice_item_details": None,
                "subscription_item_details": {
                    "invoice_item": None,
                    "proration": False,
                    "proration_details": {"credited_items": None},
                    "subscription": sub["id"],
                    "subscription_item": item["id"],
                },
            },
            pricing={
                "type": "price_details",
                "price_details": {"price": price["id"], "product": price["product"]},
                "unit_amount_decimal": price["unit_amount_decimal"],
            },
        )
        return line

    # serving

    def _track(self, connection: socket.socket, open_: bool) -> None:
        with self._lock:
            if open_:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)

    def _sleep(self, seconds: float) -> None:
        if seconds > 0 and self._stopping.wait(seconds):
            raise _Dropped  # stopping: never answer

    def _match(self, method: str, path: str) -> tuple[_Route, dict[str, str]]:
        for route in _ROUTES:
            match = route.pattern.match(path)
            if match is not None and route.method == method:
                return route, match.groupdict()
        raise StripeApiError(
            404, f"Unrecognized request URL ({method}: {path}).", code="resource_missing"
        )

    def _authenticate(self, authorization: str | None) -> None:
        if not authorization:
            raise StripeApiError(
                401,
                "You did not provide an API key. Provide it in the Authorization header, "
                "using Bearer auth.",
                type="authentication_error",
            )
        if authorization != f"Bearer {self.api_key}":
            key = authorization.removeprefix("Bearer ")
            raise StripeApiError(
                401,
                f"Invalid API Key provided: {key[:8]}****{key[-4:]}",
                type="authentication_error",
                code="api_key_invalid",
            )

    def _draw_failure(self, path: str) -> _FailureRule | None:
        with self._lock:
            for rule in self._failures:
                if rule.hits(path):
                    if rule.times is not None:
                        rule.times -= 1
                        if rule.times <= 0:
                            self._failures.remove(rule)
                    return rule
        return None

    def dispatch(
        self, method: str, target: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, dict[str, Any]]:
        """Answer one request: (status, JSON body). Raises _Dropped to close unanswered."""
        split = urlsplit(target)
        path = split.path
        with self._lock:
            self.requests.append((method, path))
        rule = None
        try:
            self._authenticate(headers.get("authorization"))
            route, args = self._match(method, path)
            rule = self._draw_failure(path)
            if rule is not None and rule.kind in ("429", "500", "drop_before"):
                self._sleep(self.delay)
                if rule.kind == "drop_before":
                    raise _Dropped
                if rule.kind == "429":
                    raise _rate_limited("Request rate limit exceeded (injected).")
                raise StripeApiError(500, "An unknown error occurred (injected).", type="api_error")
            stalled = rule is not None and rule.kind == "stall"
            if rule is not None and stalled:
                self._sleep(rule.stall_seconds)  # the client gives up; the work happens anyway
            request = self._parse(route, method, path, args, split.query, body)
            # A stalled call is Stripe working late on a call its client gave up on: it neither
            # counts as the client's concurrency nor is refused for it.
            answer = self._execute(
                route, request, headers.get("idempotency-key"), limit_concurrency=not stalled
            )
        except StripeApiError as error:
            answer = error.status, error.body()
        if rule is not None and rule.kind == "drop":
            raise _Dropped
        return answer

    def _parse(
        self, route: _Route, method: str, path: str, args: dict[str, str], query: str, body: bytes
    ) -> _Request:
        v2 = path.startswith("/v2/")
        text = body.decode("utf-8", "replace")
        if method == "POST" and v2:
            try:
                data = json.loads(text or "{}")
            except json.JSONDecodeError:
                raise _invalid("Invalid JSON body.") from None
            if not isinstance(data, dict):
                raise _invalid("Invalid JSON body: expected an object.")
        else:
            data = parse_form(text if method == "POST" else query)
        params = _Params(data)
        _check_params(route, params, v2)
        return _Request(method, path, args, params, v2)

    def _execute(
        self,
        route: _Route,
        req: _Request,
        idempotency_key: str | None,
        *,
        limit_concurrency: bool = True,
    ) -> tuple[int, dict[str, Any]]:
        if idempotency_key and req.method == "POST":
            with self._lock:
                stored = self._idempotent.get(idempotency_key)
            if stored is not None:
                path, params, status, body = stored
                if (path, params) != (req.path, req.params.data):
                    raise StripeApiError(
                        400,
                        "Keys for idempotent requests can only be used with the same "
                        "parameters they were first used with. Try using a key other than "
                        f"'{idempotency_key}' if you meant to execute a different request.",
                        type="idempotency_error",
                    )
                return status, copy.deepcopy(body)
        with self._lock:
            slot = None
            if route.concurrency is not None and limit_concurrency:
                slot = route.concurrency(self, req.params)
            if slot is not None:
                self._in_flight[slot] += 1
                self.max_concurrent_per_customer_meter = max(
                    self.max_concurrent_per_customer_meter, self._in_flight[slot]
                )
                if self._in_flight[slot] > 1:
                    self._in_flight[slot] -= 1
                    raise _rate_limited()
        try:
            self._sleep(self.delay)
            with self._lock:
                try:
                    status, body = 200, route.handler(self, req)
                except StripeApiError as error:
                    status, body = error.status, error.body()
                if idempotency_key and req.method == "POST":
                    self._idempotent[idempotency_key] = (
                        req.path,
                        copy.deepcopy(req.params.data),
                        status,
                        copy.deepcopy(body),
                    )
            return status, body
        finally:
            if slot is not None:
                with self._lock:
                    self._in_flight[slot] -= 1


def _rate_limited(
    message: str = "Request rate limit exceeded: only one concurrent call per customer and meter "
    "is allowed. Retry with exponential backoff.",
) -> StripeApiError:
    return StripeApiError(429, message, code="rate_limit")


# --- prices and amounts ---------------------------------------------------------------------------


def _is_metered(price: dict[str, Any]) -> bool:
    return bool(price["recurring"]) and price["recurring"]["usage_type"] == "metered"


def _unit_amount(
    p: _Params, int_key: str, decimal_key: str, *, required: bool = False
) -> dict[str, Any]:
    """{int_key, decimal_key} as Stripe returns them from one of the two parameters."""
    if int_key in p and decimal_key in p:
        raise _invalid(
            f"You may only specify one of these parameters: {int_key}, {decimal_key}.",
            _name(p.prefix, int_key),
        )
    if int_key in p:
        amount = p.integer(int_key)
        assert amount is not None
        if amount < 0:
            raise _invalid(f"Invalid {int_key}: must be >= 0", _name(p.prefix, int_key))
        return {int_key: amount, decimal_key: str(amount)}
    number = p.decimal(decimal_key)
    if number is None:
        if required:
            raise _missing(_name(p.prefix, int_key))
        return {int_key: None, decimal_key: None}
    if number < 0:
        raise _invalid(f"Invalid {decimal_key}: must be >= 0", _name(p.prefix, decimal_key))
    whole = int(number) if number == number.to_integral_value() else None
    return {int_key: whole, decimal_key: _fmt_decimal(number)}


def _parse_tiers(p: _Params) -> list[dict[str, Any]]:
    raw = p.array("tiers", required=True)
    tiers: list[dict[str, Any]] = []
    previous = 0
    for index, entry in enumerate(raw):
        if not isinstance(entry, dict):
            raise _invalid("Invalid hash", f"tiers[{index}]")
        t = _Params(entry, f"tiers[{index}]")
        last = index == len(raw) - 1
        up_to: int | None
        if t.data.get("up_to") == "inf":
            up_to = None
        else:
            up_to = t.integer("up_to", required=True)
            assert up_to is not None
            if up_to <= previous:
                raise _invalid("Tiers must have increasing up_to values.", f"tiers[{index}][up_to]")
            previous = up_to
        if (up_to is None) != last:
            raise _invalid(
                "The last tier must have up_to=inf, and only the last.", f"tiers[{index}][up_to]"
            )
        tier = {"up_to": up_to}
        tier.update(_unit_amount(t, "unit_amount", "unit_amount_decimal"))
        tier.update(_unit_amount(t, "flat_amount", "flat_amount_decimal"))
        if tier["unit_amount_decimal"] is None and tier["flat_amount_decimal"] is None:
            raise _missing(f"tiers[{index}][unit_amount]")
        tiers.append(tier)
    return tiers


def _aggregate(formula: str, values: list[int]) -> int:
    if formula == "count":
        return len(values)
    if formula == "last":
        return values[-1] if values else 0
    return max(0, sum(values))


def _amount(price: dict[str, Any], quantity: int) -> int:
    """The line amount in the currency's minor unit, rounded half-up once per line."""
    total = Decimal(0)
    if price["billing_scheme"] != "tiered":
        total = quantity * Decimal(price["unit_amount_decimal"] or 0)
    elif price["tiers_mode"] == "volume":
        for tier in price["tiers"]:
            if tier["up_to"] is None or quantity <= tier["up_to"]:
                total = quantity * Decimal(tier["unit_amount_decimal"] or 0) + Decimal(
                    tier["flat_amount_decimal"] or 0
                )
                break
    else:  # graduated: each tier prices its own slice of the quantity
        floor = 0
        for tier in price["tiers"]:
            ceiling = quantity if tier["up_to"] is None else min(quantity, tier["up_to"])
            units = max(0, ceiling - floor)
            if units:
                total += units * Decimal(tier["unit_amount_decimal"] or 0)
                total += Decimal(tier["flat_amount_decimal"] or 0)
            if tier["up_to"] is None or quantity <= tier["up_to"]:
                break
            floor = tier["up_to"]
    return int(total.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def _plan(plan: dict[str, Any], price: dict[str, Any]) -> dict[str, Any]:
    """The legacy `plan` mirror of a subscription item's price."""
    recurring = price["recurring"] or {}
    return {
        **plan,
        "id": price["id"],
        "active": price["active"],
        "amount": price["unit_amount"],
        "amount_decimal": price["unit_amount_decimal"],
        "billing_scheme": price["billing_scheme"],
        "created": price["created"],
        "currency": price["currency"],
        "interval": recurring.get("interval"),
        "interval_count": recurring.get("interval_count"),
        "livemode": False,
        "metadata": dict(price["metadata"]),
        "meter": recurring.get("meter"),
        "nickname": price["nickname"],
        "product": price["product"],
        "tiers_mode": price["tiers_mode"],
        "transform_usage": None,
        "usage_type": recurring.get("usage_type"),
    }


def _range(p: _Params, key: str) -> Callable[[int], bool]:
    """A timestamp filter such as `created`: a value, or a hash of gt/gte/lt/lte."""
    if isinstance(p.data.get(key), dict):
        bounds = p.hash(key)
        checks = [
            (compare, bound)
            for op, compare in (
                ("gt", operator.gt),
                ("gte", operator.ge),
                ("lt", operator.lt),
                ("lte", operator.le),
            )
            if (bound := bounds.integer(op)) is not None
        ]
        return lambda value: all(compare(value, bound) for compare, bound in checks)
    exact = p.integer(key)
    return lambda value: exact in (None, value)


def _period(sub: dict[str, Any]) -> tuple[int, int] | None:
    """A subscription's current period (its items', since API 2025-03-31)."""
    items = sub["items"]["data"]
    if not items:
        return None
    return items[0]["current_period_start"], items[0]["current_period_end"]


def _invoice_subscription(invoice: dict[str, Any]) -> str | None:
    parent = invoice.get("parent") or {}
    details = parent.get("subscription_details") or {}
    subscription = details.get("subscription")
    return subscription if isinstance(subscription, str) else None


# --- the route table ------------------------------------------------------------------------------


def _retriever(kind: str) -> Handler:
    """GET /v1/<objects>/{id} for any kind the double stores."""

    def handler(double: StripeDouble, req: _Request) -> dict[str, Any]:
        return double._reply(kind, double._get(kind, req.args["id"]), req)

    return handler


_ROUTES: list[_Route] = [
    _route(
        "POST",
        "/v1/billing/meter_events",
        StripeDouble._create_meter_event,
        pbilling.MeterEventCreateParams,
        StripeDouble._meter_event_slot,
    ),
    _route("POST", "/v1/billing/meters", StripeDouble._meters_create, pbilling.MeterCreateParams),
    _route("GET", "/v1/billing/meters", StripeDouble._meters_list, pbilling.MeterListParams),
    _route(
        "GET",
        "/v1/billing/meters/{id}",
        _retriever("billing.meter"),
        pbilling.MeterRetrieveParams,
    ),
    _route("POST", "/v1/products", StripeDouble._products_create, p1.ProductCreateParams),
    _route("GET", "/v1/products", StripeDouble._products_list, p1.ProductListParams),
    _route("GET", "/v1/products/{id}", _retriever("product"), p1.ProductRetrieveParams),
    _route("POST", "/v1/prices", StripeDouble._prices_create, p1.PriceCreateParams),
    _route("GET", "/v1/prices", StripeDouble._prices_list, p1.PriceListParams),
    _route("GET", "/v1/prices/{id}", _retriever("price"), p1.PriceRetrieveParams),
    _route("POST", "/v1/prices/{id}", StripeDouble._prices_update, p1.PriceUpdateParams),
    _route(
        "POST",
        "/v1/webhook_endpoints",
        StripeDouble._webhook_endpoints_create,
        p1.WebhookEndpointCreateParams,
    ),
    _route(
        "GET",
        "/v1/webhook_endpoints",
        lambda d, r: d._list(r, "webhook_endpoint"),
        p1.WebhookEndpointListParams,
    ),
    _route(
        "GET",
        "/v1/webhook_endpoints/{id}",
        _retriever("webhook_endpoint"),
        p1.WebhookEndpointRetrieveParams,
    ),
    _route(
        "POST",
        "/v2/core/event_destinations",
        StripeDouble._destinations_create,
        p2core.EventDestinationCreateParams,
    ),
    _route(
        "GET",
        "/v2/core/event_destinations",
        StripeDouble._destinations_list,
        p2core.EventDestinationListParams,
    ),
    _route(
        "GET",
        "/v2/core/event_destinations/{id}",
        StripeDouble._destinations_retrieve,
        p2core.EventDestinationRetrieveParams,
    ),
    _route("POST", "/v1/customers", StripeDouble._customers_create, p1.CustomerCreateParams),
    _route("GET", "/v1/customers/{id}", _retriever("customer"), p1.CustomerRetrieveParams),
    _route("GET", "/v1/subscriptions", StripeDouble._subscriptions_list, p1.SubscriptionListParams),
    _route(
        "GET",
        "/v1/subscriptions/{id}",
        _retriever("subscription"),
        p1.SubscriptionRetrieveParams,
    ),
    _route(
        "POST",
        "/v1/subscriptions/{id}",
        StripeDouble._subscriptions_update,
        p1.SubscriptionUpdateParams,
    ),
    _route(
        "DELETE",
        "/v1/subscriptions/{id}",
        StripeDouble._subscriptions_cancel,
        p1.SubscriptionCancelParams,
    ),
    _route(
        "POST",
        "/v1/subscription_schedules",
        StripeDouble._schedules_create,
        p1.SubscriptionScheduleCreateParams,
    ),
    _route(
        "GET",
        "/v1/subscription_schedules/{id}",
        _retriever("subscription_schedule"),
        p1.SubscriptionScheduleRetrieveParams,
    ),
    _route(
        "POST",
        "/v1/subscription_schedules/{id}",
        StripeDouble._schedules_update,
        p1.SubscriptionScheduleUpdateParams,
    ),
    _route(
        "POST",
        "/v1/subscription_schedules/{id}/release",
        StripeDouble._schedules_release,
        p1.SubscriptionScheduleReleaseParams,
    ),
    _route(
        "POST",
        "/v1/checkout/sessions",
        StripeDouble._checkout_sessions_create,
        pcheckout.SessionCreateParams,
    ),
    _route(
        "GET",
        "/v1/checkout/sessions/{id}",
        StripeDouble._checkout_sessions_retrieve,
        pcheckout.SessionRetrieveParams,
    ),
    _route(
        "POST",
        "/v1/checkout/sessions/{id}/expire",
        StripeDouble._checkout_sessions_expire,
        pcheckout.SessionExpireParams,
    ),
    _route(
        "POST",
        "/v1/billing_portal/sessions",
        StripeDouble._portal_sessions_create,
        pportal.SessionCreateParams,
    ),
    _route("GET", "/v1/invoices", StripeDouble._invoices_list, p1.InvoiceListParams),
    _route(
        "GET",
        "/v1/invoices/{id}/lines",
        StripeDouble._invoice_lines_list,
        p1.InvoiceLineItemListParams,
    ),
    _route(
        "POST",
        "/v1/invoices/create_preview",
        StripeDouble._invoices_preview,
        p1.InvoiceCreatePreviewParams,
    ),
    _route(
        "POST",
        "/v1/invoices/{id}/finalize",
        StripeDouble._invoices_finalize,
        p1.InvoiceFinalizeInvoiceParams,
    ),
    _route(
        "POST", "/v1/invoices/{id}/void", StripeDouble._invoices_void, p1.InvoiceVoidInvoiceParams
    ),
    _route("GET", "/v1/invoices/{id}", _retriever("invoice"), p1.InvoiceRetrieveParams),
    _route(
        "GET",
        "/v1/invoice_payments",
        StripeDouble._invoice_payments_list,
        p1.InvoicePaymentListParams,
    ),
    _route("POST", "/v1/refunds", StripeDouble._refunds_create, p1.RefundCreateParams),
    _route("GET", "/v1/events/{id}", _retriever("event"), p1.EventRetrieveParams),
    _route(
        "GET", "/v2/core/events/{id}", StripeDouble._v2_events_retrieve, p2core.EventRetrieveParams
    ),
]


# --- HTTP -----------------------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # stop() closes the connections itself
    request_queue_size = 256  # the bench opens many connections at once
    double: StripeDouble


class _HTTPHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the SDK's httpx pool expects
    disable_nagle_algorithm = True
    timeout = 120  # idle keep-alive connections end eventually
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.double._track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.double._track(self.connection, False)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            status, payload = self.server.double.dispatch(self.command, self.path, body, headers)
        except _Dropped:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        except Exception as exc:  # a bug in the double: say so instead of hanging up
            traceback.print_exc()
            message = f"Stripe double failed: {exc!r}"
            status, payload = 500, {"error": {"type": "api_error", "message": message}}
        data = json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Request-Id", _new_id("req"))
            self.end_headers()
            self.wfile.write(data)
        except OSError:  # the client went away (a stalled request it gave up on)
            self.close_connection = True

    do_POST = do_GET
    do_DELETE = do_GET
