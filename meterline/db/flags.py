"""SQL of `stripe_flags`: what Stripe reported that Meterline refused or cannot reconcile alone."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from meterline.db import sql


@dataclass(frozen=True)
class Flag:
    id: uuid.UUID
    company_id: uuid.UUID | None
    kind: str
    object_id: str
    message: str
    created_at: datetime
    last_seen_at: datetime


async def raise_flag(
    *, kind: str, object_id: str, message: str, company_id: uuid.UUID | None, now: datetime
) -> None:
    """One open flag per (kind, object): seeing it again refreshes it."""
    await sql.execute(
        """
        INSERT INTO stripe_flags (id, company_id, kind, object_id, message, created_at,
                                  last_seen_at)
        VALUES ($1, $2, $3, $4, $5, $6, $6)
        ON CONFLICT (kind, object_id) WHERE resolved_at IS NULL
        DO UPDATE SET message = EXCLUDED.message, last_seen_at = EXCLUDED.last_seen_at,
                      company_id = coalesce(EXCLUDED.company_id, stripe_flags.company_id)
        """,
        uuid.uuid4(),
        company_id,
        kind,
        object_id,
        message[:2000],
        now,
    )


async def resolve(*, kind: str, object_id: str, now: datetime) -> None:
    """The condition is gone (e.g. the subscription is complete now)."""
    await sql.execute(
        "UPDATE stripe_flags SET resolved_at = $3 "
        "WHERE kind = $1 AND object_id = $2 AND resolved_at IS NULL",
        kind,
        object_id,
        now,
    )


async def resolve_by_id(flag_id: uuid.UUID, *, now: datetime) -> bool:
    """An operator looked at it and dealt with it."""
    row = await sql.fetchrow(
        "UPDATE stripe_flags SET resolved_at = $2 WHERE id = $1 AND resolved_at IS NULL "
        "RETURNING id",
        flag_id,
        now,
    )
    return row is not None


async def open_flags(company_id: uuid.UUID | None = None, limit: int = 100) -> list[Flag]:
    rows = await sql.fetch(
        "SELECT id, company_id, kind, object_id, message, created_at, last_seen_at "
        "FROM stripe_flags WHERE resolved_at IS NULL "
        "AND ($1::uuid IS NULL OR company_id = $1) ORDER BY last_seen_at DESC LIMIT $2",
        company_id,
        limit,
    )
    return [Flag(**dict(r)) for r in rows]


async def count_open() -> int:
    row = await sql.fetchrow("SELECT count(*) AS n FROM stripe_flags WHERE resolved_at IS NULL")
    return int(row["n"]) if row else 0
