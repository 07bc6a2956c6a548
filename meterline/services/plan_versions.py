"""`meterline plans`: the versions of the tiers' plans, listed, edited and migrated to.

A version (a tier's allowances and unit prices) never changes once written; an edit is a new
version copying the newest one with one event type changed (db/tiers.py). When it applies:

- a paid tier's version is carried by its Stripe prices (their `meterline_plan_version`
  metadata): `setup-stripe` moves the tier's lookup keys to new prices, so new subscriptions get
  the newest version and existing subscribers keep theirs. `plans migrate` moves them, at the
  next 1st, through their subscription's schedule;
- the free tier has no Stripe prices: a version applies to every free company from its
  `effective_from`, the next 1st (the one after when the next is less than an hour away).

The decisions (parsing, what a version copies, who moves, whether Stripe is ready) are pure
functions; the `async` ones sequence them with the database and Stripe.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

import stripe

from meterline.billing.catalog import Allowance, EventType, Plan, Tier
from meterline.billing.periods import month_end, month_of
from meterline.billing.plans import MONTHLY_VOLUME_CEILING, PlanCatalog, PlanPeriod, Reason
from meterline.db import companies, company_plans, subscriptions, tiers
from meterline.services.plan_history import schedule_change
from meterline.services.stripe_setup import (
    PRODUCT_METADATA_KEY,
    base_price_lookup_key,
    metered_price_lookup_key,
)
from meterline.stripe_gateway.catalog import StripePrice, price_version
from meterline.stripe_gateway.lifecycle import LifecycleFailed, PlanPrice, StripeLifecycle

logger = logging.getLogger(__name__)

UNLIMITED = "unlimited"
# tier_allowances.unit_price is numeric(12, 6): USD with at most 6 decimals.
PRICE_PLACES = 6
MAX_UNIT_PRICE = Decimal("999999.999999")
NOTE_MAX_LENGTH = 500  # plan_versions.note
# A free version starts on a 1st at least this far ahead, so every process has read it (the
# catalog is cached for seconds) before it applies.
FREE_EDIT_NOTICE = timedelta(hours=1)


class PlanInputError(ValueError):
    """Bad input (`meterline plans` exits 2): nothing was written."""


class PlanRefused(Exception):
    """The state refuses the command (exits 1): nothing was changed."""


# --- parsing and validation (pure) -----------------------------------------------------------


def parse_tier(text: str, catalog: PlanCatalog) -> Tier:
    known = [t.value for t in Tier if catalog.has(t)]
    try:
        tier = Tier(text)
    except ValueError:
        raise PlanInputError(f"unknown tier {text!r} (one of {', '.join(known)})") from None
    if not catalog.has(tier):
        raise PlanInputError(f"unknown tier {text!r} (one of {', '.join(known)})")
    return tier


def parse_event_type(text: str) -> EventType:
    try:
        return EventType(text)
    except ValueError:
        names = ", ".join(e.value for e in EventType)
        raise PlanInputError(f"unknown event type {text!r} (one of {names})") from None


def parse_included(text: str) -> int | None:
    """`--included`: a whole number of units from 0, or `unlimited` (None)."""
    value = text.strip()
    if value.lower() == UNLIMITED:
        return None
    if not value.isascii() or not value.isdigit():
        raise PlanInputError(
            f"--included must be a whole number >= 0 or {UNLIMITED!r}, got {text!r}"
        )
    included = int(value)
    if included > MONTHLY_VOLUME_CEILING:
        raise PlanInputError(
            f"--included {included} is above the monthly volume ceiling "
            f"({MONTHLY_VOLUME_CEILING:,}): say {UNLIMITED!r}"
        )
    return included


def parse_unit_price(text: str) -> Decimal:
    """`--unit-price`: USD per unit beyond the allowance, >= 0, at most 6 decimals."""
    try:
        price = Decimal(text.strip())
    except InvalidOperation:
        raise PlanInputError(
            f"--unit-price must be a decimal amount in USD, got {text!r}"
        ) from None
    if not price.is_finite():
        raise PlanInputError(f"--unit-price must be a decimal amount in USD, got {text!r}")
    if price < 0:
        raise PlanInputError(f"--unit-price must not be negative, got {text!r}")
    if price > MAX_UNIT_PRICE:
        raise PlanInputError(f"--unit-price must be below {MAX_UNIT_PRICE + 1} USD, got {text!r}")
    if price != price.quantize(Decimal(1).scaleb(-PRICE_PLACES)):
        raise PlanInputError(f"--unit-price has at most {PRICE_PLACES} decimals, got {text!r}")
    return price


def parse_note(text: str | None) -> str | None:
    if text is None or not text.strip():
        return None
    note = text.strip()
    if len(note) > NOTE_MAX_LENGTH:
        raise PlanInputError(f"--note has at most {NOTE_MAX_LENGTH} characters")
    if "\x00" in note:
        raise PlanInputError("--note must not contain a NUL character")
    return note


@dataclass(frozen=True)
class Edit:
    """One change of one event type of a tier's newest version."""

    tier: Tier
    event_type: EventType
    set_included: bool  # False: `included` is not changed
    included: int | None  # None (with set_included): unlimited
    unit_price: Decimal | None  # None: not changed
    note: str | None


def parse_edit(
    catalog: PlanCatalog,
    *,
    tier: str,
    event_type: str | None,
    included: str | None,
    unit_price: str | None,
    note: str | None,
) -> Edit:
    """The edit asked for, or PlanInputError saying what is wrong."""
    parsed_tier = parse_tier(tier, catalog)
    if event_type is None:
        raise PlanInputError(
            "give --event-type E with --included N|unlimited and/or --unit-price P "
            "(one event type per edit)"
        )
    parsed_type = parse_event_type(event_type)
    if included is None and unit_price is None:
        raise PlanInputError(
            f"nothing to change for {parsed_type.value}: give --included N|unlimited "
            "and/or --unit-price P"
        )
    return Edit(
        tier=parsed_tier,
        event_type=parsed_type,
        set_included=included is not None,
        included=parse_included(included) if included is not None else None,
        unit_price=parse_unit_price(unit_price) if unit_price is not None else None,
        note=parse_note(note),
    )


def edited_allowances(plan: Plan, edit: Edit) -> dict[EventType, Allowance]:
    """`plan`'s allowances with the edit applied; PlanInputError when it changes nothing."""
    allowances = dict(plan.allowances)
    if edit.event_type not in allowances:
        raise PlanInputError(
            f"{plan.tier.value} version {plan.version} has no allowance for {edit.event_type.value}"
        )
    before = allowances[edit.event_type]
    after = Allowance(
        edit.included if edit.set_included else before.included,
        edit.unit_price if edit.unit_price is not None else before.unit_price,
    )
    if after == before:
        raise PlanInputError(
            f"nothing changes: {plan.tier.value} version {plan.version} already has "
            f"{edit.event_type.value} {describe_allowance(before)}"
        )
    allowances[edit.event_type] = after
    return allowances


def next_free_start(now: datetime) -> datetime:
    """When a free version made at `now` applies: the next 1st 00:00 UTC, or the 1st after
    when the next one is less than an hour away."""
    first = month_end(month_of(now))
    if first - now < FREE_EDIT_NOTICE:
        first = month_end(month_of(first))
    return first


def effective_from(tier: Tier, now: datetime) -> datetime:
    """A paid version is made now (it applies to the subscriptions that carry its prices); a
    free one from the next 1st."""
    return next_free_start(now) if tier is Tier.FREE else now


# --- showing a version (pure) ----------------------------------------------------------------


def format_price(price: Decimal) -> str:
    """USD as typed, without the column's trailing zeros, with at least cents: 0.050000 ->
    0.05, 0.012345 -> 0.012345, 1 -> 1.00."""
    exponent = price.normalize().as_tuple().exponent
    places = max(2, -exponent) if isinstance(exponent, int) else 2
    return f"{price:.{places}f}"


def describe_allowance(allowance: Allowance) -> str:
    included = UNLIMITED if allowance.included is None else f"{allowance.included:,}"
    return f"included {included}, unit price {format_price(allowance.unit_price)} USD"


def describe_change(before: Allowance, after: Allowance) -> str:
    parts = []
    if before.included != after.included:
        old = UNLIMITED if before.included is None else f"{before.included:,}"
        new = UNLIMITED if after.included is None else f"{after.included:,}"
        parts.append(f"included {old} -> {new}")
    if before.unit_price != after.unit_price:
        parts.append(
            f"unit price {format_price(before.unit_price)} -> {format_price(after.unit_price)} USD"
        )
    return ", ".join(parts)


@dataclass(frozen=True)
class VersionRow:
    tier: Tier
    version: int
    effective_from: datetime
    note: str | None
    allowances: Mapping[EventType, Allowance]
    newest: bool
    # The free tier: this version applies to every free company now.
    in_force: bool
    # Paid tiers: companies whose billed period in force now is on this version, and those a
    # scheduled change moves to it. None for the free tier.
    companies: int | None
    scheduled: int | None


def version_rows(
    catalog: PlanCatalog,
    notes: Sequence[tiers.VersionNote],
    in_force: Sequence[tuple[Tier, int | None, int]],
    scheduled: Sequence[tuple[uuid.UUID, PlanPeriod]],
    now: datetime,
) -> list[VersionRow]:
    """Every tier's versions with what applies them now. A billed period without a version
    is on the version of its tier in force at the instant (billing/plans.py)."""
    counts: dict[tuple[Tier, int], int] = {}
    for tier, version, count in in_force:
        if not catalog.has(tier):
            continue
        key = (tier, version if version is not None else catalog.version_at(tier, now))
        counts[key] = counts.get(key, 0) + count
    moving: dict[tuple[Tier, int], set[uuid.UUID]] = {}
    for company_id, period in scheduled:
        if not catalog.has(period.tier):
            continue
        version = (
            period.version
            if period.version is not None
            else catalog.version_at(period.tier, period.effective_from)
        )
        moving.setdefault((period.tier, version), set()).add(company_id)
    rows = []
    for item in notes:
        key = (item.tier, item.version)
        plan = catalog.versions.get(key)
        if plan is None:
            continue
        paid = item.tier is not Tier.FREE
        rows.append(
            VersionRow(
                tier=item.tier,
                version=item.version,
                effective_from=item.effective_from,
                note=item.note,
                allowances={e: plan.allowances[e] for e in EventType if e in plan.allowances},
                newest=catalog.latest(item.tier).version == item.version,
                in_force=not paid and catalog.version_at(item.tier, now) == item.version,
                companies=counts.get(key, 0) if paid else None,
                scheduled=len(moving.get(key, ())) if paid else None,
            )
        )
    return rows


def rows_as_json(rows: Sequence[VersionRow], now: datetime) -> dict[str, Any]:
    tiers_out: dict[Tier, dict[str, Any]] = {}
    for row in rows:
        entry = tiers_out.setdefault(
            row.tier,
            {"tier": row.tier.value, "paid": row.tier is not Tier.FREE, "versions": []},
        )
        entry["versions"].append(
            {
                "version": row.version,
                "effective_from": row.effective_from.isoformat(),
                "note": row.note,
                "newest": row.newest,
                "in_force": row.in_force if row.tier is Tier.FREE else None,
                "companies": row.companies,
                "scheduled": row.scheduled,
                "allowances": {
                    event_type.value: {
                        "included": allowance.included,
                        "unit_price": format_price(allowance.unit_price),
                    }
                    for event_type, allowance in row.allowances.items()
                },
            }
        )
    return {"as_of": now.isoformat(), "tiers": list(tiers_out.values())}


def rows_as_text(rows: Sequence[VersionRow], now: datetime) -> list[str]:
    lines: list[str] = []
    current: Tier | None = None
    for row in rows:
        if row.tier is not current:
            current = row.tier
            if lines:
                lines.append("")
            lines.append(
                f"{row.tier.value}: no Stripe prices, a version applies to every free company "
                "from its effective_from"
                if row.tier is Tier.FREE
                else f"{row.tier.value}: a subscription keeps the version of its Stripe prices"
            )
        facts = [f"version {row.version}", f"from {row.effective_from.isoformat()}"]
        if row.tier is Tier.FREE:
            if row.in_force:
                facts.append("in force")
            elif row.effective_from > now:
                facts.append("scheduled")
        else:
            facts.append(f"companies {row.companies}")
            if row.scheduled:
                facts.append(f"moving to it {row.scheduled}")
            if row.newest:
                facts.append("newest: new subscriptions once setup-stripe moved the prices")
        if row.note:
            facts.append(f"note: {row.note}")
        lines.append("  " + "  ".join(facts))
        for event_type, allowance in row.allowances.items():
            lines.append(f"    {event_type.value:<17} {describe_allowance(allowance)}")
    return lines


# --- migration decisions (pure) --------------------------------------------------------------


def plan_lookup_keys(tier: Tier) -> list[str]:
    """The tier's six prices, base first: what a complete subscription carries."""
    return [base_price_lookup_key(tier)] + [metered_price_lookup_key(tier, e) for e in EventType]


def stripe_problems(tier: Tier, version: int, prices: Mapping[str, StripePrice]) -> list[str]:
    """Why the prices holding the tier's lookup keys do not (yet) bill `version`."""
    problems = []
    for key in plan_lookup_keys(tier):
        price = prices.get(key)
        if price is None or not price.active:
            problems.append(f"no active price holds {key}")
            continue
        carried = price_version(price.metadata)
        if price.metadata.get(PRODUCT_METADATA_KEY) != tier.value or carried != version:
            problems.append(f"{key} is price {price.id} of version {carried}")
    return problems


@dataclass(frozen=True)
class Subscriber:
    """A company whose billed period in force now is of the tier being migrated."""

    company_id: uuid.UUID
    subscription_id: str | None
    version: int  # the version its period applies now
    later: tuple[PlanPeriod, ...]  # its periods starting after now
    cancel_at_period_end: bool
    period_end: datetime | None  # its subscription's current period end (the 1st)


@dataclass(frozen=True)
class Move:
    company_id: uuid.UUID
    subscription_id: str
    from_version: int
    effective_at: datetime


@dataclass(frozen=True)
class Skip:
    company_id: uuid.UUID
    reason: str
    failed: bool = False  # it should move and cannot: the run exits 1


def decide_move(
    subscriber: Subscriber, tier: Tier, version: int, now: datetime
) -> Move | Skip | None:
    """What `plans migrate` does with one subscriber: None when it is on `version` (or a
    newer one) already; a Skip when it moves anyway, or must not be moved (a change or a
    cancellation is pending: the schedule would replace it)."""
    if subscriber.version >= version:
        return None
    for period in subscriber.later:
        if period.tier is tier and period.version == version and period.billed:
            return Skip(
                subscriber.company_id,
                f"moves to version {version} on {period.effective_from:%Y-%m-%d} already",
            )
    if subscriber.cancel_at_period_end or any(
        p.reason == Reason.SCHEDULED_END for p in subscriber.later
    ):
        return Skip(subscriber.company_id, "its subscription ends at the period end: not moved")
    if subscriber.later:
        first = subscriber.later[0]
        what = f"{first.tier.value}" + ("" if first.billed else " (no billing)")
        return Skip(
            subscriber.company_id,
            f"a change is pending ({what} from {first.effective_from:%Y-%m-%d}): not moved",
        )
    if subscriber.subscription_id is None:
        return Skip(subscriber.company_id, "no subscription is known for it", failed=True)
    effective_at = subscriber.period_end
    if effective_at is None or effective_at <= now:
        effective_at = month_end(month_of(now))
    return Move(subscriber.company_id, subscriber.subscription_id, subscriber.version, effective_at)


# --- the commands ----------------------------------------------------------------------------


async def list_versions(now: datetime) -> list[VersionRow]:
    catalog = await tiers.load_catalog()
    return version_rows(
        catalog,
        await tiers.version_notes(),
        await company_plans.billed_versions_in_force(now),
        await company_plans.scheduled_versions(now),
        now,
    )


@dataclass(frozen=True)
class Edited:
    tier: Tier
    version: int
    previous: int  # the version it copies
    effective_from: datetime
    change: str  # "sms_sent: included 1,000 -> 1,500"


async def edit_version(
    *,
    tier: str,
    event_type: str | None,
    included: str | None,
    unit_price: str | None,
    note: str | None,
    now: datetime,
) -> Edited:
    """A new version of the tier: its newest version with the edit. PlanInputError (nothing
    written) on bad input."""
    catalog = await tiers.load_catalog()
    edit = parse_edit(
        catalog,
        tier=tier,
        event_type=event_type,
        included=included,
        unit_price=unit_price,
        note=note,
    )
    newest = catalog.latest(edit.tier)
    allowances = edited_allowances(newest, edit)
    made = await tiers.add_version(
        edit.tier, allowances, effective_from=effective_from(edit.tier, now), note=edit.note
    )
    change = describe_change(newest.allowance(edit.event_type), allowances[edit.event_type])
    return Edited(
        edit.tier, made.version, newest.version, made.effective_from, f"{edit.event_type}: {change}"
    )


@dataclass
class MigrationReport:
    tier: Tier
    version: int
    dry_run: bool
    moved: list[Move] = field(default_factory=list)  # would move, in a dry run
    skipped: list[Skip] = field(default_factory=list)
    failed: list[Skip] = field(default_factory=list)
    not_ready: list[str] = field(default_factory=list)  # Stripe's prices do not bill it


async def migrate_subscribers(
    tier_text: str,
    version: int,
    *,
    lifecycle: StripeLifecycle,
    stripe_prices: Callable[[Sequence[str]], Awaitable[Mapping[str, StripePrice]]],
    now: datetime,
    dry_run: bool,
    emit: Callable[[str], None] = lambda line: None,
) -> MigrationReport:
    """Move every subscriber of the tier on an older version to `version` at its next period
    start (the 1st), through its subscription's schedule, and record it in its plan history.
    `stripe_prices(lookup_keys)` answers the prices holding them (StripeCatalog's
    `prices_by_lookup_key`). One company's failure is reported, the others go on."""
    catalog = await tiers.load_catalog()
    tier = parse_tier(tier_text, catalog)
    if tier is Tier.FREE:
        raise PlanInputError(
            "the free tier has no subscriptions: a free version applies to every free company "
            "from its effective_from"
        )
    if (tier, version) not in catalog.versions:
        known = sorted(v for t, v in catalog.versions if t is tier)
        raise PlanInputError(
            f"{tier.value} has no version {version} (versions {', '.join(map(str, known))})"
        )
    newest = catalog.latest(tier).version
    if version != newest:
        raise PlanRefused(
            f"version {version} is not the newest version of {tier.value} ({newest}): only the "
            "newest version's prices hold the lookup keys new subscriptions get"
        )
    report = MigrationReport(tier, version, dry_run)
    keys = plan_lookup_keys(tier)
    prices: list[PlanPrice] = []
    try:
        report.not_ready = stripe_problems(tier, version, await stripe_prices(keys))
        if not report.not_ready:
            active = await lifecycle.plan_prices(keys)
            report.not_ready = [f"no active price holds {k}" for k in keys if k not in active]
            prices = [active[k] for k in keys if k in active]
    except (stripe.StripeError, LifecycleFailed) as exc:
        raise PlanRefused(
            f"Stripe did not answer which prices hold the lookup keys: {exc}"
        ) from exc
    if report.not_ready and not dry_run:
        return report

    for company_id in await company_plans.billed_in_force(now, tier):
        # One subscription change of a company at a time: an admin's changeTier waits.
        serialised = nullcontext() if dry_run else companies.changes_serialised(company_id)
        async with serialised:
            decision = await _decision(company_id, catalog, tier, version, now)
            if decision is None:
                continue
            if isinstance(decision, Skip):
                (report.failed if decision.failed else report.skipped).append(decision)
                outcome = "failed" if decision.failed else "skipped"
                emit(f"{outcome} {company_id}: {decision.reason}")
                continue
            if dry_run:
                report.moved.append(decision)
                emit(
                    f"would move {company_id} ({decision.subscription_id}) from version "
                    f"{decision.from_version} to {version} on {decision.effective_at:%Y-%m-%d}"
                )
                continue
            failure = await _move(lifecycle, decision, tier, version, prices, now)
            if failure is not None:
                report.failed.append(failure)
                emit(f"failed {company_id} ({decision.subscription_id}): {failure.reason}")
                continue
            report.moved.append(decision)
            emit(
                f"moved {company_id} ({decision.subscription_id}) from version "
                f"{decision.from_version} to {version} on {decision.effective_at:%Y-%m-%d}"
            )
    return report


async def _decision(
    company_id: uuid.UUID, catalog: PlanCatalog, tier: Tier, version: int, now: datetime
) -> Move | Skip | None:
    """The company read afresh (under its change lock) and what to do with it."""
    company = await companies.get(company_id)
    if company is None:
        return None
    period = company.plans.at(now)
    if not period.billed or period.tier is not tier:
        return None  # changed since the list was read
    subscription_id = period.subscription_id or company.stripe_subscription_id
    mirror = await subscriptions.get(subscription_id) if subscription_id else None
    subscriber = Subscriber(
        company_id=company_id,
        subscription_id=subscription_id,
        version=catalog.applying(period, now).version,
        later=tuple(p for p in company.plans.periods if p.effective_from > now),
        cancel_at_period_end=mirror is not None and mirror.cancel_at_period_end,
        period_end=mirror.current_period_end if mirror is not None else None,
    )
    return decide_move(subscriber, tier, version, now)


async def _move(
    lifecycle: StripeLifecycle,
    move: Move,
    tier: Tier,
    version: int,
    prices: Sequence[PlanPrice],
    now: datetime,
) -> Skip | None:
    """Stripe first (the schedule's next phase carries the version's prices), then the plan
    history; a Skip(failed) saying what went wrong."""
    try:
        schedule = await lifecycle.subscription_schedule(move.subscription_id)
        if schedule is not None:
            # A change is pending in Stripe (the customer's, or one this history does not
            # hold): replacing its next phase would drop it.
            return Skip(
                move.company_id,
                f"subscription {move.subscription_id} has a schedule ({schedule}) in Stripe: a "
                "change is pending there; left as it is",
            )
        await lifecycle.schedule_prices(move.subscription_id, schedule, prices)
    except Exception as exc:
        logger.warning(
            "plans migrate: Stripe did not move subscription %s: %s", move.subscription_id, exc
        )
        return Skip(move.company_id, f"Stripe did not do it: {exc}", failed=True)
    try:
        await schedule_change(
            move.company_id,
            tier,
            effective_at=move.effective_at,
            subscription_id=move.subscription_id,
            now=now,
            version=version,
        )
    except Exception as exc:
        logger.exception("plans migrate: recording the move of %s failed", move.company_id)
        return Skip(
            move.company_id,
            f"Stripe has the change, but recording it here failed ({exc}): the schedule's "
            "webhook (subscription_schedule.updated) records it",
            failed=True,
        )
    return None
