"""Webhook-event retention: settled events older than WEBHOOK_EVENT_RETENTION_DAYS are pruned by
`meterline webhooks prune` and `/cron/prune-webhook-events`; unsettled ones never are."""

from __future__ import annotations

import json
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from meterline.app import create_app
from meterline.config import ConfigError, Settings
from meterline.db import sql
from tests.commands import meterline
from tests.conftest import Clock, client_for
from tests.webhook_support import StripeWorld

# Far before any other test's events: a prune at these moments touches this test's rows only.
LONG_AGO = datetime(2001, 3, 1, tzinfo=UTC)
PRUNED_AT = LONG_AGO + timedelta(days=120)  # the cut-off of 90 days is 2001-04-30


async def delivered(world: StripeWorld, status: str, received_at: datetime) -> str:
    """A real delivery, then aged (and given `status`) as time and a crash would leave it."""
    _, subscription = world.subscribe(uuid.uuid4())
    event = world.double.snapshot_event("customer.subscription.created", subscription)
    assert (await world.deliver(event)).status_code == 200
    await sql.execute(
        "UPDATE webhook_events SET status = $2, received_at = $3 WHERE id = $1",
        event["id"],
        status,
        received_at,
    )
    return str(event["id"])


async def stored(ids: list[str]) -> set[str]:
    rows = await sql.fetch("SELECT id FROM webhook_events WHERE id = ANY($1)", ids)
    return {r["id"] for r in rows}


async def aged_events(world: StripeWorld) -> dict[str, str]:
    return {
        "old applied": await delivered(world, "applied", LONG_AGO),
        "old ignored": await delivered(world, "ignored", LONG_AGO + timedelta(days=1)),
        "old failed": await delivered(world, "failed", LONG_AGO),
        "old received": await delivered(world, "received", LONG_AGO),  # a crash mid-apply
        "young applied": await delivered(world, "applied", PRUNED_AT - timedelta(days=89)),
    }


async def test_the_cron_route_prunes_settled_events_past_the_retention_only(
    world: StripeWorld,
) -> None:
    events = await aged_events(world)
    settings = world.api.settings
    assert settings.webhook_event_retention_days == 90
    app = create_app(
        replace(settings, cron_secret="cron-secret"),
        clock=Clock(fixed=PRUNED_AT),
        manage_database=False,
    )
    async with client_for(app) as client:
        refused = await client.post("/cron/prune-webhook-events")
        assert refused.status_code == 401
        assert await stored(list(events.values())) == set(events.values())
        response = await client.post(
            "/cron/prune-webhook-events", headers={"Authorization": "Bearer cron-secret"}
        )
    assert response.status_code == 200, response.text
    report: dict[str, Any] = response.json()
    assert report["received_before"] == (PRUNED_AT - timedelta(days=90)).isoformat()
    assert (report["pruned"], report["kept_unsettled"], report["done"]) == (2, 2, True)
    left = await stored(list(events.values()))
    assert left == {events["old failed"], events["old received"], events["young applied"]}


async def test_the_command_prunes_at_its_moment_and_a_second_run_finds_nothing(
    world: StripeWorld,
) -> None:
    events = await aged_events(world)
    env = world.cli_env()
    first = meterline("webhooks", "prune", env=env, clock=Clock(fixed=PRUNED_AT))
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["pruned"] == 2
    assert events["old applied"] not in await stored(list(events.values()))
    second = meterline("webhooks", "prune", env=env, clock=Clock(fixed=PRUNED_AT))
    assert json.loads(second.stdout)["pruned"] == 0
    # A longer retention keeps more: nothing here is older than 200 days at that moment.
    env["WEBHOOK_EVENT_RETENTION_DAYS"] = "200"
    late = PRUNED_AT + timedelta(days=100)
    kept = meterline("webhooks", "prune", env=env, clock=Clock(fixed=late))
    assert json.loads(kept.stdout)["pruned"] == 0
    assert events["young applied"] in await stored(list(events.values()))


async def test_an_event_being_applied_is_skipped_then_pruned_by_the_next_run(
    world: StripeWorld, database_url: str
) -> None:
    events = await aged_events(world)
    holder = await asyncpg.connect(database_url)
    try:
        async with holder.transaction():  # as a replay applying it holds it
            await holder.execute(
                "SELECT 1 FROM webhook_events WHERE id = $1 FOR UPDATE", events["old applied"]
            )
            moment = Clock(fixed=PRUNED_AT)
            result = meterline("webhooks", "prune", env=world.cli_env(), clock=moment)
            assert json.loads(result.stdout)["pruned"] == 1  # the ignored one
    finally:
        await holder.close()
    assert events["old applied"] in await stored(list(events.values()))
    again = meterline("webhooks", "prune", env=world.cli_env(), clock=Clock(fixed=PRUNED_AT))
    assert json.loads(again.stdout)["pruned"] == 1
    assert events["old applied"] not in await stored(list(events.values()))


@pytest.mark.parametrize(
    ("value", "ok"), [("30", True), ("365", True), ("29", False), ("x", False)]
)
def test_the_retention_is_at_least_stripes_thirty_days(value: str, ok: bool) -> None:
    environ = {"WEBHOOK_EVENT_RETENTION_DAYS": value}
    if ok:
        assert Settings.from_env(environ).webhook_event_retention_days == int(value)
    else:
        with pytest.raises(ConfigError, match="WEBHOOK_EVENT_RETENTION_DAYS"):
            Settings.from_env(environ)
