"""The StripeClient Meterline uses: async over httpx, pointed at STRIPE_API_BASE when set."""

from __future__ import annotations

from dataclasses import dataclass

import stripe
from stripe._base_address import BaseAddresses

from meterline.config import Settings

# A call that has not answered in this long is treated as "outcome unknown" by the caller.
REQUEST_TIMEOUT_SECONDS = 20.0


class StripeNotConfigured(RuntimeError):
    """STRIPE_SECRET_KEY is unset: usage is recorded locally and nothing is sent."""


@dataclass(frozen=True)
class StripeRejection:
    """Stripe answered and refused the request (a 4xx other than 429): asking again unchanged
    gets the same answer, so it is not "unavailable". What an operator needs to act on it,
    without Stripe's free text (which names object ids): the status, Stripe's error code, the
    parameter it refused, and its request id (Stripe's dashboard finds the request by it)."""

    status: int
    code: str | None
    param: str | None
    request_id: str | None

    def describe(self) -> str:
        parts = [f"HTTP {self.status}"]
        if self.code:
            parts.append(self.code)
        if self.param:
            parts.append(f"parameter {self.param}")
        if self.request_id:
            parts.append(f"request {self.request_id}")
        return ", ".join(parts)


def rejection_of(exc: stripe.StripeError) -> StripeRejection | None:
    """The rejection in a Stripe error; None when Stripe may answer otherwise later: network
    failures, timeouts, 429, 5xx, 409 (a concurrent request holds the same idempotency key),
    or any answer whose `Stripe-Should-Retry` header says so. That header, when present, is
    Stripe's own verdict and wins (the SDK's retry logic reads it the same way)."""
    status = exc.http_status or 0
    headers = {str(k).lower(): str(v) for k, v in (exc.headers or {}).items()}
    should_retry = headers.get("stripe-should-retry")
    if should_retry == "true" or not 400 <= status < 500:
        return None
    if should_retry != "false" and status in (409, 429):
        return None
    param = getattr(exc, "param", None)
    return StripeRejection(
        status=status,
        code=str(exc.code) if exc.code else None,
        param=str(param) if param else None,
        request_id=exc.request_id,
    )


def make_client(
    settings: Settings, *, timeout: float = REQUEST_TIMEOUT_SECONDS
) -> stripe.StripeClient:
    if not settings.stripe_secret_key:
        raise StripeNotConfigured("Stripe is not configured (STRIPE_SECRET_KEY is unset)")
    base = settings.stripe_api_base
    addresses: BaseAddresses = {"api": base, "meter_events": base} if base else {}
    return stripe.StripeClient(
        settings.stripe_secret_key,
        base_addresses=addresses,
        # The SDK retries nothing unless told; every retry decision is the caller's (the sync
        # job backs off itself), so none here.
        max_network_retries=0,
        http_client=stripe.HTTPXClient(timeout=timeout, allow_sync_methods=True),
    )


async def close_client(client: stripe.StripeClient) -> None:
    """StripeClient has no public close; its httpx pool would otherwise linger until collected."""
    http = client._requestor._client
    if http is not None:
        await http.close_async()  # type: ignore[no-untyped-call]


class SharedClient:
    """One StripeClient for a process's request handlers, so their calls reuse its connection
    pool; made on first use (Stripe may be unconfigured), closed at shutdown."""

    def __init__(self, settings: Settings, *, timeout: float = REQUEST_TIMEOUT_SECONDS) -> None:
        self._settings = settings
        self._timeout = timeout
        self._client: stripe.StripeClient | None = None

    def get(self) -> stripe.StripeClient:
        if self._client is None:
            self._client = make_client(self._settings, timeout=self._timeout)
        return self._client

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await close_client(client)
