"""The usage sync against the Stripe double: exactly once, whatever happens on the way."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import stripe

from meterline.billing.catalog import EventType, Tier
from meterline.billing.periods import month_of
from meterline.db import batches, companies, sql
from meterline.jobs.sync import LEASE, SETTLE_WINDOW, SyncHooks, SyncJob
from meterline.services import usage
from meterline.stripe_gateway.client import make_client
from meterline.stripe_gateway.meter_events import meter_event_name
from tests.commands import meterline
from tests.conftest import Clock, base_settings, client_for, rollup_matches_events
from tests.plans import put_on_tier
from tests.stripe_double import StripeApiError, StripeDouble

NOV_20 = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


@pytest.fixture
def clock(double: StripeDouble) -> Clock:
    moment = Clock(fixed=NOV_20)
    double.now = lambda: int(moment().timestamp())
    return moment


def client(double: StripeDouble, timeout: float = 2.0) -> stripe.StripeClient:
    settings = base_settings(stripe_secret_key=double.api_key, stripe_api_base=double.url)
    return make_client(settings, timeout=timeout)


@pytest.fixture
def meters(double: StripeDouble) -> None:
    c = client(double)
    for event_type in EventType:
        c.v1.billing.meters.create(
            params={
                "display_name": event_type.value,
                "event_name": meter_event_name(event_type),
                "default_aggregation": {"formula": "sum"},
                "customer_mapping": {"event_payload_key": "stripe_customer_id", "type": "by_id"},
                "value_settings": {"event_payload_key": "value"},
            }
        )


# The sync job is global; each test syncs only the companies it made (other tests' rows are
# none of its business), through the job's company filter.
MINE: list[uuid.UUID] = []


@pytest.fixture(autouse=True)
def _my_companies(database_url: str) -> Iterator[None]:
    MINE.clear()
    yield
    MINE.clear()


def job(double: StripeDouble, clock: Clock, **kwargs: Any) -> SyncJob:
    timeout = kwargs.pop("timeout", 2.0)
    return SyncJob(client=client(double, timeout), clock=clock, company_ids=list(MINE), **kwargs)


async def paid_company(double: StripeDouble, tier: Tier = Tier.STARTER) -> tuple[uuid.UUID, str]:
    company_id = uuid.uuid4()
    MINE.append(company_id)
    customer = double.add_customer()
    await companies.get_or_create(company_id, now=NOV_20)  # where every clock here starts
    await put_on_tier(company_id, tier, now=NOV_20, billed=True)
    await companies.set_stripe_ids(company_id, customer_id=customer)
    return company_id, customer


async def record(
    company_id: uuid.UUID,
    event_type: EventType,
    quantity: int,
    *,
    now: datetime,
    occurred_at: datetime | None = None,
) -> None:
    outcome = await usage.record_usage(
        company_id,
        usage.RecordRequest(event_type=event_type, quantity=quantity, occurred_at=occurred_at),
        now=now,
        late_grace_hours=1,
    )
    assert isinstance(outcome, usage.Recorded)


async def rollup_totals(company_id: uuid.UUID) -> dict[str, int]:
    rows = await sql.fetch(
        "SELECT event_type, sum(used) AS used FROM usage_rollups WHERE company_id = $1 "
        "GROUP BY event_type",
        company_id,
    )
    return {r["event_type"]: int(r["used"]) for r in rows}


async def states(company_id: uuid.UUID) -> dict[str, int]:
    rows = await sql.fetch(
        "SELECT sync_state, count(*) AS n FROM usage_events WHERE company_id = $1 GROUP BY 1",
        company_id,
    )
    return {r["sync_state"]: int(r["n"]) for r in rows}


def assert_double_matches(double: StripeDouble, customer: str, totals: dict[str, int]) -> None:
    for event_type in EventType:
        expected = totals.get(event_type.value, 0)
        assert double.meter_total(customer, meter_event_name(event_type)) == expected, event_type
    assert all(count == 1 for count in double.identifiers_seen.values())


async def drain(double: StripeDouble, clock: Clock, *, rounds: int = 60, **kwargs: Any) -> None:
    """Run the job until nothing of this test's companies is pending or in flight, moving the
    clock past each retry."""
    for _ in range(rounds):
        report = await job(double, clock, **kwargs).run()
        in_flight = await sql.fetchrow(
            "SELECT count(*) AS n FROM usage_batches WHERE state = 'sending' "
            "AND company_id = ANY($1)",
            MINE,
        )
        assert in_flight is not None
        if in_flight["n"] == 0 and report.pending == 0:
            return
        clock.set(clock() + timedelta(minutes=31))  # past the longest backoff
    raise AssertionError(f"the sync did not settle by {clock()}")


# --- the happy path -----------------------------------------------------------------------


async def test_totals_in_stripe_equal_the_rollups(
    double: StripeDouble, clock: Clock, meters: None
) -> None:
    firms = [await paid_company(double) for _ in range(3)]
    for n, (company_id, _) in enumerate(firms):
        for k, event_type in enumerate(EventType):
            for quantity in (1 + n, 7 * k + 3, 250):
                await record(company_id, event_type, quantity, now=clock())
    report = await job(double, clock).run()
    assert (report.claimed, report.sent, report.failed, report.retrying) == (15, 15, 0, 0)
    assert report.pending == 0
    for company_id, customer in firms:
        assert_double_matches(double, customer, await rollup_totals(company_id))
        assert await states(company_id) == {"sent": 15}
    assert double.max_concurrent_per_customer_meter == 1
    # nothing left: a second run sends nothing
    again = await job(double, clock).run()
    assert (again.claimed, again.sent) == (0, 0)


async def test_local_only_events_are_never_sent(
    double: StripeDouble, clock: Clock, meters: None
) -> None:
    company_id = uuid.uuid4()
    MINE.append(company_id)
    await record(company_id, EventType.GUEST_INVITATION, 5, now=clock())
    before = len(double.requests)
    report = await job(double, clock).run()
    assert report.claimed == 0
    assert len(double.requests) == before
    assert await states(company_id) == {"local_only": 1}


async def test_a_january_event_synced_in_february_is_stamped_in_january(
    double: StripeDouble, clock: Clock, meters: None
) -> None:
    company_id, customer = await paid_company(double)
    late = datetime(2027, 1, 31, 23, 59, 30, 700_000, tzinfo=UTC)
    clock.set(datetime(2027, 2, 1, 0, 10, tzinfo=UTC))
    await record(company_id, EventType.SMS_SENT, 4, now=clock(), occurred_at=late)
    await record(company_id, EventType.SMS_SENT, 1, now=clock())  # February
    await job(double, clock).run()
    sent = {e["timestamp"]: e["value"] for e in double.meter_events() if e["customer"] == customer}
    assert sent == {
        int(datetime(2027, 1, 31, 23, 59, 30, tzinfo=UTC).timestamp()): 4,
        int(datetime(2027, 2, 1, 0, 10, tzinfo=UTC).timestamp()): 1,
    }


# --- failures -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["429", "500", "stall", "drop", "drop_before"])
async def test_thirty_percent_failures_still_deliver_exactly_once(
    double: StripeDouble, clock: Clock, meters: None, kind: str
) -> None:
    firms = [await paid_company(double) for _ in range(4)]
    for company_id, _ in firms:
        for event_type in EventType:
            for quantity in (3, 11):
                await record(company_id, event_type, quantity, now=clock())
    double.fail(kind, 0.3, seed=7, stall_seconds=0.6)  # type: ignore[arg-type]
    await drain(double, clock, timeout=0.3)
    for company_id, customer in firms:
        assert_double_matches(double, customer, await rollup_totals(company_id))
        assert await states(company_id) == {"sent": 10}
        assert await rollup_matches_events(company_id)


async def test_two_workers_over_ten_thousand_events(
    double: StripeDouble, clock: Clock, meters: None
) -> None:
    firms = [await paid_company(double) for _ in range(20)]
    for company_id, _ in firms:
        for event_type in EventType:
            await seed_pending(company_id, event_type, count=100, month_start=clock())
    total = await sql.fetchrow(
        "SELECT count(*) AS n FROM usage_events WHERE sync_state = 'pending' "
        "AND company_id = ANY($1)",
        [c for c, _ in firms],
    )
    assert total is not None and total["n"] == 10_000
    double.delay = 0.01
    reports = await asyncio.gather(
        job(double, clock, concurrency=8).run(), job(double, clock, concurrency=8).run()
    )
    await drain(double, clock)  # whatever a worker left to the other, finished
    assert sum(r.sent for r in reports) >= 1
    for company_id, customer in firms:
        assert_double_matches(double, customer, await rollup_totals(company_id))
        assert await rollup_matches_events(company_id)
    assert double.max_concurrent_per_customer_meter == 1


async def seed_pending(
    company_id: uuid.UUID, event_type: EventType, *, count: int, month_start: datetime
) -> None:
    """`count` pending events of quantity 1..count and their rollup, written fast (SQL)."""
    from meterline.billing.periods import month_of

    month = month_of(month_start)
    await sql.execute(
        "INSERT INTO usage_events (id, company_id, event_type, quantity, occurred_at, month, "
        "sync_state) SELECT gen_random_uuid(), $1, $2, n, "
        "$3::timestamptz - make_interval(secs => n), $4, 'pending' "
        "FROM generate_series(1, $5) AS n",
        company_id,
        event_type.value,
        month_start,
        month,
        count,
    )
    await sql.execute(
        "INSERT INTO usage_rollups (company_id, month, event_type, used, tier, included, "
        "unit_price, cap) VALUES ($1, $2, $3, $4, 'starter', NULL, 0, NULL)",
        company_id,
        month,
        event_type.value,
        count * (count + 1) // 2,
    )


class Crash(BaseException):
    """The process dying at this point (not an error the job could handle)."""


async def test_crash_after_stripe_accepted_and_before_marking(
    double: StripeDouble, clock: Clock, meters: None
) -> None:
    company_id, customer = await paid_company(double)
    await record(company_id, EventType.EMAIL_SENT, 42, now=clock())

    async def die(*_: Any) -> None:
        raise Crash

    with pytest.raises(Crash):
        await job(double, clock, hooks=SyncHooks(after_send=die)).run()
    assert double.meter_total(customer, "email_sent") == 42  # Stripe has it
    assert await states(company_id) == {"sending": 1}  # we do not know it yet
    # before the lease passes, nobody touches it
    report = await job(double, clock).run()
    assert report.sent == 0
    clock.set(clock() + LEASE + timedelta(seconds=1))
    report = await job(double, clock).run()
    assert report.sent == 1  # "already exists": delivered
    assert double.meter_total(customer, "email_sent") == 42
    assert await states(company_id) == {"sent": 1}
    assert list(double.identifiers_seen.values()) == [1]


async def test_crash_after_the_claim_and_before_the_call(
    double: StripeDouble, clock: Clock, meters: None
) -> None:
    company_id, customer = await paid_company(double)
    await record(company_id, EventType.AI_QUERY, 9, now=clock())

    async def die(*_: Any) -> None:
        raise Crash

    with pytest.raises(Crash):
        await job(double, clock, hooks=SyncHooks(after_claim=die)).run()
    assert double.meter_total(customer, "ai_query") == 0
    claimed = await sql.fetchrow(
        "SELECT id, value FROM usage_batches WHERE company_id = $1", company_id
    )
    assert claimed is not None and claimed["value"] == 9
    clock.set(clock() + LEASE + timedelta(seconds=1))
    report = await job(double, clock).run()
    assert (report.claimed, report.sent) == (0, 1)  # the stored batch, re-sent unchanged
    assert double.meter_total(customer, "ai_query") == 9
    assert [e["identifier"] for e in double.meter_events()] == [f"mlb_{claimed['id'].hex}"]


async def test_a_batch_unsettled_past_the_window_becomes_unknown_and_is_not_resent(
    double: StripeDouble, clock: Clock, meters: None
) -> None:
    company_id, _ = await paid_company(double)
    await record(company_id, EventType.SMS_SENT, 5, now=clock())
    double.fail("500", 1.0)
    report = await job(double, clock).run()
    assert report.retrying == 1
    started = clock()
    while clock() - started <= SETTLE_WINDOW:
        clock.set(clock() + timedelta(minutes=31))
        await job(double, clock).run()
    assert await states(company_id) == {"unknown": 1}
    double.heal()
    calls = len(double.requests)
    clock.set(clock() + timedelta(days=1))
    report = await job(double, clock).run()
    assert (report.claimed, report.sent) == (0, 0)
    assert len(double.requests) == calls  # an operator decides, not the job
    problem = (
        await batches.status(current_month=clock().date(), problem_limit=5, company_ids=MINE)
    ).problems
    assert [b.state for b in problem] == ["unknown"]


async def test_a_refused_batch_fails_and_can_be_redriven_as_a_new_batch(
    double: StripeDouble, clock: Clock
) -> None:
    company_id, customer = await paid_company(double)  # no meters yet: Stripe refuses
    await record(company_id, EventType.WHATSAPP_MESSAGE, 6, now=clock())
    report = await job(double, clock).run()
    assert report.failed == 1
    failed = (
        await batches.status(current_month=clock().date(), problem_limit=5, company_ids=MINE)
    ).problems
    assert len(failed) == 1 and failed[0].state == "failed" and failed[0].last_error
    with pytest.raises(batches.NotRedrivable):
        await batches.redrive(uuid.uuid4(), now=clock())
    # once the meter exists, the operator re-drives it
    client(double).v1.billing.meters.create(
        params={
            "display_name": "whatsapp",
            "event_name": "whatsapp_message",
            "default_aggregation": {"formula": "sum"},
            "customer_mapping": {"event_payload_key": "stripe_customer_id", "type": "by_id"},
            "value_settings": {"event_payload_key": "value"},
        }
    )
    assert await batches.redrive(failed[0].id, now=clock()) == 1
    with pytest.raises(batches.NotRedrivable):
        await batches.redrive(failed[0].id, now=clock())  # once only
    report = await job(double, clock).run()
    assert (report.claimed, report.sent) == (1, 1)
    assert double.meter_total(customer, "whatsapp_message") == 6
    assert await states(company_id) == {"sent": 1}


# --- the cron route -------------------------------------------------------------------------


async def test_cron_route_needs_its_secret(
    double: StripeDouble, clock: Clock, meters: None, database_url: str
) -> None:
    from meterline.app import create_app

    company_id, customer = await paid_company(double)
    await record(company_id, EventType.GUEST_INVITATION, 2, now=clock())
    settings = base_settings(
        database_url=database_url,
        stripe_secret_key=double.api_key,
        stripe_api_base=double.url,
        cron_secret="cron-secret-123",
    )
    unset = base_settings(
        database_url=database_url, stripe_secret_key=double.api_key, stripe_api_base=double.url
    )
    async with client_for(create_app(settings, clock=clock, manage_database=False)) as http:
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": "cron-secret-123"},
        ):
            response = await http.post("/cron/sync-usage", headers=headers)
            assert response.status_code == 401
        assert await states(company_id) == {"pending": 1}
        response = await http.get(
            "/cron/sync-usage", headers={"Authorization": "Bearer cron-secret-123"}
        )
        assert response.status_code == 200
        body = response.json()
        assert set(body) == {
            "claimed",
            "sent",
            "failed",
            "retrying",
            "unknown",
            "pending",
            "duration_ms",
            "errors",
            "key_refused",
            "last_month_pending_units",
        }
        assert body["sent"] >= 1
    assert double.meter_total(customer, "guest_invitation") == 2
    async with client_for(create_app(unset, clock=clock, manage_database=False)) as http:
        response = await http.post("/cron/sync-usage", headers={"Authorization": "Bearer "})
        assert response.status_code == 401


async def test_metrics_show_the_sync_state(
    double: StripeDouble, clock: Clock, meters: None, database_url: str
) -> None:
    from meterline.app import create_app

    company_id, _ = await paid_company(double)
    await record(company_id, EventType.SMS_SENT, 3, now=clock())
    settings = base_settings(database_url=database_url, metrics_token="m")
    async with client_for(create_app(settings, clock=clock, manage_database=False)) as http:
        body = (await http.get("/metrics", headers={"Authorization": "Bearer m"})).text
    pending = next(
        line for line in body.splitlines() if line.startswith("meterline_sync_pending_events ")
    )
    assert float(pending.split()[1]) >= 1
    assert "meterline_sync_last_month_pending_events" in body
    assert 'meterline_sync_batches_by_state{state="unknown"}' in body


async def test_sync_usage_command(double: StripeDouble, clock: Clock, database_url: str) -> None:
    """The CLI runs the same job, shows what did not sync, and re-drives a failed batch; all
    at the test's moment (`--as-of`), for this test's company only (`--company`)."""
    company_id, customer = await paid_company(double)  # no meters: Stripe refuses the batch
    await record(company_id, EventType.EMAIL_SENT, 8, now=clock())
    env = {
        "DATABASE_URL": database_url,
        "STRIPE_SECRET_KEY": double.api_key,
        "STRIPE_API_BASE": double.url,
    }
    mine = ("--company", str(company_id))
    unconfigured = meterline("sync-usage", *mine, env={"DATABASE_URL": database_url}, clock=clock)
    assert unconfigured.returncode != 0
    run = meterline("sync-usage", *mine, env=env, clock=clock)
    assert run.returncode == 0, run.stderr
    assert '"failed": 1' in run.stdout and '"claimed": 1' in run.stdout
    failed = await sql.fetchrow(
        "SELECT id FROM usage_batches WHERE company_id = $1 AND state = 'failed'", company_id
    )
    assert failed is not None
    status = meterline("sync-usage", "--status", *mine, env=env, clock=clock)
    assert status.returncode == 0, status.stderr
    assert 'batches: {"failed": 1}' in status.stdout
    assert f"failed   mlb_{failed['id'].hex}  {customer} email_sent" in status.stdout
    double.add_meter("email_sent")
    redrive = meterline("sync-usage", "--redrive", f"mlb_{failed['id'].hex}", env=env, clock=clock)
    assert redrive.returncode == 0, redrive.stderr
    assert "1 events" in redrive.stdout
    assert meterline("sync-usage", *mine, env=env, clock=clock).returncode == 0
    assert double.meter_total(customer, "email_sent") == 8
    [sent] = double.meter_events()
    assert sent["timestamp"] == int(clock().timestamp())  # sent at the test's moment
    again = meterline("sync-usage", "--redrive", str(failed["id"]), env=env, clock=clock)
    assert again.returncode != 0 and "re-driven already" in again.stderr


# --- what the review found: ambiguity, fencing, one in flight -------------------------------


async def test_a_refusal_after_an_unanswered_attempt_is_unknown_not_failed(
    double: StripeDouble, clock: Clock, meters: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attempt 1 reached Stripe but the answer was lost; before the retry the repeat is refused
    for another reason. Re-driving it under a new identifier would bill it twice."""
    company_id, customer = await paid_company(double)
    await record(company_id, EventType.SMS_SENT, 5, now=clock())
    double.fail("drop", 1.0)  # recorded, then the connection dropped
    assert (await job(double, clock).run()).retrying == 1
    assert double.meter_total(customer, "sms_sent") == 5
    double.heal()

    from meterline.stripe_gateway.meter_events import Outcome, SendResult

    async def refused(*args: Any, **kwargs: Any) -> SendResult:
        return SendResult(Outcome.REJECTED, "No active meter with event name 'sms_sent'")

    monkeypatch.setattr("meterline.jobs.sync.send_meter_event", refused)
    clock.set(clock() + timedelta(minutes=31))
    report = await job(double, clock).run()
    assert (report.failed, report.unknown) == (0, 1)
    assert await states(company_id) == {"unknown": 1}
    batch_id = (await batches.status(current_month=clock().date(), company_ids=MINE)).problems[0].id
    with pytest.raises(batches.NotRedrivable):
        await batches.redrive(batch_id, now=clock())
    # the operator looks at Stripe, sees the 5, and settles it
    assert await batches.resolve_unknown(batch_id, delivered=True, now=clock()) == 1
    assert await states(company_id) == {"sent": 1}
    assert double.meter_total(customer, "sms_sent") == 5


async def test_a_worker_whose_lease_was_taken_over_cannot_settle(
    double: StripeDouble, clock: Clock, meters: None
) -> None:
    company_id, _ = await paid_company(double)
    await record(company_id, EventType.AI_QUERY, 2, now=clock())
    group = (await batches.pending_groups(10, MINE))[0]
    first = await batches.claim(
        group, event_name="ai_query", now=clock(), lease=LEASE, max_events=100
    )
    assert first is not None and first.attempts == 1
    clock.set(clock() + LEASE + timedelta(seconds=1))  # the first worker stalls past its lease
    [candidate] = await batches.due(now=clock(), limit=10, company_ids=MINE)
    second = await batches.take(candidate, now=clock(), lease=LEASE)
    assert second is not None and second.attempts == 2
    assert await batches.take(candidate, now=clock(), lease=LEASE) is None  # taken once
    # the stale first worker's outcome changes nothing
    assert not await batches.schedule_retry(first, retry_at=clock(), error="late")
    assert not await batches.mark_failed(first, error="late")
    assert not await batches.mark_unknown(first, error="late")
    assert await batches.mark_sent(second, now=clock())
    assert await states(company_id) == {"sent": 1}


async def test_the_database_allows_one_batch_in_flight_per_company_and_type(
    double: StripeDouble, clock: Clock, meters: None
) -> None:
    company_id, _ = await paid_company(double)
    await record(company_id, EventType.EMAIL_SENT, 1, now=clock())
    group = (await batches.pending_groups(10, MINE))[0]
    assert await batches.claim(
        group, event_name="email_sent", now=clock(), lease=LEASE, max_events=10
    )
    with pytest.raises(Exception, match="usage_batches_one_in_flight"):
        await sql.execute(
            "INSERT INTO usage_batches (id, company_id, stripe_customer_id, event_type, "
            "event_name, month, value, timestamp, state, attempts, lease_until, created_at) "
            "SELECT gen_random_uuid(), company_id, stripe_customer_id, event_type, event_name, "
            "month, value, timestamp, 'sending', 1, lease_until, created_at FROM usage_batches "
            "WHERE company_id = $1",
            company_id,
        )


async def test_a_run_stops_starting_work_when_its_budget_is_spent(
    double: StripeDouble, clock: Clock, meters: None
) -> None:
    firms = [await paid_company(double) for _ in range(3)]
    for company_id, _ in firms:
        for event_type in EventType:
            await record(company_id, event_type, 1, now=clock())
    double.delay = 0.2
    report = await job(double, clock, concurrency=1, budget=timedelta(seconds=0.5)).run()
    assert 1 <= report.claimed <= 4  # 15 groups, one at a time, 0.2 s each: a few fit
    assert report.duration_ms < 2_000
    assert report.pending == 15 - report.sent


async def test_one_failing_step_does_not_strand_the_others(
    double: StripeDouble, clock: Clock, meters: None
) -> None:
    company_id, customer = await paid_company(double)
    for event_type in EventType:
        await record(company_id, event_type, 2, now=clock())
    failed_once: list[str] = []

    async def flaky(batch: Any) -> None:
        if not failed_once:
            failed_once.append(batch.event_name)
            raise RuntimeError("the database went away for a moment")

    report = await job(double, clock, hooks=SyncHooks(after_claim=flaky)).run()
    assert (report.errors, report.sent) == (1, 4)
    clock.set(clock() + LEASE + timedelta(seconds=1))
    assert (await job(double, clock).run()).sent == 1  # the stranded batch, re-taken
    assert_double_matches(double, customer, await rollup_totals(company_id))


# --- a refused API key (issue 12, case 12) ---------------------------------------------------


def rotated_key_client(double: StripeDouble) -> stripe.StripeClient:
    """A client whose key Stripe no longer accepts (rotated, revoked, mistyped): 401."""
    settings = base_settings(stripe_secret_key="sk_test_rotated_0000", stripe_api_base=double.url)
    return make_client(settings, timeout=2.0)


def counter(name: str, **labels: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_a_refused_api_key_fails_the_batch_at_once_and_loudly(
    double: StripeDouble, clock: Clock, meters: None, caplog: pytest.LogCaptureFixture
) -> None:
    """401 means Stripe never looked at the batch: certainly not delivered. The batch fails at
    once (never `unknown` after 20 hours), says why, and is re-driven once the key is fixed.
    The run stops calling Stripe after the first refusal: every call would be refused alike."""
    from meterline.jobs import telemetry

    company_id, customer = await paid_company(double)
    await record(company_id, EventType.SMS_SENT, 5, now=clock())
    await record(company_id, EventType.AI_QUERY, 2, now=clock())
    calls = len(double.requests)
    refusals_before = counter("meterline_sync_key_refusals_total")
    # one call at a time, so that the stop is visible (calls already under way settle each)
    rotated = SyncJob(
        client=rotated_key_client(double), clock=clock, company_ids=list(MINE), concurrency=1
    )
    with caplog.at_level(logging.ERROR, logger="meterline.jobs.sync"):
        report = await rotated.run()
    assert (report.failed, report.key_refused, report.retrying, report.unknown) == (1, 1, 0, 0)
    assert report.as_dict()["key_refused"] == 1
    assert len(double.requests) == calls + 1  # one call, then the run stopped
    assert await states(company_id) == {"failed": 1, "pending": 1}
    [failed] = (
        await batches.status(current_month=month_of(clock()), problem_limit=5, company_ids=MINE)
    ).problems
    assert failed.state == "failed" and failed.last_error is not None
    assert "401" in failed.last_error and "STRIPE_SECRET_KEY" in failed.last_error
    assert any(
        r.levelno == logging.ERROR
        and "API key" in r.getMessage()
        and failed.identifier in r.getMessage()
        for r in caplog.records
    )
    await telemetry.publish(report, now=clock(), late_grace_hours=1)
    assert counter("meterline_sync_key_refusals_total") == refusals_before + 1
    # a day later the batch is still failed, not unknown: nothing can have reached Stripe
    clock.set(clock() + SETTLE_WINDOW + timedelta(hours=4))
    # the key fixed: the rest leaves, and the operator re-drives the refused batch
    assert (await job(double, clock).run()).sent == 1
    assert await batches.redrive(failed.id, now=clock()) == 1
    assert (await job(double, clock).run()).sent == 1
    assert await states(company_id) == {"sent": 2}
    assert_double_matches(double, customer, await rollup_totals(company_id))


async def test_a_key_without_permission_is_refused_like_an_invalid_one(
    double: StripeDouble, clock: Clock, meters: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """403: a restricted key without the meter event permission. Stripe answers it before
    doing anything, as for 401."""
    company_id, _ = await paid_company(double)
    await record(company_id, EventType.EMAIL_SENT, 3, now=clock())

    def forbidden(authorization: str | None) -> None:
        raise StripeApiError(
            403,
            "The provided key 'rk_test_****0000' does not have the required permissions for "
            "this endpoint. Having the 'rak_billing_meter_event_write' permission would allow "
            "this request to continue.",
        )

    monkeypatch.setattr(double, "_authenticate", forbidden)
    report = await job(double, clock).run()
    assert (report.failed, report.key_refused, report.retrying) == (1, 1, 0)
    assert double.meter_events() == []
    [failed] = (
        await batches.status(current_month=month_of(clock()), problem_limit=5, company_ids=MINE)
    ).problems
    assert failed.last_error is not None and "403" in failed.last_error


async def test_a_key_refused_after_an_unanswered_attempt_retries_the_same_identifier(
    double: StripeDouble, clock: Clock, meters: None
) -> None:
    """The first attempt may have reached Stripe (its answer was lost): a new identifier could
    bill it twice, and the refusal says nothing about that attempt. The batch keeps its
    identifier and backs off, so the fixed key settles it exactly."""
    company_id, customer = await paid_company(double)
    await record(company_id, EventType.EMAIL_SENT, 4, now=clock())
    double.fail("drop", 1.0)  # recorded by Stripe, answer lost
    assert (await job(double, clock).run()).retrying == 1
    double.heal()
    clock.set(clock() + timedelta(minutes=31))
    rotated = SyncJob(client=rotated_key_client(double), clock=clock, company_ids=list(MINE))
    report = await rotated.run()
    assert (report.retrying, report.failed, report.unknown, report.key_refused) == (1, 0, 0, 1)
    assert await states(company_id) == {"sending": 1}
    clock.set(clock() + timedelta(minutes=31))
    assert (await job(double, clock).run()).sent == 1  # "already exists": delivered once
    assert double.meter_total(customer, "email_sent") == 4
    assert list(double.identifiers_seen.values()) == [1]


# --- last month first, and what missed its invoice (issue 12, case 11) ------------------------

DEC_1 = datetime(2026, 12, 1, tzinfo=UTC)
NOV_LAST_SECOND = datetime(2026, 11, 30, 23, 59, 59, tzinfo=UTC)


async def seed_events(
    company_id: uuid.UUID,
    event_type: EventType,
    occurred_at: datetime,
    quantity: int,
    state: str = "pending",
) -> None:
    """One event in a given sync state, written directly: these tests are about the sync, not
    about which events recording accepts."""
    await sql.execute(
        "INSERT INTO usage_events (id, company_id, event_type, quantity, occurred_at, month, "
        "sync_state) VALUES (gen_random_uuid(), $1, $2, $3, $4, $5, $6)",
        company_id,
        event_type.value,
        quantity,
        occurred_at,
        month_of(occurred_at),
        state,
    )


async def test_during_the_grace_last_months_usage_leaves_first(
    double: StripeDouble, clock: Clock, meters: None
) -> None:
    """A backlog (here: this month's batch due for a retry) must not go before last month's
    events, whose invoice Stripe finalises at the end of the grace."""
    clock.set(DEC_1 + timedelta(minutes=10))
    first, _ = await paid_company(double)
    await seed_events(first, EventType.SMS_SENT, DEC_1 + timedelta(minutes=5), 6)
    double.fail("500", 1.0)
    assert (await job(double, clock).run()).retrying == 1  # December's batch, backing off
    double.heal()
    second, _ = await paid_company(double)
    await seed_events(second, EventType.AI_QUERY, NOV_LAST_SECOND, 9)  # recorded in the grace
    clock.set(clock() + timedelta(minutes=1))
    report = await job(double, clock, concurrency=1).run()
    assert report.sent == 2
    assert [e["timestamp"] for e in double.meter_events()] == [
        int(NOV_LAST_SECOND.timestamp()),
        int((DEC_1 + timedelta(minutes=5)).timestamp()),
    ]


async def test_one_pair_claims_last_months_events_before_this_months(
    double: StripeDouble, clock: Clock, meters: None
) -> None:
    """Both months pending for one (company, event type): only one batch may be in flight, and
    it is November's, even while Stripe fails."""
    clock.set(DEC_1 + timedelta(minutes=20))
    company_id, _ = await paid_company(double)
    await seed_events(company_id, EventType.SMS_SENT, DEC_1 + timedelta(minutes=1), 2)
    await seed_events(company_id, EventType.SMS_SENT, NOV_LAST_SECOND, 3)
    double.fail("500", 1.0)
    await job(double, clock).run()
    rows = await sql.fetch("SELECT month FROM usage_batches WHERE company_id = $1", company_id)
    assert [r["month"] for r in rows] == [NOV_LAST_SECOND.date().replace(day=1)]


async def test_a_retry_of_last_months_batch_never_waits_past_the_grace(
    double: StripeDouble, clock: Clock, meters: None
) -> None:
    """Backoff grows to 30 minutes; at 00:50 that would skip the invoice of 01:00. A batch whose
    invoice is still open retries within half the time left; this month's keep their backoff."""
    clock.set(DEC_1 + timedelta(minutes=50))
    company_id, _ = await paid_company(double)
    await seed_events(company_id, EventType.SMS_SENT, NOV_LAST_SECOND, 4)
    await seed_events(company_id, EventType.AI_QUERY, DEC_1 + timedelta(minutes=2), 4)
    double.fail("500", 1.0)
    assert (await job(double, clock).run()).retrying == 2
    # both have been failing for a while: the next backoff is 15..30 minutes
    await sql.execute(
        "UPDATE usage_batches SET attempts = 11, lease_until = $2 WHERE company_id = $1",
        company_id,
        clock(),
    )
    assert (await job(double, clock).run()).retrying == 2
    rows = await sql.fetch(
        "SELECT month, attempts, lease_until FROM usage_batches WHERE company_id = $1", company_id
    )
    retries = {r["month"].month: r["lease_until"] for r in rows}
    assert all(r["attempts"] == 12 for r in rows)
    assert clock() < retries[11] <= clock() + timedelta(minutes=5)  # half of the 10 left
    assert retries[12] >= clock() + timedelta(minutes=15)


def late_totals(rows: list[batches.Unsent]) -> dict[tuple[str, str], tuple[int, int]]:
    """(month, event type) -> (events, units)."""
    totals: dict[tuple[str, str], tuple[int, int]] = {}
    for row in rows:
        key = (f"{row.month:%Y-%m}", row.event_type.value)
        events, units = totals.get(key, (0, 0))
        totals[key] = (events + row.events, units + row.units)
    return totals


async def seed_unsent_months(company_id: uuid.UUID) -> None:
    """November and October usage in every state, and some of December's."""
    for state, quantity in (("pending", 3), ("failed", 5), ("unknown", 2), ("sent", 100)):
        await seed_events(company_id, EventType.SMS_SENT, NOV_LAST_SECOND, quantity, state)
    await seed_events(company_id, EventType.AI_QUERY, NOV_LAST_SECOND, 7, "sending")
    await seed_events(
        company_id, EventType.AI_QUERY, datetime(2026, 10, 31, tzinfo=UTC), 11, "failed"
    )
    await seed_events(company_id, EventType.SMS_SENT, DEC_1 + timedelta(minutes=3), 40)


async def test_units_that_missed_their_invoice_are_counted_by_month_and_type(
    double: StripeDouble, clock: Clock
) -> None:
    company_id, _ = await paid_company(double)
    await seed_unsent_months(company_id)
    clock.set(DEC_1 + timedelta(minutes=30))  # November's invoice is still open
    status = await batches.status(current_month=month_of(clock()), company_ids=MINE)
    assert late_totals(status.missed_invoice(now=clock(), late_grace_hours=1)) == {
        ("2026-10", "ai_query"): (1, 11)
    }
    assert late_totals(status.before_invoice(now=clock(), late_grace_hours=1)) == {
        ("2026-11", "sms_sent"): (3, 10),
        ("2026-11", "ai_query"): (1, 7),
    }
    clock.set(DEC_1 + timedelta(hours=1))  # Stripe finalises November's invoice
    status = await batches.status(current_month=month_of(clock()), company_ids=MINE)
    assert late_totals(status.missed_invoice(now=clock(), late_grace_hours=1)) == {
        ("2026-10", "ai_query"): (1, 11),
        ("2026-11", "sms_sent"): (3, 10),
        ("2026-11", "ai_query"): (1, 7),
    }
    assert status.before_invoice(now=clock(), late_grace_hours=1) == []
    assert {r.state for r in status.missed_invoice(now=clock(), late_grace_hours=1)} == {
        "pending",
        "sending",
        "failed",
        "unknown",
    }


def sample(body: str, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(body):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    raise AssertionError(f"{name}{labels} is not in /metrics")


async def test_metrics_and_status_show_the_units_that_missed_their_invoice(
    double: StripeDouble, clock: Clock, database_url: str
) -> None:
    from meterline.app import create_app

    settings = base_settings(database_url=database_url, metrics_token="m")
    clock.set(DEC_1 + timedelta(hours=2))
    app = create_app(settings, clock=clock, manage_database=False)

    async def scrape() -> str:
        async with client_for(app) as http:
            return (await http.get("/metrics", headers={"Authorization": "Bearer m"})).text

    before = await scrape()  # other tests' leftovers count too: compare
    company_id, _ = await paid_company(double)
    await seed_unsent_months(company_id)
    after = await scrape()
    units = "meterline_sync_last_month_pending_units"
    assert (
        sample(after, units, event_type="sms_sent") - sample(before, units, event_type="sms_sent")
        == 10
    )
    assert (
        sample(after, units, event_type="ai_query") - sample(before, units, event_type="ai_query")
        == 18
    )
    assert sample(after, units, event_type="email_sent") == sample(
        before, units, event_type="email_sent"
    )
    events = "meterline_sync_last_month_pending_events"
    assert sample(after, events) - sample(before, events) == 5
    env = {"DATABASE_URL": database_url}
    shown = meterline("sync-usage", "--status", "--company", str(company_id), env=env, clock=clock)
    assert shown.returncode == 0, shown.stderr
    assert "ALERT: 28 units of closed months are not in Stripe" in shown.stdout
    assert "2026-10 ai_query: 11 units in 1 events (failed 1)" in shown.stdout
    assert "2026-11 sms_sent: 10 units in 3 events (failed 1, pending 1, unknown 1)" in shown.stdout
    # during the grace, last month's is still to send: said, but not an alert
    clock.set(DEC_1 + timedelta(minutes=40))
    shown = meterline("sync-usage", "--status", "--company", str(company_id), env=env, clock=clock)
    assert shown.returncode == 0, shown.stderr
    assert "ALERT: 11 units of closed months are not in Stripe" in shown.stdout
    assert "17 units of 2026-11 to send before Stripe finalises its invoice" in shown.stdout


async def test_a_run_reports_what_missed_the_invoice_and_what_it_sent_too_late(
    double: StripeDouble, clock: Clock, meters: None, caplog: pytest.LogCaptureFixture
) -> None:
    """Sending after the invoice closed does not bill it: the units leave the gauge but are
    counted (and logged) as sent too late, never dropped silently."""
    from meterline.jobs import telemetry

    company_id, _ = await paid_company(double)
    await seed_events(company_id, EventType.SMS_SENT, NOV_LAST_SECOND, 5, "failed")
    await seed_events(company_id, EventType.AI_QUERY, NOV_LAST_SECOND, 8)
    clock.set(DEC_1 + timedelta(hours=1, minutes=5))
    late_before = counter("meterline_sync_units_sent_late_total", event_type="ai_query")
    with caplog.at_level(logging.ERROR, logger="meterline.jobs.sync"):
        report = await job(double, clock).run()
    assert report.sent == 1
    assert report.as_dict()["last_month_pending_units"] == 5  # the failed batch's
    assert any("after its invoice" in r.getMessage() for r in caplog.records)
    await telemetry.publish(report, now=clock(), late_grace_hours=1)
    after = counter("meterline_sync_units_sent_late_total", event_type="ai_query")
    assert after == late_before + 8
