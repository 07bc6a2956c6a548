"""The pure decisions behind the webhook handlers."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta

import pytest

from meterline.billing.catalog import DEFAULT_PLANS, EventType, Tier
from meterline.billing.dunning import BillingStatus, dunning_from_invoices
from meterline.db.batches import batch_id_of, batch_timestamp
from meterline.services.invoices import grace_days, usage_month
from meterline.services.stripe_setup import base_price_lookup_key, metered_price_lookup_key
from meterline.services.subscriptions import (
    effective_tier,
    missing_prices,
    tier_of,
    took_effect_at_month_start,
)
from meterline.stripe_gateway.mirror import InvoiceState, PriceRef

NOV = date(2026, 11, 1)
START = datetime(2026, 11, 20, 12, 0, 0, 500_000, tzinfo=UTC)


def test_a_batch_of_the_start_month_is_stamped_no_earlier_than_the_start() -> None:
    early = [datetime(2026, 11, 3, tzinfo=UTC), datetime(2026, 11, 5, 8, tzinfo=UTC)]
    assert batch_timestamp(NOV, early, START) == START.replace(microsecond=0)
    late = [*early, datetime(2026, 11, 29, 23, 59, 59, 999_000, tzinfo=UTC)]
    assert batch_timestamp(NOV, late, START) == datetime(2026, 11, 29, 23, 59, 59, tzinfo=UTC)
    assert batch_timestamp(NOV, early, None) == datetime(2026, 11, 5, 8, tzinfo=UTC)


def test_a_start_in_another_month_never_moves_a_batch() -> None:
    december = [datetime(2026, 12, 31, 23, 59, 59, 999_000, tzinfo=UTC)]
    assert batch_timestamp(date(2026, 12, 1), december, START) == december[0].replace(microsecond=0)
    # A start on 1 January (the next month) never pulls December's batch into January.
    new_year = datetime(2027, 1, 1, tzinfo=UTC)
    assert batch_timestamp(date(2026, 12, 1), december, new_year).month == 12


def test_batch_identifiers_round_trip() -> None:
    import uuid

    batch = uuid.uuid4()
    assert batch_id_of(f"mlb_{batch.hex}") == batch
    assert batch_id_of("mlb_nothex") is None
    assert batch_id_of("someone_elses_identifier") is None


def test_dunning_from_invoices() -> None:
    failure = datetime(2026, 11, 1, 2, tzinfo=UTC)
    ok = dunning_from_invoices(None, 14)
    assert ok.status(failure) is BillingStatus.OK
    past_due = dunning_from_invoices(failure, 14)
    assert past_due.grace_ends_at == failure + timedelta(days=14)
    assert past_due.status(failure + timedelta(days=14) - timedelta(microseconds=1)) is (
        BillingStatus.PAST_DUE
    )
    assert past_due.status(failure + timedelta(days=14)) is BillingStatus.RESTRICTED
    assert dunning_from_invoices(failure, 0).status(failure) is BillingStatus.RESTRICTED


@pytest.mark.parametrize(
    ("invoice_tier", "company_tier", "expected"),
    [
        (Tier.STARTER, Tier.STARTER, 14),
        (Tier.STARTER, Tier.FREE, 14),  # the subscription ended: its tier's grace stays
        (None, Tier.PROFESSIONAL, 14),
        (None, Tier.FREE, 21),  # a one-off invoice of a free company: the longest grace
    ],
)
def test_grace_days(invoice_tier: Tier | None, company_tier: Tier, expected: int) -> None:
    plans = dict(DEFAULT_PLANS)
    plans[Tier.ENTERPRISE] = replace(plans[Tier.ENTERPRISE], grace_days=21)
    assert grace_days(plans, invoice_tier, company_tier) == expected


def prices(tier: Tier, *, without: EventType | None = None) -> list[PriceRef]:
    refs = [PriceRef("price_base", base_price_lookup_key(tier), metered=False)]
    refs += [
        PriceRef(f"price_{e.value}", metered_price_lookup_key(tier, e), metered=True)
        for e in EventType
        if e is not without
    ]
    return refs


@pytest.mark.parametrize("tier", [t for t in Tier if t is not Tier.FREE])
def test_tier_and_completeness_come_from_lookup_keys(tier: Tier) -> None:
    assert tier_of(prices(tier)) is tier
    assert missing_prices(tier, prices(tier)) == []
    assert missing_prices(tier, prices(tier, without=EventType.AI_QUERY)) == [
        metered_price_lookup_key(tier, EventType.AI_QUERY)
    ]


def test_a_metered_price_never_names_the_tier() -> None:
    only_metered = [p for p in prices(Tier.STARTER) if p.metered]
    assert tier_of(only_metered) is None
    assert tier_of([PriceRef("p", "tier_free", metered=False)]) is None


@pytest.mark.parametrize(
    ("status", "tier", "current", "expected"),
    [
        ("active", Tier.STARTER, Tier.FREE, Tier.STARTER),
        ("past_due", Tier.PROFESSIONAL, Tier.STARTER, Tier.PROFESSIONAL),
        ("paused", Tier.STARTER, Tier.STARTER, Tier.FREE),  # no invoices while paused
        ("canceled", Tier.STARTER, Tier.STARTER, Tier.FREE),
        ("incomplete", Tier.STARTER, Tier.FREE, Tier.FREE),
        ("incomplete_expired", Tier.STARTER, Tier.FREE, Tier.FREE),
        ("active", None, Tier.PROFESSIONAL, Tier.PROFESSIONAL),
    ],
)
def test_effective_tier(status: str, tier: Tier | None, current: Tier, expected: Tier) -> None:
    assert effective_tier(status, tier, current) is expected


def invoice(reason: str, periods: list[tuple[datetime, datetime]]) -> InvoiceState:
    moment = datetime(2026, 12, 1, tzinfo=UTC)
    return InvoiceState(
        id="in_1", customer="cus_1", subscription_id="sub_1", subscription_metadata={},
        number=None, status="open", billing_reason=reason, currency="usd", amount_due=0,
        amount_paid=0, amount_remaining=0, period_start=None, period_end=None, created=moment,
        finalized_at=None, paid_at=None, marked_uncollectible_at=None, hosted_invoice_url=None,
        invoice_pdf=None, attempted=False, attempt_count=0, metered_periods=tuple(periods),
    )  # fmt: skip


def test_the_usage_month_of_an_invoice_is_its_metered_lines_period() -> None:
    dec_31 = datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC)
    jan_1 = datetime(2027, 1, 1, tzinfo=UTC)
    cycle = invoice("subscription_cycle", [(datetime(2026, 12, 1, tzinfo=UTC), jan_1)])
    assert usage_month(cycle) == date(2026, 12, 1)
    assert usage_month(invoice("subscription_cycle", [(dec_31, jan_1)])) == date(2026, 12, 1)
    assert usage_month(invoice("subscription_create", [(START, START)])) is None
    assert usage_month(invoice("manual", [])) is None


def test_prices_whose_lookup_key_moved_are_known_by_their_metadata() -> None:
    """`setup-stripe` moves a lookup key to a new price when the tiers table changes; the old
    price keeps its metadata, and subscriptions on it keep their tier."""
    base = PriceRef("price_old_base", None, metered=False, metadata={"meterline_tier": "starter"})
    metered = [
        PriceRef(
            f"price_old_{e.value}",
            None,
            metered=True,
            metadata={"meterline_tier": "starter", "meterline_event_type": e.value},
        )
        for e in EventType
    ]
    assert tier_of([base, *metered]) is Tier.STARTER
    assert missing_prices(Tier.STARTER, [base, *metered]) == []
    assert missing_prices(Tier.STARTER, [base, *metered[1:]]) == [
        metered_price_lookup_key(Tier.STARTER, EventType.GUEST_INVITATION)
    ]
    # Metadata that contradicts the price's kind is not trusted.
    odd = PriceRef("p", None, metered=True, metadata={"meterline_tier": "starter"})
    assert tier_of([odd]) is None


@pytest.mark.parametrize(
    ("since", "expected"),
    [
        (datetime(2026, 12, 1, tzinfo=UTC), True),
        (datetime(2026, 12, 1, 1, 59, 59, tzinfo=UTC), True),
        (datetime(2026, 12, 1, 2, tzinfo=UTC), False),
        (datetime(2026, 11, 30, 23, 59, 59, tzinfo=UTC), False),
        (None, False),
    ],
)
def test_a_change_took_effect_at_the_month_start(since: datetime | None, expected: bool) -> None:
    # Decided by the change's own time, whenever its event arrives (a replay a month later).
    assert took_effect_at_month_start(since) is expected
