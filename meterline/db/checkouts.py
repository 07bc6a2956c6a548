"""SQL of `checkout_sessions`: the Stripe Checkout Sessions Meterline created, one open per
company (docs/design.md, "Subscription lifecycle").

`open` means Meterline has not closed it: the session may still be paid. It is closed as
`expired` when Meterline expired it in Stripe or saw it expired (or lapsed), and as `complete`
when it was paid and its subscription reached Meterline. Every moment comes from the caller
(the app's clock), never from the database's.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from meterline.billing.catalog import Tier
from meterline.db import sql

_COLUMNS = "id, company_id, tier, url, expires_at, status, created_at, closed_at"
CLOSED_STATUSES = ("expired", "complete")


@dataclass(frozen=True)
class StoredCheckout:
    id: str
    company_id: uuid.UUID
    tier: Tier
    url: str
    expires_at: datetime
    status: str  # open | expired | complete
    created_at: datetime
    closed_at: datetime | None


def _stored(row: asyncpg.Record) -> StoredCheckout:
    return StoredCheckout(
        id=row["id"],
        company_id=row["company_id"],
        tier=Tier(row["tier"]),
        url=row["url"],
        expires_at=row["expires_at"],
        status=row["status"],
        created_at=row["created_at"],
        closed_at=row["closed_at"],
    )


async def open_session(company_id: uuid.UUID) -> StoredCheckout | None:
    """The company's session Meterline has not closed (at most one), lapsed or not."""
    row = await sql.fetchrow(
        f"SELECT {_COLUMNS} FROM checkout_sessions WHERE company_id = $1 AND status = 'open'",
        company_id,
    )
    return _stored(row) if row else None


async def latest_id(company_id: uuid.UUID) -> str | None:
    """The company's most recent session, whatever became of it."""
    row = await sql.fetchrow(
        "SELECT id FROM checkout_sessions WHERE company_id = $1 "
        "ORDER BY created_at DESC, id DESC LIMIT 1",
        company_id,
    )
    return str(row["id"]) if row else None


async def close(session_id: str, status: str, *, now: datetime) -> None:
    """The session can no longer be paid (`expired`), or was paid and its subscription is
    here (`complete`). A session already closed stays as it was."""
    if status not in CLOSED_STATUSES:
        raise ValueError(f"a session closes as one of {CLOSED_STATUSES}, not {status!r}")
    await sql.execute(
        "UPDATE checkout_sessions SET status = $2, closed_at = $3 "
        "WHERE id = $1 AND status = 'open'",
        session_id,
        status,
        now,
    )


async def add(
    session_id: str,
    *,
    company_id: uuid.UUID,
    tier: Tier,
    url: str,
    expires_at: datetime,
    now: datetime,
) -> None:
    """The company's open session from now on. Any other session of the company still open
    here has been expired in Stripe or has lapsed by the time a new one is made (the caller
    holds the company's change lock): it is closed as `expired`. The same session stored
    again (Stripe replayed a retried request) changes nothing."""
    await sql.execute(
        "UPDATE checkout_sessions SET status = 'expired', closed_at = $3 "
        "WHERE company_id = $1 AND status = 'open' AND id <> $2",
        company_id,
        session_id,
        now,
    )
    await sql.execute(
        f"INSERT INTO checkout_sessions ({_COLUMNS}) VALUES ($1, $2, $3, $4, $5, 'open', $6, NULL) "
        "ON CONFLICT (id) DO NOTHING",
        session_id,
        company_id,
        tier.value,
        url,
        expires_at,
        now,
    )
