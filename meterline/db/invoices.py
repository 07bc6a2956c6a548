"""SQL of `invoices`: the mirror of the companies' Stripe invoices, and the dunning facts read
from it."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date, datetime

import asyncpg

from meterline.billing.catalog import Tier
from meterline.db import sql

_COLUMNS = (
    "id, company_id, subscription_id, number, status, billing_reason, currency, amount_due, "
    "amount_paid, amount_remaining, period_start, period_end, usage_month, paid_at, "
    "hosted_invoice_url, invoice_pdf, created, first_failed_at, marked_uncollectible_at, read_seq"
)


@dataclass(frozen=True)
class InvoiceMirror:
    id: str
    company_id: uuid.UUID
    subscription_id: str | None
    number: str | None
    status: str
    billing_reason: str | None
    currency: str
    amount_due: int  # minor units of `currency`
    amount_paid: int
    amount_remaining: int
    period_start: datetime | None
    period_end: datetime | None
    usage_month: date | None
    paid_at: datetime | None
    hosted_invoice_url: str | None
    invoice_pdf: str | None
    created: datetime
    first_failed_at: datetime | None
    marked_uncollectible_at: datetime | None
    read_seq: int


def _mirror(row: asyncpg.Record) -> InvoiceMirror:
    return InvoiceMirror(**{name: row[name] for name in InvoiceMirror.__dataclass_fields__})


async def upsert(invoice: InvoiceMirror) -> bool:
    """Store the state read; False (nothing written) when a later read is already stored. The
    earliest failure is kept: a later failure never moves it (nor the grace) forward."""
    columns = _COLUMNS.split(", ")
    placeholders = ", ".join(f"${i}" for i in range(1, len(columns) + 1))
    updates = ", ".join(
        f"{c} = EXCLUDED.{c}" for c in columns if c not in ("id", "first_failed_at")
    )
    row = await sql.fetchrow(
        f"""
        INSERT INTO invoices ({_COLUMNS}, updated_at) VALUES ({placeholders}, now())
        ON CONFLICT (id) DO UPDATE SET {updates}, updated_at = now(),
            first_failed_at = CASE
                WHEN invoices.first_failed_at IS NULL THEN EXCLUDED.first_failed_at
                WHEN EXCLUDED.first_failed_at IS NULL THEN invoices.first_failed_at
                ELSE least(invoices.first_failed_at, EXCLUDED.first_failed_at) END
        WHERE invoices.read_seq < EXCLUDED.read_seq
        RETURNING id
        """,
        *(getattr(invoice, c) for c in columns),
    )
    return row is not None


async def record_failure(invoice_id: str, failed_at: datetime) -> None:
    """A failed payment attempt of this invoice at `failed_at` (kept if it is the earliest)."""
    await sql.execute(
        "UPDATE invoices SET first_failed_at = least(coalesce(first_failed_at, $2), $2) "
        "WHERE id = $1",
        invoice_id,
        failed_at,
    )


async def get(invoice_id: str) -> InvoiceMirror | None:
    row = await sql.fetchrow(f"SELECT {_COLUMNS} FROM invoices WHERE id = $1", invoice_id)
    return _mirror(row) if row else None


async def recent(company_id: uuid.UUID, limit: int) -> list[InvoiceMirror]:
    """Issued invoices (drafts are not bills yet), newest first."""
    rows = await sql.fetch(
        f"SELECT {_COLUMNS} FROM invoices WHERE company_id = $1 AND status <> 'draft' "
        f"ORDER BY created DESC, id DESC LIMIT $2",
        company_id,
        limit,
    )
    return [_mirror(r) for r in rows]


async def for_usage_months(company_id: uuid.UUID, months: list[date]) -> dict[date, InvoiceMirror]:
    """The invoice carrying each month's usage once issued (drafts are not bills yet): of
    several (a voided one re-issued), the newest that is not void."""
    rows = await sql.fetch(
        f"""
        SELECT DISTINCT ON (usage_month) {_COLUMNS} FROM invoices
        WHERE company_id = $1 AND usage_month = ANY($2) AND status <> 'draft'
        ORDER BY usage_month, (status = 'void'), created DESC, id DESC
        """,
        company_id,
        months,
    )
    return {r["usage_month"]: _mirror(r) for r in rows}


@dataclass(frozen=True)
class DunningFacts:
    earliest_failure: datetime | None  # of the invoices still unpaid after a failed payment
    failed_tier: Tier | None  # the tier of that invoice's subscription, as last mirrored


async def dunning_facts(company_id: uuid.UUID, cleared_at: datetime | None) -> DunningFacts:
    """What the company's dunning state follows from (the design, dunning): its open invoices with
    a failed payment, and those marked uncollectible (still unpaid: they keep counting, where
    paying or voiding ends it). Anything before an operator's clear-dunning (`cleared_at`) no
    longer counts."""
    row = await sql.fetchrow(
        """
        SELECT f.failed_at, s.tier FROM (
            SELECT subscription_id, first_failed_at AS failed_at FROM invoices
            WHERE company_id = $1 AND status = 'open' AND first_failed_at IS NOT NULL
            UNION ALL
            SELECT subscription_id, coalesce(first_failed_at, marked_uncollectible_at, created)
            FROM invoices
            WHERE company_id = $1 AND status = 'uncollectible'
              AND ($2::timestamptz IS NULL
                   OR coalesce(marked_uncollectible_at, created) > $2)
        ) f
        LEFT JOIN subscriptions s ON s.id = f.subscription_id
        ORDER BY f.failed_at LIMIT 1
        """,
        company_id,
        cleared_at,
    )
    if row is None:
        return DunningFacts(None, None)
    return DunningFacts(row["failed_at"], Tier(row["tier"]) if row["tier"] else None)


async def forget_failures(company_id: uuid.UUID) -> None:
    """clear-dunning: the failures seen so far no longer count."""
    await sql.execute(
        "UPDATE invoices SET first_failed_at = NULL WHERE company_id = $1 "
        "AND first_failed_at IS NOT NULL",
        company_id,
    )
