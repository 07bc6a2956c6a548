"""Thin resolvers of the billing fields: admins only, answers from Stripe through the service."""

from __future__ import annotations

import strawberry

from meterline.permissions import Permission
from meterline.schema.context import Context
from meterline.schema.types import UpcomingInvoice
from meterline.services import billing

Info = strawberry.Info[Context, None]


async def upcoming_invoice(info: Info) -> UpcomingInvoice | None:
    ctx = info.context
    company = await ctx.company(Permission.READ_BILLING)
    preview = await billing.upcoming_invoice(company, ctx.settings, ctx.now())
    return UpcomingInvoice.of(preview) if preview else None
