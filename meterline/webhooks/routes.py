"""`POST /webhooks/stripe` and `POST /webhooks/stripe/thin`: verify, store once, apply, answer.

Thin: verification and storage here; what an event does is in services/webhooks.py.
Answers: 200 once stored and applied (or a duplicate, or a type Meterline ignores); 400 for a
body that is not a Stripe event signed with this route's secret (nothing stored); 500 when
applying failed (stored with its error: Stripe delivers it again); 503 while Stripe or the
route's secret is not configured (nothing stored: Stripe keeps retrying for 3 days).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from litestar import Request, Response, post
from litestar.handlers import HTTPRouteHandler
from prometheus_client import Counter

from meterline.config import Settings
from meterline.services.webhooks import Received, WebhookProcessor
from meterline.stripe_gateway.client import SharedClient, StripeNotConfigured
from meterline.stripe_gateway.mirror import StripeReader
from meterline.stripe_gateway.webhooks import BadWebhook, verify_snapshot, verify_thin

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "stripe-signature"

WEBHOOK_DELIVERIES = Counter(
    "meterline_webhook_deliveries_total",
    "Stripe webhook deliveries by route and outcome",
    ["route", "outcome"],
)


def _answer(route: str, received: Received) -> Response[dict[str, Any]]:
    outcome = "duplicate" if received.duplicate else received.status
    WEBHOOK_DELIVERIES.labels(route, outcome).inc()
    body: dict[str, Any] = {"received": True, "id": received.event_id, "status": outcome}
    if received.status == "failed":
        # Stripe shows this body in its dashboard: the reason, not a traceback.
        return Response({**body, "error": received.error}, status_code=500)
    return Response(body, status_code=200)


def _refuse(route: str, status: int, reason: str) -> Response[dict[str, Any]]:
    WEBHOOK_DELIVERIES.labels(route, "rejected" if status == 400 else "unavailable").inc()
    return Response({"error": reason}, status_code=status)


def webhook_routes(
    settings: Settings, stripe: SharedClient, clock: Callable[[], datetime]
) -> list[HTTPRouteHandler]:
    def reader() -> StripeReader:
        return StripeReader(stripe.get())

    processor = WebhookProcessor(reader=_cached(reader), clock=clock)

    def unconfigured(secrets: tuple[str, ...], variable: str) -> str | None:
        if not settings.stripe_secret_key:
            return "Stripe is not configured (STRIPE_SECRET_KEY is unset)"
        if not secrets:
            logger.error("refused a Stripe webhook: %s is not set", variable)
            return f"{variable} is not set"
        return None

    @post("/webhooks/stripe", status_code=200)
    async def snapshot_events(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
        secrets = settings.webhook_secrets
        if (reason := unconfigured(secrets, "STRIPE_WEBHOOK_SECRET")) is not None:
            return _refuse("snapshot", 503, reason)
        try:
            event = verify_snapshot(
                await request.body(), request.headers.get(SIGNATURE_HEADER), secrets
            )
        except BadWebhook as exc:
            return _refuse("snapshot", 400, str(exc))
        received = await processor.receive(
            source="snapshot",
            event_id=event.id,
            event_type=event.type,
            object_id=event.object_id,
            created=event.created,
            payload=event.payload,
        )
        return _answer("snapshot", received)

    @post("/webhooks/stripe/thin", status_code=200)
    async def thin_events(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
        secrets = settings.thin_webhook_secrets
        if (reason := unconfigured(secrets, "STRIPE_THIN_WEBHOOK_SECRET")) is not None:
            return _refuse("thin", 503, reason)
        try:
            event = verify_thin(
                stripe.get(), await request.body(), request.headers.get(SIGNATURE_HEADER), secrets
            )
        except BadWebhook as exc:
            return _refuse("thin", 400, str(exc))
        except StripeNotConfigured as exc:
            return _refuse("thin", 503, str(exc))
        received = await processor.receive(
            source="thin",
            event_id=event.id,
            event_type=event.type,
            object_id=event.related_object_id,
            created=event.created,
            payload=event.payload,
        )
        return _answer("thin", received)

    return [snapshot_events, thin_events]


def _cached(make: Callable[[], StripeReader]) -> Callable[[], StripeReader]:
    """One reader per process (it caches which prices are metered)."""
    made: list[StripeReader] = []

    def get() -> StripeReader:
        if not made:
            made.append(make())
        return made[0]

    return get
