"""`meterline company drift`: plan changes made in Stripe (its dashboard) in the middle of a
month, and what they mean for that month's invoice.

Meterline prices a month by one tier (the one it opened with); Stripe bills the usage before a
mid-month price swap at the old prices and after it at the new ones (its graduated tiers start
again), so the invoice's metered subtotal will not equal Meterline's `totalOverageCost`. The
operator sees both figures: Meterline's, and Stripe's own preview of the coming invoice.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from meterline.billing.periods import month_of
from meterline.config import Settings
from meterline.db import companies, flags
from meterline.services import usage
from meterline.services.subscriptions import Flag
from meterline.stripe_gateway.client import StripeNotConfigured
from meterline.stripe_gateway.invoices import (
    InvoicePreview,
    PreviewFailed,
    preview_upcoming_invoice,
)

PREVIEW_TIME_LIMIT_SECONDS = 10.0


@dataclass(frozen=True)
class Drift:
    company_id: uuid.UUID
    subscription_id: str
    what: str  # the flag's message: from which tier to which, as Stripe reported it
    seen_at: datetime
    meterline_overage: Decimal  # this month, at the tier the month opened with
    stripe_preview: InvoicePreview | None  # Stripe's coming invoice, when it could be read
    preview_error: str | None


async def drift_report(settings: Settings, now: datetime) -> list[Drift]:
    report = []
    for flag in await flags.open_flags(limit=1000):
        if flag.kind != Flag.TIER_CHANGED_IN_STRIPE or flag.company_id is None:
            continue
        company = await companies.get(flag.company_id)
        if company is None:
            continue
        summary = await usage.monthly_summary(company, month_of(now), now)
        preview, error = None, None
        if company.stripe_customer_id and company.stripe_subscription_id:
            try:
                preview = await preview_upcoming_invoice(
                    settings,
                    customer=company.stripe_customer_id,
                    subscription=company.stripe_subscription_id,
                    time_limit=PREVIEW_TIME_LIMIT_SECONDS,
                )
            except (PreviewFailed, StripeNotConfigured) as exc:
                error = str(exc)
        report.append(
            Drift(
                company_id=company.id,
                subscription_id=flag.object_id,
                what=flag.message,
                seen_at=flag.last_seen_at,
                meterline_overage=summary.total_overage_cost if summary else Decimal(0),
                stripe_preview=preview,
                preview_error=error,
            )
        )
    return report
