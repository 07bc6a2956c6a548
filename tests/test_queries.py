"""The usage queries, checked against values computed by hand."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from meterline.billing.catalog import Tier
from meterline.db import companies
from tests.conftest import Api
from tests.plans import put_on_tier
from tests.test_record_usage import error_code, recorded

METER_FIELDS = """eventType used included remaining percentUsed exceeded overageQuantity
  unitPrice { amount currency } overageCost { amount currency }"""

NOV_20 = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


async def starter_company(api: Api) -> None:
    await companies.get_or_create(api.company_id, now=api.clock())
    await put_on_tier(api.company_id, Tier.STARTER, now=api.clock())


def by_type(meters: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {m["eventType"]: m for m in meters}


async def test_current_usage_lists_every_type_with_zeros(api: Api) -> None:
    data = await api.data(f"{{ currentUsage {{ {METER_FIELDS} }} }}")
    meters = by_type(data["currentUsage"])
    assert list(meters) == [
        "GUEST_INVITATION",
        "SMS_SENT",
        "AI_QUERY",
        "WHATSAPP_MESSAGE",
        "EMAIL_SENT",
    ]
    assert meters["GUEST_INVITATION"] == {
        "eventType": "GUEST_INVITATION",
        "used": 0,
        "included": 50,
        "remaining": 50,
        "percentUsed": 0.0,
        "exceeded": False,
        "overageQuantity": 0,
        "unitPrice": {"amount": "0.10", "currency": "usd"},
        "overageCost": {"amount": "0.00", "currency": "usd"},
    }
    # free includes no SMS: percent is undefined, not infinite
    assert meters["SMS_SENT"]["included"] == 0
    assert meters["SMS_SENT"]["percentUsed"] is None


async def test_current_usage_for_a_starter_company_over_two_allowances(api: Api) -> None:
    api.clock.set(NOV_20)
    await starter_company(api)
    await recorded(api, eventType="SMS_SENT", quantity=1007)
    await recorded(api, eventType="AI_QUERY", quantity=50)
    await recorded(api, eventType="AI_QUERY", quantity=3)
    await recorded(api, eventType="EMAIL_SENT", quantity=1250)
    meters = by_type((await api.data(f"{{ currentUsage {{ {METER_FIELDS} }} }}"))["currentUsage"])
    assert meters["SMS_SENT"]["overageQuantity"] == 7
    assert meters["SMS_SENT"]["overageCost"]["amount"] == "0.35"  # 7 x 0.05
    assert meters["AI_QUERY"]["used"] == 53
    assert meters["AI_QUERY"]["overageCost"]["amount"] == "0.60"  # 3 x 0.20
    assert meters["EMAIL_SENT"]["remaining"] == 3750
    assert meters["EMAIL_SENT"]["percentUsed"] == 25.0
    summary = await api.data("{ monthlySummary { month totalOverageCost { amount currency } } }")
    assert summary["monthlySummary"] == {
        "month": "2026-11-01",
        "totalOverageCost": {"amount": "0.95", "currency": "usd"},
    }


async def test_enterprise_is_unlimited(api: Api) -> None:
    await companies.get_or_create(api.company_id, now=api.clock())
    await put_on_tier(api.company_id, Tier.ENTERPRISE, now=api.clock())
    await recorded(api, eventType="AI_QUERY", quantity=99_999)
    m = by_type((await api.data(f"{{ currentUsage {{ {METER_FIELDS} }} }}"))["currentUsage"])
    assert m["AI_QUERY"] == {
        **m["AI_QUERY"],
        "used": 99_999,
        "included": None,
        "remaining": None,
        "percentUsed": None,
        "exceeded": False,
        "overageQuantity": 0,
    }
    assert m["AI_QUERY"]["overageCost"]["amount"] == "0.00"


async def test_usage_limits(api: Api) -> None:
    api.clock.set(NOV_20)
    await starter_company(api)
    data = await api.data(
        "{ usageLimits { tier scheduledTier exceeded billingStatus graceEndsAt gracePeriodDays "
        "meters { eventType used } } }"
    )
    limits = data["usageLimits"]
    assert limits["tier"] == "STARTER"
    assert limits["scheduledTier"] is None
    assert limits["exceeded"] is False
    assert limits["billingStatus"] == "OK"
    assert limits["graceEndsAt"] is None
    assert limits["gracePeriodDays"] == 14
    assert len(limits["meters"]) == 5
    await recorded(api, eventType="AI_QUERY", quantity=51)
    data = await api.data("{ usageLimits { exceeded } }")
    assert data["usageLimits"]["exceeded"] is True


async def test_free_usage_limits_never_exceeded_by_the_cap(api: Api) -> None:
    await recorded(api, quantity=50)
    data = await api.data("{ usageLimits { tier exceeded gracePeriodDays } }")
    assert data["usageLimits"] == {"tier": "FREE", "exceeded": False, "gracePeriodDays": 0}


@pytest.mark.parametrize("month", ["2026-13", "2026-1", "nov", "2026-11-01", "", "2026-00"])
async def test_monthly_summary_refuses_a_bad_month(api: Api, month: str) -> None:
    body = await api.gql("query($m: String) { monthlySummary(month: $m) { month } }", {"m": month})
    assert error_code(body) == "BAD_USER_INPUT"
    assert body["data"] == {"monthlySummary": None}


async def test_monthly_summary_of_a_future_month_is_refused(api: Api) -> None:
    api.clock.set(NOV_20)
    body = await api.gql('{ monthlySummary(month: "2026-12") { month } }')
    assert error_code(body) == "BAD_USER_INPUT"


async def test_monthly_summary_of_a_past_month_without_usage_is_zero(api: Api) -> None:
    api.clock.set(NOV_20)
    data = await api.data(
        '{ monthlySummary(month: "2024-02") { month totalOverageCost { amount } meters { used } } }'
    )
    assert data["monthlySummary"]["month"] == "2024-02-01"
    assert data["monthlySummary"]["totalOverageCost"]["amount"] == "0.00"
    assert {m["used"] for m in data["monthlySummary"]["meters"]} == {0}


async def test_usage_history_from_the_first_month_newest_first(api: Api) -> None:
    await starter_company(api)
    api.clock.set(datetime(2026, 10, 1, 0, 30, tzinfo=UTC))
    await recorded(api, eventType="SMS_SENT", quantity=1001, occurredAt="2026-09-30T23:00:00Z")
    api.clock.set(datetime(2027, 1, 10, tzinfo=UTC))
    await recorded(api, eventType="SMS_SENT", quantity=2)
    data = await api.data(
        "{ usageHistory(months: 24) { month totalOverageCost { amount } "
        "meters { eventType used } } }"
    )
    history = data["usageHistory"]
    months = [h["month"] for h in history]
    # the company row was created in this test run (today), but its first usage is Sep 2026
    assert months[:5] == ["2027-01-01", "2026-12-01", "2026-11-01", "2026-10-01", "2026-09-01"]
    assert months == sorted(months, reverse=True)
    sep = next(h for h in history if h["month"] == "2026-09-01")
    assert by_type(sep["meters"])["SMS_SENT"]["used"] == 1001
    assert sep["totalOverageCost"]["amount"] == "0.05"
    dec = next(h for h in history if h["month"] == "2026-12-01")
    assert {m["used"] for m in dec["meters"]} == {0}
    jan = history[0]
    assert by_type(jan["meters"])["SMS_SENT"]["used"] == 2
    data = await api.data("{ usageHistory(months: 2) { month } }")
    assert [h["month"] for h in data["usageHistory"]] == ["2027-01-01", "2026-12-01"]


async def test_usage_history_of_a_new_company_is_its_current_month(api: Api) -> None:
    data = await api.data("{ usageHistory { month } }")
    assert len(data["usageHistory"]) == 1


@pytest.mark.parametrize("months", [0, 25, -1])
async def test_usage_history_refuses_months_out_of_range(api: Api, months: int) -> None:
    body = await api.gql("query($n: Int) { usageHistory(months: $n) { month } }", {"n": months})
    assert error_code(body) == "BAD_USER_INPUT"


EVENTS = """query($first: Int, $after: String, $type: UsageEventType, $month: String) {
  usageEvents(first: $first, after: $after, eventType: $type, month: $month) {
    edges { cursor node { id eventType quantity occurredAt } }
    pageInfo { hasNextPage endCursor }
  } }"""


async def test_usage_events_pages_newest_first_without_gaps_or_repeats(api: Api) -> None:
    api.clock.set(NOV_20)
    await starter_company(api)
    for minute in range(7):
        await recorded(api, quantity=minute + 1, occurredAt=f"2026-11-20T10:{minute:02d}:00Z")
    await recorded(api, eventType="EMAIL_SENT", quantity=9, occurredAt="2026-11-20T09:00:00Z")
    seen: list[int] = []
    after = None
    while True:
        data = await api.data(EVENTS, {"first": 3, "after": after, "type": "GUEST_INVITATION"})
        page = data["usageEvents"]
        seen += [e["node"]["quantity"] for e in page["edges"]]
        if not page["pageInfo"]["hasNextPage"]:
            break
        after = page["pageInfo"]["endCursor"]
        assert after == page["edges"][-1]["cursor"]
    assert seen == [7, 6, 5, 4, 3, 2, 1]
    everything = await api.data(EVENTS, {"first": 100})
    assert [e["node"]["quantity"] for e in everything["usageEvents"]["edges"]][-1] == 9


async def test_usage_events_month_filter(api: Api) -> None:
    await starter_company(api)
    api.clock.set(datetime(2026, 12, 1, 0, 10, tzinfo=UTC))
    await recorded(api, quantity=1, occurredAt="2026-11-30T23:00:00Z")
    await recorded(api, quantity=2, occurredAt="2026-12-01T00:05:00Z")
    data = await api.data(EVENTS, {"month": "2026-11"})
    assert [e["node"]["quantity"] for e in data["usageEvents"]["edges"]] == [1]
    data = await api.data(EVENTS, {"month": "2026-12"})
    assert [e["node"]["quantity"] for e in data["usageEvents"]["edges"]] == [2]
    empty = await api.data(EVENTS, {"month": "2025-01"})
    assert empty["usageEvents"] == {
        "edges": [],
        "pageInfo": {"hasNextPage": False, "endCursor": None},
    }


@pytest.mark.parametrize(
    "variables",
    [
        {"first": 0},
        {"first": 101},
        {"after": "not-a-cursor"},
        {"after": "bm9wZQ=="},
        {"month": "2026/11"},
    ],
)
async def test_usage_events_bad_arguments(api: Api, variables: dict[str, Any]) -> None:
    body = await api.gql(EVENTS, variables)
    assert error_code(body) == "BAD_USER_INPUT"


def test_money_keeps_exact_sub_cent_prices() -> None:
    """An operator may price below a cent; amounts then keep their digits instead of rounding."""
    from decimal import Decimal

    from meterline.schema.types import money_amount

    assert str(money_amount(Decimal("0.100000"))) == "0.10"
    assert str(money_amount(Decimal("0.0050"))) == "0.005"
    assert str(money_amount(Decimal("12.3"))) == "12.30"
    assert str(money_amount(Decimal("9950"))) == "9950.00"
