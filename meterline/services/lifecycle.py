"""The subscription lifecycle a company admin drives: checkout, plan changes, cancellation,
resumption and the billing portal (docs/design.md, plan changes).

A plan change takes effect on the 1st, in Stripe (a subscription schedule) and here (the month
keeps its tier): `scheduledTier` shows it until then. Stripe is called first; only what Stripe
accepted is written here, so a Stripe failure (`STRIPE_UNAVAILABLE`, or
`STRIPE_REQUEST_REJECTED` when Stripe refused the call) leaves nothing half-done. The webhooks
then confirm it (they re-read the subscription).

Checkout: one open session per company (stored in `checkout_sessions`), and every
subscription's periods start on the 1st at 00:00 UTC; where Stripe's rules leave no such
anchor, or the open session is being paid, the answer is `CheckoutUnavailable`
(docs/design.md, "Subscription lifecycle")."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeVar
from urllib.parse import urlsplit

from meterline.billing.catalog import EventType, Tier
from meterline.billing.periods import floor_to_second, month_end, month_of, month_start
from meterline.billing.plans import Reason
from meterline.config import Settings
from meterline.db import checkouts, companies, subscriptions
from meterline.db.companies import Company
from meterline.db.engine import DB
from meterline.db.sql import is_database_busy
from meterline.db.subscriptions import SubscriptionMirror
from meterline.services.errors import (
    BadUserInput,
    DatabaseBusy,
    StripeRequestRejected,
    StripeUnavailable,
)
from meterline.services.plan_history import schedule_change, withdraw_scheduled
from meterline.services.stripe_setup import base_price_lookup_key, metered_price_lookup_key
from meterline.services.subscriptions import LIVE_STATUSES
from meterline.stripe_gateway.lifecycle import (
    CheckoutState,
    LifecycleFailed,
    PlanPrice,
    StripeLifecycle,
)

T = TypeVar("T")
CHANGES = frozenset({Reason.SCHEDULED_CHANGE})  # a schedule's next phase
ENDS = frozenset({Reason.SCHEDULED_END})  # a cancellation at period end
logger = logging.getLogger(__name__)

# A subscription not yet paid (`incomplete`) or paused still blocks a second checkout.
HOLDS_A_SUBSCRIPTION = LIVE_STATUSES | {"incomplete", "paused"}


@dataclass(frozen=True)
class CheckoutStarted:
    url: str
    session_id: str
    expires_at: datetime


@dataclass(frozen=True)
class CheckoutUnavailable:
    """No checkout now: none can start whose subscription's periods begin on the 1st, or the
    company's open checkout is being paid. Try again at `retry_at`."""

    retry_at: datetime
    message: str


@dataclass(frozen=True)
class TierChangeScheduled:
    tier: Tier
    effective_at: datetime


@dataclass(frozen=True)
class TierChangeCanceled:
    tier: Tier  # the tier that stays
    message: str


@dataclass(frozen=True)
class CancellationScheduled:
    effective_at: datetime
    message: str


@dataclass(frozen=True)
class SubscriptionResumed:
    tier: Tier


@dataclass(frozen=True)
class PortalSession:
    url: str


@dataclass(frozen=True)
class NoSubscription:
    message: str


@dataclass(frozen=True)
class NothingToResume:
    message: str


@dataclass(frozen=True)
class StripeNotReady:
    missing_prices: list[str]
    message: str


def plan_lookup_keys(tier: Tier) -> list[str]:
    """The tier's six prices, base first: a complete subscription (the design, Stripe objects)."""
    return [base_price_lookup_key(tier)] + [metered_price_lookup_key(tier, e) for e in EventType]


def next_first(now: datetime) -> datetime:
    """The next 1st 00:00 UTC: where checkout anchors billing, and plan changes start."""
    return month_end(month_of(now))


async def _plan_prices(lifecycle: StripeLifecycle, tier: Tier) -> list[PlanPrice] | StripeNotReady:
    keys = plan_lookup_keys(tier)
    found = await _stripe(lifecycle.plan_prices(keys))
    missing = [k for k in keys if k not in found]
    if missing:
        return StripeNotReady(
            missing_prices=missing,
            message=f"Stripe has no active price for {', '.join(missing)}: run "
            f"`meterline setup-stripe`.",
        )
    return [found[k] for k in keys]


async def _record(what: str, *writes: Callable[[], Awaitable[object]]) -> None:
    """Stripe accepted `what`: write it here, in one transaction. A database too busy to
    answer gets one more try; then the caller hears DATABASE_BUSY saying that Stripe has it, and
    that the same request again records it (Stripe is left as it is: each of these calls,
    repeated, changes nothing more there)."""
    for attempt in (1, 2):
        try:
            async with DB.transaction():
                for write in writes:
                    await write()
            return
        except Exception as exc:
            if not is_database_busy(exc):
                raise
            if attempt == 2:
                raise DatabaseBusy(
                    f"Stripe {what}, but the database was too busy to record it here. Send the "
                    "same request again: Stripe changes nothing more, and Meterline records it."
                ) from exc
            logger.warning("database busy recording what Stripe accepted (%s): %s", what, exc)


async def _stripe(call: Awaitable[T]) -> T:
    try:
        return await call
    except LifecycleFailed as exc:
        if exc.rejection is not None:
            logger.warning("Stripe refused a subscription call: %s", exc)
            raise StripeRequestRejected("Stripe refused the change", exc.rejection) from exc
        raise StripeUnavailable(f"Stripe did not do it: {exc}") from exc


def _live(company: Company) -> bool:
    return (
        company.stripe_subscription_id is not None
        and company.subscription_status in HOLDS_A_SUBSCRIPTION
    )


async def _current(
    company: Company, statuses: frozenset[str] = LIVE_STATUSES
) -> SubscriptionMirror | NoSubscription:
    mirror = (
        await subscriptions.get(company.stripe_subscription_id)
        if company.stripe_subscription_id
        else None
    )
    if mirror is None or mirror.status not in statuses:
        return NoSubscription("This company has no paid subscription: start a checkout first.")
    return mirror


def _period_end(mirror: SubscriptionMirror, now: datetime) -> datetime:
    return mirror.current_period_end or next_first(now)


# --- the operations -----------------------------------------------------------------------------


async def start_checkout(
    company: Company, tier: Tier, *, lifecycle: StripeLifecycle, settings: Settings, now: datetime
) -> CheckoutStarted | CheckoutUnavailable | StripeNotReady:
    """One open checkout per company: the open session again for its tier; for another tier,
    that session expired in Stripe first, then a new one. The caller holds the company's
    change lock (`companies.changes_serialised`)."""
    if tier is Tier.FREE:
        raise BadUserInput("The free tier needs no checkout.")
    if _live(company):
        raise BadUserInput(
            "This company already has a subscription: use changeTier or cancelSubscription."
        )
    if not settings.checkout_success_url:
        raise StripeUnavailable("Checkout is not configured on this server (CHECKOUT_SUCCESS_URL).")
    if (manual := _manual_month(company, now)) is not None:
        return manual
    previous = await checkouts.open_session(company.id)
    if previous is not None:
        state = await _stripe(lifecycle.checkout_state(previous.id))
        still_open = state is not None and state.status == "open"
        if still_open and now < previous.expires_at and previous.tier is tier:
            # A second click, a reload, another admin: the same session.
            return CheckoutStarted(previous.url, previous.id, previous.expires_at)
        if not still_open:  # expired, or paid: closed here once it is over
            waiting = await _settle(previous, state, now)
            if waiting is not None:
                return waiting
            previous = None
        # Still open in Stripe, for another tier (or lapsed here): expired below.
    window = checkout_window(now)
    if window is None:
        return _no_anchor(now)
    anchor, expires_at = window
    prices = await _plan_prices(lifecycle, tier)
    if isinstance(prices, StripeNotReady):
        return prices
    if previous is not None:  # open for another tier: it must not be paid any more
        state = await _stripe(lifecycle.expire_checkout(previous.id))
        waiting = await _settle(previous, state, now)
        if waiting is not None:
            return waiting
    # The company's customer exists before any session: two sessions (two tabs, two admins)
    # then share it, and a second subscription is flagged, never a stranger's customer.
    customer = company.stripe_customer_id or await _customer_of(company, lifecycle)
    replaces = await checkouts.latest_id(company.id)
    session = await _stripe(
        lifecycle.create_checkout(
            prices=prices,
            customer=customer,
            company_id=str(company.id),
            anchor=anchor,
            success_url=settings.checkout_success_url,
            cancel_url=settings.checkout_cancel_url,
            expires_at=expires_at,
            # The same click retried within the hour sends the same parameters (the window is
            # fixed within the hour) under the same key: one session, even when the answer was
            # lost. Other parameters (prices moved by setup-stripe, another anchor, another
            # session replaced) make another key: Stripe refuses a key reused with different
            # parameters, and would replay a session expired since.
            idempotency_key=_checkout_key(
                company, tier, prices, customer, anchor, expires_at, replaces
            ),
        )
    )
    await _record(
        f"opened checkout session {session.id}",
        lambda: checkouts.add(
            session.id,
            company_id=company.id,
            tier=tier,
            url=session.url,
            expires_at=session.expires_at,
            now=now,
        ),
    )
    return CheckoutStarted(session.url, session.id, session.expires_at)


# While a paid session's subscription is on its way here (the webhooks), ask again this soon.
PAYING_RETRY = timedelta(minutes=1)


async def _settle(
    previous: checkouts.StoredCheckout, state: CheckoutState | None, now: datetime
) -> CheckoutUnavailable | None:
    """What Stripe says of the company's open session, once it is no longer open there (or
    Stripe would not expire it): closed here when it is over (expired, or paid with its
    subscription here); CheckoutUnavailable while it is being paid, or paid with its
    subscription not here yet (a new checkout would make a second subscription)."""
    if state is None or state.status == "expired":
        await _record(
            f"saw checkout session {previous.id} expired",
            lambda: checkouts.close(previous.id, "expired", now=now),
        )
        return None
    paid = (
        await subscriptions.get(state.subscription)
        if state.status == "complete" and state.subscription is not None
        else None
    )
    if paid is not None:  # its subscription reached Meterline (the webhooks): the session is over
        await _record(
            f"saw checkout session {previous.id} paid",
            lambda: checkouts.close(previous.id, "complete", now=now),
        )
        if paid.status in HOLDS_A_SUBSCRIPTION:  # it arrived while this request ran
            raise BadUserInput(
                "This company already has a subscription: use changeTier or cancelSubscription."
            )
        return None
    logger.info(
        "checkout session %s of company %s is %s in Stripe: no other checkout until it settles",
        previous.id,
        previous.company_id,
        state.status,
    )
    return CheckoutUnavailable(
        retry_at=now + PAYING_RETRY,
        message=f"A checkout for {previous.tier.value} is being paid: its subscription starts "
        "in a moment. Reload the billing page then.",
    )


# Stripe lets a session live 30 minutes to 24 hours (`expires_at`).
SESSION_MIN = timedelta(minutes=30)
SESSION_MAX = timedelta(hours=24)
# The session expires this long before its anchor, so a late payment never starts a period
# that already ended.
BEFORE_ANCHOR = timedelta(minutes=5)
# Stripe checks `expires_at` against its own clock when the request arrives: ask for a minute
# more than its minimum.
CLOCK_SLACK = timedelta(minutes=1)
# In a month's last LAST_MINUTES no session can live long enough and still expire before the
# next 1st.
LAST_MINUTES = SESSION_MIN + BEFORE_ANCHOR + CLOCK_SLACK


def checkout_window(now: datetime) -> tuple[datetime, datetime] | None:
    """The billing anchor (the next 1st 00:00 UTC) and when the session expires: before the
    anchor, so a late payment never starts a period that already ended; counted from the start
    of the hour, so every click of that hour asks for the same one. None when no session can
    anchor a subscription to the 1st:

    - in a month's last 36 minutes, the session could not live Stripe's minimum of 30 minutes
      and expire 5 minutes before the 1st (the anchor after that, the 1st after next, is beyond
      the next natural billing date, which Stripe refuses);
    - in a month's first second, the next 1st is exactly one month away: the natural billing
      date itself, and the anchor must come before it (Stripe counts in whole seconds)."""
    anchor = next_first(now)
    if anchor - now < LAST_MINUTES or floor_to_second(now) == month_start(month_of(now)):
        return None
    hour = now.replace(minute=0, second=0, microsecond=0)
    return anchor, min(hour + SESSION_MAX, anchor - BEFORE_ANCHOR)


def checkout_opens_at(now: datetime) -> datetime:
    """Where checkout_window(now) is None, the first moment it is not: the 1st at 00:00:01 UTC
    (this month's in its first second, else the next month's)."""
    this_month = month_start(month_of(now))
    first = this_month if floor_to_second(now) == this_month else next_first(now)
    return first + timedelta(seconds=1)


def _manual_month(company: Company, now: datetime) -> CheckoutUnavailable | None:
    """A manual account's month (`company set-tier` to a paid tier) cannot also be a
    subscription's: Meterline prices a month by one plan, and Stripe would bill only the part
    after the subscription's start. The subscription can start on the next 1st."""
    begin = month_start(month_of(now))
    manual = [
        p
        for p in (company.plans.at(begin), company.plans.at(now))
        if p.reason == Reason.OPERATOR and p.tier is not Tier.FREE
    ]
    if not manual:
        return None
    retry_at = next_first(now)
    return CheckoutUnavailable(
        retry_at=retry_at,
        message=f"This company is a manual {manual[0].tier.value} account this month (set by an "
        "operator): a month is billed by one plan, so a subscription can start from the 1st "
        "after an operator sets it back to free.",
    )


def _no_anchor(now: datetime) -> CheckoutUnavailable:
    retry_at = checkout_opens_at(now)
    return CheckoutUnavailable(
        retry_at=retry_at,
        message="Subscriptions are billed from the 1st of a month, and a checkout must stay open "
        "at least 30 minutes and close before the 1st: none can start in a month's last "
        f"{LAST_MINUTES.seconds // 60} minutes or its first second. Try again at "
        f"{retry_at:%Y-%m-%d %H:%M:%S} UTC.",
    )


def _checkout_key(
    company: Company,
    tier: Tier,
    prices: list[PlanPrice],
    customer: str,
    anchor: datetime,
    expires_at: datetime,
    replaces: str | None,
) -> str:
    parameters = "|".join(
        [
            customer,
            anchor.isoformat(),
            expires_at.isoformat(),
            replaces or "",
            *(p.id for p in prices),
        ]
    )
    digest = hashlib.sha256(parameters.encode()).hexdigest()[:20]
    return f"meterline-checkout-{company.id}-{tier.value}-{digest}"


async def _customer_of(company: Company, lifecycle: StripeLifecycle) -> str:
    # The idempotency key is the company's: concurrent or retried requests get one customer.
    created = await _stripe(lifecycle.create_customer(str(company.id)))
    try:
        await companies.set_stripe_ids(company.id, customer_id=created)
    except companies.CustomerTaken as exc:  # another company holds it: never relink
        raise StripeUnavailable(f"the new Stripe customer is taken: {exc}") from exc
    return created


async def change_tier(
    company: Company, tier: Tier, *, lifecycle: StripeLifecycle, now: datetime
) -> (
    TierChangeScheduled
    | TierChangeCanceled
    | CancellationScheduled
    | NoSubscription
    | StripeNotReady
):
    if tier is Tier.FREE:
        return await cancel_subscription(company, lifecycle=lifecycle, now=now)
    current = await _current(company)
    if isinstance(current, NoSubscription):
        return current
    schedule = await _stripe(lifecycle.subscription_schedule(current.id))
    # The tier in force now, by the plan history (between 00:00 on the 1st and the phase's
    # event, the `tier` column still says the old one).
    if tier is company.plans.at(now).tier:  # the same again: whatever was pending is withdrawn
        if schedule is not None:
            await _stripe(lifecycle.release_schedule(schedule))
            await _record(  # gone in Stripe already
                "released the pending change",
                lambda: companies.set_scheduled_tier(company.id, None),
                lambda: withdraw_scheduled(company.id, now=now, reasons=CHANGES),
            )
        if current.cancel_at_period_end:
            await _stripe(lifecycle.set_cancel_at_period_end(current.id, False))
            await _record(
                "withdrew the cancellation",
                lambda: subscriptions.set_cancel_at_period_end(current.id, False),
                lambda: withdraw_scheduled(company.id, now=now, reasons=ENDS),
            )
        await _record(
            "has nothing pending",
            lambda: companies.set_scheduled_tier(company.id, None),
            lambda: withdraw_scheduled(company.id, now=now),
        )
        return TierChangeCanceled(tier, f"{tier.value} stays; nothing changes on the 1st.")
    prices = await _plan_prices(lifecycle, tier)
    if isinstance(prices, StripeNotReady):
        return prices
    effective_at = _period_end(current, now)
    # One call sequence whose last step decides: the schedule takes over a pending
    # cancellation (its end is then "release": the subscription goes on at the new tier), so
    # a failure before it leaves the cancellation standing, never a half-lifted one.
    await _stripe(lifecycle.schedule_prices(current.id, schedule, prices))
    await _record(
        f"scheduled {tier.value} from {effective_at:%Y-%m-%d}",
        lambda: subscriptions.set_cancel_at_period_end(current.id, False),
        lambda: companies.set_scheduled_tier(company.id, tier),
        lambda: schedule_change(
            company.id,
            tier,
            effective_at=effective_at,
            subscription_id=current.id,
            now=now,
            version=prices[0].version,  # the base price's: what the schedule's phase bills
        ),
    )
    return TierChangeScheduled(tier, effective_at)


async def cancel_subscription(
    company: Company, *, lifecycle: StripeLifecycle, now: datetime
) -> CancellationScheduled | NoSubscription:
    current = await _current(company, HOLDS_A_SUBSCRIPTION)  # a paused one can be cancelled
    if isinstance(current, NoSubscription):
        return current
    schedule = await _stripe(lifecycle.subscription_schedule(current.id))
    if schedule is not None:  # Stripe cancels a scheduled subscription only once released
        await _stripe(lifecycle.release_schedule(schedule))
        await _record(  # the change is gone in Stripe
            "released the pending change",
            lambda: companies.set_scheduled_tier(company.id, None),
            lambda: withdraw_scheduled(company.id, now=now, reasons=CHANGES),
        )
    await _stripe(lifecycle.set_cancel_at_period_end(current.id, True))
    effective_at = _period_end(current, now)
    await _record(
        f"ends the subscription on {effective_at:%Y-%m-%d}",
        lambda: subscriptions.set_cancel_at_period_end(current.id, True),
        lambda: companies.set_scheduled_tier(company.id, None),
        lambda: schedule_change(
            company.id, Tier.FREE, effective_at=effective_at, subscription_id=current.id, now=now
        ),
    )
    return CancellationScheduled(
        effective_at,
        f"The subscription ends on {effective_at:%Y-%m-%d}; this month's usage is still "
        f"invoiced then.",
    )


async def resume_subscription(
    company: Company, *, lifecycle: StripeLifecycle, now: datetime
) -> SubscriptionResumed | NoSubscription | NothingToResume:
    current = await _current(company, HOLDS_A_SUBSCRIPTION)
    if isinstance(current, NoSubscription):
        return current
    if not current.cancel_at_period_end:
        return NothingToResume("The subscription is not set to end.")
    await _stripe(lifecycle.set_cancel_at_period_end(current.id, False))
    await _record(
        "withdrew the cancellation",
        lambda: subscriptions.set_cancel_at_period_end(current.id, False),
        lambda: withdraw_scheduled(company.id, now=now, reasons=ENDS),
    )
    return SubscriptionResumed(company.plans.at(now).tier)


def check_return_url(url: str, settings: Settings) -> str:
    """The portal sends the customer back here: only to our own origins (no open redirect)."""
    parts = urlsplit(url)
    origin = f"{parts.scheme}://{parts.netloc}"
    local = parts.hostname in ("localhost", "127.0.0.1")
    if parts.scheme not in ("https", "http") or not parts.netloc or len(url) > 2048:
        raise BadUserInput("returnUrl must be an absolute http(s) URL.")
    if parts.scheme == "http" and not (settings.is_development and local):
        raise BadUserInput("returnUrl must use https.")
    allowed = settings.billing_return_origins
    if not (origin in allowed or (settings.is_development and not allowed)):
        raise BadUserInput(f"returnUrl's origin {origin} is not allowed (BILLING_RETURN_ORIGINS).")
    return url


async def billing_portal_url(
    company: Company, return_url: str, *, lifecycle: StripeLifecycle, settings: Settings
) -> PortalSession | NoSubscription:
    url = check_return_url(return_url, settings)
    if company.stripe_customer_id is None:
        return NoSubscription("This company has no Stripe customer yet: start a checkout first.")
    session = lifecycle.portal_session(
        company.stripe_customer_id, url, settings.stripe_portal_configuration
    )
    return PortalSession(await _stripe(session))
