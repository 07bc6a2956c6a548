"""Thin resolvers of the subscription mutations: admins only (MANAGE_SUBSCRIPTION)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import strawberry

from meterline.billing.catalog import Tier
from meterline.db import companies
from meterline.db.companies import Company
from meterline.permissions import Permission
from meterline.schema.context import Context
from meterline.schema.lifecycle import (
    BillingPortalResult,
    CancelSubscriptionResult,
    ChangeTierResult,
    ResumeSubscriptionResult,
    StartCheckoutResult,
)
from meterline.schema.types import SubscriptionTier
from meterline.services import lifecycle

Info = strawberry.Info[Context, None]


@asynccontextmanager
async def managed(info: Info) -> AsyncIterator[Company]:
    """The caller's company, allowed to manage its subscription, read afresh once no other
    change of it is running (two admins at once: one after the other, each on what the
    other left)."""
    ctx = info.context
    company_id = (await ctx.company(Permission.MANAGE_SUBSCRIPTION)).id
    async with companies.changes_serialised(company_id):
        company = await companies.get(company_id)
        assert company is not None
        yield company


async def start_checkout(info: Info, tier: SubscriptionTier) -> StartCheckoutResult:
    ctx = info.context
    async with managed(info) as company:
        return await lifecycle.start_checkout(
            company, Tier(tier), lifecycle=ctx.lifecycle(), settings=ctx.settings, now=ctx.now()
        )


async def change_tier(info: Info, tier: SubscriptionTier) -> ChangeTierResult:
    ctx = info.context
    async with managed(info) as company:
        return await lifecycle.change_tier(
            company, Tier(tier), lifecycle=ctx.lifecycle(), now=ctx.now()
        )


async def cancel_subscription(info: Info) -> CancelSubscriptionResult:
    ctx = info.context
    async with managed(info) as company:
        return await lifecycle.cancel_subscription(
            company, lifecycle=ctx.lifecycle(), now=ctx.now()
        )


async def resume_subscription(info: Info) -> ResumeSubscriptionResult:
    ctx = info.context
    async with managed(info) as company:
        return await lifecycle.resume_subscription(
            company, lifecycle=ctx.lifecycle(), now=ctx.now()
        )


async def billing_portal_url(info: Info, return_url: str) -> BillingPortalResult:
    ctx = info.context
    company = await ctx.company(Permission.MANAGE_SUBSCRIPTION)
    return await lifecycle.billing_portal_url(
        company, return_url, lifecycle=ctx.lifecycle(), settings=ctx.settings
    )
