"""The `meterline` commands, run as a user runs them: a separate process."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest

from meterline.auth import TokenVerifier
from meterline.billing.catalog import Tier
from meterline.db import companies, sql
from tests.conftest import JWT_SECRET, SERVICE_SECRET, base_settings


def meterline(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("METERLINE", "JWT"))}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "meterline", *args],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_migrate_is_idempotent(database_url: str) -> None:
    before = await sql.fetch("SELECT count(*) AS n FROM tier_allowances")
    for _ in range(2):
        result = meterline("migrate", env={"DATABASE_URL": database_url})
        assert result.returncode == 0, result.stderr
    after = await sql.fetch("SELECT count(*) AS n FROM tier_allowances")
    assert before[0]["n"] == after[0]["n"] == 20


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
    await companies.get_or_create(company)
    now = datetime.now(UTC)
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
