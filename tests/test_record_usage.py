"""recordUsage end to end: semantics, idempotency, hard cap, concurrency, time windows."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from meterline.billing.catalog import EventType, Tier
from meterline.billing.dunning import Dunning
from meterline.db import companies, sql
from tests.conftest import Api, rollup_matches_events
from tests.plans import put_on_tier

RECORD = """mutation($input: RecordUsageInput!) { recordUsage(input: $input) {
  __typename
  ... on UsageRecorded {
    duplicate
    event { id eventType quantity occurredAt idempotencyKey metadata syncState }
    usage { eventType used included remaining exceeded overageQuantity
            overageCost { amount currency } unitPrice { amount } percentUsed }
  }
  ... on UsageLimitExceeded { eventType included used requested message }
  ... on PaymentRequired { graceEndedAt message }
} }"""

CURRENT = "{ currentUsage { eventType used } }"


async def record(api: Api, role: str = "company_admin", **fields: Any) -> dict[str, Any]:
    body = await api.gql(RECORD, {"input": {"eventType": "GUEST_INVITATION", **fields}}, role=role)
    return body


async def recorded(api: Api, **fields: Any) -> dict[str, Any]:
    body = await record(api, **fields)
    assert "errors" not in body, body
    result: dict[str, Any] = body["data"]["recordUsage"]
    return result


def error_code(body: dict[str, Any]) -> str:
    assert body.get("errors"), body
    code: str = body["errors"][0]["extensions"]["code"]
    return code


async def used(api: Api, event_type: str = "GUEST_INVITATION") -> int:
    data = await api.data(CURRENT)
    return next(m["used"] for m in data["currentUsage"] if m["eventType"] == event_type)


NOV_1 = datetime(2026, 11, 1, tzinfo=UTC)


# --- the happy path -----------------------------------------------------------------------


async def test_record_returns_event_and_priced_usage(api: Api) -> None:
    await companies.get_or_create(api.company_id, now=api.clock())
    await put_on_tier(api.company_id, Tier.STARTER, now=api.clock())
    result = await recorded(
        api, eventType="SMS_SENT", quantity=1003, idempotencyKey="k1", metadata={"wedding": "w-1"}
    )
    assert result["__typename"] == "UsageRecorded"
    assert result["duplicate"] is False
    event = result["event"]
    assert event["eventType"] == "SMS_SENT"
    assert event["quantity"] == 1003
    assert event["idempotencyKey"] == "k1"
    assert event["metadata"] == {"wedding": "w-1"}
    assert event["syncState"] == "LOCAL_ONLY"  # no Stripe customer yet
    # starter includes 1000 SMS; 3 over at 0.05 = 0.15
    assert result["usage"] == {
        "eventType": "SMS_SENT",
        "used": 1003,
        "included": 1000,
        "remaining": 0,
        "exceeded": True,
        "overageQuantity": 3,
        "overageCost": {"amount": "0.15", "currency": "usd"},
        "unitPrice": {"amount": "0.05"},
        "percentUsed": 100.3,
    }
    assert await rollup_matches_events(api.company_id)


async def test_first_request_creates_the_company_on_free(api: Api) -> None:
    assert await companies.get(api.company_id) is None
    await recorded(api, quantity=2)
    company = await companies.get(api.company_id)
    assert company is not None and company.tier is Tier.FREE


async def test_paid_company_with_stripe_customer_records_pending(api: Api) -> None:
    await companies.get_or_create(api.company_id, now=api.clock())
    await companies.set_stripe_ids(
        api.company_id, customer_id=f"cus_{api.company_id.hex[:10]}", subscription_id=None
    )
    result = await recorded(api, eventType="EMAIL_SENT")
    # A free company's usage stays here even with a customer (e.g. after a cancellation): its
    # customer has no metered prices, and a later subscription sends that month at its start.
    assert result["event"]["syncState"] == "LOCAL_ONLY"
    await put_on_tier(api.company_id, Tier.STARTER, now=api.clock(), billed=True)
    result = await recorded(api)
    assert result["event"]["syncState"] == "PENDING"


async def test_service_token_records(api: Api) -> None:
    result = await recorded(api, quantity=4)
    assert result["usage"]["used"] == 4
    body = await record(api, role="service", quantity=1)
    assert body["data"]["recordUsage"]["usage"]["used"] == 5


# --- validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        {"quantity": 0},
        {"quantity": -1},
        {"quantity": 100_001},
        {"metadata": ["not", "an", "object"]},
        {"metadata": "text"},
        {"metadata": {"blob": "x" * 4100}},
        {"idempotencyKey": ""},
        {"idempotencyKey": "k" * 256},
        {"occurredAt": "2026-11-10T10:00:00"},  # no offset: its zone would be a guess
    ],
)
async def test_bad_input_is_refused_and_nothing_written(api: Api, fields: dict[str, Any]) -> None:
    api.clock.set(datetime(2026, 11, 20, 12, 0, tzinfo=UTC))
    body = await record(api, **fields)
    assert error_code(body) == "BAD_USER_INPUT"
    assert body["data"] is None
    assert await used(api) == 0
    assert await rollup_matches_events(api.company_id)


async def test_quantity_bounds_are_inclusive(api: Api) -> None:
    await companies.get_or_create(api.company_id, now=api.clock())
    await put_on_tier(api.company_id, Tier.ENTERPRISE, now=api.clock())
    assert (await recorded(api, quantity=1))["usage"]["used"] == 1
    assert (await recorded(api, quantity=100_000))["usage"]["used"] == 100_001


async def test_metadata_of_exactly_4_kb_is_accepted(api: Api) -> None:
    # {"b":"..."} is 8 bytes of syntax around the value
    result = await recorded(api, metadata={"b": "x" * (4096 - 8)})
    assert len(result["event"]["metadata"]["b"]) == 4088


async def test_unknown_event_type_is_a_user_error(api: Api) -> None:
    body = await api.gql(RECORD, {"input": {"eventType": "FAX_SENT"}})
    assert error_code(body) == "BAD_USER_INPUT"


# --- time -----------------------------------------------------------------------------------


async def test_occurred_at_in_the_future_is_refused_beyond_clock_skew(api: Api) -> None:
    now = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
    api.clock.set(now)
    body = await record(api, occurredAt=(now + timedelta(minutes=1)).isoformat())
    assert error_code(body) == "BAD_USER_INPUT"
    # a few seconds ahead is a skewed clock: floored to now
    result = await recorded(api, occurredAt=(now + timedelta(seconds=3)).isoformat())
    assert datetime.fromisoformat(result["event"]["occurredAt"]) == now


async def test_event_on_the_last_tenth_of_a_second_counts_in_its_month(api: Api) -> None:
    api.clock.set(datetime(2026, 12, 1, 0, 30, tzinfo=UTC))  # inside the grace hour
    await recorded(api, occurredAt="2026-11-30T23:59:59.9Z", quantity=7)
    await recorded(api, occurredAt="2026-12-01T00:00:00Z", quantity=2)
    q = (
        '{ a: monthlySummary(month: "2026-11") { meters { eventType used } } '
        'b: monthlySummary(month: "2026-12") { meters { eventType used } } }'
    )
    data = await api.data(q)
    nov = {m["eventType"]: m["used"] for m in data["a"]["meters"]}
    dec = {m["eventType"]: m["used"] for m in data["b"]["meters"]}
    assert nov["GUEST_INVITATION"] == 7
    assert dec["GUEST_INVITATION"] == 2


async def test_offset_is_converted_to_utc_before_choosing_the_month(api: Api) -> None:
    api.clock.set(datetime(2026, 12, 1, 0, 20, tzinfo=UTC))
    # 00:10 on Dec 1 at +02:00 is 22:10 on Nov 30 UTC
    await recorded(api, occurredAt="2026-12-01T00:10:00+02:00", quantity=5)
    data = await api.data('{ monthlySummary(month: "2026-11") { meters { eventType used } } }')
    assert {m["eventType"]: m["used"] for m in data["monthlySummary"]["meters"]}[
        "GUEST_INVITATION"
    ] == 5


async def test_session_time_zone_changes_nothing(api: Api) -> None:
    """The month comes from billing/, never from the database session's zone: record through
    the service on a connection whose session runs at UTC+14 (already December 1st there)."""
    from meterline.db.engine import DB
    from meterline.services import usage as usage_service

    now = datetime(2026, 12, 1, 0, 20, tzinfo=UTC)  # 14:20 on Dec 1 at UTC+14
    async with DB.transaction():
        await sql.execute("SET LOCAL TIME ZONE 'Pacific/Kiritimati'")
        zone = await sql.fetchrow("SELECT current_setting('TimeZone') AS tz")
        assert zone is not None and zone["tz"] == "Pacific/Kiritimati"
        outcome = await usage_service.record_usage(
            api.company_id,
            usage_service.RecordRequest(
                event_type=EventType.GUEST_INVITATION,
                quantity=3,
                occurred_at=datetime(2026, 11, 30, 23, 30, tzinfo=UTC),
            ),
            now=now,
            late_grace_hours=1,
        )
    assert isinstance(outcome, usage_service.Recorded)
    assert outcome.event.month.isoformat() == "2026-11-01"
    api.clock.set(now)
    data = await api.data('{ monthlySummary(month: "2026-11") { meters { eventType used } } }')
    assert data["monthlySummary"]["meters"][0] == {"eventType": "GUEST_INVITATION", "used": 3}


async def test_late_usage_grace_window(api: Api) -> None:
    """Last month's events are accepted during the first grace hour of a month less the margin
    the sync needs (LATE_USAGE_MARGIN_MINUTES, 15 by default), then refused."""
    assert api.settings.late_usage_margin_minutes == 15
    api.clock.set(datetime(2026, 12, 1, 0, 44, 59, tzinfo=UTC))
    await recorded(api, occurredAt="2026-11-15T10:00:00Z")
    for moment in (datetime(2026, 12, 1, 0, 45, tzinfo=UTC), datetime(2026, 12, 1, 1, tzinfo=UTC)):
        api.clock.set(moment)
        body = await record(api, occurredAt="2026-11-30T23:59:59Z")
        assert error_code(body) == "BAD_USER_INPUT"
        assert "closed period" in body["errors"][0]["message"]
    # two months back is always closed, even inside the grace hour
    api.clock.set(datetime(2026, 12, 1, 0, 10, tzinfo=UTC))
    body = await record(api, occurredAt="2026-10-31T23:59:59Z")
    assert error_code(body) == "BAD_USER_INPUT"
    # and the current month is always open
    result = await recorded(api, occurredAt="2026-12-01T00:00:00Z")
    assert result["__typename"] == "UsageRecorded"


async def test_late_usage_grace_across_the_new_year(api: Api) -> None:
    api.clock.set(datetime(2027, 1, 1, 0, 5, tzinfo=UTC))
    await recorded(api, occurredAt="2026-12-31T23:59:59.999Z", quantity=4)
    data = await api.data('{ monthlySummary(month: "2026-12") { month meters { used } } }')
    assert data["monthlySummary"]["month"] == "2026-12-01"
    assert data["monthlySummary"]["meters"][0]["used"] == 4


# --- idempotency ----------------------------------------------------------------------------


async def test_same_key_same_payload_is_a_duplicate(api: Api) -> None:
    first = await recorded(api, quantity=3, idempotencyKey="send-1", metadata={"a": 1, "b": 2})
    again = await recorded(api, quantity=3, idempotencyKey="send-1", metadata={"b": 2, "a": 1})
    assert again["duplicate"] is True
    assert again["event"] == first["event"]
    assert again["usage"]["used"] == 3
    assert await used(api) == 3
    assert await rollup_matches_events(api.company_id)


@pytest.mark.parametrize(
    "change",
    [
        {"quantity": 4},
        {"eventType": "EMAIL_SENT"},
        {"metadata": {"a": 2}},
        {"metadata": None},
        {"occurredAt": "2026-11-20T11:00:00Z"},
    ],
)
async def test_same_key_different_payload_is_refused(api: Api, change: dict[str, Any]) -> None:
    api.clock.set(datetime(2026, 11, 20, 12, 0, tzinfo=UTC))
    base = {
        "quantity": 3,
        "idempotencyKey": "send-1",
        "metadata": {"a": 1},
        "occurredAt": "2026-11-20T10:00:00Z",
    }
    await recorded(api, **base)
    body = await record(api, **{**base, **change})
    assert error_code(body) == "IDEMPOTENCY_KEY_REUSED"
    assert await used(api) == 3
    assert await used(api, "EMAIL_SENT") == 0


async def test_occurred_at_is_compared_only_when_given(api: Api) -> None:
    api.clock.set(datetime(2026, 11, 20, 12, 0, tzinfo=UTC))
    await recorded(api, quantity=2, idempotencyKey="k", occurredAt="2026-11-20T10:00:00Z")
    again = await recorded(api, quantity=2, idempotencyKey="k")  # retry without occurredAt
    assert again["duplicate"] is True
    # Defaulted occurredAt (now) on the first call: a retry later without it is still the same
    api.clock.set(datetime(2026, 11, 20, 12, 5, tzinfo=UTC))
    await recorded(api, quantity=1, idempotencyKey="k2")
    api.clock.set(datetime(2026, 11, 20, 12, 9, tzinfo=UTC))
    assert (await recorded(api, quantity=1, idempotencyKey="k2"))["duplicate"] is True


async def test_refused_event_does_not_burn_its_key(api: Api) -> None:
    """A hard-cap refusal writes nothing, so the same key can record after an upgrade."""
    body = await record(api, eventType="SMS_SENT", quantity=1, idempotencyKey="sms-1")
    assert body["data"]["recordUsage"]["__typename"] == "UsageLimitExceeded"
    await put_on_tier(api.company_id, Tier.STARTER, now=api.clock())
    result = await recorded(api, eventType="SMS_SENT", quantity=1, idempotencyKey="sms-1")
    assert result["duplicate"] is False


async def test_twenty_concurrent_calls_with_one_key_record_one_event(api: Api) -> None:
    await companies.get_or_create(api.company_id, now=api.clock())
    results = await asyncio.gather(
        *[recorded(api, quantity=5, idempotencyKey="burst") for _ in range(20)]
    )
    assert sum(1 for r in results if r["duplicate"] is False) == 1
    assert sum(1 for r in results if r["duplicate"] is True) == 19
    assert len({r["event"]["id"] for r in results}) == 1
    assert await used(api) == 5
    count = await sql.fetch(
        "SELECT count(*) AS n FROM usage_events WHERE company_id = $1", api.company_id
    )
    assert count[0]["n"] == 1
    assert await rollup_matches_events(api.company_id)


# --- hard cap and dunning -------------------------------------------------------------------


async def test_free_tier_cap_boundary(api: Api) -> None:
    assert (await recorded(api, quantity=49))["usage"]["remaining"] == 1
    at_limit = await recorded(api, quantity=1)
    assert at_limit["usage"] == {**at_limit["usage"], "used": 50, "remaining": 0, "exceeded": False}
    refused = await recorded(api, quantity=1)
    assert refused == {
        "__typename": "UsageLimitExceeded",
        "eventType": "GUEST_INVITATION",
        "included": 50,
        "used": 50,
        "requested": 1,
        "message": refused["message"],
    }
    assert "50" in refused["message"]
    assert await used(api) == 50


async def test_free_tier_refuses_what_it_does_not_include(api: Api) -> None:
    refused = await recorded(api, eventType="AI_QUERY", quantity=1)
    assert refused["__typename"] == "UsageLimitExceeded"
    assert (refused["included"], refused["used"], refused["requested"]) == (0, 0, 1)
    assert await used(api, "AI_QUERY") == 0


async def test_a_request_larger_than_the_room_left_is_refused_whole(api: Api) -> None:
    await recorded(api, quantity=45)
    refused = await recorded(api, quantity=6)
    assert refused["__typename"] == "UsageLimitExceeded"
    assert (refused["used"], refused["requested"]) == (45, 6)
    assert (await recorded(api, quantity=5))["usage"]["used"] == 50


async def test_paid_tiers_are_never_blocked_for_volume(api: Api) -> None:
    await companies.get_or_create(api.company_id, now=api.clock())
    await put_on_tier(api.company_id, Tier.STARTER, now=api.clock())
    result = await recorded(api, quantity=100_000)
    assert result["usage"]["overageQuantity"] == 100_000 - 500
    assert result["usage"]["overageCost"]["amount"] == "9950.00"


async def test_fifty_concurrent_calls_with_room_for_ten(api: Api) -> None:
    await recorded(api, quantity=40)
    results = await asyncio.gather(*[recorded(api, quantity=1) for _ in range(50)])
    kinds = [r["__typename"] for r in results]
    assert kinds.count("UsageRecorded") == 10
    assert kinds.count("UsageLimitExceeded") == 40
    assert await used(api) == 50
    assert await rollup_matches_events(api.company_id)


async def test_a_retry_of_the_event_that_filled_the_cap_is_a_duplicate(api: Api) -> None:
    first = await recorded(api, quantity=50, idempotencyKey="fill")
    again = await recorded(api, quantity=50, idempotencyKey="fill")
    assert again["__typename"] == "UsageRecorded" and again["duplicate"] is True
    assert again["event"]["id"] == first["event"]["id"]


async def test_concurrent_retries_of_the_event_that_fills_the_cap_record_it_once(api: Api) -> None:
    await recorded(api, quantity=40)
    results = await asyncio.gather(
        *[recorded(api, quantity=10, idempotencyKey="last-ten") for _ in range(20)]
    )
    assert [r["__typename"] for r in results] == ["UsageRecorded"] * 20
    assert sum(1 for r in results if r["duplicate"] is False) == 1
    assert await used(api) == 50
    assert await rollup_matches_events(api.company_id)


async def test_restricted_company_gets_payment_required_and_can_still_read(api: Api) -> None:
    now = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
    api.clock.set(now)
    await companies.get_or_create(api.company_id, now=api.clock())
    await put_on_tier(api.company_id, Tier.STARTER, now=api.clock())
    failure = now - timedelta(days=15)
    grace_end = failure + timedelta(days=14)
    await companies.set_dunning(api.company_id, Dunning(failure, grace_end))
    refused = await recorded(api, quantity=1)
    assert refused["__typename"] == "PaymentRequired"
    assert datetime.fromisoformat(refused["graceEndedAt"]) == grace_end
    assert await used(api) == 0
    limits = await api.data("{ usageLimits { billingStatus graceEndsAt } }")
    assert limits["usageLimits"]["billingStatus"] == "RESTRICTED"
    # still past due (inside the grace): recording works
    api.clock.set(grace_end - timedelta(seconds=1))
    assert (await recorded(api, quantity=1))["__typename"] == "UsageRecorded"
    limits = await api.data("{ usageLimits { billingStatus } }")
    assert limits["usageLimits"]["billingStatus"] == "PAST_DUE"


# --- retries are answered from their key, whatever changed since ------------------------------


async def test_retry_of_a_skewed_occurred_at_is_a_duplicate(api: Api) -> None:
    now = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
    api.clock.set(now)
    ahead = (now + timedelta(seconds=3)).isoformat()
    first = await recorded(api, idempotencyKey="skew", occurredAt=ahead)
    api.clock.set(now + timedelta(seconds=30))
    again = await recorded(api, idempotencyKey="skew", occurredAt=ahead)
    assert again["duplicate"] is True
    assert again["event"]["id"] == first["event"]["id"]


async def test_retry_after_the_period_closed_is_a_duplicate_not_a_refusal(api: Api) -> None:
    api.clock.set(datetime(2026, 11, 30, 23, 59, tzinfo=UTC))
    first = await recorded(api, idempotencyKey="late", occurredAt="2026-11-30T23:58:00Z")
    api.clock.set(datetime(2026, 12, 1, 1, 0, 1, tzinfo=UTC))  # November is closed now
    again = await recorded(api, idempotencyKey="late", occurredAt="2026-11-30T23:58:00Z")
    assert again["duplicate"] is True
    assert again["event"]["id"] == first["event"]["id"]
    assert again["usage"]["used"] == 1


async def test_retry_after_the_company_was_restricted_is_a_duplicate(api: Api) -> None:
    now = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
    api.clock.set(now)
    first = await recorded(api, idempotencyKey="r1", quantity=2)
    await companies.set_dunning(
        api.company_id, Dunning(now - timedelta(days=20), now - timedelta(days=6))
    )
    again = await recorded(api, idempotencyKey="r1", quantity=2)
    assert again["duplicate"] is True and again["event"]["id"] == first["event"]["id"]
    assert (await recorded(api, idempotencyKey="r2"))["__typename"] == "PaymentRequired"


async def test_metadata_true_and_1_are_different_payloads(api: Api) -> None:
    await recorded(api, idempotencyKey="m", metadata={"a": True})
    body = await record(api, idempotencyKey="m", metadata={"a": 1})
    assert error_code(body) == "IDEMPOTENCY_KEY_REUSED"


# --- inputs the database cannot hold are user errors, never a 500 -------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        {"metadata": {"note": "a\u0000b"}},
        {"metadata": {"a\u0000": 1}},
        {"metadata": {"list": ["ok", "\u0000"]}},
        {"idempotencyKey": "key\u0000"},
        {"occurredAt": "0001-01-01T00:00:00+01:00"},
        {"occurredAt": "9999-12-31T23:00:00-05:00"},
    ],
)
async def test_values_postgres_cannot_store_are_bad_input(api: Api, fields: dict[str, Any]) -> None:
    body = await record(api, **fields)
    assert error_code(body) == "BAD_USER_INPUT"
    assert await used(api) == 0


async def test_non_finite_numbers_in_metadata_are_bad_input(api: Api) -> None:
    mutation = (
        "mutation { recordUsage(input: {eventType: GUEST_INVITATION, metadata: {a: 1e400}}) "
        "{ __typename } }"
    )
    body = await api.gql(mutation)
    assert error_code(body) == "BAD_USER_INPUT"
    assert await used(api) == 0


async def test_a_bad_literal_gets_the_code_of_a_bad_variable(api: Api) -> None:
    inline = await api.gql("mutation { recordUsage(input: {eventType: FAX}) { __typename } }")
    assert error_code(inline) == "BAD_USER_INPUT"
    inline = await api.gql(
        'mutation { recordUsage(input: {eventType: SMS_SENT, occurredAt: "yesterday"}) '
        "{ __typename } }"
    )
    assert error_code(inline) == "BAD_USER_INPUT"


# --- a month keeps the allowance it started with ----------------------------------------------


async def test_a_past_month_is_not_repriced_by_a_later_tier(api: Api) -> None:
    await companies.get_or_create(api.company_id, now=api.clock())
    await put_on_tier(api.company_id, Tier.STARTER, now=api.clock())
    api.clock.set(datetime(2026, 10, 20, 12, 0, tzinfo=UTC))
    await recorded(api, quantity=600)  # starter includes 500: 100 x 0.10 = 10.00
    api.clock.set(datetime(2026, 11, 10, 12, 0, tzinfo=UTC))
    query = '{ monthlySummary(month: "2026-10") { totalOverageCost { amount } } }'
    for tier in (Tier.PROFESSIONAL, Tier.FREE, Tier.ENTERPRISE):
        await put_on_tier(api.company_id, tier, now=api.clock(), since=NOV_1)
        data = await api.data(query)
        assert data["monthlySummary"]["totalOverageCost"]["amount"] == "10.00", tier


async def test_an_operators_price_edit_prices_new_months_only(api: Api) -> None:
    from meterline.db import tiers

    await companies.get_or_create(api.company_id, now=api.clock())
    await put_on_tier(api.company_id, Tier.PROFESSIONAL, now=api.clock())
    api.clock.set(datetime(2026, 11, 10, 12, 0, tzinfo=UTC))
    await recorded(api, eventType="AI_QUERY", quantity=210)  # 10 over at 0.20
    await sql.execute(
        "UPDATE tier_allowances SET unit_price = 0.30 "
        "WHERE tier = 'professional' AND event_type = 'ai_query'"
    )
    tiers.forget_cached_plans()
    try:
        await recorded(api, eventType="AI_QUERY", quantity=1)
        data = await api.data("{ monthlySummary { totalOverageCost { amount } } }")
        assert data["monthlySummary"]["totalOverageCost"]["amount"] == "2.20"  # 11 x 0.20
        api.clock.set(datetime(2026, 12, 10, 12, 0, tzinfo=UTC))
        await recorded(api, eventType="AI_QUERY", quantity=201)
        data = await api.data("{ monthlySummary { totalOverageCost { amount } } }")
        assert data["monthlySummary"]["totalOverageCost"]["amount"] == "0.30"  # 1 x 0.30
    finally:
        await sql.execute(
            "UPDATE tier_allowances SET unit_price = 0.20 "
            "WHERE tier = 'professional' AND event_type = 'ai_query'"
        )
        tiers.forget_cached_plans()


async def test_late_events_of_a_paid_month_are_not_capped_by_a_free_tier(api: Api) -> None:
    """Downgraded to free on the 1st: October was starter, its late events are not capped."""
    await companies.get_or_create(api.company_id, now=api.clock())
    await put_on_tier(api.company_id, Tier.STARTER, now=api.clock())
    api.clock.set(datetime(2026, 10, 31, 22, 0, tzinfo=UTC))
    await recorded(api, quantity=60, occurredAt="2026-10-31T21:00:00Z")
    await put_on_tier(api.company_id, Tier.FREE, now=api.clock(), since=NOV_1)
    api.clock.set(datetime(2026, 11, 1, 0, 20, tzinfo=UTC))
    late = await recorded(api, quantity=70, occurredAt="2026-10-31T23:50:00Z")
    assert late["__typename"] == "UsageRecorded"
    assert late["usage"]["used"] == 130 and late["usage"]["included"] == 500
    # November is free: capped at 50
    refused = await recorded(api, quantity=51)
    assert refused["__typename"] == "UsageLimitExceeded"
    assert await rollup_matches_events(api.company_id)
