"""m0010 turns what a database held before plan histories into them: a paid company billed by
its live subscription from its paid month, a manual account as such, and what was pending at
deploy (a cancellation at period end, a change Meterline scheduled) as scheduled periods, so
the 1st after the deploy is exact too."""

from __future__ import annotations

import asyncio
import sys
import uuid
from datetime import UTC, datetime

import asyncpg

from tests.commands import meterline
from tests.conftest import _with_database

M0009 = "2026-12-07T22:00:00:000000"
# Migrates the database named by DATABASE_URL up to m0009 only, as a deploy before this change.
UP_TO_M0009 = f"""
import asyncio, contextlib, io, os
os.environ.setdefault("PICCOLO_CONF", "meterline.db.piccolo_conf")
from piccolo.apps.migrations.commands.forwards import ForwardsMigrationManager
from meterline.cli import _settings, _with_database

async def work():
    manager = ForwardsMigrationManager(app_name="meterline", migration_id="{M0009}")
    await manager.create_migration_table()
    with contextlib.redirect_stdout(io.StringIO()):
        result = await manager.run()
    assert result.success, result.message

asyncio.run(_with_database(_settings(), work))
"""
NOV_1 = datetime(2026, 11, 1, tzinfo=UTC)
DEC_1 = datetime(2026, 12, 1, tzinfo=UTC)


async def test_m0010_backfills_the_plan_history_of_every_company(server_url: str) -> None:
    name = f"meterline_backfill_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(server_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = _with_database(server_url, name)
    try:
        env = {"DATABASE_URL": url, "PATH": "/usr/bin:/bin"}
        before = await asyncio.create_subprocess_exec(
            sys.executable, "-c", UP_TO_M0009, env=env, stderr=asyncio.subprocess.PIPE
        )
        _, errors = await before.communicate()
        assert before.returncode == 0, errors.decode()
        paying, cancelling, changing, manual, free = (uuid.uuid4() for _ in range(5))
        old = await asyncpg.connect(url)
        try:
            await old.execute(
                "INSERT INTO tiers (name, position, grace_days, hard_cap) VALUES "
                "('free', 0, 0, true), ('starter', 1, 14, false), "
                "('professional', 2, 14, false)"
            )
            rows = [
                (paying, "starter", "cus_a", "sub_a", "active", None),
                (cancelling, "starter", "cus_b", "sub_b", "active", None),
                (changing, "starter", "cus_c", "sub_c", "past_due", "professional"),
                (manual, "professional", None, None, None, None),
                (free, "free", "cus_e", None, None, None),
            ]
            for company, tier, customer, sub, status, scheduled in rows:
                await old.execute(
                    "INSERT INTO companies (id, tier, stripe_customer_id, stripe_subscription_id,"
                    " subscription_status, scheduled_tier, usage_stamped_from, created_at) "
                    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                    company,
                    tier,
                    customer,
                    sub,
                    status,
                    scheduled,
                    datetime(2026, 11, 20, 12, tzinfo=UTC) if sub else None,
                    datetime(2026, 10, 3, tzinfo=UTC),
                )
                if sub is not None:
                    await old.execute(
                        "INSERT INTO subscriptions (id, company_id, customer_id, status, tier, "
                        "complete, cancel_at_period_end, current_period_start, "
                        "current_period_end, start_date, created, read_seq) "
                        "VALUES ($1, $2, $3, $4, $5, true, $6, $7, $8, $7, $7, 1)",
                        sub,
                        company,
                        customer,
                        status,
                        tier,
                        company == cancelling,
                        datetime(2026, 11, 20, 12, tzinfo=UTC),
                        DEC_1,
                    )
        finally:
            await old.close()
        migrated = meterline("migrate", env={"DATABASE_URL": url})
        assert migrated.returncode == 0, migrated.stderr
        new = await asyncpg.connect(url)
        try:
            found = await new.fetch(
                "SELECT company_id, effective_from, tier, version, billed, reason "
                "FROM company_plans ORDER BY company_id, effective_from"
            )
        finally:
            await new.close()
        history: dict[uuid.UUID, list[tuple[datetime, str, int | None, bool, str]]] = {}
        for r in found:
            history.setdefault(r["company_id"], []).append(
                (r["effective_from"], r["tier"], r["version"], r["billed"], r["reason"])
            )
        assert history[paying] == [(NOV_1, "starter", 1, True, "subscription")]
        assert history[cancelling] == [
            (NOV_1, "starter", 1, True, "subscription"),
            (DEC_1, "free", None, False, "scheduled_end"),
        ]
        assert history[changing] == [
            (NOV_1, "starter", 1, True, "subscription"),
            (DEC_1, "professional", None, True, "scheduled_change"),
        ]
        assert history[manual] == [
            (datetime(2026, 10, 1, tzinfo=UTC), "professional", 1, False, "operator")
        ]
        assert free not in history
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
