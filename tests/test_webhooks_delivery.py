"""The webhook routes: signatures, storing each event once, failures, replays."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import timedelta
from typing import Any

import pytest

from meterline.billing.catalog import Tier
from meterline.db import sql, webhook_events
from tests.commands import meterline
from tests.stripe_double import sign_payload
from tests.webhook_support import (
    SNAPSHOT_SECRET,
    THIN_SECRET,
    StripeWorld,
    company_row,
    event_row,
)


async def stored_count(event_id: str) -> int:
    row = await sql.fetchrow("SELECT count(*) AS n FROM webhook_events WHERE id = $1", event_id)
    assert row is not None
    return int(row["n"])


def subscription_event(world: StripeWorld) -> tuple[uuid.UUID, str, dict[str, Any]]:
    company_id = uuid.uuid4()
    _, subscription = world.subscribe(company_id)
    return (
        company_id,
        subscription,
        world.double.snapshot_event("customer.subscription.created", subscription),
    )


async def test_a_signed_event_is_stored_and_applied(world: StripeWorld) -> None:
    company_id, subscription, event = subscription_event(world)
    response = await world.deliver(event)
    assert response.status_code == 200
    assert response.json() == {"received": True, "id": event["id"], "status": "applied"}
    row = await event_row(event["id"])
    assert (row["status"], row["type"], row["object_id"]) == (
        "applied",
        "customer.subscription.created",
        subscription,
    )
    assert row["applied_count"] == 1
    company = await company_row(company_id)
    assert (company.tier, company.stripe_subscription_id) == (Tier.STARTER, subscription)


@pytest.mark.parametrize(
    "attack",
    [
        "wrong secret",
        "tampered body",
        "old timestamp",
        "missing header",
        "v0 scheme only",
        "thin secret on the snapshot route",
        "garbage header",
        "signature of another timestamp",
    ],
)
async def test_signature_attacks_are_400_and_store_nothing(world: StripeWorld, attack: str) -> None:
    company_id, _, event = subscription_event(world)
    body = json.dumps(event).encode()
    now = int(time.time())
    header: str | None
    sent = body
    if attack == "wrong secret":
        header = sign_payload(body, "whsec_not_ours")
    elif attack == "tampered body":
        header = sign_payload(body, SNAPSHOT_SECRET)
        sent = body.replace(b'"customer.subscription.created"', b'"customer.subscription.deleted"')
    elif attack == "old timestamp":
        header = sign_payload(body, SNAPSHOT_SECRET, timestamp=now - 301)
    elif attack == "missing header":
        header = ""
    elif attack == "v0 scheme only":
        header = sign_payload(body, SNAPSHOT_SECRET, schemes=("v0",))
    elif attack == "thin secret on the snapshot route":
        header = sign_payload(body, THIN_SECRET)
    elif attack == "garbage header":
        header = "t=abc,v1=zz"
    else:
        signed = sign_payload(body, SNAPSHOT_SECRET, timestamp=now - 10)
        header = signed.replace(f"t={now - 10}", f"t={now}")
    response = await world.deliver(event, header=header, body=sent)
    assert response.status_code == 400, response.text
    assert "error" in response.json()
    assert await stored_count(event["id"]) == 0
    assert await sql.fetchrow("SELECT 1 FROM companies WHERE id = $1", company_id) is None


async def test_the_snapshot_secret_is_refused_on_the_thin_route(world: StripeWorld) -> None:
    event_id = world.double.add_thin_event(
        "v1.billing.meter.no_meter_found",
        related_object=None,
        data=world.double.meter_error_data([("no_meter", "No meter", "mlb_x")]),
    )
    notification = world.double.thin_notification(event_id)
    response = await world.deliver(notification, secret=SNAPSHOT_SECRET, thin=True)
    assert response.status_code == 400
    assert await stored_count(event_id) == 0


async def test_a_second_secret_is_accepted_during_rotation(world: StripeWorld) -> None:
    rolled = world.api.settings.__class__(
        **{
            **world.api.settings.__dict__,
            "stripe_webhook_secret": f"whsec_new_secret, {SNAPSHOT_SECRET}",
        }
    )
    from meterline.app import create_app
    from tests.conftest import client_for

    async with client_for(create_app(rolled, clock=world.clock, manage_database=False)) as client:
        world.api.client = client
        for secret in ("whsec_new_secret", SNAPSHOT_SECRET):
            _, _, event = subscription_event(world)
            response = await world.deliver(event, secret=secret)
            assert response.status_code == 200, (secret, response.text)
        _, _, event = subscription_event(world)
        assert (await world.deliver(event, secret="whsec_retired")).status_code == 400


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1, 2]",
        b'{"object": "event"}',
        b'{"id": "evt_1", "object": "event", "type": "invoice.paid", "created": 1}',
        b'{"id": "evt_1", "object": "list", "type": "x", "created": 1, "data": {"object": {}}}',
        b"\xff\xfe not utf-8",
    ],
)
async def test_a_signed_body_that_is_not_an_event_is_400(world: StripeWorld, body: bytes) -> None:
    header = sign_payload(body.decode("latin-1"), SNAPSHOT_SECRET)
    response = await world.deliver({}, body=body, header=header)
    assert response.status_code == 400, response.text
    assert await sql.fetchrow("SELECT 1 FROM webhook_events WHERE id = 'evt_1'") is None


async def test_a_duplicate_delivery_is_acknowledged_and_not_applied_again(
    world: StripeWorld,
) -> None:
    _, _, event = subscription_event(world)
    first = await world.deliver(event)
    second = await world.deliver(event)
    assert (first.status_code, second.status_code) == (200, 200)
    assert second.json()["status"] == "duplicate"
    row = await event_row(event["id"])
    assert (row["applied_count"], row["attempts"]) == (1, 1)


async def test_concurrent_deliveries_of_one_event_apply_it_once(world: StripeWorld) -> None:
    _, _, event = subscription_event(world)
    responses = await asyncio.gather(*(world.deliver(event) for _ in range(8)))
    assert [r.status_code for r in responses] == [200] * 8
    statuses = sorted(r.json()["status"] for r in responses)
    assert statuses.count("applied") == 1 and statuses.count("duplicate") == 7
    assert (await event_row(event["id"]))["applied_count"] == 1


async def test_an_unhandled_type_is_stored_and_acknowledged(world: StripeWorld) -> None:
    customer = world.double.add_customer()
    event = world.double.snapshot_event("customer.updated", customer)
    response = await world.deliver(event)
    assert response.status_code == 200
    assert response.json()["status"] == "ignored"
    row = await event_row(event["id"])
    assert (row["status"], row["applied_count"]) == ("ignored", 0)


async def test_a_failure_while_applying_is_500_stored_and_applied_on_redelivery(
    world: StripeWorld,
) -> None:
    company_id, _, event = subscription_event(world)
    world.double.fail("500", 1.0, path_prefix="/v1/subscriptions")
    failed = await world.deliver(event)
    assert failed.status_code == 500
    assert failed.json()["status"] == "failed"
    row = await event_row(event["id"])
    assert row["status"] == "failed" and row["attempts"] == 1 and row["applied_count"] == 0
    assert "500" in row["last_error"] or "APIError" in row["last_error"]
    assert await sql.fetchrow("SELECT 1 FROM companies WHERE id = $1", company_id) is None
    world.double.heal()
    retried = await world.deliver(event)
    assert retried.status_code == 200 and retried.json()["status"] == "applied"
    row = await event_row(event["id"])
    assert (row["status"], row["attempts"], row["applied_count"]) == ("applied", 2, 1)
    assert (await company_row(company_id)).tier is Tier.STARTER


async def test_unconfigured_routes_answer_503_and_store_nothing(
    database_url: str, double: Any
) -> None:
    from meterline.app import create_app
    from tests.conftest import base_settings, client_for

    settings = base_settings(database_url=database_url)
    async with client_for(create_app(settings, manage_database=False)) as client:
        for path in ("/webhooks/stripe", "/webhooks/stripe/thin"):
            response = await client.post(path, content=b"{}", headers={"Stripe-Signature": "x"})
            assert response.status_code == 503, response.text


async def test_replay_command_reapplies_failed_and_single_events(
    world: StripeWorld, database_url: str
) -> None:
    company_id, subscription, event = subscription_event(world)
    world.double.fail("500", 1.0, path_prefix="/v1/subscriptions")
    assert (await world.deliver(event)).status_code == 500
    world.double.heal()
    env = world.cli_env()
    listed = meterline("webhooks", "list", "--failed", env=env, clock=world.clock)
    assert event["id"] in listed.stdout, listed.stderr
    replayed = meterline("webhooks", "replay", "--failed", env=env, clock=world.clock)
    assert replayed.returncode == 0, replayed.stderr
    assert f"{event['id']}: applied" in replayed.stdout
    assert (await company_row(company_id)).tier is Tier.STARTER
    # A single event, applied again on purpose after Stripe changed: its current state wins.
    world.double.cancel_subscription(subscription)
    single = meterline("webhooks", "replay", event["id"], env=env, clock=world.clock)
    assert single.returncode == 0, single.stderr
    assert (await company_row(company_id)).tier is Tier.FREE
    row = await event_row(event["id"])
    assert row["applied_count"] == 2
    unknown = meterline("webhooks", "replay", "evt_unknown", env=env, clock=world.clock)
    assert unknown.returncode != 0 and "no stored event" in unknown.stderr


async def test_stored_events_can_be_listed(world: StripeWorld) -> None:
    _, _, event = subscription_event(world)
    await world.deliver(event)
    # Newest received first, by the app's clock: other tests of this run stored events at later
    # moments, so the listing is read whole.
    stored = await sql.fetchrow("SELECT count(*) AS n FROM webhook_events")
    assert stored is not None
    recent = await webhook_events.recent(int(stored["n"]))
    assert event["id"] in [e.id for e in recent]
    assert [e.received_at for e in recent] == sorted((e.received_at for e in recent), reverse=True)


async def test_replay_failed_also_takes_events_a_crash_left_half_way(
    world: StripeWorld, database_url: str
) -> None:
    company_id, _, event = subscription_event(world)
    world.double.fail("500", 1.0, path_prefix="/v1/subscriptions")
    assert (await world.deliver(event)).status_code == 500
    world.double.heal()
    # As a process killed between storing and applying leaves it.
    await sql.execute(
        "UPDATE webhook_events SET status = 'received', received_at = $2 WHERE id = $1",
        event["id"],
        world.clock() - timedelta(minutes=6),
    )
    env = world.cli_env()
    replayed = meterline("webhooks", "replay", "--failed", env=env, clock=world.clock)
    assert f"{event['id']}: applied" in replayed.stdout, replayed.stderr
    assert (await company_row(company_id)).tier is Tier.STARTER
