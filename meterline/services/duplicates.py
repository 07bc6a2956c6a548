"""A company's second live subscription: the newer one is cancelled in Stripe at once.

Two tabs paid within seconds, or a subscription made in the dashboard, leave one customer with
two live subscriptions, and Stripe then bills every meter, and the base fee, on both. The older
one (by Stripe's `created`, then by id: `created` has one-second resolution, and two tabs can
share a second) stays the company's; the newer one is cancelled at once (no proration credit, no
final invoice), its unpaid invoices voided and its paid ones refunded. It is logged at ERROR,
counted in /metrics (`meterline_duplicate_subscriptions_cancelled_total`) and flagged
(`second_live_subscription`, seen in `meterline company show`).

This runs in a webhook's prepare phase, outside any transaction: Stripe is called here, and the
webhook's transaction then applies the cancelled subscription as Stripe reports it (which
changes nothing for the company) and raises the flag (`record`). Every step can be repeated.
The newer subscription is marked (metadata `meterline_duplicate_of`) before it is cancelled, the
cancellation itself says it is Meterline's (`cancellation_details.comment`), and it is marked
again once what it charged is settled (`meterline_duplicate_settled`): a delivery that failed
half-way (Stripe unreachable after the cancellation) is finished by the next delivery, which
finds it cancelled by Meterline and not settled, and a delivery that finds it settled does
nothing more. A subscription that ended otherwise is never refunded. A refund carries an
idempotency key derived from the payment it refunds, so it is never made twice.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime

from meterline.db import companies, flags
from meterline.db.stripe_reads import next_read_seq
from meterline.metrics import DUPLICATE_SUBSCRIPTIONS_CANCELLED
from meterline.services.subscriptions import LIVE_STATUSES, Flag, company_named
from meterline.stripe_gateway.lifecycle import DuplicateSubscriptions, Settlement
from meterline.stripe_gateway.mirror import StripeReader, SubscriptionState

logger = logging.getLogger(__name__)

DUPLICATE_OF = "meterline_duplicate_of"  # on the newer subscription: the older one, which stays
SETTLED = "meterline_duplicate_settled"  # on the newer subscription: what it charged is given back
# How Meterline's cancellation reads in Stripe (`cancellation_details.comment`, set by the
# cancellation itself): only a subscription cancelled so is ever refunded.
COMMENT = "Meterline: a second live subscription"


@dataclass(frozen=True)
class Duplicate:
    """A newer live subscription cancelled in Stripe, for the webhook's transaction."""

    company_id: uuid.UUID
    kept: str  # the older subscription: the company's
    cancelled: SubscriptionState  # the newer one, as Stripe reports it after the cancellation
    read_seq: int  # the number that read was taken under
    settlement: Settlement  # what this pass voided and refunded
    cancelled_now: bool  # this pass cancelled it (False: finishing an earlier pass)


def _age(created: datetime, subscription_id: str) -> tuple[datetime, str]:
    return created, subscription_id


async def _company_of(state: SubscriptionState, hint: uuid.UUID | None) -> uuid.UUID | None:
    """The company the subscription applies to, as `apply_subscription` decides it: its
    customer's company, else the one it names; None when it would be refused."""
    named = company_named(state.metadata) or hint
    linked = await companies.by_customer(state.customer)
    if linked is not None and named is not None and linked.id != named:
        return None
    return linked.id if linked is not None else named


async def _live_pair(
    state: SubscriptionState, gateway: DuplicateSubscriptions, hint: uuid.UUID | None
) -> tuple[uuid.UUID, str, str] | None:
    """(company, older, newer) when the live subscription read has a live sibling in Stripe."""
    company_id = await _company_of(state, hint)
    if company_id is None:
        return None
    company = await companies.get(company_id)
    if company is not None and company.stripe_customer_id not in (None, state.customer):
        return None  # refused when applied (the company has another customer)
    current_id = company.stripe_subscription_id if company is not None else None
    if current_id == state.id:
        # Already the company's: a live sibling that is older reaches Meterline through its own
        # events, and this one is cancelled then (the current-is-newer case below).
        return None
    # What is live is asked of Stripe, never taken from the mirror: the current subscription's
    # end may not have reached Meterline yet, and an older sibling's events may not have either
    # (webhooks come in any order). Cancelling is not undone.
    live = [
        sub
        for sub in await gateway.customer_subscriptions(state.customer)
        if sub.id != state.id
        and sub.status in LIVE_STATUSES
        and company_named(sub.metadata) in (None, company_id)
    ]
    mine = _age(state.created, state.id)
    older = [sub for sub in live if _age(sub.created, sub.id) < mine]
    if older:
        oldest = min(older, key=lambda sub: _age(sub.created, sub.id))
        return company_id, oldest.id, state.id
    if current_id is not None and any(sub.id == current_id for sub in live):
        # The company's current one is live and newer: it went live first (this one was still
        # incomplete), or came before this rule. The newer one goes, whichever it is.
        return company_id, state.id, current_id
    return None


async def resolve(
    state: SubscriptionState,
    *,
    reader: StripeReader,
    gateway: DuplicateSubscriptions,
    company_hint: uuid.UUID | None = None,
) -> Duplicate | None:
    """Outside any transaction: cancel the newer of two live subscriptions in Stripe and give
    back what it charged (or finish doing so); None when there is nothing to do."""
    if state.status in LIVE_STATUSES:
        pair = await _live_pair(state, gateway, company_hint)
        if pair is None:
            return None
        company_id, older, newer = pair
        await gateway.set_metadata(newer, {DUPLICATE_OF: older})  # before: a retry finishes it
        comment = f"{COMMENT} of company {company_id}; {older} stays"
        cancelled_now = await gateway.cancel_now(newer, comment)
        if cancelled_now:
            DUPLICATE_SUBSCRIPTIONS_CANCELLED.inc()
        return await _settle(company_id, older, newer, reader, gateway, cancelled_now)
    older_id = state.metadata.get(DUPLICATE_OF)
    if state.status == "canceled" and older_id and not state.metadata.get(SETTLED):
        # Marked, cancelled, not settled: an earlier pass failed after the cancellation, or its
        # cancellation failed and the subscription ended otherwise since (kept then: marked,
        # never cancelled by Meterline, it is not refunded).
        owner = await _company_of(state, company_hint)
        left = await gateway.cancellation_comment(state.id)
        if owner is not None and (left or "").startswith(COMMENT):
            return await _settle(owner, older_id, state.id, reader, gateway, False)
    return None


async def _settle(
    company_id: uuid.UUID,
    older: str,
    newer: str,
    reader: StripeReader,
    gateway: DuplicateSubscriptions,
    cancelled_now: bool,
) -> Duplicate:
    settlement = await gateway.settle(newer)
    await gateway.set_metadata(newer, {SETTLED: "true"})
    read_seq = await next_read_seq()
    cancelled = await reader.subscription(newer)
    logger.error(
        "company %s had two live subscriptions: %s (older) stays; %s (newer) %s in Stripe: %s",
        company_id,
        older,
        newer,
        "was cancelled at once" if cancelled_now else "had been cancelled, now settled",
        settlement.describe(),
    )
    return Duplicate(company_id, older, cancelled, read_seq, settlement, cancelled_now)


async def record(duplicate: Duplicate, *, now: datetime) -> None:
    """In the webhook's transaction, after the cancelled subscription is applied: the flag an
    operator sees (`company show`, `stripe flags`, /metrics' open flags)."""
    newer = duplicate.cancelled.id
    message = (
        f"subscription {newer} was live beside the company's subscription {duplicate.kept}, "
        f"which is older and stays: {newer} was cancelled in Stripe at once; "
        f"{duplicate.settlement.describe()}"
    )
    await flags.raise_flag(
        kind=Flag.SECOND_LIVE,
        object_id=newer,
        message=message,
        company_id=duplicate.company_id,
        now=now,
    )
