"""The subscription lifecycle's Stripe calls: Checkout, schedules, cancellation, the portal.

Plan changes take effect on the 1st (docs/design.md): a change is a subscription schedule whose next
phase, starting at the current period's end (the 1st), carries the new tier's prices; a
cancellation is `cancel_at_period_end`. Only the customer and the checkout session carry
idempotency keys (a retry must find the same one); a schedule update is a new request each
time (a key reused for another change would replay the old answer).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import stripe

from meterline.stripe_gateway.catalog import StripeCatalog
from meterline.stripe_gateway.client import StripeRejection, rejection_of


class LifecycleFailed(Exception):
    """Stripe did not do it: unreachable, 5xx, 429, or refused (`rejection` says so)."""

    def __init__(self, message: str, *, rejection: StripeRejection | None) -> None:
        super().__init__(message)
        self.rejection = rejection


def _failed(exc: stripe.StripeError) -> LifecycleFailed:
    status = exc.http_status or 0
    return LifecycleFailed(
        f"{type(exc).__name__} ({status}): {exc.user_message or exc}",
        rejection=rejection_of(exc),
    )


@dataclass(frozen=True)
class CheckoutSession:
    id: str
    url: str
    expires_at: datetime


@dataclass(frozen=True)
class PlanPrice:
    id: str
    metered: bool


def _line_item(price: PlanPrice) -> dict[str, Any]:
    # Stripe refuses a quantity on a metered price; a licensed one needs it.
    return {"price": price.id} if price.metered else {"price": price.id, "quantity": 1}


class StripeLifecycle:
    def __init__(self, client: stripe.StripeClient) -> None:
        self._client = client

    async def plan_prices(self, lookup_keys: Sequence[str]) -> dict[str, PlanPrice]:
        """The active prices holding these lookup keys (absent: not set up, or archived)."""
        try:
            found = await StripeCatalog(self._client).prices_by_lookup_key(lookup_keys)
        except stripe.StripeError as exc:
            raise _failed(exc) from exc
        return {
            key: PlanPrice(
                price.id, metered=price.spec is not None and price.spec.usage_type == "metered"
            )
            for key, price in found.items()
            if price.active
        }

    async def create_checkout(
        self,
        *,
        prices: Sequence[PlanPrice],
        customer: str | None,
        company_id: str,
        anchor: datetime,
        success_url: str,
        cancel_url: str | None,
        expires_at: datetime,
        idempotency_key: str,
    ) -> CheckoutSession:
        params: dict[str, Any] = {
            "mode": "subscription",
            "line_items": [_line_item(p) for p in prices],
            "success_url": success_url,
            "expires_at": int(expires_at.timestamp()),
            "metadata": {"company_id": company_id},
            "subscription_data": {
                "billing_cycle_anchor": int(anchor.timestamp()),
                "proration_behavior": "create_prorations",
                "metadata": {"company_id": company_id},
            },
        }
        if cancel_url:
            params["cancel_url"] = cancel_url
        if customer:
            params["customer"] = customer
        try:
            session = await self._client.v1.checkout.sessions.create_async(
                params,  # type: ignore[arg-type]
                {"idempotency_key": idempotency_key},
            )
        except stripe.StripeError as exc:
            raise _failed(exc) from exc
        return CheckoutSession(
            id=str(session.id),
            url=str(session.url),
            expires_at=datetime.fromtimestamp(int(session.expires_at), UTC),
        )

    async def create_customer(self, company_id: str) -> str:
        """The company's Stripe customer, made once (the key is the company's: a retry or a
        concurrent request finds the same customer)."""
        try:
            customer = await self._client.v1.customers.create_async(
                {"metadata": {"company_id": company_id}},
                {"idempotency_key": f"meterline-customer-{company_id}"},
            )
        except stripe.StripeError as exc:
            raise _failed(exc) from exc
        return str(customer.id)

    async def schedule_prices(
        self, subscription_id: str, schedule_id: str | None, prices: Sequence[PlanPrice]
    ) -> str:
        """From the end of the current period (the 1st), the subscription carries `prices`;
        a pending change is replaced. Returns the schedule's id."""
        try:
            if schedule_id is None:
                schedule = await self._client.v1.subscription_schedules.create_async(
                    {"from_subscription": subscription_id}
                )
            else:
                schedule = await self._client.v1.subscription_schedules.retrieve_async(schedule_id)
            current = (
                schedule.phases[0]
                if schedule.current_phase is None
                else next(
                    p for p in schedule.phases if p.start_date == schedule.current_phase.start_date
                )
            )
            current_items = [
                {"price": _price_id(i.price), **({"quantity": i.quantity} if i.quantity else {})}
                for i in current.items
            ]
            await self._client.v1.subscription_schedules.update_async(
                str(schedule.id),
                {
                    "end_behavior": "release",
                    "proration_behavior": "none",
                    "phases": [
                        {
                            "items": current_items,
                            "start_date": current.start_date,
                            "end_date": current.end_date,
                            "proration_behavior": "none",
                        },
                        {  # starts where the current phase ends: the 1st
                            "items": [_line_item(p) for p in prices],
                            "duration": {"interval": "month", "interval_count": 1},
                            "proration_behavior": "none",
                        },
                    ],
                },  # type: ignore[arg-type]
            )
        except stripe.StripeError as exc:
            raise _failed(exc) from exc
        return str(schedule.id)

    async def release_schedule(self, schedule_id: str) -> None:
        """No pending change any more: the subscription goes on as it is."""
        try:
            await self._client.v1.subscription_schedules.release_async(schedule_id)
        except stripe.StripeError as exc:
            raise _failed(exc) from exc

    async def subscription_schedule(self, subscription_id: str) -> str | None:
        try:
            sub = await self._client.v1.subscriptions.retrieve_async(subscription_id)
        except stripe.StripeError as exc:
            raise _failed(exc) from exc
        schedule = getattr(sub, "schedule", None)
        return schedule if isinstance(schedule, str) or schedule is None else str(schedule.id)

    async def set_cancel_at_period_end(self, subscription_id: str, cancel: bool) -> None:
        try:
            await self._client.v1.subscriptions.update_async(
                subscription_id, {"cancel_at_period_end": cancel}
            )
        except stripe.StripeError as exc:
            raise _failed(exc) from exc

    async def portal_session(
        self, customer: str, return_url: str, configuration: str | None
    ) -> str:
        params: dict[str, Any] = {"customer": customer, "return_url": return_url}
        if configuration:
            params["configuration"] = configuration
        try:
            session = await self._client.v1.billing_portal.sessions.create_async(
                params  # type: ignore[arg-type]
            )
        except stripe.StripeError as exc:
            raise _failed(exc) from exc
        return str(session.url)


def _price_id(price: Any) -> str:
    return price if isinstance(price, str) else str(price.id)
