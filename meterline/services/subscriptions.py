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
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from meterline.billing.catalog import EventType, Tier
from meterline.billing.periods import month_of, month_start
from meterline.billing.plans import SCHEDULED, PlanHistory, PlanPeriod, Reason
from meterline.db import companies, flags, subscriptions
from meterline.db.companies import Company
from meterline.db.subscriptions import SubscriptionMirror
from meterline.services.plan_history import store_history
from meterline.services.stripe_setup import (
    EVENT_TYPE_METADATA_KEY,
    PRODUCT_METADATA_KEY,
    base_price_lookup_key,
    metered_price_lookup_key,
)
from meterline.stripe_gateway.catalog import price_version
from meterline.stripe_gateway.mirror import PriceRef, ScheduleState, SubscriptionState

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


def version_of(prices: Sequence[PriceRef]) -> int:
    """The plan version the subscription's base price bills (billing/plans.py)."""
    for price in prices:
        role = price_role(price)
        if role is not None and role[1] is None:
            return price_version(price.metadata)
    return 1


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
    an ended one; of two live ones the older (by `created`, then id) is current, and a newer one
    never is (it is a duplicate, cancelled in Stripe: services/duplicates.py)."""
    if state.status not in LIVE_STATUSES:
        return current is None
    return (
        current is None
        or current.status not in LIVE_STATUSES
        or (state.created, state.id) < (current.created, current.id)
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
                f"{company.stripe_subscription_id}, which is older and stays current; a newer "
                f"live one is cancelled in Stripe when its webhook finds the older one live there"
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
            f"subscription {state.id} is older than the still live {current.id} and replaces it "
            f"as the company's current subscription; the newer one, if live in Stripe, is "
            f"cancelled there"
        )
        await flags.raise_flag(
            kind=Flag.SECOND_LIVE,
            object_id=current.id,
            message=message,
            company_id=company_id,
            now=now,
        )
    version = version_of(state.prices)
    becoming = _becoming(state, tier or company.tier, version, now)
    if state.status not in LIVE_STATUSES:
        # The current subscription ended: another one still live (a second checkout) bills
        # the company now.
        other = await subscriptions.newest_live(company_id, LIVE_STATUSES, exclude=state.id)
        if other is not None:
            becoming = _becoming_from_mirror(other, company.tier, version)
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
    version: int
    paying_from: datetime  # when it started billing (the free -> paid stamp)
    tier_since: datetime | None  # when that tier took effect in Stripe, when known
    # Not billing from this instant (ended, paused, or its payment collection paused).
    stopped_at: datetime | None = None
    stop_reason: str = Reason.ENDED
    ends_at: datetime | None = None  # cancel_at_period_end: the period's end


def bills(state: SubscriptionState) -> bool:
    """It bills its usage: live, and collecting payment."""
    return state.status in LIVE_STATUSES and state.pause_collection is None


def _becoming(state: SubscriptionState, tier: Tier, version: int, now: datetime) -> Becoming:
    # A pause counts from when Meterline applies it (Stripe's objects do not say when it
    # began, and an event's own time may be older than the state re-read): what was recorded
    # before was billed by the paid plan and sent. An end counts from Stripe's `ended_at`.
    stopped_at: datetime | None = None
    reason = Reason.ENDED
    if state.status not in LIVE_STATUSES:
        if state.status == "paused" or state.ended_at is None:
            stopped_at, reason = now, Reason.PAUSED if state.status == "paused" else reason
        else:
            stopped_at = state.ended_at
    elif state.pause_collection is not None:
        stopped_at, reason = now, Reason.PAUSED
    return Becoming(
        subscription_id=state.id,
        customer=state.customer,
        status=state.status,
        tier=tier,
        version=version,
        # A resumed subscription's period restarts at the resumption: usage stamped before it
        # (while paused) would not be billed.
        paying_from=max(
            state.start_date, state.created, state.current_period_start or state.created
        ),
        tier_since=state.base_price_since,
        stopped_at=stopped_at,
        stop_reason=reason,
        ends_at=state.current_period_end if state.cancel_at_period_end else None,
    )


def _becoming_from_mirror(mirror: SubscriptionMirror, current: Tier, version: int) -> Becoming:
    return Becoming(
        subscription_id=mirror.id,
        customer=mirror.customer_id,
        status=mirror.status,
        tier=mirror.tier or current,
        version=version,
        paying_from=max(mirror.start_date, mirror.created),
        tier_since=None,
        ends_at=mirror.current_period_end if mirror.cancel_at_period_end else None,
    )


# A change Stripe applies at a period start (a scheduled change, a cancellation at period end)
# reaches us within its renewal processing: a change stamped this close after a 1st took
# effect on it. Decided by the change's own time, never by when its event arrives.
AT_MONTH_START = timedelta(hours=2)


def at_month_start(since: datetime) -> datetime | None:
    """The 1st 00:00 UTC a change at `since` took effect on, if it is that close after it."""
    start = month_start(month_of(since))
    return start if since < start + AT_MONTH_START else None


def took_effect_at_month_start(since: datetime | None) -> bool:
    return since is not None and at_month_start(since) is not None


def history_after(
    history: PlanHistory, becoming: Becoming, now: datetime
) -> tuple[PlanHistory, str | None]:
    """The company's plan history once `becoming` is its current subscription, as Stripe
    reports it at `now` (pure), and a note when Stripe changed the tier in the middle of a
    month."""
    note = None
    if becoming.stopped_at is not None:
        since = min(becoming.stopped_at, now)
        current = history.at(now)
        ended = becoming.stop_reason == Reason.ENDED
        if ended and history.at(since).billed:
            pass  # an end is Stripe's fact (`ended_at`): written there, whatever was scheduled
        elif ended and current.reason == Reason.SCHEDULED_END:
            confirmed = replace(current, reason=Reason.ENDED)  # the cancellation happened
            return history.with_period(confirmed, drop_scheduled_after=False), None
        elif not current.billed or not history.at(since).billed:
            # It never billed, or it stopped already: a stop is never moved (a late event
            # re-read after a pause must not date the pause back).
            return history, None
        period = PlanPeriod(
            since,
            becoming.tier,
            becoming.version,
            billed=False,
            subscription_id=becoming.subscription_id,
            reason=becoming.stop_reason,
        )
        return history.with_period(period), None
    paying = PlanPeriod(
        becoming.paying_from,
        becoming.tier,
        becoming.version,
        billed=True,
        subscription_id=becoming.subscription_id,
    )
    if becoming.tier is Tier.FREE:
        return history, None  # not a subscription Meterline knows how to bill (unknown prices)
    stopped = history.at(now)
    if not stopped.billed and (
        stopped.reason == Reason.PAUSED and stopped.subscription_id == becoming.subscription_id
    ):
        # Resumed: billed again as if never paused. The pause's usage (within the free
        # allowance) is sent too, so the month Stripe invoices holds what Meterline shows.
        since = stopped.effective_from
    elif not stopped.billed:
        # Free -> paid: from when it bills. Stripe's first invoice bills the whole month's usage
        # stamped at its start, so a free month is billed whole; a month that had a billed
        # period already, or a manual account's month, goes on from the start.
        starts = becoming.paying_from
        if history.at(starts).billed:  # ended after its start: billed again from now
            starts = max(stopped.effective_from, now)
        month_begin = month_start(month_of(starts))
        at_begin = history.at(month_begin)
        earlier_billed = (
            at_begin.billed
            or at_begin.reason == Reason.OPERATOR
            or any(p.billed and month_begin <= p.effective_from < starts for p in history.periods)
        )
        since = starts if earlier_billed else month_begin
    else:
        since = becoming.tier_since or becoming.paying_from
        since = at_month_start(since) or since
        in_force = history.at(since)
        # Another subscription billed until now (a duplicate cancelled, or one that ended while
        # this one stayed live): this one takes its period over, month included.
        takeover = in_force.billed and in_force.subscription_id not in (
            None,
            becoming.subscription_id,
        )
        if takeover:
            since = in_force.effective_from
        same = not takeover and (in_force.tier, in_force.version, in_force.billed) == (
            becoming.tier,
            becoming.version,
            True,
        )
        if same and in_force.reason not in SCHEDULED:
            since = in_force.effective_from  # nothing new: the period in force goes on
        elif (
            not same
            and not takeover
            and at_month_start(since) is None
            and since > month_start(month_of(since))
        ):
            note = (
                f"subscription {becoming.subscription_id} moved the company from "
                f"{in_force.tier.value} to {becoming.tier.value} in the middle of the month as "
                f"Stripe reports it; this month's usage stays priced by the month's plan here, "
                f"Stripe prices it its own way"
            )
    updated = history.with_period(replace(paying, effective_from=since), drop_scheduled_after=False)
    # What Stripe reports now overrides anything that was scheduled up to now, and a
    # cancellation is pending only while Stripe says so.
    updated = updated.without_scheduled(since, now).without_scheduled(
        since, reasons=frozenset({Reason.SCHEDULED_END})
    )
    if becoming.ends_at is not None:
        updated = updated.with_period(
            PlanPeriod(
                becoming.ends_at,
                Tier.FREE,
                None,
                billed=False,
                subscription_id=becoming.subscription_id,
                reason=Reason.SCHEDULED_END,
            ),
            drop_scheduled_after=True,
        )
    return updated, note


async def _make_current(company: Company, becoming: Becoming, now: datetime) -> None:
    old, new = company.tier, becoming.tier if becoming.stopped_at is None else Tier.FREE
    history, note = history_after(company.plans, becoming, now)
    starts_paying = becoming.stopped_at is None and not company.plans.at(now).billed
    await companies.set_subscription(
        company.id,
        customer_id=becoming.customer,
        subscription_id=becoming.subscription_id,
        status=becoming.status,
        tier=new,
        usage_stamped_from=becoming.paying_from if starts_paying else None,
    )
    await store_history(company, history, now=now)
    if note is not None and old is not new:
        logger.warning("company %s: %s", company.id, note)
        await flags.raise_flag(
            kind=Flag.TIER_CHANGED_IN_STRIPE,
            object_id=becoming.subscription_id,
            message=note,
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


# --- subscription schedules ---------------------------------------------------------------------

PENDING_SCHEDULE_STATUSES = frozenset({"not_started", "active"})


async def apply_schedule(state: ScheduleState, *, now: datetime) -> Outcome:
    """A subscription schedule as Stripe holds it now (created, edited or released in the
    dashboard, or by Meterline): its next phase's tier is the company's scheduled change, and a
    schedule that no longer runs leaves none. Applied in the caller's transaction."""
    if state.subscription_id is None:
        return Outcome(False, f"schedule {state.id} has no subscription")
    mirror = await subscriptions.get(state.subscription_id)
    if mirror is None:
        return Outcome(False, f"schedule {state.id}: subscription {state.subscription_id} unknown")
    company = await companies.lock(mirror.company_id)
    assert company is not None
    if company.stripe_subscription_id != state.subscription_id:
        return Outcome(True, "not the company's current subscription: nothing changes")
    only_changes = frozenset({Reason.SCHEDULED_CHANGE})
    history = company.plans.without_scheduled(now, reasons=only_changes)
    tier = tier_of(state.next_phase_prices)
    starts = state.next_phase_start
    if (
        state.status in PENDING_SCHEDULE_STATUSES
        and tier is not None
        and starts is not None
        and starts > now
        and (tier, version_of(state.next_phase_prices))
        != (company.plans.at(now).tier, company.plans.at(now).version)
    ):
        history = history.with_period(
            PlanPeriod(
                starts,
                tier,
                version_of(state.next_phase_prices),
                billed=True,
                subscription_id=state.subscription_id,
                reason=Reason.SCHEDULED_CHANGE,
            ),
            drop_scheduled_after=False,
        )
    else:
        tier = None
    await store_history(company, history, now=now)
    await companies.set_scheduled_tier(company.id, tier)
    return Outcome(True)
