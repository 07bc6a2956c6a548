"""The scheduler's entry points (Bearer $CRON_SECRET): `GET|POST /cron/sync-usage` and
`GET|POST /cron/prune-webhook-events`."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from litestar import Request, Response, route
from litestar.exceptions import NotAuthorizedException

from meterline.config import Settings
from meterline.jobs.prune import prune_webhook_events
from meterline.jobs.sync import SyncJob
from meterline.jobs.telemetry import publish
from meterline.stripe_gateway.client import StripeNotConfigured, close_client, make_client

logger = logging.getLogger(__name__)


def _authorize(settings: Settings, request: Request[Any, Any, Any]) -> None:
    expected = settings.cron_secret
    authorization = request.headers.get("authorization")
    if not expected:
        logger.error(
            "refused %s: CRON_SECRET is not set, so no caller can be trusted", request.url.path
        )
        raise NotAuthorizedException(
            "cron is not configured", headers={"WWW-Authenticate": "Bearer"}
        )
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode(), expected.encode()
    ):
        raise NotAuthorizedException("wrong cron secret", headers={"WWW-Authenticate": "Bearer"})


def sync_route(settings: Settings, clock: Callable[[], datetime]) -> Any:
    @route("/cron/sync-usage", http_method=["GET", "POST"], status_code=200)
    async def sync_usage(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
        _authorize(settings, request)
        try:
            client = make_client(settings)
        except StripeNotConfigured as exc:
            return Response({"error": str(exc)}, status_code=503)
        job = SyncJob(
            client=client,
            clock=clock,
            budget=timedelta(seconds=settings.sync_budget_seconds),
            late_grace_hours=settings.late_usage_grace_hours,
        )
        try:
            report = await job.run()
        finally:
            await close_client(client)
        await publish(report, now=clock(), late_grace_hours=settings.late_usage_grace_hours)
        return Response(report.as_dict())

    return sync_usage


def prune_route(settings: Settings, clock: Callable[[], datetime]) -> Any:
    @route("/cron/prune-webhook-events", http_method=["GET", "POST"], status_code=200)
    async def prune_webhook_events_route(
        request: Request[Any, Any, Any],
    ) -> Response[dict[str, Any]]:
        _authorize(settings, request)
        report = await prune_webhook_events(
            now=clock(),
            retention_days=settings.webhook_event_retention_days,
            budget=timedelta(seconds=settings.sync_budget_seconds),
        )
        return Response(report.as_dict())

    return prune_webhook_events_route
