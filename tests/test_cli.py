"""The `meterline` commands, run as a user runs them: a separate process."""

from __future__ import annotations

import uuid

import pytest

from meterline.auth import TokenVerifier
from meterline.billing.catalog import Tier
from meterline.db import companies, sql
from tests.commands import meterline
from tests.conftest import JWT_SECRET, SERVICE_SECRET, base_settings


async def test_migrate_is_idempotent(database_url: str) -> None:
    before = await sql.fetch("SELECT count(*) AS n FROM tier_allowances")
    for _ in range(2):
        result = meterline("migrate", env={"DATABASE_URL": database_url})
        assert result.returncode == 0, result.stderr
    after = await sql.fetch("SELECT count(*) AS n FROM tier_allowances")
    assert before[0]["n"] == after[0]["n"] == 20


async def test_migrate_says_what_it_applied(server_url: str) -> None:
    """A new database: every migration applied, none "already complete"; then nothing to do."""
    from pathlib import Path

    import asyncpg

    from tests.conftest import _with_database

    migrations = sorted(
        p.stem for p in (Path(__file__).parents[1] / "meterline/db/migrations").glob("m[0-9]*.py")
    )
    name = f"meterline_migrate_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(server_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        env = {"DATABASE_URL": _with_database(server_url, name)}
        first = meterline("migrate", env=env)
        assert first.returncode == 0, first.stderr
        assert first.stdout.startswith(f"applied {len(migrations)} migrations (")
        assert f"0 applied before, {len(migrations)} in all" in first.stdout
        assert "already complete" not in first.stdout + first.stderr
        second = meterline("migrate", env=env)
        assert second.stdout.strip() == (
            f"database up to date: all {len(migrations)} migrations were applied before"
        )
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def test_migrate_keeps_an_operators_price_edits(database_url: str) -> None:
    await sql.execute(
        "UPDATE tier_allowances SET unit_price = 0.07 WHERE tier = 'professional' "
        "AND event_type = 'sms_sent'"
    )
    try:
        assert meterline("migrate", env={"DATABASE_URL": database_url}).returncode == 0
        row = await sql.fetchrow(
            "SELECT unit_price FROM tier_allowances WHERE tier = 'professional' "
            "AND event_type = 'sms_sent'"
        )
        assert row is not None and str(row["unit_price"].normalize()) == "0.07"
    finally:
        await sql.execute(
            "UPDATE tier_allowances SET unit_price = 0.05 WHERE tier = 'professional' "
            "AND event_type = 'sms_sent'"
        )


async def test_development_token_is_refused_in_production() -> None:
    company = str(uuid.uuid4())
    result = meterline(
        "token", "--company", company, env={"METERLINE_ENV": "production", "JWT_SECRET": "x" * 40}
    )
    assert result.returncode != 0
    assert "production" in result.stderr


async def test_tokens_minted_by_the_cli_verify() -> None:
    company = uuid.uuid4()
    env = {
        "METERLINE_ENV": "development",
        "JWT_SECRET": JWT_SECRET,
        "SERVICE_JWT_SECRET": SERVICE_SECRET,
    }
    user = meterline("token", "--company", str(company), "--role", "staff", env=env)
    assert user.returncode == 0, user.stderr
    service = meterline(
        "token", "--service", "--company", str(company), env={**env, "METERLINE_ENV": "production"}
    )
    assert service.returncode == 0, service.stderr
    verifier = TokenVerifier(base_settings())
    principal = await verifier.verify(user.stdout.strip())
    assert (principal.company_id, principal.role, principal.kind) == (company, "staff", "user")
    principal = await verifier.verify(service.stdout.strip())
    assert (principal.company_id, principal.role, principal.kind) == (company, "service", "service")


async def test_company_commands(database_url: str) -> None:
    company = str(uuid.uuid4())
    env = {"DATABASE_URL": database_url}
    created = meterline("company", "create", company, env=env)
    assert created.returncode == 0, created.stderr
    assert "tier=free" in created.stdout
    tiered = meterline("company", "set-tier", company, "professional", env=env)
    assert "tier=professional" in tiered.stdout
    linked = meterline(
        "company", "set-stripe", company, "--customer", f"cus_{company[:8]}", env=env
    )
    assert f"customer=cus_{company[:8]}" in linked.stdout
    stored = await companies.get(uuid.UUID(company))
    assert stored is not None and stored.tier is Tier.PROFESSIONAL
    missing = meterline("company", "show", str(uuid.uuid4()), env=env)
    assert missing.returncode != 0 and "no company" in missing.stderr


@pytest.mark.parametrize("bad", ["not-a-uuid"])
async def test_company_command_refuses_a_bad_id(database_url: str, bad: str) -> None:
    result = meterline("company", "show", bad, env={"DATABASE_URL": database_url})
    assert result.returncode != 0


async def test_clear_dunning(database_url: str) -> None:
    from datetime import UTC, datetime, timedelta

    from meterline.billing.dunning import BillingStatus, Dunning

    company = uuid.uuid4()
    now = datetime.now(UTC)
    await companies.get_or_create(company, now=now)
    await companies.set_dunning(company, Dunning(now - timedelta(days=20), now - timedelta(days=6)))
    result = meterline("company", "clear-dunning", str(company), env={"DATABASE_URL": database_url})
    assert result.returncode == 0, result.stderr
    assert "status=ok" in result.stdout
    stored = await companies.get(company)
    assert stored is not None and stored.dunning.status(now) is BillingStatus.OK


def test_schema_command_prints_the_sdl() -> None:
    result = meterline("schema")
    assert result.returncode == 0
    assert "recordUsage(input: RecordUsageInput!): RecordUsageResult!" in result.stdout


async def test_demo_seed_is_consistent_and_runs_once(database_url: str) -> None:
    from datetime import UTC, datetime

    from meterline.demo import DEMO_COMPANY_ID, DEMO_USAGE, seed_demo
    from meterline.services.usage import current_usage
    from tests.conftest import rollup_matches_events

    now = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
    assert await seed_demo(now, late_grace_hours=1) is True
    assert await seed_demo(now, late_grace_hours=1) is False
    company = await companies.get(DEMO_COMPANY_ID)
    assert company is not None and company.tier is Tier.STARTER
    used = {m.event_type: m.used for m in await current_usage(company, now)}
    assert used == dict(DEMO_USAGE)
    assert await rollup_matches_events(DEMO_COMPANY_ID)


async def test_set_stripe_changes_only_what_is_given_and_refuses_a_taken_customer(
    database_url: str,
) -> None:
    env = {"DATABASE_URL": database_url}
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    customer = f"cus_{first[:12]}"
    for company in (first, second):
        assert meterline("company", "create", company, env=env).returncode == 0
    assert (
        meterline("company", "set-stripe", first, "--customer", customer, env=env).returncode == 0
    )
    result = meterline("company", "set-stripe", first, "--subscription", "sub_1", env=env)
    assert f"customer={customer}" in result.stdout and "subscription=sub_1" in result.stdout
    taken = meterline("company", "set-stripe", second, "--customer", customer, env=env)
    assert taken.returncode != 0 and "another company" in taken.stderr
    stored = await companies.get(uuid.UUID(second))
    assert stored is not None and stored.stripe_customer_id is None


# --- --as-of: the one way to run a command at another moment than now ----------------------


async def test_as_of_sets_the_moment_every_rule_of_the_command_reads(database_url: str) -> None:
    from datetime import UTC, datetime, timedelta

    from meterline.billing.dunning import Dunning

    company = uuid.uuid4()
    failed_at = datetime(2030, 1, 10, tzinfo=UTC)
    await companies.get_or_create(company, now=failed_at)
    await companies.set_dunning(company, Dunning(failed_at, failed_at + timedelta(days=14)))
    env = {"DATABASE_URL": database_url}
    # A read-only look at two moments, accepted in production (the default environment):
    within = meterline("--as-of", "2030-01-20T00:00:00Z", "company", "show", str(company), env=env)
    assert within.returncode == 0, within.stderr
    assert "status=past_due" in within.stdout
    after = meterline(
        "--as-of", "2030-02-01T00:00:00+01:00", "company", "show", str(company), env=env
    )
    assert "status=restricted" in after.stdout
    # A command that writes records the moment as now: production refuses it ...
    refused = meterline(
        "--as-of", "2030-02-01T00:00:00Z", "company", "clear-dunning", str(company), env=env
    )
    assert refused.returncode != 0
    assert "refused in production" in refused.stderr and "clear-dunning" in refused.stderr
    assert (await companies.get(company)).dunning_cleared_at is None  # type: ignore[union-attr]
    # ... development takes it, and the clearance is dated at that moment.
    dev = {**env, "METERLINE_ENV": "development"}
    cleared = meterline(
        "--as-of", "2030-02-01T00:00:00Z", "company", "clear-dunning", str(company), env=dev
    )
    assert cleared.returncode == 0, cleared.stderr
    stored = await companies.get(company)
    assert stored is not None and stored.dunning_cleared_at == datetime(2030, 2, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--as-of", "2030-01-01T00:00:00", "company", "list"], "has no offset"),
        (["--as-of", "tomorrow", "company", "list"], "is not an ISO 8601 moment"),
        (["--as-of", "2030-01-01T00:00:00Z", "serve"], "runs on the machine's clock"),
        (
            ["--as-of", "2030-01-01T00:00:00Z", "token", "--company", str(uuid.uuid4())],
            "runs on the machine's clock",
        ),
        (["--as-of", "2030-01-01T00:00:00Z", "migrate"], "does not apply to `migrate`"),
    ],
)
def test_as_of_refuses_what_it_cannot_mean(args: list[str], message: str) -> None:
    result = meterline(
        *args,
        env={"METERLINE_ENV": "development", "DATABASE_URL": "postgresql://nowhere.invalid/x"},
    )
    assert result.returncode != 0
    assert message in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["company", "drift"], "refused in production"),  # beside Stripe's present preview
        (["sync-usage"], "refused in production"),
        (["sync-usage", "--redrive", "mlb_00"], "refused in production"),
        (["sync-usage", "--resolve", "mlb_00", "--delivered"], "refused in production"),
        (["sync-usage", "--status", "--resolve", "mlb_00", "--delivered"], "not allowed with"),
        (["sync-usage", "--stat", "--redrive", "mlb_00"], "not allowed with"),
        (["webhooks", "prune"], "refused in production"),
        (["webhooks", "replay", "--failed"], "refused in production"),
        (["stripe", "flags", "--resolve", str(uuid.uuid4())], "refused in production"),
        (["stripe", "backfill"], "refused in production"),
        (["demo"], "refused in production"),
    ],
)
def test_as_of_never_dates_a_write_in_production(args: list[str], message: str) -> None:
    """Production: a command that writes (or one that mixes with Stripe's present) cannot be
    run at another moment, however its options are combined."""
    result = meterline(
        "--as-of",
        "2020-01-01T00:00:00Z",
        *args,
        env={"DATABASE_URL": "postgresql://nowhere.invalid/x"},  # refused before connecting
    )
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


async def test_a_command_run_on_another_clock_than_the_tests_is_refused(
    database_url: str,
) -> None:
    """The guard of tests/commands.py: a test that fixes the app's clock runs its commands on
    it (`--as-of`), or they would read the machine's clock and break once the real date passes."""
    from datetime import UTC, datetime

    from tests.conftest import Clock

    fixed = Clock(fixed=datetime(2026, 11, 20, tzinfo=UTC))
    env = {"DATABASE_URL": database_url}
    with pytest.raises(AssertionError, match="fixes the app's clock"):
        meterline("company", "list", "--limit", "1", env=env)
    assert meterline("company", "list", "--limit", "1", env=env, clock=fixed).returncode == 0
