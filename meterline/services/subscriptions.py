"""Applying a Stripe subscription's current state to its company (webhooks and backfill).

The subscription names its company in `metadata.company_id`, or its customer is linked already;
a customer belongs to one company and is never relinked. The company's tier follows its current
subscription's base price (`tier_<name>` lookup key) while that subscription is live, and is
free otherwise. Free -> paid releases the month's earlier local events, to be sent stamped at
the subscription's start, and prices that month by the paid tier (docs/design.md, plan changes).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from meterline.billing.catalog import EventType, Tier
from meterline.billing.periods import month_of, month_start
from meterline.db import companies, flags, subscriptions, usage
from meterline.db.companies import Company
from meterline.db.subscriptions import SubscriptionMirror
from meterline.services.stripe_setup import (
    EVENT_TYPE_METADATA_KEY,
    PRODUCT_METADATA_KEY,
    base_price_lookup_key,
    metered_price_lookup_key,
)
from meterline.stripe_gateway.mirror import PriceRef, SubscriptionState

logger = logging.getLogger(__name__)

# Statuses in which a subscription bills its tier. `incomplete` has not been paid once yet;
# `paused` issues no invoices (usage then would never be billed: the company is capped as free
# until it resumes); `canceled` and `incomplete_expired` are over.
LIVE_STATUSES = frozenset({"active", "trialing", "past_due", "unpaid"})


class Flag:
    """Kinds of operator flags raised here."""

    CUSTOMER_TAKEN = "customer_linked_to_another_company"
    COMPANY_HAS_OTHER_CUSTOMER = "company_has_another_customer"
    NO_COMPANY = "subscription_without_company"
    UNKNOWN_TIER = "subscription_tier_unknown"
    INCOMPLETE = "subscription_incomplete"
    SECOND_LIVE = "second_live_subscription"
    TIER_CHANGED_IN_STRIPE = "tier_changed_in_stripe"


@dataclass(frozen=True)
class Outcome:
    applied: bool  # False: refused or not ours, see `note`
    note: str | None = None
    newly_linked: str | None = None  # a customer linked to its company by this event


# --- pure decisions -----------------------------------------------------------------------------


PriceRole = tuple[Tier, EventType | None]  # (tier, None): a base price; else a metered one


def price_role(price: PriceRef) -> PriceRole | None:
    """What a price is for Meterline: from the metadata `setup-stripe` puts on its prices
    (which stays when a price change moves the lookup key to a new price, so subscriptions on
    the old price are still known), else from the lookup key. None: not one of ours."""
    tiers = {t.value: t for t in Tier if t is not Tier.FREE}
    events = {e.value: e for e in EventType}
    tier = tiers.get(price.metadata.get(PRODUCT_METADATA_KEY, ""))
    if tier is not None:
        event = events.get(price.metadata.get(EVENT_TYPE_METADATA_KEY, ""))
        return (tier, event) if price.metered == (event is not None) else None
    for tier in tiers.values():
        if price.lookup_key == base_price_lookup_key(tier) and not price.metered:
            return tier, None
        for event in events.values():
            if price.lookup_key == metered_price_lookup_key(tier, event) and price.metered:
                return tier, event
    return None


def tier_of(prices: Sequence[PriceRef]) -> Tier | None:
    """The tier whose base price the subscription carries."""
    roles = [price_role(p) for p in prices]
    return next((role[0] for role in roles if role is not None and role[1] is None), None)


def missing_prices(tier: Tier, prices: Sequence[PriceRef]) -> list[str]:
    """Lookup keys of the tier's prices the subscription lacks (the design: a complete subscription
    has the base price and the metered price of every event type)."""
    have = {price_role(p) for p in prices}
    missing = [] if (tier, None) in have else [base_price_lookup_key(tier)]
    return missing + [metered_price_lookup_key(tier, e) for e in EventType if (tier, e) not in have]


def company_named(metadata: Mapping[str, str]) -> uuid.UUID | None:
    try:
        return uuid.UUID(metadata.get("company_id", ""))
    except ValueError:
        return None


def effective_tier(status: str, tier: Tier | None, current: Tier) -> Tier:
    if status not in LIVE_STATUSES:
        return Tier.FREE
    return tier if tier is not None else current  # an unknown base price changes nothing


def replaces_current(state: SubscriptionState, current: SubscriptionMirror | None) -> bool:
    """Whether `state` (not the company's current subscription) becomes it: a live one replaces
    an ended one, and the newer of two live ones wins."""
    if state.status not in LIVE_STATUSES:
        return current is None
    return (
        current is None or current.status not in LIVE_STATUSES or state.created >= current.created
    )


# --- applying -----------------------------------------------------------------------------------


async def apply_subscription(
    state: SubscriptionState,
    *,
    read_seq: int,
    now: datetime,
    company_hint: uuid.UUID | None = None,
) -> Outcome:
    """Apply the state read (with `read_seq`) in the caller's transaction."""
    named = company_named(state.metadata) or company_hint
    linked = await companies.by_customer(state.customer)
    if linked is not None and named is not None and linked.id != named:
        message = (
            f"subscription {state.id} names company {named}, but its customer {state.customer} "
            f"is linked to company {linked.id}: not applied, never relinked"
        )
        return await _refuse(Flag.CUSTOMER_TAKEN, state.id, message, named, now)
    company_id = linked.id if linked is not None else named
    if company_id is None:
        message = (
            f"subscription {state.id} of customer {state.customer} names no company "
            f"(metadata.company_id) and the customer is linked to none"
        )
        return await _refuse(Flag.NO_COMPANY, state.id, message, None, now)
    await companies.get_or_create(company_id, now=now)
    company = await companies.lock(company_id)
    assert company is not None
    if company.stripe_customer_id not in (None, state.customer):
        message = (
            f"subscription {state.id} of customer {state.customer} names company {company_id}, "
            f"which is linked to customer {company.stripe_customer_id}: not applied"
        )
        return await _refuse(Flag.COMPANY_HAS_OTHER_CUSTOMER, state.id, message, company_id, now)

    tier = tier_of(state.prices)
    stored = await subscriptions.upsert(_mirror(state, company_id, tier, read_seq))
    if not stored:
        return Outcome(True, "a later read of this subscription is applied already")
    await _check_prices(state, tier, company_id, now)

    current = (
        await subscriptions.get(company.stripe_subscription_id)
        if company.stripe_subscription_id not in (None, state.id)
        else None
    )
    if company.stripe_subscription_id not in (None, state.id) and not replaces_current(
        state, current
    ):
        if state.status in LIVE_STATUSES:
            message = (
                f"subscription {state.id} is live beside the company's current subscription "
                f"{company.stripe_subscription_id}; the newer one is applied"
            )
            await flags.raise_flag(
                kind=Flag.SECOND_LIVE,
                object_id=state.id,
                message=message,
                company_id=company_id,
                now=now,
            )
        return Outcome(True, "not the company's current subscription: nothing changes")
    if current is not None and current.status in LIVE_STATUSES and state.status in LIVE_STATUSES:
        message = (
            f"subscription {state.id} replaces the still live {current.id} as the company's "
            f"current subscription"
        )
        await flags.raise_flag(
            kind=Flag.SECOND_LIVE,
            object_id=current.id,
            message=message,
            company_id=company_id,
            now=now,
        )
    becoming = _becoming(state, effective_tier(state.status, tier, company.tier), now)
    if state.status not in LIVE_STATUSES:
        # The current subscription ended: another one still live (a second checkout) bills
        # the company now.
        other = await subscriptions.newest_live(company_id, LIVE_STATUSES, exclude=state.id)
        if other is not None:
            becoming = _becoming_from_mirror(other, company.tier)
    await _make_current(company, becoming, now)
    return Outcome(
        True, newly_linked=state.customer if company.stripe_customer_id is None else None
    )


@dataclass(frozen=True)
class Becoming:
    """The company's current subscription after this event, and what that means for it."""

    subscription_id: str
    customer: str
    status: str
    tier: Tier
    paying_from: datetime  # when it started billing (the free -> paid stamp)
    tier_since: datetime | None  # when that tier took effect in Stripe, when known


def _becoming(state: SubscriptionState, tier: Tier, now: datetime) -> Becoming:
    live = state.status in LIVE_STATUSES
    return Becoming(
        subscription_id=state.id,
        customer=state.customer,
        status=state.status,
        tier=tier,
        # A resumed subscription's period restarts at the resumption: usage stamped before it
        # (while paused) would not be billed.
        paying_from=max(
            state.start_date, state.created, state.current_period_start or state.created
        ),
        tier_since=state.base_price_since if live else (state.ended_at or now),
    )


def _becoming_from_mirror(mirror: SubscriptionMirror, current: Tier) -> Becoming:
    return Becoming(
        subscription_id=mirror.id,
        customer=mirror.customer_id,
        status=mirror.status,
        tier=mirror.tier or current,
        paying_from=max(mirror.start_date, mirror.created),
        tier_since=None,
    )


# A change Stripe applies at a period start (a scheduled change, a cancellation at period end)
# reaches us within its renewal processing: a change seen this close to the 1st took effect on it.
AT_MONTH_START = timedelta(hours=2)


def took_effect_at_month_start(since: datetime | None, now: datetime) -> bool:
    start = month_start(month_of(now))
    return since is not None and start <= since < start + AT_MONTH_START


async def _make_current(company: Company, becoming: Becoming, now: datetime) -> None:
    old, new = company.tier, becoming.tier
    starts_paying = old is Tier.FREE and new is not Tier.FREE
    stamped_from = becoming.paying_from if starts_paying else None
    await companies.set_subscription(
        company.id,
        customer_id=becoming.customer,
        subscription_id=becoming.subscription_id,
        status=becoming.status,
        tier=new,
        usage_stamped_from=stamped_from,
    )
    this_month = month_of(now)
    if stamped_from is not None:
        # The current month only (docs/design.md): a closed month is invoiced already.
        month = max(month_of(stamped_from), this_month)
        repriced = await usage.reprice_rollups(company.id, month)
        released = await usage.release_local_events(company.id, month)
        logger.info(
            "company %s starts paying (%s) from %s: %d events released to Stripe, %d rollups "
            "repriced",
            company.id,
            new.value,
            stamped_from.isoformat(),
            released,
            repriced,
        )
    elif old is not new and took_effect_at_month_start(becoming.tier_since, now):
        # On the 1st, as Meterline schedules changes: events recorded since 00:00, before this
        # event arrived, opened the month at the old tier. Stripe prices the month by the new
        # one, and so must we; a company that stopped paying keeps this month here.
        await usage.reprice_rollups(company.id, this_month)
        if new is Tier.FREE:
            await usage.withhold_pending_events(company.id, this_month)
    elif old is not new:
        message = (
            f"subscription {becoming.subscription_id} moved company {company.id} from "
            f"{old.value} to {new.value} in the middle of the month as Stripe reports it; this "
            f"month's usage stays priced at {old.value} here, Stripe prices it its own way"
        )
        await flags.raise_flag(
            kind=Flag.TIER_CHANGED_IN_STRIPE,
            object_id=becoming.subscription_id,
            message=message,
            company_id=company.id,
            now=now,
        )


async def _check_prices(
    state: SubscriptionState, tier: Tier | None, company_id: uuid.UUID, now: datetime
) -> None:
    if tier is None:
        message = (
            f"subscription {state.id} has no base price with a tier_<name> lookup key: its tier "
            f"is unknown, the company's tier is left as it is"
        )
        await flags.raise_flag(
            kind=Flag.UNKNOWN_TIER,
            object_id=state.id,
            message=message,
            company_id=company_id,
            now=now,
        )
        return
    await flags.resolve(kind=Flag.UNKNOWN_TIER, object_id=state.id, now=now)
    missing = missing_prices(tier, state.prices)
    if missing:
        message = (
            f"subscription {state.id} ({tier.value}) lacks the prices {', '.join(missing)}: "
            f"Stripe will not bill that usage"
        )
        await flags.raise_flag(
            kind=Flag.INCOMPLETE,
            object_id=state.id,
            message=message,
            company_id=company_id,
            now=now,
        )
    else:
        await flags.resolve(kind=Flag.INCOMPLETE, object_id=state.id, now=now)


async def _refuse(
    kind: str, object_id: str, message: str, company_id: uuid.UUID | None, now: datetime
) -> Outcome:
    logger.warning("%s", message)
    await flags.raise_flag(
        kind=kind, object_id=object_id, message=message, company_id=company_id, now=now
    )
    return Outcome(False, message)


def _mirror(
    state: SubscriptionState, company_id: uuid.UUID, tier: Tier | None, read_seq: int
) -> SubscriptionMirror:
    return SubscriptionMirror(
        id=state.id,
        company_id=company_id,
        customer_id=state.customer,
        status=state.status,
        tier=tier,
        complete=tier is not None and not missing_prices(tier, state.prices),
        cancel_at_period_end=state.cancel_at_period_end,
        current_period_start=state.current_period_start,
        current_period_end=state.current_period_end,
        start_date=state.start_date,
        created=state.created,
        read_seq=read_seq,
    )
