"""Thin resolvers of the billing fields: admins only, answers from Stripe through the service."""

from __future__ import annotations

from datetime import date

import strawberry

from meterline.permissions import Permission
from meterline.schema.context import Context
from meterline.schema.types import Invoice, UpcomingInvoice
from meterline.services import billing

Info = strawberry.Info[Context, None]


async def upcoming_invoice(info: Info) -> UpcomingInvoice | None:
    ctx = info.context
    company = await ctx.company(Permission.READ_BILLING)
    preview = await billing.upcoming_invoice(company, ctx.settings, ctx.now())
    return UpcomingInvoice.of(preview) if preview else None


async def payment_history(info: Info, limit: int | None = 12) -> list[Invoice]:
    ctx = info.context
    company = await ctx.company(Permission.READ_BILLING)
    invoices = await billing.payment_history(company, 12 if limit is None else limit)
    return [Invoice.of(i) for i in invoices]


async def month_invoice(info: Info, month: date) -> Invoice | None:
    ctx = info.context
    company = await ctx.company(Permission.READ_BILLING)
    invoice = await ctx.month_invoices(company.id).load(month)
    return Invoice.of(invoice) if invoice else None
