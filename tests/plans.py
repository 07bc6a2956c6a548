"""Putting a test's company on a tier: a period in its plan history, written the way the
webhook path writes one (services/plan_history.py), so every rule reads it as it would read a
subscription's."""

from __future__ import annotations

import uuid
from datetime import datetime

from meterline.billing.catalog import Tier
from meterline.billing.plans import BEGINNING, PlanPeriod, Reason
from meterline.db import companies
from meterline.db.engine import DB
from meterline.services.plan_history import store_history


async def put_on_tier(
    company_id: uuid.UUID,
    tier: Tier,
    *,
    now: datetime,
    since: datetime = BEGINNING,
    billed: bool = False,
) -> None:
    """`company_id` on `tier` from `since` (by default, always): billed as a subscription would
    bill it, or a manual account whose usage stays here."""
    async with DB.transaction():
        await companies.get_or_create(company_id, now=now)
        company = await companies.lock(company_id)
        assert company is not None
        paid = billed and tier is not Tier.FREE
        period = PlanPeriod(
            since,
            tier,
            None,
            billed=paid,
            reason=Reason.SUBSCRIPTION if paid else Reason.OPERATOR,
        )
        await store_history(company, company.plans.with_period(period), now=now)
        await companies.set_tier(company_id, tier)
