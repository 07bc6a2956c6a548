"""SQL of the reference tables: event_types, tiers, tier_allowances."""

from __future__ import annotations

import time
from collections.abc import Mapping
from decimal import Decimal

from meterline.billing.catalog import Allowance, EventType, Plan, Tier
from meterline.db import sql
from meterline.db.engine import DB


async def seed_reference_data(plans: Mapping[Tier, Plan]) -> None:
    """Insert missing event types, tiers and allowances. Never overwrites an operator's edits."""
    async with DB.transaction():
        for event_type in EventType:
            await sql.execute(
                "INSERT INTO event_types (name) VALUES ($1) ON CONFLICT DO NOTHING",
                event_type.value,
            )
        for position, plan in enumerate(plans.values()):
            await sql.execute(
                "INSERT INTO tiers (name, position, grace_days, hard_cap) VALUES ($1, $2, $3, $4) "
                "ON CONFLICT DO NOTHING",
                plan.tier.value,
                position,
                plan.grace_days,
                plan.hard_cap,
            )
            for event_type, allowance in plan.allowances.items():
                await sql.execute(
                    "INSERT INTO tier_allowances (tier, event_type, included, unit_price) "
                    "VALUES ($1, $2, $3, $4) ON CONFLICT (tier, event_type) DO NOTHING",
                    plan.tier.value,
                    event_type.value,
                    allowance.included,
                    allowance.unit_price,
                )


async def load_plans() -> dict[Tier, Plan]:
    """The tiers as the database holds them now."""
    rows = await sql.fetch(
        "SELECT t.name AS tier, t.grace_days, t.hard_cap, a.event_type, a.included, a.unit_price "
        "FROM tiers t JOIN tier_allowances a ON a.tier = t.name ORDER BY t.position"
    )
    allowances: dict[Tier, dict[EventType, Allowance]] = {}
    grace: dict[Tier, int] = {}
    hard_cap: dict[Tier, bool] = {}
    for row in rows:
        tier = Tier(row["tier"])
        grace[tier] = row["grace_days"]
        hard_cap[tier] = row["hard_cap"]
        allowances.setdefault(tier, {})[EventType(row["event_type"])] = Allowance(
            row["included"], Decimal(row["unit_price"])
        )
    return {
        t: Plan(tier=t, grace_days=grace[t], allowances=a, hard_cap=hard_cap[t])
        for t, a in allowances.items()
    }


# Tiers are reference data read by every request: keep them a few seconds per process. An
# operator's edit is seen everywhere within PLANS_MAX_AGE seconds.
PLANS_MAX_AGE = 10.0
_cached: tuple[float, dict[Tier, Plan]] | None = None


async def cached_plans() -> dict[Tier, Plan]:
    global _cached
    now = time.monotonic()
    if _cached is None or now - _cached[0] > PLANS_MAX_AGE:
        _cached = (now, await load_plans())
    return _cached[1]


def forget_cached_plans() -> None:
    """The next read loads the tiers afresh (after an edit made by this process)."""
    global _cached
    _cached = None
