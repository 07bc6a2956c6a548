"""The StripeClient Meterline uses: async over httpx, pointed at STRIPE_API_BASE when set."""

from __future__ import annotations

import stripe
from stripe._base_address import BaseAddresses

from meterline.config import Settings

# A call that has not answered in this long is treated as "outcome unknown" by the caller.
REQUEST_TIMEOUT_SECONDS = 20.0


class StripeNotConfigured(RuntimeError):
    """STRIPE_SECRET_KEY is unset: usage is recorded locally and nothing is sent."""


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
