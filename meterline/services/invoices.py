"""Applying a Stripe invoice's current state: the local invoice mirror and the dunning state.

Dunning (the design): PAST_DUE while an invoice is unpaid after a failed payment (open, or marked
uncollectible), grace from the earliest failure; RESTRICTED after the grace; OK again when the
invoices are paid or voided, or an operator clears it (an uncollectible invoice never clears by
itself).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import date, datetime

from meterline.billing.catalog import Plan, Tier
from meterline.billing.dunning import dunning_from_invoices
from meterline.billing.periods import month_of
from meterline.db import companies, flags, invoices, tiers
from meterline.db.companies import Company
from meterline.db.engine import DB
from meterline.db.invoices import InvoiceMirror
from meterline.services.subscriptions import Outcome
from meterline.stripe_gateway.mirror import InvoiceState

UNKNOWN_CUSTOMER = "invoice_of_unknown_customer"


def usage_month(state: InvoiceState) -> date | None:
    """The month whose usage the invoice bills: its metered lines' period. The invoice that
    opens a subscription bills the base fee in advance and no usage."""
    if state.billing_reason == "subscription_create" or not state.metered_periods:
        return None
    return month_of(min(start for start, _ in state.metered_periods))


def _mirror(state: InvoiceState, company_id: uuid.UUID, read_seq: int) -> InvoiceMirror:
    return InvoiceMirror(
        id=state.id,
        company_id=company_id,
        subscription_id=state.subscription_id,
        number=state.number,
        status=state.status,
        billing_reason=state.billing_reason,
        currency=state.currency,
        amount_due=state.amount_due,
        amount_paid=state.amount_paid,
        amount_remaining=state.amount_remaining,
        period_start=state.period_start,
        period_end=state.period_end,
        usage_month=usage_month(state),
        paid_at=state.paid_at,
        hosted_invoice_url=state.hosted_invoice_url,
        invoice_pdf=state.invoice_pdf,
        created=state.created,
        first_failed_at=None,  # failures are recorded by record_failure, never overwritten
        marked_uncollectible_at=state.marked_uncollectible_at,
        read_seq=read_seq,
    )


async def apply_invoice(
    state: InvoiceState, *, read_seq: int, now: datetime, failed_at: datetime | None
) -> Outcome:
    """Apply the state read (with `read_seq`) in the caller's transaction. `failed_at`: when a
    payment attempt failed (an `invoice.payment_failed` event's time), if this is one."""
    linked = await companies.by_customer(state.customer)
    if linked is None:
        message = (
            f"invoice {state.id} is for customer {state.customer}, linked to no company "
            f"(its subscription did not name one)"
        )
        await flags.raise_flag(
            kind=UNKNOWN_CUSTOMER, object_id=state.id, message=message, company_id=None, now=now
        )
        return Outcome(False, message)
    company = await companies.lock(linked.id)
    assert company is not None
    await invoices.upsert(_mirror(state, company.id, read_seq))
    counts = company.dunning_cleared_at is None or (
        failed_at is not None and failed_at > company.dunning_cleared_at
    )
    if failed_at is not None and counts:
        # Judged on the latest state stored (this read, or a later one that won): a stale read
        # of a since-paid invoice must not record a failure.
        latest = await invoices.get(state.id)
        if latest is not None and latest.status in ("open", "uncollectible"):
            await invoices.record_failure(state.id, failed_at)
    await refresh_dunning(company, now)
    return Outcome(True)


def grace_days(plans: Mapping[Tier, Plan], invoice_tier: Tier | None, company_tier: Tier) -> int:
    """The grace of the tier the failed invoice bills; a company whose subscription ended (free
    now, no grace) keeps the grace its paid tier promised, and an invoice of no known tier
    (a one-off) gets the longest grace of the tiers rather than none."""
    for tier in (invoice_tier, company_tier):
        if tier is not None and not plans[tier].hard_cap:
            return plans[tier].grace_days
    return max(plan.grace_days for plan in plans.values())


async def refresh_dunning(company: Company, now: datetime) -> Company:
    """Derive the company's dunning state from its invoices (caller holds the company lock)."""
    facts = await invoices.dunning_facts(company.id, company.dunning_cleared_at)
    plans = await tiers.cached_plans()
    dunning = dunning_from_invoices(
        facts.earliest_failure, grace_days(plans, facts.failed_tier, company.tier)
    )
    if dunning == company.dunning:
        return company
    updated = await companies.set_dunning(company.id, dunning)
    assert updated is not None
    return updated


async def clear_dunning(company_id: uuid.UUID, *, now: datetime) -> Company | None:
    """The operator's `company clear-dunning`: OK now; earlier failures no longer count."""
    async with DB.transaction():
        if await companies.lock(company_id) is None:
            return None
        await invoices.forget_failures(company_id)
        cleared = await companies.clear_dunning(company_id, now=now)
    return cleared
