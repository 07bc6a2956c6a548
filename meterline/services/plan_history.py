"""Writing a company's plan history, and what a change does to the months it re-prices and the
events it sends, or no longer sends, to Stripe. The one writer of `company_plans`.

Callers hold the company row locked (`companies.lock`) in their transaction: recordings check
`plan_seq` under a share lock on that row, so none writes by the old plan once this commits,
and what committed before is re-priced here.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import datetime

from meterline.billing.catalog import EventType, Plan, Tier
from meterline.billing.periods import billable_window, month_of, month_start
from meterline.billing.plans import (
    BEGINNING,
    SCHEDULED,
    PlanHistory,
    PlanPeriod,
    Reason,
    month_plan,
)
from meterline.db import companies, company_plans, tiers, usage
from meterline.db.companies import Company
from meterline.db.engine import DB
from meterline.db.usage import Pricing

logger = logging.getLogger(__name__)

# Stripe's default finalisation grace: how far back a plan change may still move usage to or
# from Stripe (an older month's invoice is final).
STRIPE_GRACE_HOURS = 1
FAR_FUTURE = datetime(9999, 1, 1, tzinfo=BEGINNING.tzinfo)


def changed_from(old: PlanHistory, new: PlanHistory) -> datetime | None:
    """The earliest instant at which the two histories may differ (None: they are equal)."""
    changed = [p.effective_from for p in set(old.periods) ^ set(new.periods)]
    return min(changed) if changed else None


def _pricings(plan: Plan) -> dict[EventType, Pricing]:
    return {t: Pricing(plan.tier, plan.version, plan.allowance(t), plan.cap(t)) for t in EventType}


async def store_history(company: Company, new: PlanHistory, *, now: datetime) -> bool:
    """Make `new` the company's plan history (the company locked by the caller's transaction):
    every month with usage whose plan it changes is re-priced, and each not-yet-sent event
    Stripe can still bill is pending or local by the period it falls in. False: no change."""
    since = changed_from(company.plans, new)
    if since is None:
        return False
    await company_plans.store(company.id, new)
    catalog = await tiers.cached_catalog()
    repriced = 0
    for month in await usage.months_with_usage(company.id, month_of(since)):
        after = month_plan(new, catalog, month)
        if month_plan(company.plans, catalog, month) != after:
            repriced += await usage.reprice_month(company.id, month, _pricings(after))
    starts = [p.effective_from for p in new.periods]
    spans = [(BEGINNING, starts[0] if starts else FAR_FUTURE, False)] + [
        (p.effective_from, starts[i + 1] if i + 1 < len(starts) else FAR_FUTURE, p.billed)
        for i, p in enumerate(new.periods)
    ]
    earliest = billable_window(now, STRIPE_GRACE_HOURS).earliest
    moved = await usage.resync_events(company.id, spans, not_before=max(since, earliest))
    logger.info(
        "company %s: plan history changed from %s (%d rollups re-priced, %d events re-decided "
        "for Stripe)",
        company.id,
        since.isoformat(),
        repriced,
        moved,
    )
    return True


class OperatorRefused(Exception):
    """`company set-tier` on a company a subscription bills: Stripe would bill it otherwise."""


async def set_tier_by_operator(company_id: uuid.UUID, tier: Tier, *, now: datetime) -> Company:
    """`meterline company set-tier`: a manual account (no subscription) on `tier` from the
    start of this month. Its usage is not sent to Stripe (nothing would bill it); only the
    free tier caps it."""
    async with DB.transaction():
        await companies.get_or_create(company_id, now=now)
        company = await companies.lock(company_id)
        assert company is not None
        in_force = company.plans.at(now)
        if in_force.billed:
            raise OperatorRefused(
                f"company {company_id} is billed by subscription {in_force.subscription_id} "
                f"({in_force.tier.value}): change its plan in Stripe (changeTier, the "
                "dashboard), not here"
            )
        since = month_start(month_of(now))
        period = PlanPeriod(since, tier, None, billed=False, reason=Reason.OPERATOR)
        await store_history(company, company.plans.with_period(period), now=now)
        updated = await companies.set_tier(company_id, tier)
    assert updated is not None
    return updated


async def _change(
    company_id: uuid.UUID, now: datetime, edit: Callable[[PlanHistory], PlanHistory]
) -> None:
    """Apply `edit` to the company's history, the company locked (in the caller's transaction
    when there is one)."""
    async with DB.transaction():
        company = await companies.lock(company_id)
        assert company is not None
        await store_history(company, edit(company.plans), now=now)


async def schedule_change(
    company_id: uuid.UUID,
    tier: Tier,
    *,
    effective_at: datetime,
    subscription_id: str,
    now: datetime,
    version: int | None = None,
) -> None:
    """Stripe accepted a change of tier at `effective_at` (a schedule's next phase): from then
    the plan is `tier`, unless Stripe says otherwise before it starts."""
    period = PlanPeriod(
        effective_at,
        tier,
        version,
        billed=tier is not Tier.FREE,
        subscription_id=subscription_id,
        reason=Reason.SCHEDULED_CHANGE if tier is not Tier.FREE else Reason.SCHEDULED_END,
    )
    await _change(company_id, now, lambda h: h.without_scheduled(now).with_period(period))


async def withdraw_scheduled(
    company_id: uuid.UUID, *, now: datetime, reasons: frozenset[str] = SCHEDULED
) -> None:
    """Nothing of `reasons` is pending any more (a schedule released, a cancellation lifted)."""
    await _change(company_id, now, lambda h: h.without_scheduled(now, reasons=reasons))
