"""SQL of the `companies` table."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg

from meterline.billing.catalog import Tier
from meterline.billing.dunning import Dunning
from meterline.billing.plans import PlanHistory
from meterline.db import sql
from meterline.db.company_plans import HISTORY_SUBSELECT, history_from_json
from meterline.db.engine import DB

_COLUMNS = (
    "id, tier, stripe_customer_id, stripe_subscription_id, past_due_since, grace_ends_at, "
    "restricted, dunning_cleared_at, subscription_status, usage_stamped_from, scheduled_tier, "
    "created_at, plan_seq, " + HISTORY_SUBSELECT
)


@dataclass(frozen=True)
class Company:
    id: uuid.UUID
    tier: Tier
    stripe_customer_id: str | None
    stripe_subscription_id: str | None
    dunning: Dunning
    created_at: datetime
    subscription_status: str | None = None  # Stripe's status of the current subscription
    usage_stamped_from: datetime | None = None
    dunning_cleared_at: datetime | None = None
    scheduled_tier: Tier | None = None  # a change Meterline scheduled for the next 1st
    # Which plan applies when (billing/plans.py), and the number a recording checks it by.
    plans: PlanHistory = field(default_factory=PlanHistory)
    plan_seq: int = 0


def _company(row: asyncpg.Record) -> Company:
    return Company(
        id=row["id"],
        tier=Tier(row["tier"]),
        stripe_customer_id=row["stripe_customer_id"],
        stripe_subscription_id=row["stripe_subscription_id"],
        dunning=Dunning(row["past_due_since"], row["grace_ends_at"], row["restricted"]),
        created_at=row["created_at"],
        subscription_status=row["subscription_status"],
        usage_stamped_from=row["usage_stamped_from"],
        dunning_cleared_at=row["dunning_cleared_at"],
        scheduled_tier=Tier(row["scheduled_tier"]) if row["scheduled_tier"] else None,
        plans=history_from_json(row["plan_history"]),
        plan_seq=row["plan_seq"],
    )


async def get(company_id: uuid.UUID) -> Company | None:
    row = await sql.fetchrow(f"SELECT {_COLUMNS} FROM companies WHERE id = $1", company_id)
    return _company(row) if row else None


async def get_or_create(company_id: uuid.UUID, *, now: datetime) -> Company:
    """A company exists as soon as a valid token names it: created on the free tier. `now`
    (the app's clock, not the database's) is its first month in usageHistory."""
    existing = await get(company_id)  # the common case: one round trip
    if existing is not None:
        return existing
    row = await sql.fetchrow(
        f"INSERT INTO companies (id, tier, created_at) VALUES ($1, 'free', $2) "
        f"ON CONFLICT (id) DO NOTHING RETURNING {_COLUMNS}",
        company_id,
        now,
    )
    if row is None:  # a concurrent request created it; it is committed now
        row = await sql.fetchrow(f"SELECT {_COLUMNS} FROM companies WHERE id = $1", company_id)
    assert row is not None
    return _company(row)


async def list_all(limit: int = 100) -> list[Company]:
    rows = await sql.fetch(f"SELECT {_COLUMNS} FROM companies ORDER BY created_at LIMIT $1", limit)
    return [_company(r) for r in rows]


async def set_tier(company_id: uuid.UUID, tier: Tier) -> Company | None:
    row = await sql.fetchrow(
        f"UPDATE companies SET tier = $2 WHERE id = $1 RETURNING {_COLUMNS}", company_id, tier.value
    )
    return _company(row) if row else None


class CustomerTaken(Exception):
    """The Stripe customer is already linked to another company."""


async def set_stripe_ids(
    company_id: uuid.UUID, *, customer_id: str | None = None, subscription_id: str | None = None
) -> Company | None:
    """Set the ids given (None leaves one as it is). A customer belongs to one company only."""
    try:
        row = await sql.fetchrow(
            f"UPDATE companies SET stripe_customer_id = COALESCE($2, stripe_customer_id), "
            f"stripe_subscription_id = COALESCE($3, stripe_subscription_id) "
            f"WHERE id = $1 RETURNING {_COLUMNS}",
            company_id,
            customer_id,
            subscription_id,
        )
    except asyncpg.UniqueViolationError as exc:
        raise CustomerTaken(f"customer {customer_id} is linked to another company") from exc
    return _company(row) if row else None


async def set_dunning(company_id: uuid.UUID, dunning: Dunning) -> Company | None:
    row = await sql.fetchrow(
        f"UPDATE companies SET past_due_since = $2, grace_ends_at = $3, restricted = $4 "
        f"WHERE id = $1 RETURNING {_COLUMNS}",
        company_id,
        dunning.past_due_since,
        dunning.grace_ends_at,
        dunning.restricted,
    )
    return _company(row) if row else None


async def clear_dunning(company_id: uuid.UUID, *, now: datetime) -> Company | None:
    """An operator's decision: OK now; failures and uncollectible invoices before `now` no
    longer count (the caller forgets the invoices' failures in the same transaction)."""
    row = await sql.fetchrow(
        f"UPDATE companies SET past_due_since = NULL, grace_ends_at = NULL, restricted = false, "
        f"dunning_cleared_at = $2 WHERE id = $1 RETURNING {_COLUMNS}",
        company_id,
        now,
    )
    return _company(row) if row else None


async def lock(company_id: uuid.UUID) -> Company | None:
    """The company row, locked until the end of the caller's transaction: webhook handlers of
    one company apply one after the other. NO KEY: recordings (whose foreign keys take KEY
    SHARE locks on this row) are not held up."""
    # Lock first, read after, in two statements: a statement that waited for the lock sees the
    # locked row's new version but the rest (the plan history) as of its start; the second
    # statement reads everything the writer before it committed.
    locked = await sql.fetchrow(
        "SELECT 1 FROM companies WHERE id = $1 FOR NO KEY UPDATE", company_id
    )
    return await get(company_id) if locked else None


async def by_customer(customer_id: str) -> Company | None:
    row = await sql.fetchrow(
        f"SELECT {_COLUMNS} FROM companies WHERE stripe_customer_id = $1", customer_id
    )
    return _company(row) if row else None


async def set_subscription(
    company_id: uuid.UUID,
    *,
    customer_id: str,
    subscription_id: str,
    status: str,
    tier: Tier,
    usage_stamped_from: datetime | None,
) -> Company:
    """The current subscription as Stripe reports it (usage_stamped_from None keeps it)."""
    try:
        row = await sql.fetchrow(
            f"UPDATE companies SET stripe_customer_id = $2, stripe_subscription_id = $3, "
            f"subscription_status = $4, tier = $5::varchar, "
            f"usage_stamped_from = COALESCE($6, usage_stamped_from), "
            # a scheduled change that took effect is no longer pending
            f"scheduled_tier = CASE WHEN scheduled_tier = $5::varchar OR $5::varchar = 'free' "
            f"THEN NULL "
            f"ELSE scheduled_tier END "
            f"WHERE id = $1 RETURNING {_COLUMNS}",
            company_id,
            customer_id,
            subscription_id,
            status,
            tier.value,
            usage_stamped_from,
        )
    except asyncpg.UniqueViolationError as exc:
        raise CustomerTaken(f"customer {customer_id} is linked to another company") from exc
    assert row is not None
    return _company(row)


async def set_scheduled_tier(company_id: uuid.UUID, tier: Tier | None) -> Company | None:
    row = await sql.fetchrow(
        f"UPDATE companies SET scheduled_tier = $2 WHERE id = $1 RETURNING {_COLUMNS}",
        company_id,
        tier.value if tier else None,
    )
    return _company(row) if row else None


@asynccontextmanager
async def changes_serialised(company_id: uuid.UUID) -> AsyncIterator[None]:
    """One subscription change of a company at a time (two admins clicking at once), across
    its Stripe calls: a session advisory lock held without any transaction open (the calls may
    take seconds), on a connection of its own outside the pool: closing it releases the lock
    whatever happens, and no pooled connection ever carries one (the pool skips the reset)."""
    key = f"subscription-change:{company_id}"
    connection = await DB.get_new_connection()
    try:
        await connection.execute("SELECT pg_advisory_lock(hashtextextended($1, 0))", key)
        yield
    finally:
        await connection.close()
