"""A lock held past the statement timeout: DATABASE_BUSY (retryable), counted on /metrics, and
nothing half-written."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest

from meterline.app import create_app
from meterline.billing.catalog import Tier
from meterline.db import companies, engine
from tests.conftest import Api, Clock, base_settings, client_for, rollup_matches_events
from tests.plans import put_on_tier
from tests.stripe_double import StripeDouble
from tests.test_lifecycle import CHANGE, call, checked_out, limits, result
from tests.webhook_support import StripeWorld

TIMEOUT_MS = 300
RECORD = """mutation($input: RecordUsageInput!) { recordUsage(input: $input) { __typename
  ... on UsageRecorded { duplicate usage { used } } } }"""


@pytest.fixture
async def short_statement_timeout(database_url: str) -> AsyncIterator[None]:
    """The app's pool with a statement timeout of 300 ms (production's is DB_STATEMENT_TIMEOUT_MS,
    10 s), and the usual pool again afterwards."""
    await engine.close_pool()
    await engine.open_pool(database_url, min_size=2, max_size=10, statement_timeout_ms=TIMEOUT_MS)
    try:
        yield
    finally:
        await engine.close_pool()
        await engine.open_pool(database_url, min_size=2, max_size=60)


async def busy_count(client: httpx.AsyncClient, surface: str) -> float:
    body = (await client.get("/metrics")).text
    found = re.search(
        rf'^meterline_database_busy_total\{{surface="{surface}"\}} (\S+)$', body, re.M
    )
    return float(found.group(1)) if found else 0.0


async def record(api: Api, key: str) -> dict[str, Any]:
    variables = {"input": {"eventType": "SMS_SENT", "quantity": 2, "idempotencyKey": key}}
    return await api.gql(RECORD, variables, role="service")


async def test_a_lock_held_past_the_timeout_is_database_busy_and_a_retry_records_once(
    api: Api, database_url: str, short_statement_timeout: None
) -> None:
    await companies.get_or_create(api.company_id, now=api.clock())
    await put_on_tier(api.company_id, Tier.STARTER, now=api.clock())
    first = await record(api, "first")
    assert first["data"]["recordUsage"]["usage"]["used"] == 2
    before = await busy_count(api.client, "graphql")

    holder = await asyncpg.connect(database_url)
    try:
        # Another transaction holds this month's SMS rollup (as a long batch would).
        transaction = holder.transaction()
        await transaction.start()
        await holder.execute(
            "SELECT used FROM usage_rollups WHERE company_id = $1 FOR UPDATE", api.company_id
        )
        body = await record(api, "second")
        await transaction.rollback()
    finally:
        await holder.close()

    assert body["data"] is None, body  # recordUsage is non-null: the error nulls `data`
    [error] = body["errors"]
    assert error["extensions"]["code"] == "DATABASE_BUSY"
    assert error["extensions"]["requestId"]
    assert "try again" in error["message"]
    assert await busy_count(api.client, "graphql") == before + 1
    assert await rollup_matches_events(api.company_id)  # nothing half-written

    retried = await record(api, "second")  # the lock is gone: the same request succeeds
    assert retried["data"]["recordUsage"] == {
        "__typename": "UsageRecorded",
        "duplicate": False,
        "usage": {"used": 4},
    }
    again = await record(api, "second")
    assert again["data"]["recordUsage"]["duplicate"] is True
    assert await rollup_matches_events(api.company_id)


async def test_a_read_waiting_on_the_company_lock_is_database_busy_too(
    api: Api, database_url: str, short_statement_timeout: None
) -> None:
    """Any statement, not only recordings: a company row locked by a webhook's long apply."""
    await companies.get_or_create(api.company_id, now=api.clock())
    holder = await asyncpg.connect(database_url)
    try:
        transaction = holder.transaction()
        await transaction.start()
        await holder.execute("LOCK TABLE companies IN ACCESS EXCLUSIVE MODE")
        body = await asyncio.wait_for(api.gql("{ usageLimits { tier } }"), timeout=30)
        await transaction.rollback()
    finally:
        await holder.close()
    assert [e["extensions"]["code"] for e in body["errors"]] == ["DATABASE_BUSY"]


async def test_a_route_outside_graphql_answers_503_database_busy(
    database_url: str, double: StripeDouble, clock: Clock, short_statement_timeout: None
) -> None:
    settings = base_settings(
        database_url=database_url,
        cron_secret="cron",
        stripe_secret_key=double.api_key,
        stripe_api_base=double.url,
    )
    app = create_app(settings, clock=clock, manage_database=False)
    async with client_for(app) as client:
        before = await busy_count(client, "http")
        holder = await asyncpg.connect(database_url)
        try:
            transaction = holder.transaction()
            await transaction.start()
            await holder.execute("LOCK TABLE usage_events IN ACCESS EXCLUSIVE MODE")
            response = await client.post(
                "/cron/sync-usage", headers={"Authorization": "Bearer cron"}
            )
            await transaction.rollback()
        finally:
            await holder.close()
        assert response.status_code == 503, response.text
        assert response.headers["retry-after"] == "1"
        assert response.json()["code"] == "DATABASE_BUSY"
        assert await busy_count(client, "http") == before + 1


async def test_a_change_stripe_accepted_is_said_so_when_the_database_is_busy(
    world: StripeWorld, database_url: str, short_statement_timeout: None
) -> None:
    """Stripe is called first: when the local record of what it accepted waits past the
    timeout, the answer says Stripe has the change and that the same request records it, and
    the same request does, without a second change in Stripe."""
    company_id, subscription = await checked_out(world)
    before = await busy_count(world.client, "graphql")
    holder = await asyncpg.connect(database_url)
    try:
        transaction = holder.transaction()
        await transaction.start()  # as a webhook applying this subscription holds its row
        await holder.execute("SELECT 1 FROM subscriptions WHERE id = $1 FOR UPDATE", subscription)
        body = await call(world, company_id, CHANGE, tier="PROFESSIONAL")
        await transaction.rollback()
    finally:
        await holder.close()
    [error] = body["errors"]
    assert error["extensions"]["code"] == "DATABASE_BUSY"
    assert error["message"].startswith("Stripe scheduled professional from 2026-12-01")
    assert "Send the same request again" in error["message"]
    assert await busy_count(world.client, "graphql") == before + 1
    schedule_id = world.double.get_object(subscription)["schedule"]
    assert schedule_id is not None  # Stripe has it

    again = await result(world, company_id, CHANGE, tier="PROFESSIONAL")
    assert again["__typename"] == "TierChangeScheduled"
    assert (await limits(world, company_id))["scheduledTier"] == "PROFESSIONAL"
    assert world.double.get_object(subscription)["schedule"] == schedule_id  # the same one
    phases = world.double.get_object(schedule_id)["phases"]
    assert {i["price"] for i in phases[-1]["items"]} == set(world.tier_prices(Tier.PROFESSIONAL))
