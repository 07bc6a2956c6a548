"""create_app(settings) -> Litestar: GraphQL, the usage portal, health, readiness and metrics."""

from __future__ import annotations

import hmac
import json
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, ClassVar

from litestar import Litestar, Request, Response, get
from litestar.background_tasks import BackgroundTasks
from litestar.connection import ASGIConnection
from litestar.datastructures import CacheControlHeader, State
from litestar.di import Provide
from litestar.enums import ScopeType
from litestar.exceptions import (
    HTTPException,
    NotAuthorizedException,
    NotFoundException,
    ServiceUnavailableException,
)
from litestar.handlers.base import BaseRouteHandler
from litestar.plugins.prometheus import PrometheusConfig, PrometheusController
from litestar.types import ASGIApp, Dependencies, Message, Receive, Scope, Send
from strawberry.litestar import make_graphql_controller

from meterline.auth import (
    AuthenticationError,
    AuthenticationUnavailableError,
    TokenVerifier,
    bearer_token,
)
from meterline.config import Settings
from meterline.db import engine
from meterline.db.embedded import resolve_database_url
from meterline.db.sql import is_database_busy
from meterline.jobs import telemetry
from meterline.jobs.cron import prune_route, sync_route
from meterline.log import request_id_var
from meterline.metrics import DATABASE_BUSY
from meterline.portal.routes import portal_routes
from meterline.schema import build_schema
from meterline.schema.context import Context
from meterline.schema.errors import BUSY_MESSAGE
from meterline.services import portal
from meterline.services.errors import DatabaseBusy
from meterline.stripe_gateway.client import SharedClient
from meterline.webhooks.routes import webhook_routes

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "x-request-id"
MAX_BODY_BYTES = 8 * 1024 * 1024  # a batch of 1,000 events with 4 KB of metadata each, and room
STRIPE_CALL_TIMEOUT_SECONDS = 8.0


def utc_now() -> datetime:
    return datetime.now(UTC)


def request_id_middleware(app: ASGIApp) -> ASGIApp:
    """Take the caller's X-Request-ID (if sane) or make one; log with it and send it back."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(REQUEST_ID_HEADER.encode(), b"").decode("latin-1")
        request_id = (
            incoming if 0 < len(incoming) <= 128 and incoming.isprintable() else uuid.uuid4().hex
        )
        scope.setdefault("state", {})["request_id"] = request_id
        token = request_id_var.set(request_id)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((REQUEST_ID_HEADER.encode(), request_id.encode()))
                message["headers"] = headers
            await send(message)

        try:
            await app(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)

    return middleware


def empty_response() -> Response[Any]:
    """What Strawberry fills in with the GraphQL answer (its `_response_getter`)."""
    return Response({}, background=BackgroundTasks([]))


def unauthorized(reason: str) -> NotAuthorizedException:
    return NotAuthorizedException(detail=reason, headers={"WWW-Authenticate": "Bearer"})


def create_app(
    settings: Settings,
    *,
    clock: Callable[[], datetime] = utc_now,
    manage_database: bool = True,
) -> Litestar:
    """`manage_database=False` leaves the pool to the caller (tests open it on their loop)."""
    verifier = TokenVerifier(settings)
    schema = build_schema(introspection=settings.is_development)
    # For the webhook handlers' re-reads and the subscription mutations. Stripe counts a slow
    # answer as a failed delivery and retries it, so a re-read that slow is better failed
    # (stored with its error) early; an admin's click too.
    stripe_client = SharedClient(settings, timeout=STRIPE_CALL_TIMEOUT_SECONDS)

    async def graphql_context(request: Request[Any, Any, Any]) -> Context:
        request_id = request.scope.get("state", {}).get("request_id") or uuid.uuid4().hex
        if request.method == "GET":
            # GET only serves GraphiQL (queries over GET are off): nothing to authenticate.
            return Context(principal=None, settings=settings, clock=clock, request_id=request_id)
        try:
            principal = await verifier.verify(bearer_token(request.headers.get("authorization")))
        except (
            AuthenticationUnavailableError
        ) as exc:  # the JWKS could not be fetched: not the caller's fault
            raise ServiceUnavailableException(detail=str(exc)) from exc
        except AuthenticationError as exc:
            raise unauthorized(str(exc)) from exc
        if principal.kind == "portal" and not await portal.link_is_current(principal):
            raise unauthorized("portal link revoked")
        return Context(
            principal=principal,
            settings=settings,
            clock=clock,
            request_id=request_id,
            stripe=stripe_client,
        )

    strawberry_controller = make_graphql_controller(
        schema,
        path="/graphql",
        context_getter=graphql_context,
        graphql_ide="graphiql" if settings.is_development else None,
        allow_queries_via_get=False,
        subscription_protocols=(),  # no subscriptions: refuse WebSocket upgrades cleanly
    )

    class GraphQLController(strawberry_controller):  # type: ignore[valid-type,misc]
        # Answers are one company's data: never kept by a browser or a proxy.
        cache_control = CacheControlHeader(no_store=True)
        # Strawberry provides the (empty) response object with sync_to_thread=True: a thread
        # hop on every request, about a tenth of a small request's CPU. Building it is cheap
        # and blocks nothing, so it is done on the event loop.
        dependencies: ClassVar[Dependencies] = {
            **strawberry_controller.dependencies,
            "response": Provide(empty_response, sync_to_thread=False),
        }

        def decode_json(self, data: str | bytes) -> object:
            # Strawberry answers 400 to a JSONDecodeError, but a body that is not UTF-8, nests
            # too deep, or is a bare JSON scalar would end in a 500: make them that error too.
            try:
                decoded = super().decode_json(data)
            except UnicodeDecodeError as exc:
                raise json.JSONDecodeError("body is not UTF-8", "", 0) from exc
            except RecursionError as exc:
                raise json.JSONDecodeError("body nests too deep", "", 0) from exc
            if not isinstance(decoded, dict | list):
                raise json.JSONDecodeError("body must be a JSON object", "", 0)
            return decoded

    @get("/healthz", sync_to_thread=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @get("/readyz")
    async def readyz() -> Response[dict[str, str]]:
        if await engine.ping():
            return Response({"status": "ready"})
        return Response({"status": "database unreachable"}, status_code=503)

    def metrics_guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        expected = settings.metrics_token
        if expected is None:
            if settings.is_development:
                return
            # Production never serves metrics to anyone who asks.
            raise NotFoundException()
        try:
            given = bearer_token(connection.headers.get("authorization"))
        except AuthenticationError as exc:
            raise unauthorized(str(exc)) from exc
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise unauthorized("wrong metrics token")

    async def refresh_sync_gauges(_: Request[Any, Any, Any]) -> None:
        # The sync figures come from the database at scrape time, so every API process shows
        # the same numbers whoever ran the job.
        try:
            await telemetry.refresh(now=clock(), late_grace_hours=settings.late_usage_grace_hours)
        except Exception:  # metrics must still answer when the database does not
            logger.warning("could not refresh the sync gauges", exc_info=True)

    class MetricsController(PrometheusController):
        guards = [metrics_guard]
        before_request = refresh_sync_gauges  # type: ignore[assignment]  # a hook, not a method

    prometheus = PrometheusConfig(
        app_name="meterline", prefix="meterline", group_path=True, exclude=["/metrics", "/healthz"]
    )

    @asynccontextmanager
    async def stripe_connections(_: Litestar) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await stripe_client.close()

    @asynccontextmanager
    async def database(_: Litestar) -> AsyncIterator[None]:
        if not manage_database:
            yield
            return
        url = resolve_database_url(settings.database_url, settings.embedded_data_dir)
        await engine.open_pool(
            url,
            min_size=settings.db_pool_min_size,
            max_size=settings.db_pool_max_size,
            statement_timeout_ms=settings.statement_timeout_ms,
        )
        await verifier.warm()
        try:
            yield
        finally:
            await engine.close_pool()

    def log_unhandled(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
        if isinstance(exc, HTTPException):
            return Response(
                {"status_code": exc.status_code, "detail": exc.detail},
                status_code=exc.status_code,
                headers=exc.headers,
            )
        if is_database_busy(exc):
            DATABASE_BUSY.labels("http").inc()
            logger.warning("database busy on %s: %s", request.url.path, exc)
            return Response(
                {"status_code": 503, "detail": BUSY_MESSAGE, "code": DatabaseBusy.code},
                status_code=503,
                headers={"Retry-After": "1"},
            )
        logger.error("unhandled error on %s", request.url.path, exc_info=exc)
        return Response({"status_code": 500, "detail": "Internal server error"}, status_code=500)

    return Litestar(
        route_handlers=[
            GraphQLController,
            healthz,
            readyz,
            MetricsController,
            sync_route(settings, clock),
            prune_route(settings, clock),
            *portal_routes(settings),
            *webhook_routes(settings, stripe_client, clock),
        ],
        middleware=[request_id_middleware, prometheus.middleware],
        lifespan=[database, stripe_connections],
        state=State({"stripe_client": stripe_client}),
        exception_handlers={Exception: log_unhandled},
        request_max_body_size=MAX_BODY_BYTES,
        # Litestar's OpenAPI pages (/schema...) would list every route to anyone, and describe
        # nothing the contract promises: the API is GraphQL (schema.graphql).
        openapi_config=None,
        logging_config=None,  # JSON logging is configured by the process (log.py)
        debug=False,
    )
