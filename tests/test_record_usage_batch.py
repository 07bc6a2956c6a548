"""recordUsageBatch end to end: one transaction, idempotency per event, the cap over the whole
batch, concurrency, and the rollup equal to the sum of the events afterwards."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from meterline.billing.catalog import EventType, Tier
from meterline.billing.dunning import Dunning
from meterline.billing.periods import month_of
from meterline.db import companies, sql
from meterline.db.usage import RECORD_EVENT_SQL
from meterline.services.usage import _fingerprint
from tests.conftest import Api, rollup_matches_events
from tests.plans import put_on_tier
from tests.test_record_usage import error_code

BATCH = """mutation($events: [RecordUsageInput!]!) { recordUsageBatch(events: $events) {
  __typename
  ... on UsageBatchRecorded {
    recorded duplicates
    items { index duplicate event { id eventType quantity occurredAt idempotencyKey syncState } }
  }
  ... on UsageLimitExceeded { eventType included used requested message }
  ... on PaymentRequired { graceEndedAt message }
} }"""

RECORD = """mutation($input: RecordUsageInput!) { recordUsage(input: $input) {
  __typename ... on UsageRecorded { duplicate event { id } }
} }"""


def invitation(key: str | None = None, quantity: int = 1, **fields: Any) -> dict[str, Any]:
    event: dict[str, Any] = {"eventType": "GUEST_INVITATION", "quantity": quantity, **fields}
    if key is not None:
        event["idempotencyKey"] = key
    return event


async def send(api: Api, events: list[dict[str, Any]], role: str = "service") -> dict[str, Any]:
    return await api.gql(BATCH, {"events": events}, role=role)


async def batch(api: Api, events: list[dict[str, Any]], role: str = "service") -> dict[str, Any]:
    body = await send(api, events, role)
    assert "errors" not in body, body
    result: dict[str, Any] = body["data"]["recordUsageBatch"]
    return result


async def stored(company_id: uuid.UUID) -> tuple[int, int]:
    """(events, their total quantity) stored for the company."""
    row = (
        await sql.fetch(
            "SELECT count(*) AS n, coalesce(sum(quantity), 0) AS q FROM usage_events "
            "WHERE company_id = $1",
            company_id,
        )
    )[0]
    return int(row["n"]), int(row["q"])


async def paid(api: Api, tier: Tier = Tier.STARTER) -> None:
    await companies.get_or_create(api.company_id, now=api.clock())
    await put_on_tier(api.company_id, tier, now=api.clock(), billed=True)


# --- the happy path -----------------------------------------------------------------------


async def test_a_batch_records_every_event_in_order(api: Api) -> None:
    await paid(api)
    events = [
        invitation("w1-guest-1", 2),
        {"eventType": "SMS_SENT", "quantity": 7, "idempotencyKey": "w1-sms"},
        invitation(None, 3, metadata={"wedding": "w1"}),
        {"eventType": "AI_QUERY"},
    ]
    result = await batch(api, events)
    assert result["__typename"] == "UsageBatchRecorded"
    assert (result["recorded"], result["duplicates"]) == (4, 0)
    items = result["items"]
    assert [i["index"] for i in items] == [0, 1, 2, 3]
    assert [(i["event"]["eventType"], i["event"]["quantity"]) for i in items] == [
        ("GUEST_INVITATION", 2),
        ("SMS_SENT", 7),
        ("GUEST_INVITATION", 3),
        ("AI_QUERY", 1),
    ]
    assert [i["event"]["idempotencyKey"] for i in items] == ["w1-guest-1", "w1-sms", None, None]
    assert not any(i["duplicate"] for i in items)
    assert len({i["event"]["id"] for i in items}) == 4
    usage = await api.data("{ currentUsage { eventType used } }")
    by_type = {m["eventType"]: m["used"] for m in usage["currentUsage"]}
    assert (by_type["GUEST_INVITATION"], by_type["SMS_SENT"], by_type["AI_QUERY"]) == (5, 7, 1)
    assert await stored(api.company_id) == (4, 13)
    assert await rollup_matches_events(api.company_id)


async def test_the_events_are_the_ones_the_audit_trail_shows(api: Api) -> None:
    await paid(api)
    result = await batch(api, [invitation(f"k{i}") for i in range(5)])
    page = await api.data("{ usageEvents(first: 10) { edges { node { id idempotencyKey } } } }")
    listed = {e["node"]["id"]: e["node"]["idempotencyKey"] for e in page["usageEvents"]["edges"]}
    assert listed == {i["event"]["id"]: i["event"]["idempotencyKey"] for i in result["items"]}


async def test_a_paying_companys_events_wait_for_the_sync(api: Api) -> None:
    await paid(api)
    await companies.set_stripe_ids(api.company_id, customer_id="cus_batch")
    result = await batch(api, [invitation("p1"), invitation("p2")])
    assert {i["event"]["syncState"] for i in result["items"]} == {"PENDING"}


async def test_a_batch_across_the_new_year_rolls_up_per_month(api: Api) -> None:
    """Late events of December (inside the grace hour) and January's, in one batch."""
    await paid(api)
    api.clock.set(datetime(2027, 1, 1, 0, 30, tzinfo=UTC))
    events = [
        invitation("dec-1", 2, occurredAt="2026-12-31T23:59:59.999Z"),
        invitation("jan-1", 5),
        invitation("dec-2", 1, occurredAt="2026-12-31T23:30:00Z"),
        {"eventType": "SMS_SENT", "quantity": 4, "occurredAt": "2026-12-31T12:00:00Z"},
    ]
    result = await batch(api, events)
    assert result["recorded"] == 4
    rows = await sql.fetch(
        "SELECT month, event_type, used FROM usage_rollups WHERE company_id = $1 ORDER BY 1, 2",
        api.company_id,
    )
    assert [(str(r["month"]), r["event_type"], r["used"]) for r in rows] == [
        ("2026-12-01", "guest_invitation", 3),
        ("2026-12-01", "sms_sent", 4),
        ("2027-01-01", "guest_invitation", 5),
    ]
    assert await rollup_matches_events(api.company_id)


# --- sizes and bad input: the whole batch is refused, nothing written ------------------------


async def test_an_empty_batch_is_bad_input(api: Api) -> None:
    assert error_code(await send(api, [])) == "BAD_USER_INPUT"


async def test_a_thousand_events_are_accepted_and_one_more_is_not(api: Api) -> None:
    await paid(api)
    too_many = await send(api, [invitation() for _ in range(1_001)])
    assert error_code(too_many) == "BAD_USER_INPUT"
    assert "1,001" in too_many["errors"][0]["message"]
    assert await stored(api.company_id) == (0, 0)
    result = await batch(api, [invitation(f"e{i}") for i in range(1_000)])
    assert result["recorded"] == 1_000
    assert await stored(api.company_id) == (1_000, 1_000)
    assert await rollup_matches_events(api.company_id)


async def test_a_thousand_events_with_large_metadata_fit_in_one_request(api: Api) -> None:
    """The body limit leaves room for the largest batch allowed (4 KB of metadata each)."""
    await paid(api)
    metadata = {"note": "x" * 4_000}
    result = await batch(api, [invitation(f"m{i}", metadata=metadata) for i in range(1_000)])
    assert result["recorded"] == 1_000


@pytest.mark.parametrize(
    "bad",
    [
        {"quantity": 0},
        {"metadata": [1, 2]},
        {"idempotencyKey": ""},
        {"occurredAt": "2030-01-01T00:00:00Z"},
        {"occurredAt": "2020-01-01T00:00:00Z"},
    ],
)
async def test_one_bad_event_refuses_the_batch_and_names_it(api: Api, bad: dict[str, Any]) -> None:
    await paid(api)
    events = [invitation(f"ok{i}") for i in range(9)]
    events.insert(7, {**invitation("bad"), **bad})
    body = await send(api, events)
    assert error_code(body) == "BAD_USER_INPUT"
    assert body["errors"][0]["message"].startswith("events[7]: ")
    assert await stored(api.company_id) == (0, 0)


async def test_a_role_that_may_not_record_gets_forbidden(api: Api) -> None:
    assert error_code(await send(api, [invitation()], role="staff")) == "FORBIDDEN"
    assert await stored(api.company_id) == (0, 0)


# --- idempotency: per event, inside a batch and across batches -------------------------------


async def test_a_retried_batch_is_all_duplicates_and_counted_once(api: Api) -> None:
    await paid(api)
    events = [invitation(f"r{i}", i + 1) for i in range(10)]
    first = await batch(api, events)
    again = await batch(api, events)
    assert (again["recorded"], again["duplicates"]) == (0, 10)
    assert all(i["duplicate"] for i in again["items"])
    assert [i["event"]["id"] for i in again["items"]] == [i["event"]["id"] for i in first["items"]]
    assert await stored(api.company_id) == (10, 55)
    assert await rollup_matches_events(api.company_id)


async def test_a_key_twice_in_one_batch_is_one_event(api: Api) -> None:
    await paid(api)
    result = await batch(api, [invitation("twice", 4), invitation("other"), invitation("twice", 4)])
    assert (result["recorded"], result["duplicates"]) == (2, 1)
    first, _, again = result["items"]
    assert (first["duplicate"], again["duplicate"]) == (False, True)
    assert again["event"]["id"] == first["event"]["id"]
    assert await stored(api.company_id) == (2, 5)


async def test_a_key_twice_in_one_batch_with_different_payloads_is_refused(api: Api) -> None:
    await paid(api)
    body = await send(api, [invitation("k", 1), invitation("x"), invitation("k", 2)])
    assert error_code(body) == "IDEMPOTENCY_KEY_REUSED"
    assert "events[2]" in body["errors"][0]["message"]
    assert await stored(api.company_id) == (0, 0)


async def test_a_partly_retried_batch_records_only_the_new_events(api: Api) -> None:
    await paid(api)
    await batch(api, [invitation("a"), invitation("b")])
    result = await batch(api, [invitation("b"), invitation("c"), invitation("a")])
    assert [i["duplicate"] for i in result["items"]] == [True, False, True]
    assert (result["recorded"], result["duplicates"]) == (1, 2)
    assert await stored(api.company_id) == (3, 3)


async def test_keys_are_shared_with_record_usage(api: Api) -> None:
    await paid(api)
    single = await api.data(RECORD, {"input": invitation("shared", 3)}, role="service")
    result = await batch(api, [invitation("shared", 3), invitation("new")])
    assert result["items"][0]["duplicate"] is True
    assert result["items"][0]["event"]["id"] == single["recordUsage"]["event"]["id"]
    again = await api.data(RECORD, {"input": invitation("new")}, role="service")
    assert again["recordUsage"]["duplicate"] is True
    assert again["recordUsage"]["event"]["id"] == result["items"][1]["event"]["id"]


async def test_a_stored_key_with_a_different_payload_refuses_the_batch(api: Api) -> None:
    await paid(api)
    await batch(api, [invitation("used", 1)])
    body = await send(api, [invitation("fresh"), invitation("used", 2)])
    assert error_code(body) == "IDEMPOTENCY_KEY_REUSED"
    assert await stored(api.company_id) == (1, 1)


async def test_a_retry_is_a_duplicate_even_after_the_company_was_restricted(api: Api) -> None:
    now = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
    api.clock.set(now)
    await paid(api)
    first = await batch(api, [invitation("r1"), invitation("r2")])
    await companies.set_dunning(
        api.company_id, Dunning(now - timedelta(days=20), now - timedelta(days=6))
    )
    again = await batch(api, [invitation("r1"), invitation("r2")])
    assert again["duplicates"] == 2
    assert again["items"][1]["event"]["id"] == first["items"][1]["event"]["id"]
    refused = await batch(api, [invitation("r1"), invitation("r3")])
    assert refused["__typename"] == "PaymentRequired"
    assert await stored(api.company_id) == (2, 2)


# --- the hard cap: over the whole batch --------------------------------------------------------


async def test_a_batch_filling_the_cap_exactly_is_recorded(api: Api) -> None:
    result = await batch(api, [invitation(f"c{i}", 5) for i in range(10)])  # free: 50
    assert result["recorded"] == 10
    refused = await batch(api, [invitation("one-more")])
    assert refused["__typename"] == "UsageLimitExceeded"


async def test_a_batch_passing_the_cap_is_refused_whole_and_says_by_how_much(api: Api) -> None:
    await batch(api, [invitation("before", 45)])
    events = [
        {"eventType": "EMAIL_SENT", "quantity": 3},  # within its own allowance
        invitation("x1", 4),
        invitation("x2", 3),
    ]
    refused = await batch(api, events)
    assert refused["__typename"] == "UsageLimitExceeded"
    assert (refused["eventType"], refused["included"], refused["used"], refused["requested"]) == (
        "GUEST_INVITATION",
        50,
        45,
        7,
    )
    assert "2 over" in refused["message"]
    assert await stored(api.company_id) == (1, 45)  # not even the emails
    assert await rollup_matches_events(api.company_id)


async def test_a_refused_batch_does_not_burn_its_keys(api: Api) -> None:
    refused = await batch(api, [invitation("k1", 30), invitation("k2", 30)])
    assert refused["__typename"] == "UsageLimitExceeded"
    await put_on_tier(api.company_id, Tier.STARTER, now=api.clock())
    result = await batch(api, [invitation("k1", 30), invitation("k2", 30)])
    assert (result["recorded"], result["duplicates"]) == (2, 0)


async def test_concurrent_batches_at_the_cap_never_pass_it(api: Api) -> None:
    """Twelve batches of 10 for room of 50 (free tier): exactly five are recorded."""
    await companies.get_or_create(api.company_id, now=api.clock())
    results = await asyncio.gather(
        *[batch(api, [invitation(f"b{b}-{i}") for i in range(10)]) for b in range(12)]
    )
    kinds = [r["__typename"] for r in results]
    assert kinds.count("UsageBatchRecorded") == 5
    assert kinds.count("UsageLimitExceeded") == 7
    assert await stored(api.company_id) == (50, 50)
    assert await rollup_matches_events(api.company_id)


async def test_copies_of_the_batch_that_fills_the_cap_are_duplicates_not_refusals(
    api: Api,
) -> None:
    await companies.get_or_create(api.company_id, now=api.clock())
    events = [invitation(f"fill-{i}", 5) for i in range(10)]  # exactly the free tier's 50
    results = await asyncio.gather(*[batch(api, events) for _ in range(8)])
    assert [r["__typename"] for r in results] == ["UsageBatchRecorded"] * 8
    assert sorted(r["recorded"] for r in results) == [0] * 7 + [10]
    assert await stored(api.company_id) == (10, 50)


async def test_batches_and_single_recordings_share_the_cap(api: Api) -> None:
    await companies.get_or_create(api.company_id, now=api.clock())
    singles = [api.gql(RECORD, {"input": invitation(f"s{i}")}, role="service") for i in range(20)]
    batches = [batch(api, [invitation(f"b{b}-{i}") for i in range(5)]) for b in range(8)]
    await asyncio.gather(*singles, *batches)
    assert await stored(api.company_id) == (50, 50)
    assert await rollup_matches_events(api.company_id)


# --- concurrency: duplicates racing, overlapping keys -----------------------------------------


async def test_the_same_batch_sent_ten_times_at_once_records_it_once(api: Api) -> None:
    await paid(api)
    events = [invitation(f"same-{i}", 2) for i in range(50)]
    results = await asyncio.gather(*[batch(api, events) for _ in range(10)])
    assert sorted(r["recorded"] for r in results) == [0] * 9 + [50]
    ids = {tuple(i["event"]["id"] for i in r["items"]) for r in results}
    assert len(ids) == 1  # every answer names the same events
    assert await stored(api.company_id) == (50, 100)
    assert await rollup_matches_events(api.company_id)


async def test_batches_sharing_keys_in_opposite_orders_record_each_key_once(api: Api) -> None:
    # Keys are claimed in sorted order whatever the batch's order, so such batches wait for
    # each other rather than deadlock (PostgreSQL would abort one after deadlock_timeout).
    await paid(api)
    keys = [f"shared-{i:03}" for i in range(300)]
    forward = [invitation(k) for k in keys]
    backward = [invitation(k) for k in reversed(keys)]
    results = await asyncio.gather(*[batch(api, e) for e in (forward, backward) * 4])
    assert sum(r["recorded"] for r in results) == len(keys)
    assert all(r["recorded"] + r["duplicates"] == len(keys) for r in results)
    assert await stored(api.company_id) == (len(keys), len(keys))
    assert await rollup_matches_events(api.company_id)


async def test_many_companies_batching_at_once_keep_their_rollups_exact(api: Api) -> None:
    tenants = [api.new_company() for _ in range(6)]
    for tenant in tenants:
        await paid(tenant)
    work = [
        batch(tenant, [invitation(f"{n}-{i}", i % 7 + 1) for i in range(100)])
        for tenant in tenants
        for n in range(3)
    ]
    await asyncio.gather(*work)
    expected = 3 * sum(i % 7 + 1 for i in range(100))
    for tenant in tenants:
        assert await stored(tenant.company_id) == (300, expected)
        assert await rollup_matches_events(tenant.company_id)


async def lock_waiters(connection: asyncpg.Connection, count: int) -> None:
    """Until `count` backends of this database wait on a lock (or fail after 10 s)."""
    deadline = asyncio.get_running_loop().time() + 10
    while (
        await connection.fetchval(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        < count
    ):
        assert asyncio.get_running_loop().time() < deadline, f"fewer than {count} lock waits"
        await asyncio.sleep(0.005)  # polling a real condition, not standing in for one


async def backend_waits(connection: asyncpg.Connection, pid: int) -> None:
    """Until the backend `pid` waits on a lock (or fail after 10 s): precise where counting
    the database's waiters is not (another test's session may be waiting too)."""
    deadline = asyncio.get_running_loop().time() + 10
    query = "SELECT wait_event_type FROM pg_stat_activity WHERE pid = $1"
    while await connection.fetchval(query, pid) != "Lock":
        assert asyncio.get_running_loop().time() < deadline, f"backend {pid} never waited"
        await asyncio.sleep(0.005)  # polling a real condition, not standing in for one


async def test_keys_stored_by_others_while_a_batch_waits_never_fail_it(
    api: Api, database_url: str
) -> None:
    """Recordings of the batch's own keys commit one after another while the batch queues on
    their rollup: each time the batch finds one more key taken and runs again, as often as it
    takes, and then answers those events as duplicates."""
    api.clock.set(api.clock())  # one moment: the batch and the holders share a month's rollup
    await paid(api)
    keys = [f"raced-{n}" for n in range(6)]
    watcher = await asyncpg.connect(database_url)
    holders: list[asyncpg.Connection] = []

    async def connected() -> asyncpg.Connection:
        connection = await asyncpg.connect(database_url)
        holders.append(connection)
        return connection

    async def holding(key: str, connection: asyncpg.Connection) -> asyncpg.Connection:
        """A recordUsage of `key` whose transaction stays open (it holds the rollup row)."""
        await connection.execute("BEGIN")
        now = api.clock()
        company = await companies.get(api.company_id)
        assert company is not None
        await connection.fetchrow(
            RECORD_EVENT_SQL,
            api.company_id,
            month_of(now),
            EventType.GUEST_INVITATION.value,
            1,
            uuid.uuid4(),
            now,
            key,
            None,
            "pending",
            _fingerprint(EventType.GUEST_INVITATION, 1, None),
            None,
            company.plan_seq,
            Tier.STARTER.value,
            1,
            500,
            Decimal("0.10"),
            None,
        )
        return connection

    try:
        holder = await holding(keys[0], await connected())
        sent = asyncio.ensure_future(send(api, [invitation(k) for k in keys] + [invitation("new")]))
        await lock_waiters(watcher, 1)  # the batch queues on the rollup
        for key in keys[1:]:
            connection = await connected()
            next_holder = asyncio.ensure_future(holding(key, connection))
            # The next holder has stored its key and queues on the rollup: whoever gets the row
            # next, the batch cannot store that key any more.
            await backend_waits(watcher, connection.get_server_pid())
            await holder.execute("COMMIT")  # the batch (or the next holder) gets the row
            holder = await next_holder
            await lock_waiters(watcher, 1)  # the batch queues again
        await holder.execute("COMMIT")
        body = await sent
    finally:
        for connection in [watcher, *holders]:
            await connection.close()
    assert "errors" not in body, body
    result = body["data"]["recordUsageBatch"]
    assert [i["duplicate"] for i in result["items"]] == [True] * len(keys) + [False]
    assert await stored(api.company_id) == (len(keys) + 1, len(keys) + 1)
    assert await rollup_matches_events(api.company_id)
