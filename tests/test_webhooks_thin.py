"""Thin events on /webhooks/stripe/thin: Stripe's asynchronous meter error reports, matched to the
batches the sync sent (failed, shown by `sync-usage --status`, re-drivable), the /metrics gauges,
duplicates, fetch failures, types Meterline ignores, and bodies that are not thin events."""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from meterline.billing.catalog import EventType, Tier
from meterline.db import sql
from meterline.jobs.sync import SyncJob, SyncReport
from meterline.services import usage
from meterline.services.stripe_setup import metered_price_lookup_key
from meterline.stripe_gateway.client import close_client, make_client
from tests.commands import meterline
from tests.stripe_double import sign_payload
from tests.webhook_support import (
    THIN_SECRET,
    StripeWorld,
    company_row,
    event_row,
)

REPORT = "v1.billing.meter.error_report_triggered"
NO_METER = "v1.billing.meter.no_meter_found"
CUSTOMER_GONE = "meter_event_customer_not_found"
CUSTOMER_GONE_MESSAGE = "No customer was found with the provided stripe_customer_id."


# --- helpers ------------------------------------------------------------------------------------


async def paid_company(world: StripeWorld) -> tuple[uuid.UUID, str]:
    """A starter company linked to a customer, as its subscription webhook links it."""
    company_id = uuid.uuid4()
    customer, subscription = world.subscribe(company_id, Tier.STARTER)
    await world.send("customer.subscription.created", subscription)
    company = await company_row(company_id)
    assert (company.tier, company.stripe_customer_id) == (Tier.STARTER, customer)
    return company_id, customer


async def record(world: StripeWorld, company_id: uuid.UUID, event_type: EventType, n: int) -> None:
    outcome = await usage.record_usage(
        company_id,
        usage.RecordRequest(event_type=event_type, quantity=n),
        now=world.clock(),
        late_grace_hours=1,
    )
    assert isinstance(outcome, usage.Recorded)


async def sync(world: StripeWorld, company_id: uuid.UUID) -> SyncReport:
    """The sync job, on this company only (the database is shared with other tests)."""
    client = make_client(world.api.settings, timeout=5.0)
    try:
        return await SyncJob(client=client, clock=world.clock, company_ids=[company_id]).run()
    finally:
        await close_client(client)


async def batches_by_type(company_id: uuid.UUID) -> dict[str, dict[str, Any]]:
    rows = await sql.fetch(
        "SELECT id, event_type, state, last_error, value, redriven_at FROM usage_batches "
        "WHERE company_id = $1 ORDER BY created_at",
        company_id,
    )
    found: dict[str, dict[str, Any]] = {}
    for row in rows:
        assert row["event_type"] not in found, "one batch per event type expected"
        found[row["event_type"]] = dict(row)
    return found


async def event_states(company_id: uuid.UUID) -> dict[str, set[str]]:
    rows = await sql.fetch(
        "SELECT event_type, sync_state FROM usage_events WHERE company_id = $1", company_id
    )
    states: dict[str, set[str]] = {}
    for row in rows:
        states.setdefault(row["event_type"], set()).add(row["sync_state"])
    return states


def identifier(batch_id: uuid.UUID) -> str:
    return f"mlb_{batch_id.hex}"


def meter_id(world: StripeWorld, event_type: EventType) -> str:
    price = world.double.get_object(
        world.prices[metered_price_lookup_key(Tier.STARTER, event_type)]
    )
    meter: str = price["recurring"]["meter"]
    return meter


def related_meter(meter: str) -> dict[str, Any]:
    return {"id": meter, "type": "billing.meter", "url": f"/v1/billing/meters/{meter}"}


def error_report(world: StripeWorld, meter: str, samples: list[tuple[str, str, str]]) -> str:
    return world.double.add_thin_event(
        REPORT, related_object=related_meter(meter), data=world.double.meter_error_data(samples)
    )


async def stored_report(event_id: str) -> dict[str, Any] | None:
    row = await sql.fetchrow("SELECT * FROM meter_error_reports WHERE id = $1", event_id)
    if row is None:
        return None
    report = dict(row)
    if isinstance(report["samples"], str):
        report["samples"] = json.loads(report["samples"])
    return report


async def report_count(event_id: str) -> int:
    row = await sql.fetchrow(
        "SELECT count(*) AS n FROM meter_error_reports WHERE id = $1", event_id
    )
    assert row is not None
    return int(row["n"])


async def stored_count(event_id: str) -> int:
    row = await sql.fetchrow("SELECT count(*) AS n FROM webhook_events WHERE id = $1", event_id)
    assert row is not None
    return int(row["n"])


async def synced_company(world: StripeWorld) -> tuple[uuid.UUID, str, dict[str, dict[str, Any]]]:
    """A paid company whose SMS, email and AI usage the sync really sent: three `sent` batches."""
    company_id, customer = await paid_company(world)
    await record(world, company_id, EventType.SMS_SENT, 7)
    await record(world, company_id, EventType.SMS_SENT, 5)
    await record(world, company_id, EventType.EMAIL_SENT, 40)
    await record(world, company_id, EventType.AI_QUERY, 3)
    report = await sync(world, company_id)
    assert (report.claimed, report.sent, report.failed) == (3, 3, 0)
    found = await batches_by_type(company_id)
    assert {t: b["state"] for t, b in found.items()} == {
        "sms_sent": "sent",
        "email_sent": "sent",
        "ai_query": "sent",
    }
    # Stripe received exactly those identifiers: the report below names what the sync sent.
    sent = {e["identifier"]: e["value"] for e in world.double.meter_events()}
    assert {t: sent.get(identifier(b["id"])) for t, b in found.items()} == {
        "sms_sent": 12,
        "email_sent": 40,
        "ai_query": 3,
    }
    return company_id, customer, found


# --- a report naming our batches ----------------------------------------------------------------


async def test_a_report_fails_the_batches_it_names_and_keeps_foreign_samples(
    world: StripeWorld,
) -> None:
    company_id, _, found = await synced_company(world)
    sms, email = found["sms_sent"]["id"], found["email_sent"]["id"]
    unknown_ours = f"mlb_{uuid.uuid4().hex}"  # our shape, but no such batch
    meter = meter_id(world, EventType.SMS_SENT)
    samples = [
        (CUSTOMER_GONE, CUSTOMER_GONE_MESSAGE, identifier(sms)),
        (CUSTOMER_GONE, CUSTOMER_GONE_MESSAGE, identifier(email)),
        ("timestamp_too_far_in_past", "Timestamp is too far in the past.", "evt_other_system_1"),
        ("timestamp_too_far_in_past", "Timestamp is too far in the past.", unknown_ours),
        ("timestamp_too_far_in_past", "Timestamp is too far in the past.", "mlb_not-a-uuid"),
    ]
    event_id = error_report(world, meter, samples)

    response = await world.send_thin(event_id)

    assert response.status_code == 200, response.text
    assert response.json() == {"received": True, "id": event_id, "status": "applied"}
    row = await event_row(event_id)
    assert (row["source"], row["type"], row["object_id"], row["status"]) == (
        "thin",
        REPORT,
        meter,
        "applied",
    )
    assert row["applied_count"] == 1

    report = await stored_report(event_id)
    assert report is not None
    assert (report["type"], report["meter_id"], report["error_count"]) == (REPORT, meter, 5)
    assert report["summary"] == "There are 5 invalid events"
    assert report["created_at"] == world.clock()
    assert report["validation_end"] == world.clock()
    assert report["validation_start"] == world.clock() - timedelta(seconds=60)
    by_identifier = {s["identifier"]: s for s in report["samples"]}
    assert len(report["samples"]) == 5
    assert by_identifier[identifier(sms)] == {
        "code": CUSTOMER_GONE,
        "message": CUSTOMER_GONE_MESSAGE,
        "identifier": identifier(sms),
        "batch_id": str(sms),
    }
    assert by_identifier[identifier(email)]["batch_id"] == str(email)
    for foreign in ("evt_other_system_1", unknown_ours, "mlb_not-a-uuid"):
        assert by_identifier[foreign]["batch_id"] is None, foreign
        assert by_identifier[foreign]["code"] == "timestamp_too_far_in_past"

    after = await batches_by_type(company_id)
    for rejected in ("sms_sent", "email_sent"):
        assert after[rejected]["state"] == "failed", rejected
        assert CUSTOMER_GONE_MESSAGE in after[rejected]["last_error"]
        assert CUSTOMER_GONE in after[rejected]["last_error"]
    assert after["ai_query"]["state"] == "sent" and after["ai_query"]["last_error"] is None
    assert await event_states(company_id) == {
        "sms_sent": {"failed"},
        "email_sent": {"failed"},
        "ai_query": {"sent"},
    }


async def test_no_meter_found_is_stored_without_a_meter(world: StripeWorld) -> None:
    company_id, _, found = await synced_company(world)
    ai = found["ai_query"]["id"]
    event_id = world.double.add_thin_event(
        NO_METER,
        related_object=None,
        data=world.double.meter_error_data(
            [("no_meter", "No active meter was found for event_name 'x'.", identifier(ai))]
        ),
    )
    response = await world.send_thin(event_id)
    assert response.status_code == 200 and response.json()["status"] == "applied"
    row = await event_row(event_id)
    assert (row["object_id"], row["status"]) == (None, "applied")
    report = await stored_report(event_id)
    assert report is not None
    assert (report["type"], report["meter_id"], report["error_count"]) == (NO_METER, None, 1)
    assert [s["batch_id"] for s in report["samples"]] == [str(ai)]
    after = await batches_by_type(company_id)
    assert after["ai_query"]["state"] == "failed"
    assert "No active meter was found" in after["ai_query"]["last_error"]
    assert (after["sms_sent"]["state"], after["email_sent"]["state"]) == ("sent", "sent")


async def test_a_report_naming_a_batch_still_being_retried_is_not_lost(
    world: StripeWorld,
) -> None:
    """Stripe took the call but the answer was lost: the batch is `sending`, due for a retry,
    when the report says Stripe dropped the event. The retry's "already exists" must not turn it
    into `sent` (docs/design.md: a batch a report names was not billed; it is `failed`)."""
    company_id, _ = await paid_company(world)
    await record(world, company_id, EventType.SMS_SENT, 9)
    world.double.fail("drop", 1.0)  # processed by Stripe, connection dropped unanswered
    first = await sync(world, company_id)
    assert (first.claimed, first.retrying) == (1, 1)
    batch = (await batches_by_type(company_id))["sms_sent"]
    assert batch["state"] == "sending"
    assert identifier(batch["id"]) in {e["identifier"] for e in world.double.meter_events()}
    event_id = error_report(
        world,
        meter_id(world, EventType.SMS_SENT),
        [(CUSTOMER_GONE, CUSTOMER_GONE_MESSAGE, identifier(batch["id"]))],
    )
    assert (await world.send_thin(event_id)).status_code == 200
    report = await stored_report(event_id)
    assert report is not None and report["samples"][0]["batch_id"] == str(batch["id"])

    world.double.heal()
    world.clock.set(world.clock() + timedelta(minutes=5))  # past the retry
    await sync(world, company_id)

    settled = (await batches_by_type(company_id))["sms_sent"]
    assert settled["state"] == "failed", (
        f"Stripe reported {identifier(batch['id'])} dropped, yet the batch is {settled['state']}"
    )
    assert await event_states(company_id) == {"sms_sent": {"failed"}}


# --- what the operator sees, and the re-drive ---------------------------------------------------


async def test_status_shows_the_report_and_redrive_makes_the_events_pending_again(
    world: StripeWorld, database_url: str
) -> None:
    # `sync-usage --status` lists every company's problem batches, oldest first (at most 50),
    # and the 10 newest reports: this test's batch is made earliest and its report latest so
    # that other tests' rows in the shared database cannot push them off the listing.
    world.clock.set(datetime(2025, 6, 10, 12, 0, tzinfo=UTC))
    company_id, customer, found = await synced_company(world)
    sms = found["sms_sent"]["id"]
    world.clock.set(datetime(2029, 1, 10, 12, 0, tzinfo=UTC))
    event_id = error_report(
        world,
        meter_id(world, EventType.SMS_SENT),
        [
            (CUSTOMER_GONE, CUSTOMER_GONE_MESSAGE, identifier(sms)),
            ("archived_meter", "The meter is archived.", "someone_elses_event"),
        ],
    )
    assert (await world.send_thin(event_id)).status_code == 200
    env = {"DATABASE_URL": database_url}

    shown = meterline("sync-usage", "--status", env=env, clock=world.clock)

    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    assert (
        f"Stripe meter error report {event_id} ({REPORT}, 2029-01-10T12:00:00Z): 2 errors, "
        "There are 2 invalid events" in out
    ), out
    assert f"  {CUSTOMER_GONE}: {CUSTOMER_GONE_MESSAGE} (batch {identifier(sms)})" in out
    assert "  archived_meter: The meter is archived. (no batch of ours)" in out
    problem = next(
        line for line in out.splitlines() if identifier(sms) in line and "value=" in line
    )
    assert problem.startswith("failed ")
    assert f"{customer} " in problem and "value=12 " in problem
    assert CUSTOMER_GONE_MESSAGE in problem
    assert identifier(found["email_sent"]["id"]) not in out  # still sent: no problem

    redriven = meterline("sync-usage", "--redrive", identifier(sms), env=env, clock=world.clock)

    assert redriven.returncode == 0, redriven.stderr
    assert f"2 events of batch {identifier(sms)} are pending again" in redriven.stdout
    states = await event_states(company_id)
    assert states["sms_sent"] == {"pending"}
    row = await sql.fetchrow(
        "SELECT count(*) AS n FROM usage_events WHERE company_id = $1 AND batch_id = $2",
        company_id,
        sms,
    )
    assert row is not None and row["n"] == 0
    batch = (await batches_by_type(company_id))["sms_sent"]
    assert batch["state"] == "failed" and batch["redriven_at"] is not None

    # Once re-driven it is no longer a problem, and it cannot be re-driven twice.
    again = meterline("sync-usage", "--status", env=env, clock=world.clock)
    problems = [line for line in again.stdout.splitlines() if "value=" in line]
    assert not any(identifier(sms) in line for line in problems)
    twice = meterline("sync-usage", "--redrive", identifier(sms), env=env, clock=world.clock)
    assert twice.returncode != 0 and "re-driven already" in twice.stderr

    # The next sync (back within Stripe's 35 days of the usage) sends the events again as a
    # new batch, with a new identifier.
    world.clock.set(datetime(2025, 6, 10, 13, 0, tzinfo=UTC))
    report = await sync(world, company_id)
    assert (report.claimed, report.sent) == (1, 1)
    rows = await sql.fetch(
        "SELECT id, state, value FROM usage_batches WHERE company_id = $1 "
        "AND event_type = 'sms_sent' ORDER BY created_at",
        company_id,
    )
    assert [(r["id"] == sms, r["state"], r["value"]) for r in rows] == [
        (True, "failed", 12),
        (False, "sent", 12),
    ]
    assert identifier(rows[1]["id"]) in {e["identifier"] for e in world.double.meter_events()}
    assert (await event_states(company_id))["sms_sent"] == {"sent"}


# --- /metrics -----------------------------------------------------------------------------------


def gauge(text: str, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert match is not None, f"{name} not in /metrics"
    return float(match.group(1))


async def test_metrics_count_the_reports_and_errors_of_the_last_24_hours(
    world: StripeWorld,
) -> None:
    # A moment of this test's own: reports of other tests are not within its 24 hours.
    moment = datetime(2030, 6, 15, 12, 0, tzinfo=UTC)
    meter = meter_id(world, EventType.EMAIL_SENT)
    world.clock.set(moment - timedelta(hours=30))  # too old to count
    old = error_report(world, meter, [(CUSTOMER_GONE, "gone", f"x{i}") for i in range(4)])
    assert (await world.send_thin(old)).status_code == 200
    world.clock.set(moment - timedelta(hours=2))
    first = error_report(world, meter, [(CUSTOMER_GONE, "gone", "a"), (CUSTOMER_GONE, "gone", "b")])
    world.clock.set(moment)
    second = world.double.add_thin_event(
        NO_METER, related_object=None, data=world.double.meter_error_data([("no_meter", "n", "c")])
    )
    for event_id in (first, second):
        assert (await world.send_thin(event_id)).status_code == 200

    response = await world.client.get("/metrics")

    assert response.status_code == 200, response.text
    assert gauge(response.text, "meterline_meter_error_reports_24h") == 2
    assert gauge(response.text, "meterline_meter_errors_24h") == 3
    # A day later, nothing of it is recent any more.
    world.clock.set(moment + timedelta(hours=25))
    later = await world.client.get("/metrics")
    assert gauge(later.text, "meterline_meter_error_reports_24h") == 0
    assert gauge(later.text, "meterline_meter_errors_24h") == 0


# --- deliveries ---------------------------------------------------------------------------------


async def test_the_same_thin_event_twice_is_stored_once(world: StripeWorld) -> None:
    company_id, _, found = await synced_company(world)
    sms = found["sms_sent"]["id"]
    event_id = error_report(
        world,
        meter_id(world, EventType.SMS_SENT),
        [(CUSTOMER_GONE, CUSTOMER_GONE_MESSAGE, identifier(sms)), ("other", "x", "foreign")],
    )
    first = await world.send_thin(event_id)
    second = await world.send_thin(event_id)
    assert (first.status_code, second.status_code) == (200, 200)
    assert first.json()["status"] == "applied"
    assert second.json() == {"received": True, "id": event_id, "status": "duplicate"}
    assert await stored_count(event_id) == 1
    assert await report_count(event_id) == 1
    report = await stored_report(event_id)
    assert report is not None and len(report["samples"]) == 2
    row = await event_row(event_id)
    assert (row["attempts"], row["applied_count"]) == (1, 1)
    assert (await batches_by_type(company_id))["sms_sent"]["state"] == "failed"


async def test_a_failed_fetch_is_500_stored_and_applied_on_the_next_delivery(
    world: StripeWorld,
) -> None:
    company_id, _, found = await synced_company(world)
    email = found["email_sent"]["id"]
    event_id = error_report(
        world,
        meter_id(world, EventType.EMAIL_SENT),
        [(CUSTOMER_GONE, CUSTOMER_GONE_MESSAGE, identifier(email))],
    )
    world.double.fail("500", 1.0, path_prefix="/v2/core/events")

    failed = await world.send_thin(event_id)

    assert failed.status_code == 500, failed.text
    assert failed.json()["status"] == "failed" and failed.json()["id"] == event_id
    row = await event_row(event_id)
    assert (row["status"], row["attempts"], row["applied_count"]) == ("failed", 1, 0)
    assert row["last_error"] and "500" in row["last_error"]
    assert await report_count(event_id) == 0
    assert (await batches_by_type(company_id))["email_sent"]["state"] == "sent"

    world.double.heal()
    retried = await world.send_thin(event_id)

    assert retried.status_code == 200, retried.text
    assert retried.json()["status"] == "applied"
    row = await event_row(event_id)
    assert (row["status"], row["attempts"], row["applied_count"]) == ("applied", 2, 1)
    assert await report_count(event_id) == 1
    assert (await batches_by_type(company_id))["email_sent"]["state"] == "failed"


@pytest.mark.parametrize("event_type", ["v1.billing.meter.created", "v9.nobody.knows_this"])
async def test_a_thin_type_meterline_does_not_handle_is_acknowledged_and_ignored(
    world: StripeWorld, event_type: str
) -> None:
    meter = meter_id(world, EventType.AI_QUERY)
    event_id = world.double.add_thin_event(event_type, related_object=related_meter(meter), data={})
    response = await world.send_thin(event_id)
    assert response.status_code == 200, response.text
    assert response.json() == {"received": True, "id": event_id, "status": "ignored"}
    row = await event_row(event_id)
    assert (row["source"], row["type"], row["status"], row["applied_count"]) == (
        "thin",
        event_type,
        "ignored",
        0,
    )
    assert row["object_id"] == meter
    assert await report_count(event_id) == 0
    again = await world.send_thin(event_id)
    assert again.status_code == 200 and again.json()["status"] == "duplicate"


# --- bodies that are not thin events -------------------------------------------------------------


async def test_a_snapshot_event_signed_with_the_thin_secret_is_400(world: StripeWorld) -> None:
    company_id = uuid.uuid4()
    _, subscription = world.subscribe(company_id)
    event = world.double.snapshot_event("customer.subscription.created", subscription)
    assert event["object"] == "event"
    response = await world.deliver(event, secret=THIN_SECRET, thin=True)
    assert response.status_code == 400, response.text
    assert "error" in response.json()
    assert await stored_count(event["id"]) == 0
    assert await sql.fetchrow("SELECT 1 FROM companies WHERE id = $1", company_id) is None


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"not json", id="not-json"),
        pytest.param(b"[1, 2]", id="json-array"),
        pytest.param(b'"v2.core.event"', id="json-string"),
        pytest.param(b'{"object": "v2.core.event"}', id="no-id"),
        pytest.param(
            b'{"id": 7, "object": "v2.core.event", "type": "x", "created": "2026-11-20T12:00:00Z"}',
            id="numeric-id",
        ),
        pytest.param(
            b'{"id": "evt_thin_bad", "object": "v2.core.event", "type": "x", "created": "later"}',
            id="bad-created",
        ),
        pytest.param(
            b'{"id": "evt_thin_bad", "object": "list", "type": "x", '
            b'"created": "2026-11-20T12:00:00Z"}',
            id="object-list",
        ),
        pytest.param(
            b'{"id": "evt_thin_bad", "object": "v2.core.event", "type": null, '
            b'"created": "2026-11-20T12:00:00Z"}',
            id="null-type",
        ),
        pytest.param(
            b'{"id": "evt_thin_bad", "object": "v2.core.event", "type": "x", '
            b'"created": "2026-11-20T12:00:00Z", "context": 5}',
            id="numeric-context",
        ),
    ],
)
async def test_a_signed_thin_body_that_is_not_a_thin_event_is_400(
    world: StripeWorld, body: bytes
) -> None:
    event_id = f"evt_thin_{uuid.uuid4().hex}"
    body = body.replace(b"evt_thin_bad", event_id.encode())
    header = sign_payload(body, THIN_SECRET)
    response = await world.deliver({}, thin=True, body=body, header=header)
    assert response.status_code == 400, response.text
    assert await stored_count(event_id) == 0


async def test_a_thin_event_stripe_does_not_have_is_not_retried_for_three_days(
    world: StripeWorld,
) -> None:
    """Signed with our secret, but GET /v2/core/events/{id} answers 404 (`not_found`, the v2
    error shape): a permanent answer. Like a snapshot event whose object Stripe no longer has,
    it is stored and acknowledged, not failed for Stripe to retry (and replay) in vain."""
    event_id = error_report(world, meter_id(world, EventType.SMS_SENT), [("c", "m", "x")])
    notification = world.double.thin_notification(event_id)
    missing = f"evt_test_{uuid.uuid4().hex}"
    notification["id"] = missing
    response = await world.deliver(notification, secret=THIN_SECRET, thin=True)
    row = await event_row(missing)
    assert await report_count(missing) == 0
    assert (response.status_code, row["status"]) == (200, "ignored"), (
        response.text,
        row["last_error"],
    )
