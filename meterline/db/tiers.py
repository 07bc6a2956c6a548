"""SQL of the reference tables: event_types, tiers, plan_versions, tier_allowances.

A plan version (a tier's allowances and unit prices) never changes once written: an edit is a
new version (`meterline plans edit`), so a month priced by a version stays priced by it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from meterline.billing.catalog import Allowance, EventType, Plan, Tier
from meterline.billing.plans import BEGINNING, PlanCatalog
from meterline.db import sql
from meterline.db.engine import DB


async def seed_reference_data(plans: Mapping[Tier, Plan]) -> None:
    """Insert missing event types, tiers and their version 1. Never overwrites an edit."""
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
            await sql.execute(
                "INSERT INTO plan_versions (tier, version, effective_from, note) "
                "VALUES ($1, 1, $2, 'the default plan') ON CONFLICT DO NOTHING",
                plan.tier.value,
                BEGINNING,
            )
            for event_type, allowance in plan.allowances.items():
                await sql.execute(
                    "INSERT INTO tier_allowances (tier, version, event_type, included, unit_price) "
                    "VALUES ($1, 1, $2, $3, $4) ON CONFLICT (tier, version, event_type) DO NOTHING",
                    plan.tier.value,
                    event_type.value,
                    allowance.included,
                    allowance.unit_price,
                )


async def load_catalog() -> PlanCatalog:
    """Every version of every tier."""
    rows = await sql.fetch(
        "SELECT t.name AS tier, t.grace_days, t.hard_cap, v.version, v.effective_from, "
        "a.event_type, a.included, a.unit_price "
        "FROM tiers t JOIN plan_versions v ON v.tier = t.name "
        "JOIN tier_allowances a ON a.tier = v.tier AND a.version = v.version "
        "ORDER BY t.position, v.version"
    )
    allowances: dict[tuple[Tier, int], dict[EventType, Allowance]] = {}
    heads: dict[tuple[Tier, int], tuple[int, bool, datetime]] = {}
    for row in rows:
        key = (Tier(row["tier"]), row["version"])
        heads[key] = (row["grace_days"], row["hard_cap"], row["effective_from"])
        allowances.setdefault(key, {})[EventType(row["event_type"])] = Allowance(
            row["included"], Decimal(row["unit_price"])
        )
    versions = {
        key: Plan(
            tier=key[0],
            grace_days=heads[key][0],
            allowances=a,
            hard_cap=heads[key][1],
            version=key[1],
        )
        for key, a in allowances.items()
    }
    return PlanCatalog(versions, {key: heads[key][2] for key in versions})


async def load_plans() -> dict[Tier, Plan]:
    """The newest version of every tier: what `setup-stripe` puts in Stripe for new
    subscriptions."""
    catalog = await load_catalog()
    return {tier: catalog.latest(tier) for tier in Tier if catalog.has(tier)}


@dataclass(frozen=True)
class NewVersion:
    tier: Tier
    version: int
    effective_from: datetime


async def add_version(
    tier: Tier,
    allowances: Mapping[EventType, Allowance],
    *,
    effective_from: datetime,
    note: str | None,
) -> NewVersion:
    """A new version of `tier` (the next number), in one transaction. Concurrent edits of one
    tier are serialised by the tier's row lock."""
    async with DB.transaction():
        await sql.execute("SELECT 1 FROM tiers WHERE name = $1 FOR UPDATE", tier.value)
        row = await sql.fetchrow(
            "INSERT INTO plan_versions (tier, version, effective_from, note) "
            "SELECT $1::varchar, coalesce(max(version), 0) + 1, $2, $3 FROM plan_versions "
            "WHERE tier = $1::varchar RETURNING version",
            tier.value,
            effective_from,
            note,
        )
        assert row is not None
        version: int = row["version"]
        for event_type, allowance in allowances.items():
            await sql.execute(
                "INSERT INTO tier_allowances (tier, version, event_type, included, unit_price) "
                "VALUES ($1, $2, $3, $4, $5)",
                tier.value,
                version,
                event_type.value,
                allowance.included,
                allowance.unit_price,
            )
    forget_cached_plans()
    return NewVersion(tier, version, effective_from)


# The catalog is read by every request: keep it a few seconds per process. A new version is
# seen everywhere within PLANS_MAX_AGE seconds (versions take effect later than that: a free
# version at the next 1st, a paid one when its Stripe prices exist).
PLANS_MAX_AGE = 10.0
_cached: tuple[float, PlanCatalog] | None = None


async def cached_catalog() -> PlanCatalog:
    global _cached
    now = time.monotonic()
    if _cached is None or now - _cached[0] > PLANS_MAX_AGE:
        _cached = (now, await load_catalog())
    return _cached[1]


async def cached_plans() -> dict[Tier, Plan]:
    """The newest version of every tier (for what does not depend on a company's history:
    the tiers' grace days and caps)."""
    catalog = await cached_catalog()
    return {tier: catalog.latest(tier) for tier in Tier if catalog.has(tier)}


def forget_cached_plans() -> None:
    """The next read loads the catalog afresh (after an edit made by this process)."""
    global _cached
    _cached = None


@dataclass(frozen=True)
class VersionNote:
    """What `plans list` shows of a version beside its allowances."""

    tier: Tier
    version: int
    effective_from: datetime
    note: str | None


async def version_notes() -> list[VersionNote]:
    """Every version of every tier, in the tiers' order then by number."""
    rows = await sql.fetch(
        "SELECT v.tier, v.version, v.effective_from, v.note "
        "FROM plan_versions v JOIN tiers t ON t.name = v.tier ORDER BY t.position, v.version"
    )
    return [
        VersionNote(Tier(row["tier"]), row["version"], row["effective_from"], row["note"])
        for row in rows
    ]
