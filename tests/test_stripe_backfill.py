"""`meterline stripe backfill`: the subscription and invoice mirrors filled from Stripe's lists
alone (no webhook delivered), idempotent, and consistent when Stripe fails half-way."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from meterline.billing.catalog import EventType, Tier
from meterline.db import sql
from meterline.services.backfill import BackfillReport, backfill
from meterline.services.invoices import UNKNOWN_CUSTOMER
from meterline.services.subscriptions import Flag
from meterline.stripe_gateway.client import close_client, make_client
from meterline.stripe_gateway.meter_events import meter_event_name
from meterline.stripe_gateway.mirror import StripeReader
from tests.commands import meterline
from tests.conftest import make_token
from tests.webhook_support import StripeWorld, company_row

SEP_1 = datetime(2026, 9, 1, tzinfo=UTC)
OCT_1 = datetime(2026, 10, 1, tzinfo=UTC)
NOV_1 = datetime(2026, 11, 1, tzinfo=UTC)
NOV_5 = datetime(2026, 11, 5, 12, 0, tzinfo=UTC)  # within the failed invoice's 14 days of grace

HISTORY = """{ paymentHistory { id number status amountDue { amount currency }
  amountPaid { amount } periodStart periodEnd paidAt hostedInvoiceUrl invoicePdf } }"""
LIMITS = "{ usageLimits { tier subscriptionStatus billingStatus graceEndsAt gracePeriodDays } }"


def ts(moment: datetime) -> int:
    return int(moment.timestamp())


@dataclass
class Account:
    """What exists only in Stripe (the double): no webhook was ever delivered."""

    active: uuid.UUID  # starter, active: paid invoices for September and October
    canceled: uuid.UUID  # starter, canceled on 2 November: October's invoice voided
    past_due: uuid.UUID  # professional, past_due: October's invoice open, its payment failed
    customers: dict[uuid.UUID, str]
    subscriptions: dict[uuid.UUID, str]
    orphan_subscription: str  # names no company
    orphan_customer: str
    sep_paid: str
    oct_paid: str
    oct_void: str
    oct_failed: str
    oct_orphan: str

    @property
    def companies(self) -> list[uuid.UUID]:
        return [self.active, self.canceled, self.past_due]

    @property
    def invoices(self) -> list[str]:
        return [self.sep_paid, self.oct_paid, self.oct_void, self.oct_failed, self.oct_orphan]

    @property
    def objects(self) -> list[str]:
        return [*self.subscriptions.values(), self.orphan_subscription, *self.invoices]


async def stripe_account(world: StripeWorld) -> Account:
    active, canceled, past_due = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    customers: dict[uuid.UUID, str] = {}
    subscriptions: dict[uuid.UUID, str] = {}
    for company_id, tier in ((active, Tier.STARTER), (canceled, Tier.STARTER)):
        customers[company_id], subscriptions[company_id] = world.subscribe(
            company_id, tier, start=SEP_1
        )
    customers[past_due], subscriptions[past_due] = world.subscribe(
        past_due, Tier.PROFESSIONAL, start=SEP_1
    )
    orphan_customer, orphan = world.subscribe(None, Tier.STARTER, start=SEP_1)

    # October usage of the active company, 100 SMS beyond the 1,000 starter includes.
    world.clock.set(datetime(2026, 10, 20, 9, 0, tzinfo=UTC))
    client = make_client(world.api.settings, timeout=5.0)
    try:
        await client.v1.billing.meter_events.create_async(
            params={
                "event_name": meter_event_name(EventType.SMS_SENT),
                "payload": {"stripe_customer_id": customers[active], "value": "1100"},
                "timestamp": ts(world.clock()),
                "identifier": f"backfill-test-{uuid.uuid4().hex}",
            }
        )
    finally:
        await close_client(client)

    world.clock.set(OCT_1 + timedelta(hours=2))
    sep_paid = world.double.invoice_for_month(subscriptions[active], ts(SEP_1), status="paid")
    world.clock.set(NOV_1 + timedelta(minutes=30))
    oct_paid = world.double.invoice_for_month(subscriptions[active], ts(OCT_1), status="paid")
    oct_void = world.double.invoice_for_month(subscriptions[canceled], ts(OCT_1), status="void")
    oct_failed = world.double.invoice_for_month(subscriptions[past_due], ts(OCT_1))
    oct_orphan = world.double.invoice_for_month(orphan, ts(OCT_1))
    world.clock.set(NOV_1 + timedelta(hours=1))  # the first payment attempt fails
    world.double.fail_invoice_payment(oct_failed)
    world.double.update_subscription(subscriptions[past_due], status="past_due")
    world.clock.set(NOV_1 + timedelta(days=1))
    world.double.cancel_subscription(subscriptions[canceled])
    world.clock.set(NOV_5)
    return Account(
        active=active,
        canceled=canceled,
        past_due=past_due,
        customers=customers,
        subscriptions=subscriptions,
        orphan_subscription=orphan,
        orphan_customer=orphan_customer,
        sep_paid=sep_paid,
        oct_paid=oct_paid,
        oct_void=oct_void,
        oct_failed=oct_failed,
        oct_orphan=oct_orphan,
    )


async def run_backfill(world: StripeWorld) -> tuple[BackfillReport, list[str]]:
    client = make_client(world.api.settings, timeout=5.0)
    lines: list[str] = []
    try:
        report = await backfill(StripeReader(client), clock=world.clock, progress=lines.append)
    finally:
        await close_client(client)
    return report, lines


def env_for(world: StripeWorld, database_url: str) -> dict[str, str]:
    return {
        "DATABASE_URL": database_url,
        "STRIPE_SECRET_KEY": world.double.api_key,
        "STRIPE_API_BASE": world.double.url,
    }


async def invoice_rows(ids: list[str]) -> dict[str, dict[str, Any]]:
    rows = await sql.fetch(
        "SELECT * FROM invoices WHERE id = ANY($1)",
        ids,
    )
    return {
        r["id"]: {k: v for k, v in r.items() if k not in ("read_seq", "updated_at")} for r in rows
    }


async def snapshot(account: Account) -> dict[str, Any]:
    """Everything the backfill writes about these objects, but the read sequence and times of
    writing (a re-read may store the same state again)."""
    companies = await sql.fetch(
        "SELECT * FROM companies WHERE id = ANY($1) ORDER BY id", account.companies
    )
    subscriptions = await sql.fetch(
        "SELECT * FROM subscriptions WHERE id = ANY($1) ORDER BY id",
        [*account.subscriptions.values(), account.orphan_subscription],
    )
    flags = await sql.fetch(
        "SELECT id, company_id, kind, object_id, message, created_at, resolved_at "
        "FROM stripe_flags WHERE object_id = ANY($1) OR company_id = ANY($2) ORDER BY id",
        account.objects,
        account.companies,
    )
    return {
        "companies": [dict(r) for r in companies],
        "subscriptions": [
            {k: v for k, v in r.items() if k not in ("read_seq", "updated_at")}
            for r in subscriptions
        ],
        "invoices": await invoice_rows(account.invoices),
        "flags": [dict(r) for r in flags],
    }


async def open_flags_on(object_ids: list[str]) -> set[tuple[str, str]]:
    rows = await sql.fetch(
        "SELECT kind, object_id FROM stripe_flags WHERE object_id = ANY($1) "
        "AND resolved_at IS NULL",
        object_ids,
    )
    return {(r["kind"], r["object_id"]) for r in rows}


async def gql(world: StripeWorld, company_id: uuid.UUID, query: str) -> dict[str, Any]:
    return await world.api.data(query, token=make_token(company_id, "company_admin"))


# --- the backfill -------------------------------------------------------------------------------


async def test_backfill_mirrors_companies_invoices_and_dunning_from_stripe_alone(
    world: StripeWorld,
) -> None:
    account = await stripe_account(world)
    world.double.embedded_invoice_lines = 1  # the metered lines come from the lines pages

    report, lines = await run_backfill(world)

    assert report == BackfillReport(
        subscriptions=4, subscriptions_refused=1, invoices=5, invoices_refused=1
    )
    assert len(lines) == 2
    assert any(line.startswith(f"{account.orphan_subscription}: ") for line in lines)
    assert any(line.startswith(f"{account.oct_orphan}: ") for line in lines)

    expected = {
        account.active: (Tier.STARTER, "active"),
        account.canceled: (Tier.FREE, "canceled"),
        account.past_due: (Tier.PROFESSIONAL, "past_due"),
    }
    for company_id, (tier, status) in expected.items():
        company = await company_row(company_id)
        assert (
            company.tier,
            company.stripe_customer_id,
            company.stripe_subscription_id,
            company.subscription_status,
        ) == (tier, account.customers[company_id], account.subscriptions[company_id], status)
    assert (
        await sql.fetchrow(
            "SELECT 1 FROM companies WHERE stripe_customer_id = $1", account.orphan_customer
        )
        is None
    )
    assert await open_flags_on([account.orphan_subscription, account.oct_orphan]) == {
        (Flag.NO_COMPANY, account.orphan_subscription),
        (UNKNOWN_CUSTOMER, account.oct_orphan),
    }

    rows = await invoice_rows(account.invoices)
    assert set(rows) == {account.sep_paid, account.oct_paid, account.oct_void, account.oct_failed}
    owner = {
        account.sep_paid: account.active,
        account.oct_paid: account.active,
        account.oct_void: account.canceled,
        account.oct_failed: account.past_due,
    }
    for invoice_id, row in rows.items():
        stripe_invoice = world.double.get_object(invoice_id)
        assert row["company_id"] == owner[invoice_id]
        assert row["subscription_id"] == account.subscriptions[owner[invoice_id]]
        for name in (
            "status",
            "number",
            "amount_due",
            "amount_paid",
            "amount_remaining",
            "hosted_invoice_url",
            "invoice_pdf",
            "billing_reason",
            "currency",
        ):
            assert row[name] == stripe_invoice[name], (invoice_id, name)
        assert row["created"] == datetime.fromtimestamp(stripe_invoice["created"], UTC)
        assert row["number"] is not None and row["hosted_invoice_url"] is not None
    assert {i: rows[i]["status"] for i in rows} == {
        account.sep_paid: "paid",
        account.oct_paid: "paid",
        account.oct_void: "void",
        account.oct_failed: "open",
    }
    assert {i: rows[i]["usage_month"] for i in rows} == {
        account.sep_paid: date(2026, 9, 1),
        account.oct_paid: date(2026, 10, 1),
        account.oct_void: date(2026, 10, 1),
        account.oct_failed: date(2026, 10, 1),
    }
    # The starter base fee (49.00) for the next month plus 100 SMS beyond 1,000 at 0.05.
    assert (rows[account.sep_paid]["amount_due"], rows[account.oct_paid]["amount_due"]) == (
        4900,
        5400,
    )
    assert rows[account.oct_paid]["paid_at"] == NOV_1 + timedelta(hours=1)
    assert rows[account.oct_failed]["first_failed_at"] is not None
    assert rows[account.oct_paid]["first_failed_at"] is None

    history = (await gql(world, account.active, HISTORY))["paymentHistory"]
    assert [(i["id"], i["status"]) for i in history] == [
        (account.oct_paid, "paid"),
        (account.sep_paid, "paid"),
    ]
    assert history[0]["amountDue"] == {"amount": "54.00", "currency": "usd"}
    assert history[0]["amountPaid"] == {"amount": "54.00"}
    assert history[1]["amountDue"]["amount"] == "49.00"
    assert history[0]["number"] == rows[account.oct_paid]["number"]
    assert history[0]["hostedInvoiceUrl"] == rows[account.oct_paid]["hosted_invoice_url"]
    assert history[0]["invoicePdf"] == rows[account.oct_paid]["invoice_pdf"]
    assert history[0]["paidAt"].startswith("2026-11-01T01:00:00")
    assert history[0]["periodStart"].startswith("2026-10-01")
    assert history[0]["periodEnd"].startswith("2026-11-01")
    canceled_history = (await gql(world, account.canceled, HISTORY))["paymentHistory"]
    assert [(i["id"], i["status"]) for i in canceled_history] == [(account.oct_void, "void")]

    past_due = (await gql(world, account.past_due, LIMITS))["usageLimits"]
    assert (past_due["tier"], past_due["subscriptionStatus"], past_due["billingStatus"]) == (
        "PROFESSIONAL",
        "PAST_DUE",
        "PAST_DUE",
    )
    assert past_due["gracePeriodDays"] == 14
    # The list does not say when the payment failed: the finalisation (1 November) stands for it.
    assert past_due["graceEndsAt"].startswith("2026-11-15T00:00:00")
    for company_id in (account.active, account.canceled):
        assert (await gql(world, company_id, LIMITS))["usageLimits"]["billingStatus"] == "OK"


async def test_a_second_backfill_changes_nothing(world: StripeWorld) -> None:
    account = await stripe_account(world)
    first, first_lines = await run_backfill(world)
    before = await snapshot(account)
    world.clock.set(NOV_5 + timedelta(hours=3))

    second, second_lines = await run_backfill(world)

    assert second == first == BackfillReport(4, 1, 5, 1)
    assert [line.split(":")[0] for line in second_lines] == [
        line.split(":")[0] for line in first_lines
    ]
    assert second_lines[0].startswith(f"{account.orphan_subscription}: ")
    assert "names no company" in second_lines[0]
    after = await snapshot(account)
    assert after == before
    assert len(after["flags"]) == 2  # the orphan subscription and its invoice, once each
    past_due = (await gql(world, account.past_due, LIMITS))["usageLimits"]
    assert past_due["billingStatus"] == "PAST_DUE"
    assert past_due["graceEndsAt"].startswith("2026-11-15T00:00:00")


# --- the command ---------------------------------------------------------------------------------


async def test_the_command_backfills_and_prints_its_counts(
    world: StripeWorld, database_url: str
) -> None:
    account = await stripe_account(world)

    result = meterline("stripe", "backfill", env=env_for(world, database_url), clock=world.clock)

    assert result.returncode == 0, result.stderr
    out = result.stdout.splitlines()
    assert out[-1] == ("subscriptions: 4 read, 1 not applied; invoices: 5 read, 1 not applied"), (
        result.stdout
    )
    assert any(line.startswith(f"{account.orphan_subscription}: ") for line in out)
    assert any(line.startswith(f"{account.oct_orphan}: ") for line in out)
    company = await company_row(account.active)
    assert (company.tier, company.stripe_subscription_id) == (
        Tier.STARTER,
        account.subscriptions[account.active],
    )
    rows = await invoice_rows(account.invoices)
    assert {i: r["status"] for i, r in rows.items()} == {
        account.sep_paid: "paid",
        account.oct_paid: "paid",
        account.oct_void: "void",
        account.oct_failed: "open",
    }
    again = meterline("stripe", "backfill", env=env_for(world, database_url), clock=world.clock)
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[-1] == out[-1]


async def test_the_command_without_a_stripe_key_says_so(
    world: StripeWorld, database_url: str
) -> None:
    account = await stripe_account(world)
    env = {**env_for(world, database_url), "STRIPE_SECRET_KEY": ""}

    result = meterline("stripe", "backfill", env=env, clock=world.clock)

    assert result.returncode != 0
    assert "STRIPE_SECRET_KEY" in result.stderr and "not configured" in result.stderr
    assert "Traceback" not in result.stderr
    assert not any(r.startswith("subscriptions:") for r in result.stdout.splitlines())
    assert await sql.fetchrow("SELECT 1 FROM companies WHERE id = $1", account.active) is None


async def test_a_stripe_failure_mid_list_stops_with_the_error_and_keeps_what_was_applied(
    world: StripeWorld, database_url: str
) -> None:
    account = await stripe_account(world)
    world.double.fail("500", 1.0, path_prefix="/v1/invoices")

    result = meterline("stripe", "backfill", env=env_for(world, database_url), clock=world.clock)

    assert result.returncode != 0
    assert "500" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not any(line.startswith("subscriptions:") for line in result.stdout.splitlines())
    # The subscriptions came first and are applied, whole; no invoice is.
    for company_id, tier in (
        (account.active, Tier.STARTER),
        (account.canceled, Tier.FREE),
        (account.past_due, Tier.PROFESSIONAL),
    ):
        company = await company_row(company_id)
        assert (company.tier, company.stripe_customer_id, company.stripe_subscription_id) == (
            tier,
            account.customers[company_id],
            account.subscriptions[company_id],
        )
    mirrored = await sql.fetch(
        "SELECT id FROM subscriptions WHERE id = ANY($1)", list(account.subscriptions.values())
    )
    assert len(mirrored) == 3
    assert await invoice_rows(account.invoices) == {}
    past_due = (await gql(world, account.past_due, LIMITS))["usageLimits"]
    assert past_due["billingStatus"] == "OK"  # no invoice seen yet: nothing is past due

    # Once Stripe answers again, the same command completes the mirror.
    world.double.heal()
    again = meterline("stripe", "backfill", env=env_for(world, database_url), clock=world.clock)
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[-1] == (
        "subscriptions: 4 read, 1 not applied; invoices: 5 read, 1 not applied"
    )
    assert len(await invoice_rows(account.invoices)) == 4
