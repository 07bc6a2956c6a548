"""Unit tests of the pure billing core: catalog, pricing, periods.

Every expected value here is written out by hand from the design ("Domain rules"), never computed
by calling the code under test again.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal, localcontext

import pytest

from meterline.billing.catalog import (
    CURRENCY,
    DEFAULT_PLANS,
    DEFAULT_UNIT_PRICES,
    Allowance,
    EventType,
    Plan,
    Tier,
)
from meterline.billing.periods import (
    OccurrenceWindow,
    add_months,
    as_utc,
    billable_window,
    floor_to_second,
    format_month,
    month_end,
    month_of,
    month_start,
    months_back,
    parse_month,
)
from meterline.billing.pricing import (
    MeterStatement,
    price_meter,
    to_cents,
    total_overage_cost,
)

G = EventType.GUEST_INVITATION
S = EventType.SMS_SENT
A = EventType.AI_QUERY
W = EventType.WHATSAPP_MESSAGE
E = EventType.EMAIL_SENT

FREE, STARTER, PRO, ENT = Tier.FREE, Tier.STARTER, Tier.PROFESSIONAL, Tier.ENTERPRISE

# docs/design.md, "Domain rules", copied by hand.
INCLUDED: dict[Tier, dict[EventType, int | None]] = {
    FREE: {G: 50, S: 0, A: 0, W: 0, E: 100},
    STARTER: {G: 500, S: 1000, A: 50, W: 500, E: 5000},
    PRO: {G: 2000, S: 5000, A: 200, W: 2000, E: 20000},
    ENT: {G: None, S: None, A: None, W: None, E: None},
}
PRICE: dict[EventType, str] = {G: "0.10", S: "0.05", A: "0.20", W: "0.08", E: "0.01"}

ALL_CELLS = [(tier, et) for tier in Tier for et in EventType]
FINITE_CELLS = [(tier, et) for tier, et in ALL_CELLS if tier is not ENT]
POSITIVE_CELLS = [(tier, et) for tier, et in FINITE_CELLS if INCLUDED[tier][et] != 0]
ZERO_CELLS = [(FREE, S), (FREE, A), (FREE, W)]


def cell_id(cell: tuple[Tier, EventType]) -> str:
    return f"{cell[0].value}-{cell[1].value}"


def allowance_of(tier: Tier, event_type: EventType) -> Allowance:
    return DEFAULT_PLANS[tier].allowance(event_type)


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


# --------------------------------------------------------------------------------------------
# Catalog
# --------------------------------------------------------------------------------------------


def test_event_type_values() -> None:
    assert [e.value for e in EventType] == [
        "guest_invitation",
        "sms_sent",
        "ai_query",
        "whatsapp_message",
        "email_sent",
    ]
    assert [e.name for e in EventType] == [
        "GUEST_INVITATION",
        "SMS_SENT",
        "AI_QUERY",
        "WHATSAPP_MESSAGE",
        "EMAIL_SENT",
    ]


def test_tier_values() -> None:
    assert [t.value for t in Tier] == ["free", "starter", "professional", "enterprise"]


def test_enums_format_as_their_values() -> None:
    # Stripe event names, lookup keys and SQL parameters are built from these.
    assert str(EventType.SMS_SENT) == "sms_sent"
    assert f"meter_{Tier.STARTER}_{EventType.AI_QUERY}" == "meter_starter_ai_query"
    assert EventType("whatsapp_message") is EventType.WHATSAPP_MESSAGE
    assert Tier("professional") is Tier.PROFESSIONAL
    assert isinstance(EventType.EMAIL_SENT, str)


def test_only_free_is_hard_capped() -> None:
    assert {t for t, plan in DEFAULT_PLANS.items() if plan.hard_cap} == {Tier.FREE}


def test_cap_is_the_allowance_of_a_hard_capped_plan_only() -> None:
    assert DEFAULT_PLANS[Tier.FREE].cap(EventType.GUEST_INVITATION) == 50
    assert DEFAULT_PLANS[Tier.FREE].cap(EventType.SMS_SENT) == 0
    assert DEFAULT_PLANS[Tier.FREE].cap(EventType.EMAIL_SENT) == 100
    for tier in (Tier.STARTER, Tier.PROFESSIONAL, Tier.ENTERPRISE):
        for event_type in EventType:
            assert DEFAULT_PLANS[tier].cap(event_type) is None


def test_currency() -> None:
    assert CURRENCY == "usd"


def test_default_plans_cover_every_tier() -> None:
    assert set(DEFAULT_PLANS) == set(Tier)
    for tier, plan in DEFAULT_PLANS.items():
        assert isinstance(plan, Plan)
        assert plan.tier is tier


@pytest.mark.parametrize("tier", list(Tier), ids=lambda t: t.value)
def test_every_event_type_has_an_allowance_in_every_plan(tier: Tier) -> None:
    plan = DEFAULT_PLANS[tier]
    assert set(plan.allowances) == set(EventType)
    assert len(plan.allowances) == 5
    for event_type in EventType:
        assert isinstance(plan.allowance(event_type), Allowance)


@pytest.mark.parametrize("cell", ALL_CELLS, ids=cell_id)
def test_default_included_matches_design(cell: tuple[Tier, EventType]) -> None:
    tier, event_type = cell
    included = allowance_of(tier, event_type).included
    expected = INCLUDED[tier][event_type]
    if expected is None:
        assert included is None
    else:
        assert type(included) is int
        assert included == expected


@pytest.mark.parametrize("cell", ALL_CELLS, ids=cell_id)
def test_default_unit_price_matches_design(cell: tuple[Tier, EventType]) -> None:
    tier, event_type = cell
    price = allowance_of(tier, event_type).unit_price
    assert type(price) is Decimal
    assert price == Decimal(PRICE[event_type])
    assert str(price) == PRICE[event_type]  # "0.10", not "0.1" nor a float's expansion


def test_enterprise_is_unlimited_everywhere() -> None:
    for event_type in EventType:
        assert DEFAULT_PLANS[ENT].allowance(event_type).included is None


def test_default_unit_prices_table() -> None:
    assert dict(DEFAULT_UNIT_PRICES) == {
        G: Decimal("0.10"),
        S: Decimal("0.05"),
        A: Decimal("0.20"),
        W: Decimal("0.08"),
        E: Decimal("0.01"),
    }
    for price in DEFAULT_UNIT_PRICES.values():
        assert type(price) is Decimal


@pytest.mark.parametrize("tier", [STARTER, PRO, ENT], ids=lambda t: t.value)
def test_paid_tiers_have_14_grace_days(tier: Tier) -> None:
    assert DEFAULT_PLANS[tier].grace_days == 14


def test_free_tier_has_no_grace() -> None:
    # The design shows "—": free has no subscription to be past due on.
    assert DEFAULT_PLANS[FREE].grace_days == 0


def test_allowance_accepts_valid_values() -> None:
    assert Allowance(0, Decimal("0")).included == 0
    assert Allowance(None, Decimal("0.05")).included is None
    assert Allowance(10, Decimal("0.00")).unit_price == Decimal("0")
    assert Allowance(10**12, Decimal("123.456")).included == 10**12


def test_allowance_rejects_negative_included() -> None:
    with pytest.raises(ValueError):
        Allowance(-1, Decimal("0.10"))
    with pytest.raises(ValueError):
        Allowance(-1000, Decimal("0.10"))


@pytest.mark.parametrize(
    "price", ["NaN", "sNaN", "-NaN", "Infinity", "-Infinity", "-0.01", "-1", "-0.0000001"]
)
def test_allowance_rejects_bad_prices(price: str) -> None:
    with pytest.raises(ValueError):
        Allowance(10, Decimal(price))


def test_allowance_rejects_float_price() -> None:
    with pytest.raises(TypeError):
        Allowance(10, 0.1)  # type: ignore[arg-type]


def test_allowance_rejects_non_int_included() -> None:
    with pytest.raises(TypeError):
        Allowance(1.5, Decimal("0.10"))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Allowance(True, Decimal("0.10"))


def test_allowance_and_plan_are_frozen() -> None:
    allowance = Allowance(1, Decimal("0.10"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        allowance.included = 2  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULT_PLANS[FREE].grace_days = 3  # type: ignore[misc]


# --------------------------------------------------------------------------------------------
# Pricing: price_meter over the whole catalog
# --------------------------------------------------------------------------------------------

# Percent at (included - 1), (included + 1) and at 1,000,000, worked out by hand.
PERCENT_BELOW = {50: 98.0, 100: 99.0, 500: 99.8, 1000: 99.9, 5000: 99.98, 2000: 99.95,
                 200: 99.5, 20000: 100.0}  # fmt: skip  # 99.995 rounds half up
PERCENT_ABOVE = {50: 102.0, 100: 101.0, 500: 100.2, 1000: 100.1, 5000: 100.02, 2000: 100.05,
                 200: 100.5, 20000: 100.01}  # fmt: skip  # 100.005 rounds half up
LARGE = 1_000_000
PERCENT_LARGE = {50: 2_000_000.0, 100: 1_000_000.0, 500: 200_000.0, 1000: 100_000.0,
                 5000: 20_000.0, 2000: 50_000.0, 200: 500_000.0, 20000: 5_000.0}  # fmt: skip
# (1,000,000 - included) x price
COST_LARGE: dict[tuple[Tier, EventType], str] = {
    (FREE, G): "99995.00",  # 999,950 x 0.10
    (FREE, S): "50000.00",  # 1,000,000 x 0.05
    (FREE, A): "200000.00",  # 1,000,000 x 0.20
    (FREE, W): "80000.00",  # 1,000,000 x 0.08
    (FREE, E): "9999.00",  # 999,900 x 0.01
    (STARTER, G): "99950.00",  # 999,500 x 0.10
    (STARTER, S): "49950.00",  # 999,000 x 0.05
    (STARTER, A): "199990.00",  # 999,950 x 0.20
    (STARTER, W): "79960.00",  # 999,500 x 0.08
    (STARTER, E): "9950.00",  # 995,000 x 0.01
    (PRO, G): "99800.00",  # 998,000 x 0.10
    (PRO, S): "49750.00",  # 995,000 x 0.05
    (PRO, A): "199960.00",  # 999,800 x 0.20
    (PRO, W): "79840.00",  # 998,000 x 0.08
    (PRO, E): "9800.00",  # 980,000 x 0.01
}
OVERAGE_LARGE: dict[tuple[Tier, EventType], int] = {
    (FREE, G): 999_950,
    (FREE, S): 1_000_000,
    (FREE, A): 1_000_000,
    (FREE, W): 1_000_000,
    (FREE, E): 999_900,
    (STARTER, G): 999_500,
    (STARTER, S): 999_000,
    (STARTER, A): 999_950,
    (STARTER, W): 999_500,
    (STARTER, E): 995_000,
    (PRO, G): 998_000,
    (PRO, S): 995_000,
    (PRO, A): 999_800,
    (PRO, W): 998_000,
    (PRO, E): 980_000,
}


def assert_zero_cost(statement: MeterStatement) -> None:
    assert type(statement.overage_cost) is Decimal
    assert statement.overage_cost == Decimal("0")
    assert not statement.overage_cost.is_signed()


@pytest.mark.parametrize("cell", FINITE_CELLS, ids=cell_id)
def test_price_meter_used_zero(cell: tuple[Tier, EventType]) -> None:
    tier, event_type = cell
    included = INCLUDED[tier][event_type]
    st = price_meter(event_type, 0, allowance_of(tier, event_type))
    assert st.event_type is event_type
    assert st.used == 0
    assert st.included == included
    assert st.remaining == included
    assert st.percent_used == (None if included == 0 else 0.0)
    assert st.exceeded is False
    assert st.overage_quantity == 0
    assert st.unit_price == Decimal(PRICE[event_type])
    assert_zero_cost(st)


@pytest.mark.parametrize("cell", POSITIVE_CELLS, ids=cell_id)
def test_price_meter_one_below_limit(cell: tuple[Tier, EventType]) -> None:
    tier, event_type = cell
    included = INCLUDED[tier][event_type]
    assert included is not None
    st = price_meter(event_type, included - 1, allowance_of(tier, event_type))
    assert st.used == included - 1
    assert st.remaining == 1
    assert st.percent_used == PERCENT_BELOW[included]
    assert st.exceeded is False
    assert st.overage_quantity == 0
    assert_zero_cost(st)


@pytest.mark.parametrize("cell", FINITE_CELLS, ids=cell_id)
def test_price_meter_exactly_at_limit(cell: tuple[Tier, EventType]) -> None:
    tier, event_type = cell
    included = INCLUDED[tier][event_type]
    assert included is not None
    st = price_meter(event_type, included, allowance_of(tier, event_type))
    assert st.used == included
    assert st.remaining == 0
    assert st.percent_used == (None if included == 0 else 100.0)
    assert st.exceeded is False
    assert st.overage_quantity == 0
    assert_zero_cost(st)


@pytest.mark.parametrize("cell", FINITE_CELLS, ids=cell_id)
def test_price_meter_one_over_limit(cell: tuple[Tier, EventType]) -> None:
    tier, event_type = cell
    included = INCLUDED[tier][event_type]
    assert included is not None
    st = price_meter(event_type, included + 1, allowance_of(tier, event_type))
    assert st.used == included + 1
    assert st.remaining == 0
    assert st.percent_used == (None if included == 0 else PERCENT_ABOVE[included])
    assert st.exceeded is True
    assert st.overage_quantity == 1
    assert type(st.overage_cost) is Decimal
    assert st.overage_cost == Decimal(PRICE[event_type])
    assert str(st.overage_cost) == PRICE[event_type]


@pytest.mark.parametrize("cell", FINITE_CELLS, ids=cell_id)
def test_price_meter_large_usage(cell: tuple[Tier, EventType]) -> None:
    tier, event_type = cell
    included = INCLUDED[tier][event_type]
    st = price_meter(event_type, LARGE, allowance_of(tier, event_type))
    assert st.remaining == 0
    assert st.exceeded is True
    assert st.overage_quantity == OVERAGE_LARGE[cell]
    assert st.percent_used == (None if included == 0 else PERCENT_LARGE[included])  # type: ignore[index]
    assert type(st.overage_cost) is Decimal
    assert str(st.overage_cost) == COST_LARGE[cell]


@pytest.mark.parametrize("event_type", list(EventType), ids=lambda e: e.value)
@pytest.mark.parametrize("used", [0, 1, 49, 50, 51, 20_001, 10**9, 10**30])
def test_enterprise_is_unlimited(event_type: EventType, used: int) -> None:
    st = price_meter(event_type, used, allowance_of(ENT, event_type))
    assert st.used == used
    assert st.included is None
    assert st.remaining is None
    assert st.percent_used is None
    assert st.exceeded is False
    assert st.overage_quantity == 0
    assert st.unit_price == Decimal(PRICE[event_type])
    assert_zero_cost(st)


@pytest.mark.parametrize("cell", ZERO_CELLS, ids=cell_id)
def test_zero_included_used_zero(cell: tuple[Tier, EventType]) -> None:
    tier, event_type = cell
    st = price_meter(event_type, 0, allowance_of(tier, event_type))
    assert st.included == 0
    assert st.remaining == 0
    assert st.percent_used is None
    assert st.exceeded is False
    assert st.overage_quantity == 0
    assert_zero_cost(st)


def test_free_sms_three_used_costs_fifteen_cents() -> None:
    st = price_meter(S, 3, allowance_of(FREE, S))
    assert st.included == 0
    assert st.remaining == 0
    assert st.percent_used is None
    assert st.exceeded is True
    assert st.overage_quantity == 3
    assert st.overage_cost == Decimal("0.15")
    assert str(st.overage_cost) == "0.15"


def test_seven_sms_over_is_exactly_35_cents() -> None:
    st = price_meter(S, 1007, allowance_of(STARTER, S))
    assert st.overage_quantity == 7
    assert type(st.overage_cost) is Decimal
    assert str(st.overage_cost) == "0.35"  # 7 * 0.05 as a float is 0.35000000000000003


def test_three_emails_over_is_exactly_3_cents() -> None:
    st = price_meter(E, 103, allowance_of(FREE, E))
    assert st.overage_quantity == 3
    assert str(st.overage_cost) == "0.03"


def test_three_ai_queries_over() -> None:
    st = price_meter(A, 53, allowance_of(STARTER, A))
    assert str(st.overage_cost) == "0.60"  # 0.2 * 3 as a float is 0.6000000000000001


@pytest.mark.parametrize("cell", FINITE_CELLS, ids=cell_id)
def test_statement_has_no_float_but_percent(cell: tuple[Tier, EventType]) -> None:
    tier, event_type = cell
    st = price_meter(event_type, 12_345, allowance_of(tier, event_type))
    for field in dataclasses.fields(st):
        value = getattr(st, field.name)
        if field.name == "percent_used":
            assert value is None or type(value) is float
        else:
            assert not isinstance(value, float), field.name
    assert type(st.unit_price) is Decimal
    assert type(st.overage_cost) is Decimal


def test_cost_is_exact_beyond_default_decimal_precision() -> None:
    # 28 significant digits is the default context: this result has 31.
    st = price_meter(S, 10**30 + 7, Allowance(0, Decimal("0.05")))
    assert str(st.overage_cost) == "5" + "0" * 28 + ".35"


def test_cost_does_not_depend_on_ambient_decimal_context() -> None:
    with localcontext() as ctx:
        ctx.prec = 3
        st = price_meter(S, LARGE, allowance_of(FREE, S))
        assert str(st.overage_cost) == "50000.00"
        st = price_meter(E, 12_345_678, Allowance(0, Decimal("0.01")))
        assert str(st.overage_cost) == "123456.78"


def test_custom_price_with_more_decimals_rounds_the_line_not_the_unit() -> None:
    st = price_meter(A, 10, Allowance(3, Decimal("0.333")))
    assert st.overage_quantity == 7
    assert str(st.overage_cost) == "2.33"  # 7 x 0.333 = 2.331, one line rounded to the cent
    half = price_meter(A, 1, Allowance(0, Decimal("0.005")))
    assert str(half.overage_cost) == "0.01"  # half up, as to_cents
    lines = [
        price_meter(A, 1, Allowance(0, Decimal("0.004"))),
        price_meter(A, 1, Allowance(0, Decimal("0.004"))),
    ]
    # each line is 0.00 on the invoice, so the month is 0.00, not 0.008 rounded to 0.01
    assert total_overage_cost(lines) == Decimal("0.00")


@pytest.mark.parametrize(
    ("included", "used", "percent"),
    [
        (3, 1, 33.33),  # 33.333...
        (3, 2, 66.67),  # 66.666...
        (3, 4, 133.33),
        (3, 5, 166.67),
        (6, 1, 16.67),  # 16.666...
        (7, 1, 14.29),  # 14.2857...
        (8, 1, 12.5),
        (200, 1, 0.5),
        (800, 1, 0.13),  # 0.125: half up
        (20000, 1, 0.01),  # 0.005: half up
        (20000, 3, 0.02),  # 0.015 (float round() gives 0.01)
        (20000, 5, 0.03),  # 0.025
        (20000, 7, 0.04),  # 0.035
        (20000, 19999, 100.0),  # 99.995: half up
        (20000, 20001, 100.01),  # 100.005
        (30000, 1, 0.0),  # 0.00333...
        (1, 1, 100.0),
        (1, 2, 200.0),
        (1, 0, 0.0),
    ],
)
def test_percent_rounding(included: int, used: int, percent: float) -> None:
    st = price_meter(E, used, Allowance(included, Decimal("0.01")))
    assert type(st.percent_used) is float
    assert st.percent_used == percent


@pytest.mark.parametrize("used", [101, 150, 10_000, 10**12])
def test_remaining_never_negative(used: int) -> None:
    st = price_meter(E, used, allowance_of(FREE, E))
    assert st.remaining == 0
    assert st.overage_quantity == used - 100


@pytest.mark.parametrize("used", [-1, -100])
def test_negative_used_raises(used: int) -> None:
    with pytest.raises(ValueError):
        price_meter(S, used, allowance_of(STARTER, S))
    with pytest.raises(ValueError):
        price_meter(S, used, allowance_of(ENT, S))


def test_statement_is_frozen() -> None:
    st = price_meter(S, 1, allowance_of(FREE, S))
    with pytest.raises(dataclasses.FrozenInstanceError):
        st.used = 2  # type: ignore[misc]


# --------------------------------------------------------------------------------------------
# Pricing: totals, cents, hard cap
# --------------------------------------------------------------------------------------------


def test_total_overage_cost_sums_exactly() -> None:
    statements = [
        price_meter(G, 500, allowance_of(STARTER, G)),  # at the limit: 0.00
        price_meter(S, 1007, allowance_of(STARTER, S)),  # 7 x 0.05 = 0.35
        price_meter(A, 51, allowance_of(STARTER, A)),  # 1 x 0.20 = 0.20
        price_meter(W, 0, allowance_of(STARTER, W)),  # 0.00
        price_meter(E, 5003, allowance_of(STARTER, E)),  # 3 x 0.01 = 0.03
    ]
    total = total_overage_cost(statements)
    assert type(total) is Decimal
    assert total == Decimal("0.58")
    assert str(total) == "0.58"


def test_total_of_tenths_is_not_float_like() -> None:
    statements = [
        price_meter(G, 51, allowance_of(FREE, G)),  # 0.10
        price_meter(A, 1, allowance_of(FREE, A)),  # 0.20
    ]
    assert str(total_overage_cost(statements)) == "0.30"  # 0.1 + 0.2 as floats is 0.300...04


def test_total_of_many_cents() -> None:
    statements = [price_meter(E, 101, allowance_of(FREE, E)) for _ in range(10)]
    assert total_overage_cost(statements) == Decimal("0.10")


def test_total_of_nothing_is_zero() -> None:
    total = total_overage_cost([])
    assert type(total) is Decimal
    assert total == Decimal("0")


def test_total_accepts_a_generator() -> None:
    total = total_overage_cost(
        price_meter(et, 1, allowance_of(FREE, et)) for et in (S, A, W)
    )  # 0.05 + 0.20 + 0.08
    assert str(total) == "0.33"


def test_total_with_enterprise_lines_only_is_zero() -> None:
    statements = [price_meter(et, 10**6, allowance_of(ENT, et)) for et in EventType]
    assert total_overage_cost(statements) == Decimal("0")


def test_total_is_exact_beyond_default_precision() -> None:
    statements = [
        price_meter(S, 10**30, Allowance(0, Decimal("0.05"))),  # 5 x 10^28
        price_meter(E, 1, Allowance(0, Decimal("0.01"))),  # 0.01
    ]
    with localcontext() as ctx:
        ctx.prec = 5
        assert str(total_overage_cost(statements)) == "5" + "0" * 28 + ".01"


@pytest.mark.parametrize(
    ("amount", "cents"),
    [
        ("0", "0.00"),
        ("12", "12.00"),
        ("0.35", "0.35"),
        ("0.004", "0.00"),
        ("0.005", "0.01"),
        ("0.015", "0.02"),
        ("0.025", "0.03"),  # half up, not half even (which gives 0.02)
        ("0.0249999", "0.02"),
        ("2.331", "2.33"),
        ("2.335", "2.34"),
        ("2.345", "2.35"),
        ("99.995", "100.00"),
        ("-0.005", "-0.01"),  # half away from zero
        ("12345678901234567890123456789.125", "12345678901234567890123456789.13"),
    ],
)
def test_to_cents_half_up(amount: str, cents: str) -> None:
    result = to_cents(Decimal(amount))
    assert type(result) is Decimal
    assert str(result) == cents


def test_to_cents_ignores_ambient_context() -> None:
    with localcontext() as ctx:
        ctx.prec = 3
        assert str(to_cents(Decimal("123456.785"))) == "123456.79"


# --------------------------------------------------------------------------------------------
# Periods
# --------------------------------------------------------------------------------------------


def tz(hours: int, minutes: int = 0) -> timezone:
    return timezone(timedelta(hours=hours, minutes=minutes))


@pytest.mark.parametrize(
    ("moment", "month"),
    [
        # the last microsecond of January floors to 23:59:59: still January
        (datetime(2026, 1, 31, 23, 59, 59, 999_999, tzinfo=UTC), date(2026, 1, 1)),
        (datetime(2026, 2, 1, 0, 0, 0, tzinfo=UTC), date(2026, 2, 1)),  # first instant
        (datetime(2026, 2, 1, 0, 0, 0, 1, tzinfo=UTC), date(2026, 2, 1)),
        (datetime(2026, 1, 15, 12, 0, tzinfo=UTC), date(2026, 1, 1)),
        (datetime(2026, 12, 31, 23, 59, 59, 999_000, tzinfo=UTC), date(2026, 12, 1)),
        (datetime(2027, 1, 1, 0, 0, 0, tzinfo=UTC), date(2027, 1, 1)),
        (datetime(2028, 2, 29, 12, 0, tzinfo=UTC), date(2028, 2, 1)),  # leap day
        (datetime(2028, 2, 29, 23, 59, 59, 999_999, tzinfo=UTC), date(2028, 2, 1)),
        (datetime(2028, 3, 1, 0, 0, tzinfo=UTC), date(2028, 3, 1)),
        (datetime(2027, 2, 28, 23, 59, 59, tzinfo=UTC), date(2027, 2, 1)),  # not a leap year
        (datetime(2027, 3, 1, 0, 0, tzinfo=UTC), date(2027, 3, 1)),
        # offsets: what counts is the UTC instant
        (datetime(2026, 12, 1, 0, 30, tzinfo=tz(2)), date(2026, 11, 1)),  # 22:30 UTC Nov 30
        (datetime(2026, 11, 30, 20, 0, tzinfo=tz(-5)), date(2026, 12, 1)),  # 01:00 UTC Dec 1
        (datetime(2026, 3, 1, 5, 29, 59, 999_999, tzinfo=tz(5, 30)), date(2026, 2, 1)),
        (datetime(2026, 3, 1, 5, 30, tzinfo=tz(5, 30)), date(2026, 3, 1)),
        (datetime(2027, 1, 1, 1, 0, tzinfo=tz(1)), date(2027, 1, 1)),  # 00:00 UTC
        (datetime(2027, 1, 1, 0, 59, 59, tzinfo=tz(1)), date(2026, 12, 1)),  # 23:59:59 UTC
        (datetime(2026, 12, 31, 23, 0, tzinfo=tz(-1)), date(2027, 1, 1)),  # 00:00 UTC
        (datetime(2026, 6, 30, 23, 59, 59, 500_000, tzinfo=tz(0)), date(2026, 6, 1)),
    ],
)
def test_month_of(moment: datetime, month: date) -> None:
    result = month_of(moment)
    assert type(result) is date
    assert result == month


def test_naive_datetimes_are_refused() -> None:
    naive = datetime(2026, 1, 15, 12, 0)
    with pytest.raises(ValueError):
        month_of(naive)
    with pytest.raises(ValueError):
        as_utc(naive)
    with pytest.raises(ValueError):
        floor_to_second(naive)
    with pytest.raises(ValueError):
        billable_window(naive, 1)


def test_as_utc_converts_offsets() -> None:
    result = as_utc(datetime(2026, 12, 1, 0, 30, tzinfo=tz(2)))
    assert result == datetime(2026, 11, 30, 22, 30, tzinfo=UTC)
    assert result.utcoffset() == timedelta(0)


def test_floor_to_second() -> None:
    result = floor_to_second(datetime(2026, 5, 5, 10, 0, 0, 999_999, tzinfo=tz(3)))
    assert result == datetime(2026, 5, 5, 7, 0, 0, tzinfo=UTC)
    assert result.microsecond == 0
    assert result.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    ("month", "count", "expected"),
    [
        (date(2026, 5, 1), 0, date(2026, 5, 1)),
        (date(2026, 11, 1), 1, date(2026, 12, 1)),
        (date(2026, 12, 1), 1, date(2027, 1, 1)),
        (date(2026, 1, 1), -1, date(2025, 12, 1)),
        (date(2026, 12, 1), -12, date(2025, 12, 1)),
        (date(2026, 3, 1), -15, date(2024, 12, 1)),
        (date(2026, 1, 1), 24, date(2028, 1, 1)),
        (date(2025, 12, 1), 13, date(2027, 1, 1)),
        (date(2026, 1, 1), -13, date(2024, 12, 1)),
        (date(2026, 7, 1), 6, date(2027, 1, 1)),
        (date(2026, 7, 1), -7, date(2025, 12, 1)),
        (date(2026, 7, 1), 120, date(2036, 7, 1)),
    ],
)
def test_add_months(month: date, count: int, expected: date) -> None:
    assert add_months(month, count) == expected


@pytest.mark.parametrize(
    ("month", "start", "end"),
    [
        (date(2026, 1, 1), utc(2026, 1, 1), utc(2026, 2, 1)),
        (date(2026, 11, 1), utc(2026, 11, 1), utc(2026, 12, 1)),
        (date(2026, 12, 1), utc(2026, 12, 1), utc(2027, 1, 1)),  # Dec -> next Jan
        (date(2028, 2, 1), utc(2028, 2, 1), utc(2028, 3, 1)),
    ],
)
def test_month_start_and_end(month: date, start: datetime, end: datetime) -> None:
    assert month_start(month) == start
    assert month_end(month) == end
    assert month_start(month).utcoffset() == timedelta(0)
    assert month_end(month).utcoffset() == timedelta(0)
    # exclusive end: the last instant before it is in the month, the end itself is not
    assert month_of(end - timedelta(seconds=1)) == month
    assert month_of(end) != month


@pytest.mark.parametrize(
    ("text", "month"),
    [
        ("2026-01", date(2026, 1, 1)),
        ("2026-12", date(2026, 12, 1)),
        ("2028-02", date(2028, 2, 1)),
        ("1970-01", date(1970, 1, 1)),
        ("9999-12", date(9999, 12, 1)),
    ],
)
def test_parse_month_good(text: str, month: date) -> None:
    assert parse_month(text) == month


@pytest.mark.parametrize(
    "text",
    [
        "2026-13",
        "2026-00",
        "26-01",
        "2026-1",
        "",
        "2026-01-01",
        " 2026-01",
        "2026-01 ",
        "2026-01\n",
        "2026/01",
        "202601",
        "2026-1a",
        "abcd-ef",
        "+2026-01",
        "12026-01",
        "1969-12",
        "0000-01",
        "\uff12\uff10\uff12\uff16-01",  # full-width digits
        "2026-\u0661\u0662",  # Arabic-Indic digits
    ],
)
def test_parse_month_bad(text: str) -> None:
    with pytest.raises(ValueError):
        parse_month(text)


@pytest.mark.parametrize(
    ("month", "text"),
    [
        (date(2026, 1, 1), "2026-01"),
        (date(2026, 11, 15), "2026-11"),
        (date(2026, 12, 31), "2026-12"),
        (date(5, 3, 1), "0005-03"),
    ],
)
def test_format_month(month: date, text: str) -> None:
    assert format_month(month) == text


@pytest.mark.parametrize("text", ["1970-01", "2026-09", "2027-12"])
def test_format_parse_round_trip(text: str) -> None:
    assert format_month(parse_month(text)) == text


def test_months_back_without_oldest() -> None:
    assert months_back(date(2026, 3, 1), 5) == [
        date(2026, 3, 1),
        date(2026, 2, 1),
        date(2026, 1, 1),
        date(2025, 12, 1),
        date(2025, 11, 1),
    ]


def test_months_back_normalises_newest() -> None:
    assert months_back(date(2026, 3, 17), 2) == [date(2026, 3, 1), date(2026, 2, 1)]


def test_months_back_zero_or_negative_count() -> None:
    assert months_back(date(2026, 3, 1), 0) == []
    assert months_back(date(2026, 3, 1), -1) == []


def test_months_back_stops_at_oldest() -> None:
    assert months_back(date(2026, 3, 1), 12, oldest=date(2026, 1, 1)) == [
        date(2026, 3, 1),
        date(2026, 2, 1),
        date(2026, 1, 1),
    ]


def test_months_back_count_wins_over_oldest() -> None:
    assert months_back(date(2026, 3, 1), 2, oldest=date(2020, 1, 1)) == [
        date(2026, 3, 1),
        date(2026, 2, 1),
    ]


def test_months_back_oldest_is_newest() -> None:
    assert months_back(date(2026, 3, 1), 12, oldest=date(2026, 3, 1)) == [date(2026, 3, 1)]


def test_months_back_oldest_after_newest() -> None:
    assert months_back(date(2026, 3, 1), 12, oldest=date(2026, 4, 1)) == []


def test_months_back_mid_month_oldest_includes_its_month() -> None:
    # A company created on 15 January has January as its first month.
    assert months_back(date(2026, 3, 1), 12, oldest=date(2026, 1, 15)) == [
        date(2026, 3, 1),
        date(2026, 2, 1),
        date(2026, 1, 1),
    ]


def test_months_back_across_years() -> None:
    result = months_back(date(2026, 2, 1), 24)
    assert len(result) == 24
    assert result[0] == date(2026, 2, 1)
    assert result[1] == date(2026, 1, 1)
    assert result[2] == date(2025, 12, 1)
    assert result[-1] == date(2024, 3, 1)


@pytest.mark.parametrize(
    ("now", "grace", "earliest", "floored_now"),
    [
        # mid-month: this month only
        (
            datetime(2026, 6, 15, 12, 34, 56, 789_000, tzinfo=UTC),
            1,
            utc(2026, 6, 1),
            utc(2026, 6, 15, 12, 34, 56),
        ),
        # 00:30 on the 1st, grace 1: last month is still open
        (utc(2026, 6, 1, 0, 30), 1, utc(2026, 5, 1), utc(2026, 6, 1, 0, 30)),
        # the last second of the grace
        (
            datetime(2026, 6, 1, 0, 59, 59, 999_999, tzinfo=UTC),
            1,
            utc(2026, 5, 1),
            utc(2026, 6, 1, 0, 59, 59),
        ),
        # exactly 01:00:00 on the 1st, grace 1: closed
        (utc(2026, 6, 1, 1, 0, 0), 1, utc(2026, 6, 1), utc(2026, 6, 1, 1, 0, 0)),
        # grace 0: never last month
        (utc(2026, 6, 1, 0, 0, 0), 0, utc(2026, 6, 1), utc(2026, 6, 1)),
        (utc(2026, 6, 1, 0, 0, 1), 0, utc(2026, 6, 1), utc(2026, 6, 1, 0, 0, 1)),
        # Jan 1 00:10: December of last year
        (utc(2027, 1, 1, 0, 10), 1, utc(2026, 12, 1), utc(2027, 1, 1, 0, 10)),
        # Dec 31, well inside the month
        (utc(2026, 12, 31, 23, 59, 59), 1, utc(2026, 12, 1), utc(2026, 12, 31, 23, 59, 59)),
        # a longer grace
        (utc(2026, 3, 1, 23, 59, 59), 24, utc(2026, 2, 1), utc(2026, 3, 1, 23, 59, 59)),
        (utc(2026, 3, 2, 0, 0, 0), 24, utc(2026, 3, 1), utc(2026, 3, 2)),
        # now given with an offset: 02:30+02:00 is 00:30 UTC on July 1
        (datetime(2026, 7, 1, 2, 30, tzinfo=tz(2)), 1, utc(2026, 6, 1), utc(2026, 7, 1, 0, 30)),
        # 20:30-05:00 on June 30 is 01:30 UTC on July 1: grace 1 is over
        (datetime(2026, 6, 30, 20, 30, tzinfo=tz(-5)), 1, utc(2026, 7, 1), utc(2026, 7, 1, 1, 30)),
        # leap February's successor
        (utc(2028, 3, 1, 0, 5), 1, utc(2028, 2, 1), utc(2028, 3, 1, 0, 5)),
    ],
)
def test_billable_window(
    now: datetime, grace: int, earliest: datetime, floored_now: datetime
) -> None:
    window = billable_window(now, grace)
    assert isinstance(window, OccurrenceWindow)
    assert window.earliest == earliest
    assert window.now == floored_now
    assert window.now.microsecond == 0
    assert window.earliest.utcoffset() == timedelta(0)
    assert window.now.utcoffset() == timedelta(0)


def test_billable_window_rejects_negative_grace() -> None:
    with pytest.raises(ValueError):
        billable_window(utc(2026, 6, 15), -1)


def test_occurrence_window_is_frozen() -> None:
    window = billable_window(utc(2026, 6, 15), 1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        window.now = utc(2026, 6, 16)  # type: ignore[misc]
