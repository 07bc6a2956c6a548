"""The subscription lifecycle's Stripe calls: Checkout, schedules, cancellation, the portal.

Plan changes take effect on the 1st (docs/design.md): a change is a subscription schedule whose next
phase, starting at the current period's end (the 1st), carries the new tier's prices; a
cancellation is `cancel_at_period_end`. Only the customer and the checkout session carry
idempotency keys (a retry must find the same one); a schedule update is a new request each
time (a key reused for another change would replay the old answer). `DuplicateSubscriptions`
(at the end) cancels a company's second live subscription and refunds or voids what it charged;
its refunds and voids carry keys derived from what they act on.

Stripe objects are read as Stripe sends them: a field it may leave out (a metered price's
`quantity` on a schedule phase item, say) is read with `_optional`, never as an attribute, which
raises AttributeError when the key is absent.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import stripe

from meterline.stripe_gateway.catalog import StripeCatalog, price_version
from meterline.stripe_gateway.client import StripeRejection, rejection_of

logger = logging.getLogger(__name__)


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
class CheckoutState:
    """Where a Checkout Session stands in Stripe: `open`, `complete` (paid: `subscription` is
    the one it made) or `expired`; Stripe may add statuses."""

    id: str
    status: str
    subscription: str | None


def _optional(obj: Any, name: str) -> Any:
    """A field Stripe may leave out of an object (no key at all, not null): None then.
    (stripe-python's objects raise AttributeError for a missing key, and have no `.get`.)"""
    return getattr(obj, name, None)


def _id_of(value: Any) -> str | None:
    """An expandable field: an id, an expanded object, or nothing."""
    if value is None or isinstance(value, str):
        return value
    found = _optional(value, "id")
    return str(found) if found is not None else None


def _checkout_state(session: Any) -> CheckoutState:
    return CheckoutState(
        id=str(session.id),
        status=str(_optional(session, "status") or "unknown"),
        subscription=_id_of(_optional(session, "subscription")),
    )


@dataclass(frozen=True)
class PlanPrice:
    id: str
    metered: bool
    version: int = 1  # the plan version it bills (metadata `meterline_plan_version`)


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
                price.id,
                metered=price.spec is not None and price.spec.usage_type == "metered",
                version=price_version(price.metadata),
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
        url = _optional(session, "url")  # null for sessions not hosted by Stripe
        if not url:
            raise LifecycleFailed(
                f"Stripe made checkout session {session.id} without a URL", rejection=None
            )
        return CheckoutSession(
            id=str(session.id),
            url=str(url),
            expires_at=datetime.fromtimestamp(int(session.expires_at), UTC),
        )

    async def checkout_state(self, session_id: str) -> CheckoutState | None:
        """The session as Stripe has it now; None when Stripe has no such session."""
        try:
            session = await self._client.v1.checkout.sessions.retrieve_async(session_id)
        except stripe.InvalidRequestError as exc:
            if exc.http_status == 404:
                return None
            raise _failed(exc) from exc
        except stripe.StripeError as exc:
            raise _failed(exc) from exc
        return _checkout_state(session)

    async def expire_checkout(self, session_id: str) -> CheckoutState | None:
        """Expire an open session, so it can no longer be paid. Stripe expires only an open
        one: when it refuses, the session's state says why (paid, already expired, or being
        paid); None when Stripe has no such session."""
        try:
            session = await self._client.v1.checkout.sessions.expire_async(session_id)
        except stripe.InvalidRequestError as exc:
            if exc.http_status == 404:
                return None
            if rejection_of(exc) is None:
                raise _failed(exc) from exc
            logger.info("Stripe did not expire checkout session %s: %s", session_id, exc)
            return await self.checkout_state(session_id)
        except stripe.StripeError as exc:
            raise _failed(exc) from exc
        return _checkout_state(session)

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
        a pending change is replaced. Returns the schedule's id.

        Without `schedule_id` the schedule is created from the subscription first; if a later
        step fails, that schedule is released again before the failure is raised, so Stripe is
        left as it was found (a cancellation the schedule took over is put back)."""
        created: Any = None
        try:
            if schedule_id is None:
                created = schedule = await self._client.v1.subscription_schedules.create_async(
                    {"from_subscription": subscription_id}
                )
            else:
                schedule = await self._client.v1.subscription_schedules.retrieve_async(schedule_id)
            await self._client.v1.subscription_schedules.update_async(
                str(schedule.id),
                {
                    "end_behavior": "release",
                    "proration_behavior": "none",
                    "phases": [
                        _current_phase(schedule),
                        {  # starts where the current phase ends: the 1st
                            "items": [_line_item(p) for p in prices],
                            "duration": {"interval": "month", "interval_count": 1},
                            "proration_behavior": "none",
                        },
                    ],
                },  # type: ignore[arg-type]
            )
        except Exception as exc:  # Stripe's failure, or an answer not understood
            if created is not None:
                await self._undo_schedule(created, subscription_id)
            if isinstance(exc, stripe.StripeError):
                raise _failed(exc) from exc
            raise
        return str(schedule.id)

    async def _undo_schedule(self, schedule: Any, subscription_id: str) -> None:
        """Release a schedule this call created, so the subscription goes on as it was. Made
        from a subscription set to end at the period's end, the schedule took that over
        (`end_behavior` "cancel"): it is put back on the subscription. Best effort: a failure
        here is logged and the original failure raised."""
        try:
            await self._client.v1.subscription_schedules.release_async(str(schedule.id))
            if _optional(schedule, "end_behavior") == "cancel":
                await self._client.v1.subscriptions.update_async(
                    subscription_id, {"cancel_at_period_end": True}
                )
        except stripe.StripeError:
            logger.error(
                "a failed plan change left subscription schedule %s on subscription %s: release "
                "it in Stripe (and check the subscription's cancellation)",
                schedule.id,
                subscription_id,
                exc_info=True,
            )

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
        return _id_of(_optional(sub, "schedule"))

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


def _current_phase(schedule: Any) -> dict[str, Any]:
    """The schedule's current phase, as the update's first phase: its items as they are
    (a metered price's item has no `quantity`), its dates unchanged."""
    phases = list(schedule.phases)
    current = _optional(schedule, "current_phase")
    start = _optional(current, "start_date") if current is not None else None
    phase = next((p for p in phases if p.start_date == start), phases[0])
    items = []
    for item in phase["items"]:
        quantity = _optional(item, "quantity")
        items.append(
            {"price": _price_id(item.price), **({} if quantity is None else {"quantity": quantity})}
        )
    return {
        "items": items,
        "start_date": phase.start_date,
        "end_date": phase.end_date,
        "proration_behavior": "none",
    }


# --- a duplicate subscription: cancelled at once, what it charged given back --------------------

ENDED_STATUSES = frozenset({"canceled", "incomplete_expired"})


@dataclass(frozen=True)
class ListedSubscription:
    """A customer's subscription as Stripe lists it."""

    id: str
    status: str
    created: datetime
    metadata: dict[str, str]


@dataclass(frozen=True)
class Refunded:
    invoice: str
    payment: str  # the PaymentIntent (or charge) refunded
    refund: str | None  # None: Stripe had refunded it already
    amount: int | None


@dataclass(frozen=True)
class Settlement:
    """What a cancelled duplicate had charged, and what became of it."""

    voided: tuple[str, ...] = ()  # invoices voided (open, uncollectible, or draft finalized)
    refunded: tuple[Refunded, ...] = ()
    # Paid otherwise than through a PaymentIntent or a charge (out of band, a payment record):
    # nothing Stripe can refund; an operator settles it.
    unrefundable: tuple[str, ...] = ()
    # Paid renewals (`subscription_cycle`): they billed a past period; an operator decides.
    renewals: tuple[str, ...] = ()

    def describe(self) -> str:
        parts = [
            f"refunded {r.payment} of invoice {r.invoice}"
            + (f" ({r.amount} in minor units, refund {r.refund})" if r.refund else " (already)")
            for r in self.refunded
        ]
        parts += [f"voided invoice {invoice}" for invoice in self.voided]
        parts += [f"invoice {i} was paid out of band: refund it by hand" for i in self.unrefundable]
        parts += [
            f"invoice {i} is a paid renewal (it billed a past period): not refunded, decide by hand"
            for i in self.renewals
        ]
        return "; ".join(parts) or "it had charged nothing"


def _metadata_of(obj: Any) -> dict[str, str]:
    metadata = _optional(obj, "metadata")
    return {str(k): str(v) for k, v in metadata.to_dict().items()} if metadata else {}


class DuplicateSubscriptions:
    """The Stripe calls that undo a company's second live subscription (services/duplicates.py):
    cancel it at once, void what it left unpaid, refund what it was paid.

    Every call can be repeated: a cancelled subscription is found cancelled (Stripe answers 404
    to a second cancellation), a void invoice is left alone, and a refund carries an idempotency
    key derived from the payment it refunds, so a retry, even one whose first answer was lost,
    replays the same refund; past Stripe's 24 hours of idempotency, a payment refunded already
    answers `charge_already_refunded`, which counts as done."""

    def __init__(self, client: stripe.StripeClient) -> None:
        self._client = client

    async def customer_subscriptions(self, customer: str) -> list[ListedSubscription]:
        """The customer's subscriptions that have not ended (Stripe's default list leaves out
        `canceled` and `incomplete_expired`), one page: a customer has a handful."""
        try:
            page = await self._client.v1.subscriptions.list_async(
                {"customer": customer, "limit": 100}
            )
        except stripe.StripeError as exc:
            raise _failed(exc) from exc
        return [
            ListedSubscription(
                id=str(sub.id),
                status=str(sub.status),
                created=datetime.fromtimestamp(int(sub.created), UTC),
                metadata=_metadata_of(sub),
            )
            for sub in page.data
        ]

    async def set_metadata(self, subscription_id: str, metadata: dict[str, str]) -> None:
        """Set (or, with "", unset) metadata keys; Stripe takes metadata on a cancelled
        subscription too."""
        try:
            await self._client.v1.subscriptions.update_async(
                subscription_id, {"metadata": metadata}
            )
        except stripe.StripeError as exc:
            raise _failed(exc) from exc

    async def cancel_now(self, subscription_id: str, comment: str) -> bool:
        """Cancel at once: no proration credit, no final invoice (`prorate=false`,
        `invoice_now=false`: the usage it metered bills on the subscription that stays).
        False when Stripe had ended it already: it answers an ended subscription 404 "No such
        subscription", so the subscription is read to tell that from one that never was."""
        try:
            await self._client.v1.subscriptions.cancel_async(
                subscription_id,
                {
                    "prorate": False,
                    "invoice_now": False,
                    "cancellation_details": {"comment": comment},
                },
            )
        except stripe.InvalidRequestError as exc:
            if exc.http_status == 404:
                try:
                    found = await self._client.v1.subscriptions.retrieve_async(subscription_id)
                except stripe.StripeError:
                    raise _failed(exc) from exc
                if str(found.status) in ENDED_STATUSES:
                    return False
            raise _failed(exc) from exc
        except stripe.StripeError as exc:
            raise _failed(exc) from exc
        return True

    async def cancellation_comment(self, subscription_id: str) -> str | None:
        """The comment its cancellation left (`cancellation_details.comment`)."""
        try:
            sub = await self._client.v1.subscriptions.retrieve_async(subscription_id)
        except stripe.StripeError as exc:
            raise _failed(exc) from exc
        comment = _optional(_optional(sub, "cancellation_details"), "comment")
        return str(comment) if comment else None

    async def settle(self, subscription_id: str) -> Settlement:
        """Give back what the (cancelled) subscription charged: each of its invoices that is
        open or uncollectible is voided; a draft is finalized without collection
        (`auto_advance=false`) and voided (Stripe deletes only one-off drafts, and voids only
        finalized invoices); a paid one is refunded through its invoice payments
        (`GET /v1/invoice_payments?invoice=`: since API 2025-03-31 the invoice no longer names
        its `payment_intent` or `charge`), with reason `duplicate`."""
        voided: list[str] = []
        refunded: list[Refunded] = []
        unrefundable: list[str] = []
        renewals: list[str] = []
        try:
            for invoice in await self._invoices(subscription_id):
                invoice_id, status = str(invoice.id), str(invoice.status)
                if (
                    status == "paid"
                    and _optional(invoice, "billing_reason") == "subscription_cycle"
                ):
                    # A paid renewal billed a past period's usage: the duplicate was the
                    # company's for a while (an older one went live late). Never refunded
                    # blindly: an operator decides.
                    renewals.append(invoice_id)
                    continue
                if status == "draft":
                    await self._client.v1.invoices.finalize_invoice_async(
                        invoice_id,
                        {"auto_advance": False},
                        {"idempotency_key": f"meterline-duplicate-finalize-{invoice_id}"},
                    )
                    status = "open"
                if status in ("open", "uncollectible"):
                    await self._client.v1.invoices.void_invoice_async(
                        invoice_id,
                        options={"idempotency_key": f"meterline-duplicate-void-{invoice_id}"},
                    )
                    voided.append(invoice_id)
                elif status == "paid" and int(_optional(invoice, "amount_paid") or 0) > 0:
                    found, missing = await self._refund_invoice(subscription_id, invoice_id)
                    refunded += found
                    unrefundable += [invoice_id] if missing else []
        except stripe.StripeError as exc:
            raise _failed(exc) from exc
        return Settlement(tuple(voided), tuple(refunded), tuple(unrefundable), tuple(renewals))

    async def _invoices(self, subscription_id: str) -> list[Any]:
        invoices: list[Any] = []
        params: dict[str, Any] = {"subscription": subscription_id, "limit": 100}
        while True:
            page = await self._client.v1.invoices.list_async(params)  # type: ignore[arg-type]
            invoices += page.data
            if not page.has_more or not page.data:
                return invoices
            params["starting_after"] = str(page.data[-1].id)

    async def _refund_invoice(
        self, subscription_id: str, invoice_id: str
    ) -> tuple[list[Refunded], bool]:
        """Refund every paid payment of the invoice; True as well when one could not be."""
        page = await self._client.v1.invoice_payments.list_async(
            {"invoice": invoice_id, "status": "paid", "limit": 100}
        )
        done: list[Refunded] = []
        missing = False
        for payment in page.data:
            paid_by = _optional(payment, "payment")
            intent = _id_of(_optional(paid_by, "payment_intent"))
            charge = _id_of(_optional(paid_by, "charge"))
            target = intent or charge
            if target is None:
                missing = True
                continue
            params: dict[str, Any] = {
                "payment_intent" if intent else "charge": target,
                "reason": "duplicate",
                "metadata": {
                    "meterline_duplicate_subscription": subscription_id,
                    "meterline_invoice": invoice_id,
                },
            }
            try:
                refund = await self._client.v1.refunds.create_async(
                    params,  # type: ignore[arg-type]
                    {"idempotency_key": f"meterline-duplicate-refund-{target}"},
                )
            except stripe.InvalidRequestError as exc:
                if exc.code != "charge_already_refunded":
                    raise
                done.append(Refunded(invoice_id, target, None, None))
                continue
            done.append(Refunded(invoice_id, target, str(refund.id), int(refund.amount)))
        return done, missing
