"""`meterline stripe backfill`: the subscription and invoice mirrors filled from Stripe's lists.

For companies that existed before the webhook endpoints, or after Stripe disabled a failing
endpoint. The same code applies each object as a webhook would (current state, re-read order
kept by the read sequence), so running it twice, or while webhooks arrive, changes nothing more.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from meterline.db.engine import DB
from meterline.db.stripe_reads import next_read_seq
from meterline.services.invoices import apply_invoice
from meterline.services.subscriptions import Outcome, apply_subscription
from meterline.stripe_gateway.mirror import InvoiceState, StripeReader

logger = logging.getLogger(__name__)


@dataclass
class BackfillReport:
    subscriptions: int = 0
    subscriptions_refused: int = 0
    invoices: int = 0
    invoices_refused: int = 0


def assumed_failure(invoice: InvoiceState) -> datetime | None:
    """An open invoice whose payment was attempted has failed; a list does not say when, so its
    finalisation (Stripe attempts the payment about an hour later) stands for it."""
    if invoice.status == "open" and invoice.attempted and invoice.attempt_count > 0:
        return invoice.finalized_at or invoice.created
    return None


async def backfill(
    reader: StripeReader,
    *,
    clock: Callable[[], datetime],
    progress: Callable[[str], None] = lambda _: None,
) -> BackfillReport:
    report = BackfillReport()
    # Subscriptions first: they link the customers the invoices belong to. Each page's read
    # number is taken before the page is read, so a webhook that read an object later wins over
    # the page (db/stripe_reads.py).
    after: str | None = None
    while True:
        read_seq = await next_read_seq()
        subscriptions, after = await reader.subscriptions_page(after)
        for subscription in subscriptions:
            async with DB.transaction():
                outcome = await apply_subscription(subscription, read_seq=read_seq, now=clock())
            report.subscriptions += 1
            report.subscriptions_refused += _count(outcome, subscription.id, progress)
        if after is None:
            break
    while True:
        read_seq = await next_read_seq()
        invoices, after = await reader.invoices_page(after)
        for invoice in invoices:
            async with DB.transaction():
                outcome = await apply_invoice(
                    invoice, read_seq=read_seq, now=clock(), failed_at=assumed_failure(invoice)
                )
            report.invoices += 1
            report.invoices_refused += _count(outcome, invoice.id, progress)
        if after is None:
            break
    return report


def _count(outcome: Outcome, object_id: str, progress: Callable[[str], None]) -> int:
    if outcome.applied:
        return 0
    progress(f"{object_id}: {outcome.note}")
    return 1
