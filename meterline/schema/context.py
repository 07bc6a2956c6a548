"""The per-request GraphQL context: who is asking, and the app's clock and settings."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import date, datetime

from strawberry.dataloader import DataLoader
from strawberry.litestar import BaseContext

from meterline.auth import Principal
from meterline.config import Settings
from meterline.db.companies import Company
from meterline.db.invoices import InvoiceMirror
from meterline.permissions import Permission, allows
from meterline.services import billing, usage
from meterline.services.errors import Forbidden, StripeUnavailable
from meterline.stripe_gateway.client import SharedClient, StripeNotConfigured
from meterline.stripe_gateway.lifecycle import StripeLifecycle


class Context(BaseContext, kw_only=True):
    principal: Principal | None  # None only for GET (the GraphiQL page)
    settings: Settings
    clock: Callable[[], datetime]
    request_id: str
    stripe: SharedClient | None = None  # the app's Stripe client (lifecycle mutations)
    # Sibling fields resolve concurrently: they share one lookup of the company.
    company_task: asyncio.Task[Company] | None = None
    month_invoice_loader: DataLoader[date, InvoiceMirror | None] | None = None
    moment: datetime | None = None  # the request's instant, once read

    def now(self) -> datetime:
        """The request's instant, read once: every field of one request describes one moment
        (a document asking for usageLimits and monthlySummary across midnight on the 1st must
        not price two months)."""
        if self.moment is None:
            self.moment = self.clock()
        return self.moment

    def authorize(self, permission: Permission) -> uuid.UUID:
        """The caller's company, if its role grants `permission`; FORBIDDEN otherwise."""
        if self.principal is None:
            raise Forbidden("No token.")
        company_id = self.principal.company_id
        if company_id is None:
            raise Forbidden("This token names no company.")
        # A portal link's role is Meterline's own: never renamed by ROLE_ALIASES.
        aliases = None if self.principal.kind == "portal" else self.settings.role_aliases
        if not allows(self.principal.role, permission, aliases):
            raise Forbidden(f"Role {self.principal.role!r} may not do this.")
        return company_id

    def lifecycle(self) -> StripeLifecycle:
        """Stripe for the subscription mutations; STRIPE_UNAVAILABLE when not configured."""
        try:
            if self.stripe is None:
                raise StripeNotConfigured("Stripe is not configured")
            return StripeLifecycle(self.stripe.get())
        except StripeNotConfigured as exc:
            raise StripeUnavailable(f"{exc}: subscriptions cannot be changed") from exc

    def month_invoices(self, company_id: uuid.UUID) -> DataLoader[date, InvoiceMirror | None]:
        """The invoice carrying each month's usage: one query for all the months of a request
        (usageHistory asks for up to 24)."""
        if self.month_invoice_loader is None:

            async def load(months: list[date]) -> list[InvoiceMirror | None]:
                found = await billing.invoices_for_months(company_id, months)
                return [found.get(m) for m in months]

            self.month_invoice_loader = DataLoader(load_fn=load)
        return self.month_invoice_loader

    async def company(self, permission: Permission) -> Company:
        company_id = self.authorize(permission)
        if self.company_task is None:
            self.company_task = asyncio.ensure_future(self._load_company(company_id))
        return await asyncio.shield(self.company_task)

    async def _load_company(self, company_id: uuid.UUID) -> Company:
        assert self.principal is not None
        if self.principal.kind != "portal":
            return await usage.company(company_id, self.now())
        # A read-only link creates nothing: its company exists (createPortalLink made sure).
        company = await usage.existing_company(company_id)
        if company is None:
            raise Forbidden("This link's company does not exist.")
        return company
