"""Thin resolvers of the usage portal's links: company admins and super admins."""

from __future__ import annotations

import strawberry

from meterline.permissions import Permission
from meterline.schema.context import Context
from meterline.services import portal
from meterline.services.portal import PortalLink

Info = strawberry.Info[Context, None]


async def create_portal_link(
    info: Info, ttl_minutes: int | None = portal.DEFAULT_TTL_MINUTES
) -> PortalLink:
    ctx = info.context
    company_id = ctx.authorize(Permission.MANAGE_PORTAL_LINKS)
    ttl = portal.DEFAULT_TTL_MINUTES if ttl_minutes is None else ttl_minutes
    return await portal.create_link(ctx.settings, company_id, ttl, create_company_at=ctx.now())


async def revoke_portal_links(info: Info) -> bool:
    ctx = info.context
    company_id = ctx.authorize(Permission.MANAGE_PORTAL_LINKS)
    await portal.revoke_links(company_id, ctx.now())
    return True
