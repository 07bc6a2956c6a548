"""Which plan applies to a company at an instant: one function of an effective-dated history.

A company's plan history is a list of periods, each starting at an instant and lasting until
the next one starts; before the first, the company is free. Every rule that depends on the plan
(the cap, whether usage goes to Stripe, the prices of a month) asks this module with the time
of the event, never "now" and never a "current" column. The history is written by the webhook
path (and by the lifecycle calls Stripe accepted); see docs/design.md, "Plans: effective-dated
and versioned".

Plans are versioned. A paid tier's version is the one its subscription's Stripe prices carry
(their metadata), so an edit never re-prices an existing subscriber; the free tier has no Stripe
prices, so its versions apply to every free company from their `effective_from`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime

from meterline.billing.catalog import EventType, Plan, Tier
from meterline.billing.periods import month_end, month_start

# The most one company may record of one event type in one month: GraphQL's Int is 32-bit,
# and no answer may fail after a write.
MONTHLY_VOLUME_CEILING = 2_147_483_647

BEGINNING = datetime(1970, 1, 1, tzinfo=UTC)


class Reason:
    """Why a plan period starts (shown to operators; scheduled ones may still be withdrawn)."""

    SUBSCRIPTION = "subscription"  # a live subscription's tier, as Stripe reports it
    ENDED = "ended"  # the subscription ended (cancelled, expired): free
    PAUSED = "paused"  # paused, or its payment collection paused: free, nobody bills usage
    SCHEDULED_CHANGE = "scheduled_change"  # a schedule's next phase, until Stripe starts it
    SCHEDULED_END = "scheduled_end"  # cancel_at_period_end, until the period ends
    OPERATOR = "operator"  # `meterline company set-tier`: a manual account, no subscription


SCHEDULED = frozenset({Reason.SCHEDULED_CHANGE, Reason.SCHEDULED_END})


@dataclass(frozen=True)
class PlanPeriod:
    effective_from: datetime
    tier: Tier
    version: int | None  # None: the free tier's version in force at the instant
    billed: bool  # usage in this period goes to Stripe (a live subscription that collects)
    subscription_id: str | None = None
    reason: str = Reason.SUBSCRIPTION


FREE = PlanPeriod(BEGINNING, Tier.FREE, None, billed=False, reason=Reason.ENDED)


@dataclass(frozen=True)
class PlanHistory:
    periods: tuple[PlanPeriod, ...] = ()  # by effective_from, no two at one instant

    def at(self, instant: datetime) -> PlanPeriod:
        """The period in force at `instant` (free before the first)."""
        found = FREE
        for period in self.periods:
            if period.effective_from > instant:
                break
            found = period
        return found

    def for_month(self, month: date) -> PlanPeriod:
        """The period whose plan prices `month`: the one in force at its start, unless that is
        not billed and a billed one starts within the month (free -> paid mid-month: Stripe's
        first invoice bills the whole month's usage, stamped at the start, at the paid prices)."""
        start, end = month_start(month), month_end(month)
        at_start = self.at(start)
        if at_start.billed or at_start.reason == Reason.OPERATOR:
            return at_start  # a paid month, or a manual account's: it keeps its plan
        for period in self.periods:
            if start < period.effective_from < end and period.billed:
                return period
        return at_start

    def next_change(self, after: datetime) -> PlanPeriod | None:
        """The first period starting after `after` whose tier differs from the one in force."""
        current = self.at(after)
        for period in self.periods:
            if period.effective_from > after and (
                period.tier is not current.tier or period.billed is not current.billed
            ):
                return period
        return None

    def with_period(self, period: PlanPeriod, *, drop_scheduled_after: bool = True) -> PlanHistory:
        """The history with `period` in force from its instant: it replaces a period at the same
        instant, and every scheduled period after it (what Stripe reports next supersedes what
        was scheduled); a confirmed later period stays (an older event cannot undo it)."""
        kept = [
            p
            for p in self.periods
            if p.effective_from != period.effective_from
            and not (
                drop_scheduled_after
                and p.effective_from > period.effective_from
                and p.reason in SCHEDULED
            )
        ]
        return PlanHistory(tuple(sorted([*kept, period], key=lambda p: p.effective_from)))

    def without_scheduled(
        self, after: datetime, until: datetime | None = None, *, reasons: frozenset[str] = SCHEDULED
    ) -> PlanHistory:
        """Scheduled periods starting in (after, until] withdrawn: a schedule released, a
        cancellation lifted, or a schedule Stripe's present state contradicts."""
        return PlanHistory(
            tuple(
                p
                for p in self.periods
                if not (
                    p.effective_from > after
                    and (until is None or p.effective_from <= until)
                    and p.reason in reasons
                )
            )
        )


@dataclass(frozen=True)
class PlanCatalog:
    """Every version of every tier's plan. Versions never change once written."""

    versions: Mapping[tuple[Tier, int], Plan]
    effective_from: Mapping[tuple[Tier, int], datetime]

    def has(self, tier: Tier) -> bool:
        return any(t is tier for t, _ in self.versions)

    def latest(self, tier: Tier) -> Plan:
        version = max(v for t, v in self.versions if t is tier)
        return self.versions[(tier, version)]

    def version_at(self, tier: Tier, instant: datetime) -> int:
        """The newest version of `tier` in force at `instant` (the free tier's rule; for a paid
        tier: what a subscription created then would have carried)."""
        candidates = [
            v for (t, v), since in self.effective_from.items() if t is tier and since <= instant
        ]
        if candidates:
            return max(candidates)
        return min(v for t, v in self.versions if t is tier)

    def plan(self, tier: Tier, version: int | None, instant: datetime) -> Plan:
        if version is None or (tier, version) not in self.versions:
            version = self.version_at(tier, instant)
        return self.versions[(tier, version)]

    def applying(self, period: PlanPeriod, instant: datetime) -> Plan:
        return self.plan(period.tier, period.version, instant)


@dataclass(frozen=True)
class Applied:
    """What applies to one event: the plan of its instant (its cap, whether Stripe bills it)
    and the plan that prices its month."""

    at_event: PlanPeriod
    plan_at_event: Plan
    month_plan: Plan

    @property
    def billed(self) -> bool:
        return self.at_event.billed

    def cap(self, event_type: EventType) -> int | None:
        """The most its month may hold of `event_type` when this event is recorded: none while
        a subscription bills the usage (overage is billed), else the hard cap of the plan of
        its instant (the free tier's allowance)."""
        return None if self.billed else self.plan_at_event.cap(event_type)


def plan_of(period: PlanPeriod, catalog: PlanCatalog, instant: datetime) -> Plan:
    """The plan a period applies: its tier's version while a subscription bills it; the free
    plan otherwise (a paused or ended subscription bills nothing, so nothing beyond what the
    free tier includes may be used)."""
    if period.billed or period.reason == Reason.OPERATOR:
        return catalog.applying(period, instant)
    return catalog.plan(Tier.FREE, period.version if period.tier is Tier.FREE else None, instant)


def applied(history: PlanHistory, catalog: PlanCatalog, instant: datetime, month: date) -> Applied:
    at_event = history.at(instant)
    start = month_start(month)
    return Applied(
        at_event,
        plan_of(at_event, catalog, instant),
        plan_of(history.for_month(month), catalog, start),
    )


def month_plan(history: PlanHistory, catalog: PlanCatalog, month: date) -> Plan:
    """The plan that prices `month` (its allowances and unit prices)."""
    return plan_of(history.for_month(month), catalog, month_start(month))
