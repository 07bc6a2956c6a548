"""SQL of `subscriptions`: the mirror of the companies' Stripe subscriptions."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from meterline.billing.catalog import Tier
from meterline.db import sql

_COLUMNS = (
    "id, company_id, customer_id, status, tier, complete, cancel_at_period_end, "
    "current_period_start, current_period_end, start_date, created, read_seq"
)


@dataclass(frozen=True)
class SubscriptionMirror:
    id: str
    company_id: uuid.UUID
    customer_id: str
    status: str
    tier: Tier | None  # None: its base price is not one of Meterline's tiers
    complete: bool
    cancel_at_period_end: bool
    current_period_start: datetime | None
    current_period_end: datetime | None
    start_date: datetime
    created: datetime
    read_seq: int


def _mirror(row: asyncpg.Record) -> SubscriptionMirror:
    return SubscriptionMirror(
        id=row["id"],
        company_id=row["company_id"],
        customer_id=row["customer_id"],
        status=row["status"],
        tier=Tier(row["tier"]) if row["tier"] else None,
        complete=row["complete"],
        cancel_at_period_end=row["cancel_at_period_end"],
        current_period_start=row["current_period_start"],
        current_period_end=row["current_period_end"],
        start_date=row["start_date"],
        created=row["created"],
        read_seq=int(row["read_seq"]),
    )


async def upsert(mirror: SubscriptionMirror) -> bool:
    """Store the state read; False (nothing written) when a later read is already stored."""
    row = await sql.fetchrow(
        f"""
        INSERT INTO subscriptions ({_COLUMNS}, updated_at)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, now())
        ON CONFLICT (id) DO UPDATE SET
            company_id = EXCLUDED.company_id, customer_id = EXCLUDED.customer_id,
            status = EXCLUDED.status, tier = EXCLUDED.tier, complete = EXCLUDED.complete,
            cancel_at_period_end = EXCLUDED.cancel_at_period_end,
            current_period_start = EXCLUDED.current_period_start,
            current_period_end = EXCLUDED.current_period_end,
            start_date = EXCLUDED.start_date, created = EXCLUDED.created,
            read_seq = EXCLUDED.read_seq, updated_at = now()
        WHERE subscriptions.read_seq < EXCLUDED.read_seq
        RETURNING id
        """,
        mirror.id,
        mirror.company_id,
        mirror.customer_id,
        mirror.status,
        mirror.tier.value if mirror.tier else None,
        mirror.complete,
        mirror.cancel_at_period_end,
        mirror.current_period_start,
        mirror.current_period_end,
        mirror.start_date,
        mirror.created,
        mirror.read_seq,
    )
    return row is not None


async def get(subscription_id: str) -> SubscriptionMirror | None:
    row = await sql.fetchrow(f"SELECT {_COLUMNS} FROM subscriptions WHERE id = $1", subscription_id)
    return _mirror(row) if row else None


async def for_company(company_id: uuid.UUID) -> list[SubscriptionMirror]:
    rows = await sql.fetch(
        f"SELECT {_COLUMNS} FROM subscriptions WHERE company_id = $1 ORDER BY created DESC",
        company_id,
    )
    return [_mirror(r) for r in rows]


async def newest_live(
    company_id: uuid.UUID, live_statuses: frozenset[str], *, exclude: str
) -> SubscriptionMirror | None:
    row = await sql.fetchrow(
        f"SELECT {_COLUMNS} FROM subscriptions WHERE company_id = $1 AND status = ANY($2) "
        f"AND id <> $3 ORDER BY created DESC LIMIT 1",
        company_id,
        list(live_statuses),
        exclude,
    )
    return _mirror(row) if row else None


async def set_cancel_at_period_end(subscription_id: str, cancel: bool) -> None:
    """What Meterline just asked Stripe for, shown before the webhook confirms it."""
    await sql.execute(
        "UPDATE subscriptions SET cancel_at_period_end = $2, updated_at = now() WHERE id = $1",
        subscription_id,
        cancel,
    )
