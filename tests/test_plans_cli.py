"""`meterline plans list|edit|migrate`: plan versions, and the promise that an edit never
re-prices an existing subscriber (issue 12, case 1): what Meterline shows equals what Stripe
bills, to the cent, before and after a version change.

Plan versions are global: every test here runs in a database of its own (a copy of a migrated
template), so the versions it makes never reach another test, and `plans migrate` sees only the
companies the test made.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from meterline.billing.catalog import Allowance, EventType, Tier
from meterline.billing.plans import PlanHistory, PlanPeriod, Reason
from meterline.db import engine, sql, tiers
from meterline.db.engine import DB
from meterline.db.migrate import migrate
from meterline.services import usage
from meterline.services.plan_versions import (
    Move,
    PlanInputError,
    Skip,
    Subscriber,
    decide_move,
    format_price,
    next_free_start,
    parse_included,
    parse_unit_price,
    plan_lookup_keys,
    stripe_problems,
)
from meterline.services.stripe_setup import Action, setup_stripe
from meterline.stripe_gateway.catalog import StripeCatalog, StripePrice
from meterline.stripe_gateway.client import close_client, make_client
from tests.commands import meterline
from tests.conftest import Clock, _with_database, make_token
from tests.plans import put_on_tier
from tests.test_plan_exactness import changed_tier, recorded, scheduled_tier
from tests.test_plan_exactness import subscribed as subscribed_at_nov_20
from tests.webhook_support import NOV_20, StripeWorld, company_row

# The SDK's httpx client posts bytes with `data=`, which httpx deprecates: not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")

NOV_1 = datetime(2026, 11, 1, tzinfo=UTC)
DEC_1 = datetime(2026, 12, 1, tzinfo=UTC)
JAN_1 = datetime(2027, 1, 1, tzinfo=UTC)


# --- a database per test ----------------------------------------------------------------------


def _url(server_url: str, name: str) -> str:
    return _with_database(server_url, name)  # also the embedded server's socket form


async def _admin(server_url: str, statement: str) -> None:
    connection = await asyncpg.connect(server_url)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


@asynccontextmanager
async def _engine_on(url: str, *, pool: bool) -> AsyncIterator[None]:
    """The engine on `url` (with a pool, or only configured), then back on what it was on."""
    previous = DB.config.get("dsn") if DB.config else None
    sizes = (DB.pool.get_min_size(), DB.pool.get_max_size()) if DB.pool is not None else None
    await engine.close_pool()
    tiers.forget_cached_plans()
    try:
        if pool:
            await engine.open_pool(url, min_size=1, max_size=20)
        else:
            engine.configure(url)
        yield
    finally:
        await engine.close_pool()
        tiers.forget_cached_plans()
        if previous is not None:
            engine.configure(previous)
            if sizes is not None:
                await engine.open_pool(previous, min_size=sizes[0], max_size=sizes[1])


@pytest.fixture(scope="module")
async def plans_template(server_url: str) -> AsyncIterator[str]:
    """A migrated database, copied for each test of this module."""
    name = f"meterline_plans_{uuid.uuid4().hex[:12]}"
    await _admin(server_url, f'CREATE DATABASE "{name}"')
    try:
        async with _engine_on(_url(server_url, name), pool=False):
            await migrate()
        yield name
    finally:
        await _admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def database_url(server_url: str, plans_template: str) -> AsyncIterator[str]:
    """This test's own database (overrides the shared one of conftest.py for this module)."""
    name = f"meterline_plans_{uuid.uuid4().hex[:12]}"
    await _admin(server_url, f'CREATE DATABASE "{name}" TEMPLATE "{plans_template}"')
    url = _url(server_url, name)
    try:
        async with _engine_on(url, pool=True):
            yield url
    finally:
        await _admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- helpers ----------------------------------------------------------------------------------


def plans(*args: str, env: dict[str, str], clock: Clock) -> subprocess.CompletedProcess[str]:
    """`meterline plans ARGS` at the test's moment. Whatever it wrote, this process reads the
    plans afresh."""
    result = meterline("plans", *args, env=env, clock=clock)
    tiers.forget_cached_plans()
    return result


def listed(env: dict[str, str], clock: Clock) -> dict[tuple[str, int], dict[str, Any]]:
    """`plans list --json`, by (tier, version)."""
    result = plans("list", "--json", env=env, clock=clock)
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert body["as_of"] == clock().isoformat()
    return {
        (tier["tier"], version["version"]): version
        for tier in body["tiers"]
        for version in tier["versions"]
    }


async def version_count() -> tuple[int, int]:
    rows = await sql.fetch(
        "SELECT (SELECT count(*) FROM plan_versions) AS versions, "
        "(SELECT count(*) FROM tier_allowances) AS allowances"
    )
    return rows[0]["versions"], rows[0]["allowances"]


async def rerun_setup_stripe(world: StripeWorld) -> list[str]:
    """`setup-stripe` again, by its own code (the command refuses `--as-of`, and this world's
    clock is fixed): the lookup keys it moved; `world.prices` follows them."""
    client = make_client(world.api.settings, timeout=5.0)
    try:
        result = await setup_stripe(StripeCatalog(client), await tiers.load_plans())
    finally:
        await close_client(client)
    world.prices.update({line.key: line.id for line in result.lines if line.kind == "price"})
    return sorted(line.key for line in result.lines if line.action is Action.MOVED)


async def record(
    company_id: uuid.UUID, event_type: EventType, quantity: int, now: datetime
) -> usage.RecordOutcome:
    return await usage.record_usage(
        company_id,
        usage.RecordRequest(event_type=event_type, quantity=quantity),
        now=now,
        late_grace_hours=1,
    )


async def overage(world: StripeWorld, company_id: uuid.UUID, month: str) -> Decimal:
    data = await world.api.data(
        f'{{ monthlySummary(month: "{month}") {{ totalOverageCost {{ amount }} }} }}',
        token=make_token(company_id, "company_admin"),
    )
    return Decimal(data["monthlySummary"]["totalOverageCost"]["amount"])


async def sms_included(world: StripeWorld, company_id: uuid.UUID) -> int:
    data = await world.api.data(
        "{ usageLimits { meters { eventType included } } }",
        token=make_token(company_id, "company_admin"),
    )
    meters = {m["eventType"]: m["included"] for m in data["usageLimits"]["meters"]}
    included: int = meters["SMS_SENT"]
    return included


def stripe_bills(world: StripeWorld, subscription: str, month: datetime) -> Decimal:
    """The metered subtotal of the subscription's invoice for `month`, in USD."""
    invoice = world.double.invoice_for_month(subscription, int(month.timestamp()))
    return Decimal(world.double.metered_subtotal(invoice)) / 100


async def subscribed(world: StripeWorld, tier: Tier = Tier.STARTER) -> tuple[uuid.UUID, str]:
    company_id = uuid.uuid4()
    _, subscription = world.subscribe(company_id, tier)
    await world.send("customer.subscription.created", subscription)
    return company_id, subscription


def in_force(history: PlanHistory, at: datetime) -> tuple[Tier, int | None, bool]:
    period = history.at(at)
    return period.tier, period.version, period.billed


# --- pure parts -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0", 0), ("1500", 1500), ("unlimited", None), (" Unlimited ", None)],
)
def test_included_accepts_whole_numbers_and_unlimited(text: str, expected: int | None) -> None:
    assert parse_included(text) == expected


@pytest.mark.parametrize("text", ["-1", "1.5", "1e3", "", "lots", "٣", "2147483648"])
def test_included_refuses_anything_else(text: str) -> None:
    with pytest.raises(PlanInputError):
        parse_included(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0", "0"), ("0.05", "0.05"), ("0.000001", "0.000001"), ("12.5000000", "12.5")],
)
def test_unit_price_is_a_non_negative_decimal_of_six_places(text: str, expected: str) -> None:
    assert parse_unit_price(text) == Decimal(expected)


@pytest.mark.parametrize(
    "text", ["-0.01", "0.0000001", "NaN", "Infinity", "abc", "1000000", "1e30", ""]
)
def test_unit_price_refuses_anything_else(text: str) -> None:
    with pytest.raises(PlanInputError):
        parse_unit_price(text)


def test_prices_show_their_digits_and_at_least_cents() -> None:
    shown = [format_price(Decimal(p)) for p in ("0.050000", "0.012345", "1", "100.000000")]
    assert shown == ["0.05", "0.012345", "1.00", "100.00"]


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (NOV_20, DEC_1),
        (NOV_1, DEC_1),
        (DEC_1 - timedelta(hours=1), DEC_1),
        (DEC_1 - timedelta(minutes=59, seconds=59), JAN_1),
        (DEC_1 - timedelta(seconds=1), JAN_1),
    ],
)
def test_a_free_version_starts_on_the_next_first_with_an_hours_notice(
    now: datetime, expected: datetime
) -> None:
    assert next_free_start(now) == expected


def _subscriber(**overrides: Any) -> Subscriber:
    values: dict[str, Any] = {
        "company_id": uuid.UUID(int=1),
        "subscription_id": "sub_1",
        "version": 1,
        "later": (),
        "cancel_at_period_end": False,
        "period_end": DEC_1,
    }
    values.update(overrides)
    return Subscriber(**values)


def test_who_moves_and_who_does_not() -> None:
    moves = decide_move(_subscriber(), Tier.STARTER, 2, NOV_20)
    assert moves == Move(uuid.UUID(int=1), "sub_1", 1, DEC_1)
    assert decide_move(_subscriber(version=2), Tier.STARTER, 2, NOV_20) is None
    assert decide_move(_subscriber(version=3), Tier.STARTER, 2, NOV_20) is None
    # No period end known (or already passed): the next 1st.
    assert decide_move(_subscriber(period_end=None), Tier.STARTER, 2, NOV_20) == moves
    already = PlanPeriod(DEC_1, Tier.STARTER, 2, billed=True, reason=Reason.SCHEDULED_CHANGE)
    skip = decide_move(_subscriber(later=(already,)), Tier.STARTER, 2, NOV_20)
    assert isinstance(skip, Skip) and not skip.failed and "already" in skip.reason
    # A pending change or cancellation would be replaced by the schedule: left alone.
    upgrade = PlanPeriod(DEC_1, Tier.PROFESSIONAL, 1, billed=True, reason=Reason.SCHEDULED_CHANGE)
    skip = decide_move(_subscriber(later=(upgrade,)), Tier.STARTER, 2, NOV_20)
    assert isinstance(skip, Skip) and not skip.failed and "professional" in skip.reason
    skip = decide_move(_subscriber(cancel_at_period_end=True), Tier.STARTER, 2, NOV_20)
    assert isinstance(skip, Skip) and not skip.failed
    skip = decide_move(_subscriber(subscription_id=None), Tier.STARTER, 2, NOV_20)
    assert isinstance(skip, Skip) and skip.failed


def test_stripe_is_ready_when_every_key_is_on_an_active_price_of_the_version() -> None:
    def price(key: str, version: int, *, active: bool = True) -> StripePrice:
        metadata = {"meterline_tier": "starter", "meterline_plan_version": str(version)}
        return StripePrice(f"price_{key}", key, "prod_1", active, None, metadata)

    keys = plan_lookup_keys(Tier.STARTER)
    ready = {key: price(key, 2) for key in keys}
    assert stripe_problems(Tier.STARTER, 2, ready) == []
    stale = {**ready, keys[1]: price(keys[1], 1)}
    assert stripe_problems(Tier.STARTER, 2, stale) == [
        f"{keys[1]} is price price_{keys[1]} of version 1"
    ]
    archived = {**ready, keys[0]: price(keys[0], 2, active=False)}
    assert stripe_problems(Tier.STARTER, 2, archived) == [f"no active price holds {keys[0]}"]
    assert len(stripe_problems(Tier.STARTER, 2, {})) == len(keys)


# --- list, and the free tier ------------------------------------------------------------------


async def test_list_shows_every_tier_and_version_and_who_is_billed_on_it(
    database_url: str,
) -> None:
    clock = Clock(fixed=NOV_20)
    env = {"DATABASE_URL": database_url}
    billed = uuid.uuid4()
    await put_on_tier(billed, Tier.STARTER, now=NOV_20, since=NOV_1, billed=True)
    await put_on_tier(uuid.uuid4(), Tier.PROFESSIONAL, now=NOV_20)  # a manual account: not billed

    versions = listed(env, clock)
    assert sorted(versions) == [
        ("enterprise", 1),
        ("free", 1),
        ("professional", 1),
        ("starter", 1),
    ]
    starter = versions[("starter", 1)]
    assert (starter["companies"], starter["scheduled"], starter["newest"]) == (1, 0, True)
    assert starter["note"] == "the default plan"
    assert starter["effective_from"] == "1970-01-01T00:00:00+00:00"
    assert starter["allowances"]["sms_sent"] == {"included": 1000, "unit_price": "0.05"}
    assert versions[("professional", 1)]["companies"] == 0
    assert versions[("enterprise", 1)]["allowances"]["ai_query"] == {
        "included": None,
        "unit_price": "0.20",
    }
    free = versions[("free", 1)]
    assert (free["companies"], free["in_force"]) == (None, True)

    text = plans("list", env=env, clock=clock)
    assert text.returncode == 0, text.stderr
    assert "starter: a subscription keeps the version of its Stripe prices" in text.stdout
    assert "version 1  from 1970-01-01T00:00:00+00:00  companies 1" in text.stdout
    assert "sms_sent          included 1,000, unit price 0.05 USD" in text.stdout
    assert "enterprise" in text.stdout and "included unlimited, unit price 0.20 USD" in text.stdout


async def test_a_free_edit_applies_to_every_free_company_from_the_next_first(
    database_url: str,
) -> None:
    clock = Clock(fixed=NOV_20)
    env = {"DATABASE_URL": database_url}
    company_id = uuid.uuid4()
    assert isinstance(await record(company_id, EventType.EMAIL_SENT, 80, NOV_20), usage.Recorded)

    edited = plans(
        "edit", "--tier", "free", "--event-type", "email_sent", "--included", "200",
        "--note", "more emails for free", env=env, clock=clock,
    )  # fmt: skip
    assert edited.returncode == 0, edited.stderr
    assert "created free version 2 (from version 1): email_sent: included 100 -> 200" in (
        edited.stdout
    )
    assert "it applies to every free company from 2026-12-01T00:00:00+00:00" in edited.stdout

    # November keeps the free cap it had: 100 emails.
    refused = await record(company_id, EventType.EMAIL_SENT, 30, NOV_20 + timedelta(days=10))
    assert isinstance(refused, usage.LimitExceeded) and refused.included == 100
    # From the 1st, every free company (this one, and one never seen) has 200.
    december = DEC_1 + timedelta(hours=2)
    for someone in (company_id, uuid.uuid4()):
        assert isinstance(
            await record(someone, EventType.EMAIL_SENT, 190, december), usage.Recorded
        )
        refused = await record(someone, EventType.EMAIL_SENT, 11, december)
        assert isinstance(refused, usage.LimitExceeded) and refused.included == 200

    versions = listed(env, clock)
    assert (versions[("free", 1)]["in_force"], versions[("free", 2)]["in_force"]) == (True, False)
    assert versions[("free", 2)]["effective_from"] == DEC_1.isoformat()
    assert versions[("free", 2)]["note"] == "more emails for free"
    assert versions[("free", 2)]["allowances"]["email_sent"]["included"] == 200
    assert versions[("free", 2)]["allowances"]["guest_invitation"]["included"] == 50  # copied
    assert listed(env, Clock(fixed=DEC_1))[("free", 2)]["in_force"]

    # Less than an hour before a 1st, a free version waits for the 1st after.
    late = Clock(fixed=DEC_1 - timedelta(minutes=30))
    edited = plans(
        "edit", "--tier", "free", "--event-type", "sms_sent", "--unit-price", "0.04",
        env=env, clock=late,
    )  # fmt: skip
    assert edited.returncode == 0, edited.stderr
    assert "from 2027-01-01T00:00:00+00:00" in edited.stdout
    assert "unit price 0.05 -> 0.04 USD" in edited.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tier", "gold", "--event-type", "sms_sent", "--included", "5"], "unknown tier 'gold'"),
        (
            ["--tier", "starter", "--event-type", "pigeon_post", "--included", "5"],
            "unknown event type 'pigeon_post'",
        ),
        (["--tier", "starter", "--included", "5"], "give --event-type"),
        (["--tier", "starter", "--event-type", "sms_sent"], "nothing to change"),
        (["--tier", "starter", "--event-type", "sms_sent", "--included", "-1"], "--included"),
        (
            ["--tier", "starter", "--event-type", "sms_sent", "--unit-price", "0.0000001"],
            "at most 6 decimals",
        ),
        (["--tier", "starter", "--event-type", "sms_sent", "--unit-price", "-1"], "negative"),
        (
            ["--tier", "starter", "--event-type", "sms_sent", "--included", "1000"],
            "nothing changes: starter version 1 already has sms_sent included 1,000",
        ),
    ],
)
async def test_bad_input_exits_2_and_writes_nothing(
    database_url: str, args: list[str], message: str
) -> None:
    before = await version_count()
    result = plans("edit", *args, env={"DATABASE_URL": database_url}, clock=Clock(fixed=NOV_20))
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert message in result.stderr
    assert result.stderr.startswith("meterline: ")
    assert await version_count() == before


# --- paid versions and Stripe -----------------------------------------------------------------


async def test_a_paid_edit_leaves_existing_subscribers_on_their_version(
    world: StripeWorld,
) -> None:
    """Case 1: starter's SMS allowance 1,000 -> 1,500 and `setup-stripe` again. An existing
    starter company sending 1,200 SMS is still priced by version 1: $10.00, what Stripe bills."""
    env = world.cli_env()
    company_id, subscription = await subscribed(world)
    assert in_force((await company_row(company_id)).plans, NOV_20) == (Tier.STARTER, 1, True)

    edited = plans(
        "edit", "--tier", "starter", "--event-type", "sms_sent", "--included", "1500",
        "--note", "SMS bundle doubled", env=env, clock=world.clock,
    )  # fmt: skip
    assert edited.returncode == 0, edited.stderr
    assert "created starter version 2 (from version 1): sms_sent: included 1,000 -> 1,500" in (
        edited.stdout
    )
    assert "run `meterline setup-stripe` so new subscriptions get version 2" in edited.stdout
    catalog = await tiers.load_catalog()
    assert catalog.effective_from[(Tier.STARTER, 2)] == NOV_20  # the app's clock: --as-of
    assert catalog.versions[(Tier.STARTER, 2)].allowance(EventType.SMS_SENT) == Allowance(
        1500, Decimal("0.05")
    )
    assert catalog.versions[(Tier.STARTER, 1)].allowance(EventType.SMS_SENT).included == 1000

    old_prices = world.tier_prices(Tier.STARTER)
    moved = await rerun_setup_stripe(world)
    assert moved == sorted(plan_lookup_keys(Tier.STARTER))  # a version moves all six keys
    assert set(world.tier_prices(Tier.STARTER)).isdisjoint(old_prices)
    held = [item["price"]["id"] for item in world.double.get_object(subscription)["items"]["data"]]
    assert sorted(held) == sorted(old_prices)  # the subscriber keeps its prices in Stripe...

    # ... and its version here: 1,200 SMS cost 200 x 0.05 on both sides.
    assert isinstance(await record(company_id, EventType.SMS_SENT, 1200, NOV_20), usage.Recorded)
    assert await sms_included(world, company_id) == 1000
    await world.sync(company_id)
    assert await overage(world, company_id, "2026-11") == Decimal("10.00")
    assert stripe_bills(world, subscription, NOV_1) == Decimal("10.00")

    versions = listed(env, world.clock)
    assert versions[("starter", 1)]["companies"] == 1
    assert (versions[("starter", 2)]["companies"], versions[("starter", 2)]["newest"]) == (0, True)
    assert versions[("starter", 2)]["note"] == "SMS bundle doubled"


async def test_a_subscription_made_after_setup_stripe_is_on_the_new_version(
    world: StripeWorld,
) -> None:
    env = world.cli_env()
    edited = plans(
        "edit", "--tier", "starter", "--event-type", "sms_sent", "--included", "1500",
        env=env, clock=world.clock,
    )  # fmt: skip
    assert edited.returncode == 0, edited.stderr
    await rerun_setup_stripe(world)

    company_id, subscription = await subscribed(world)
    assert in_force((await company_row(company_id)).plans, NOV_20) == (Tier.STARTER, 2, True)
    assert isinstance(await record(company_id, EventType.SMS_SENT, 1600, NOV_20), usage.Recorded)
    assert await sms_included(world, company_id) == 1500
    await world.sync(company_id)
    assert await overage(world, company_id, "2026-11") == Decimal("5.00")  # 100 x 0.05
    assert stripe_bills(world, subscription, NOV_1) == Decimal("5.00")
    versions = listed(env, world.clock)
    assert (versions[("starter", 1)]["companies"], versions[("starter", 2)]["companies"]) == (0, 1)


async def test_migrate_moves_older_subscribers_at_the_next_first(world: StripeWorld) -> None:
    env = world.cli_env()
    moving, moving_sub = await subscribed(world)
    refused, refused_sub = await subscribed(world)
    cancelling, cancelling_sub = await subscribed(world)
    other_tier, _ = await subscribed(world, Tier.PROFESSIONAL)
    world.double.update_subscription(cancelling_sub, cancel_at_period_end=True)
    await world.send("customer.subscription.updated", cancelling_sub)

    assert plans(
        "edit", "--tier", "starter", "--event-type", "sms_sent", "--included", "1500",
        env=env, clock=world.clock,
    ).returncode == 0  # fmt: skip
    migrate_args = ("migrate", "--tier", "starter", "--to-version", "2")

    # Stripe's prices do not bill version 2 until setup-stripe moved them.
    not_ready = plans(*migrate_args, env=env, clock=world.clock)
    assert not_ready.returncode == 1, not_ready.stderr
    assert "run `meterline setup-stripe`" in not_ready.stderr
    assert "tier_starter is price" in not_ready.stderr
    await rerun_setup_stripe(world)
    newcomer, _ = await subscribed(world)  # on version 2 already: not a candidate

    not_newest = plans(
        "migrate", "--tier", "starter", "--to-version", "1", env=env, clock=world.clock
    )
    assert not_newest.returncode == 1 and "not the newest version" in not_newest.stderr
    free = plans("migrate", "--tier", "free", "--to-version", "1", env=env, clock=world.clock)
    assert free.returncode == 2 and "free tier has no subscriptions" in free.stderr
    missing = plans("migrate", "--tier", "starter", "--to-version", "7", env=env, clock=world.clock)
    assert missing.returncode == 2 and "starter has no version 7" in missing.stderr

    histories = {c: (await company_row(c)).plans for c in (moving, refused, cancelling)}
    dry = plans(*migrate_args, "--dry-run", env=env, clock=world.clock)
    assert dry.returncode == 0, dry.stderr
    assert f"would move {moving} ({moving_sub}) from version 1 to 2 on 2026-12-01" in dry.stdout
    assert f"would move {refused} ({refused_sub})" in dry.stdout
    assert f"skipped {cancelling}: its subscription ends at the period end" in dry.stdout
    assert str(newcomer) not in dry.stdout and str(other_tier) not in dry.stdout
    assert "starter to version 2: would move 2, skipped 1, failed 0" in dry.stdout
    assert world.double.get_object(moving_sub)["schedule"] is None  # nothing asked of Stripe
    assert {c: (await company_row(c)).plans for c in histories} == histories

    # Stripe refuses one (its subscription ended there; the webhook has not arrived): reported,
    # and the others go on.
    world.double.cancel_subscription(refused_sub)
    real = plans(*migrate_args, env=env, clock=world.clock)
    assert real.returncode == 1, (real.stdout, real.stderr)
    assert f"moved {moving} ({moving_sub}) from version 1 to 2 on 2026-12-01" in real.stdout
    assert f"failed {refused} ({refused_sub}): Stripe did not do it" in real.stdout
    assert "starter to version 2: moved 1, skipped 1, failed 1" in real.stdout
    assert "1 companies were not moved" in real.stderr

    schedule = world.double.get_object(moving_sub)["schedule"]
    assert schedule is not None
    phases = world.double.get_object(schedule)["phases"]
    assert [item["price"] for item in phases[1]["items"]] == world.tier_prices(Tier.STARTER)
    assert phases[1]["start_date"] == int(DEC_1.timestamp())
    history = (await company_row(moving)).plans
    assert in_force(history, NOV_20) == (Tier.STARTER, 1, True)
    assert history.at(DEC_1).reason == Reason.SCHEDULED_CHANGE
    assert in_force(history, DEC_1) == (Tier.STARTER, 2, True)
    assert (await company_row(refused)).plans == histories[refused]
    assert (await company_row(cancelling)).plans == histories[cancelling]
    versions = listed(env, world.clock)
    assert versions[("starter", 2)]["scheduled"] == 1
    assert versions[("starter", 1)]["companies"] == 3  # until the 1st

    # Run again: the moved one is moving already; nothing is asked of its schedule again.
    again = plans(*migrate_args, env=env, clock=world.clock)
    assert f"skipped {moving}: moves to version 2 on 2026-12-01 already" in again.stdout
    assert again.returncode == 1  # the refused one still fails

    # The 1st: Stripe starts the phase, its webhook confirms version 2, and December's SMS are
    # priced by it here and in Stripe.
    await world.reach(DEC_1 + timedelta(minutes=1))
    history = (await company_row(moving)).plans
    assert history.at(DEC_1).reason == Reason.SUBSCRIPTION
    assert in_force(history, DEC_1) == (Tier.STARTER, 2, True)
    assert isinstance(await record(moving, EventType.SMS_SENT, 1600, world.clock()), usage.Recorded)
    await world.sync(moving)
    assert await overage(world, moving, "2026-12") == Decimal("5.00")
    assert stripe_bills(world, moving_sub, DEC_1) == Decimal("5.00")
    assert listed(env, world.clock)[("starter", 2)]["companies"] == 2  # moving, newcomer


async def test_migrate_needs_a_stripe_key(database_url: str) -> None:
    result = plans(
        "migrate", "--tier", "starter", "--to-version", "1",
        env={"DATABASE_URL": database_url}, clock=Clock(fixed=NOV_20),
    )  # fmt: skip
    assert result.returncode == 1
    assert "STRIPE_SECRET_KEY" in result.stderr


async def test_the_schedules_webhook_keeps_a_pending_move(world: StripeWorld) -> None:
    env = world.cli_env()
    company_id, subscription = await subscribed(world)
    assert plans(
        "edit", "--tier", "starter", "--event-type", "sms_sent", "--included", "1500",
        env=env, clock=world.clock,
    ).returncode == 0  # fmt: skip
    await rerun_setup_stripe(world)
    moved = plans("migrate", "--tier", "starter", "--to-version", "2", env=env, clock=world.clock)
    assert moved.returncode == 0, moved.stderr
    assert in_force((await company_row(company_id)).plans, DEC_1) == (Tier.STARTER, 2, True)
    # Stripe reports the schedule the migration made: the move stays pending.
    schedule = world.double.get_object(subscription)["schedule"]
    await world.send("subscription_schedule.created", schedule)
    assert in_force((await company_row(company_id)).plans, DEC_1) == (Tier.STARTER, 2, True)


async def test_migrate_leaves_a_pending_change_the_history_does_not_hold(
    world: StripeWorld,
) -> None:
    """A starter company asked (changeTier) for professional from 1 Dec before m0010 was
    deployed: Stripe holds the schedule, but m0010's backfill writes only one `subscription`
    period (it never reads companies.scheduled_tier nor the subscriptions' cancel_at_period_end).
    `plans migrate --tier starter --to-version 2` then sees nothing pending and replaces the
    schedule's next phase with starter v2: the customer's upgrade is silently dropped in Stripe."""
    company_id, _, subscription = await subscribed_at_nov_20(world, Tier.STARTER)
    schedule = await changed_tier(world, company_id, Tier.PROFESSIONAL)
    # The state m0010 leaves for this company: the pending change is not in company_plans.
    await sql.execute(
        "DELETE FROM company_plans WHERE company_id = $1 AND reason = 'scheduled_change'",
        company_id,
    )
    assert await scheduled_tier(world, company_id) == ("STARTER", None)  # case 8 again

    env = world.cli_env()
    edit = plans("edit", "--tier", "starter", "--event-type", "sms_sent", "--included", "1500",
                 env=env, clock=world.clock)  # fmt: skip
    assert edit.returncode == 0, edit.stderr
    await rerun_setup_stripe(world)
    moved = plans("migrate", "--tier", "starter", "--to-version", "2", env=env, clock=world.clock)
    phases = world.double.get_object(schedule)["phases"]
    # The customer's pending upgrade must survive (skip the company, or refuse).
    assert [i["price"] for i in phases[1]["items"]] == world.tier_prices(Tier.PROFESSIONAL), (
        moved.stdout,
        subscription,
    )


async def test_change_tier_records_the_version_its_schedule_bills(
    world: StripeWorld,
) -> None:
    """`plans edit --tier professional` (v2, AI 300 included) before setup-stripe moved the
    lookup keys. A starter company's changeTier(PROFESSIONAL) puts professional v1's prices in
    the schedule, but records SCHEDULED_CHANGE with version None, which resolves by instant to
    v2. From 00:00 on the 1st until the phase's webhook is applied, December opens at v2."""
    company_id, _, _ = await subscribed_at_nov_20(world, Tier.STARTER)
    env = world.cli_env()
    edit = plans("edit", "--tier", "professional", "--event-type", "ai_query", "--included",
                 "300", env=env, clock=world.clock)  # fmt: skip
    assert edit.returncode == 0, edit.stderr
    await changed_tier(world, company_id, Tier.PROFESSIONAL)
    world.clock.set(DEC_1 + timedelta(minutes=2))  # the phase has started in Stripe
    december = await recorded(company_id, EventType.AI_QUERY, 250, DEC_1 + timedelta(minutes=2))
    assert december.usage.included == 200  # professional v1, what the schedule's prices bill
