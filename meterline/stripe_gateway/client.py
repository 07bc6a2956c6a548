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
