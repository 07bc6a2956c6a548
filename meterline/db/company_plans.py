"""SQL of `company_plans`: the effective-dated periods of each company's plan.

Written only while the company row is locked (companies.lock), together with a bump of
`companies.plan_seq`: a recording checks that number under a share lock on the company in its
one statement, so it never writes by a plan that changed while it ran (db/usage.py).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from meterline.billing.catalog import Tier
from meterline.billing.plans import PlanHistory, PlanPeriod, Reason
from meterline.db import sql

# The periods as one JSON array, selected beside the columns of a `companies` row.
HISTORY_SUBSELECT = (
    "(SELECT coalesce(jsonb_agg(jsonb_build_object('from', p.effective_from, 'tier', p.tier, "
    "'version', p.version, 'billed', p.billed, 'subscription', p.subscription_id, "
    "'reason', p.reason) ORDER BY p.effective_from), '[]'::jsonb) "
    "FROM company_plans p WHERE p.company_id = companies.id) AS plan_history"
)


def history_from_json(value: str | list[Any] | None) -> PlanHistory:
    items = json.loads(value) if isinstance(value, str) else (value or [])
    return PlanHistory(
        tuple(
            _period({**item, "from": datetime.fromisoformat(item["from"])}, "from", "subscription")
            for item in items
        )
    )


def _period(
    fields: Mapping[str, Any], start: str = "effective_from", sub: str = "subscription_id"
) -> PlanPeriod:
    """A period from a row, or from the history's JSON (its keys are shorter)."""
    return PlanPeriod(
        effective_from=fields[start],
        tier=Tier(fields["tier"]),
        version=fields["version"],
        billed=fields["billed"],
        subscription_id=fields[sub],
        reason=fields["reason"],
    )


async def store(company_id: uuid.UUID, history: PlanHistory) -> int:
    """Make the company's periods `history` and bump its plan_seq. Call inside the transaction
    that locked the company. Returns the new plan_seq."""
    periods = history.periods
    await sql.execute(
        "DELETE FROM company_plans WHERE company_id = $1 "
        "AND NOT (effective_from = ANY($2::timestamptz[]))",
        company_id,
        [p.effective_from for p in periods],
    )
    if periods:
        await sql.execute(
            """
            INSERT INTO company_plans AS p
                (company_id, effective_from, tier, version, billed, subscription_id, reason)
            SELECT $1, f, t, v, b, s, r
            FROM unnest($2::timestamptz[], $3::text[], $4::int[], $5::bool[], $6::text[],
                        $7::text[]) AS u(f, t, v, b, s, r)
            ON CONFLICT (company_id, effective_from) DO UPDATE
            SET tier = EXCLUDED.tier, version = EXCLUDED.version, billed = EXCLUDED.billed,
                subscription_id = EXCLUDED.subscription_id, reason = EXCLUDED.reason
            WHERE (p.tier, p.version, p.billed, p.subscription_id, p.reason)
                  IS DISTINCT FROM (EXCLUDED.tier, EXCLUDED.version, EXCLUDED.billed,
                                    EXCLUDED.subscription_id, EXCLUDED.reason)
            """,
            company_id,
            [p.effective_from for p in periods],
            [p.tier.value for p in periods],
            [p.version for p in periods],
            [p.billed for p in periods],
            [p.subscription_id for p in periods],
            [p.reason for p in periods],
        )
    row = await sql.fetchrow(
        "UPDATE companies SET plan_seq = plan_seq + 1 WHERE id = $1 RETURNING plan_seq",
        company_id,
    )
    assert row is not None
    seq: int = row["plan_seq"]
    return seq


# The period in force at $1 of every company: its latest period starting at or before $1.
_IN_FORCE = (
    "SELECT DISTINCT ON (company_id) company_id, tier, version, billed "
    "FROM company_plans WHERE effective_from <= $1 "
    "ORDER BY company_id, effective_from DESC"
)


async def billed_versions_in_force(now: datetime) -> list[tuple[Tier, int | None, int]]:
    """(tier, version, companies) of the billed periods in force at `now`; a version None is
    the tier's version in force at that instant (billing/plans.py)."""
    rows = await sql.fetch(
        f"SELECT tier, version, count(*) AS companies FROM ({_IN_FORCE}) p "
        "WHERE billed GROUP BY tier, version",
        now,
    )
    return [(Tier(row["tier"]), row["version"], row["companies"]) for row in rows]


async def scheduled_versions(now: datetime) -> list[tuple[uuid.UUID, PlanPeriod]]:
    """The billed periods scheduled to start after `now` (a schedule's next phase), by
    company."""
    rows = await sql.fetch(
        "SELECT company_id, effective_from, tier, version, billed, subscription_id, reason "
        "FROM company_plans WHERE effective_from > $1 AND billed AND reason = $2 "
        "ORDER BY company_id, effective_from",
        now,
        Reason.SCHEDULED_CHANGE,
    )
    return [
        (
            row["company_id"],
            _period(dict(row)),
        )
        for row in rows
    ]


async def billed_in_force(now: datetime, tier: Tier) -> list[uuid.UUID]:
    """The companies whose period in force at `now` is a billed period of `tier`."""
    rows = await sql.fetch(
        f"SELECT company_id FROM ({_IN_FORCE}) p WHERE billed AND tier = $2 ORDER BY company_id",
        now,
        tier.value,
    )
    return [row["company_id"] for row in rows]
