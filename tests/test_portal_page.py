"""The usage portal in a real Chromium, against the real app served over HTTP.

Each test makes its own companies and opens their portal with a link made by the API
(`createPortalLink`), then compares what the page shows with what the API answers: the page's
elements carry the API's raw figures in data attributes (`data-used`, `data-overage-cost`...),
so nothing depends on the browser's locale formatting. The newcomer's path (`serve --demo`, the
printed link) runs as a real process in `test_the_demo_link_printed_by_serve_opens_the_demo_page`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import socket
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from playwright.async_api import expect

from meterline.app import create_app
from meterline.auth import PORTAL_AUDIENCE
from meterline.billing.catalog import Tier
from meterline.billing.dunning import Dunning
from meterline.db import companies
from meterline.db.invoices import upsert
from tests.browser_support import BrowserPage, NewPage, horizontal_overflow, serve_app
from tests.commands import child_env
from tests.conftest import Api, Clock, client_for, empty_database
from tests.plans import put_on_tier
from tests.stripe_double import StripeDouble
from tests.test_portal_api import (
    PORTAL_SECRET,
    every_mutation,
    invoice,
    new_link,
    portal_settings,
    token_of,
)
from tests.test_upcoming_invoice import NOV_20, Prices, metered_price, sdk, subscribed_company

WIDTHS = (375, 1280)
LIMITS = """{ usageLimits { tier hardCap billingStatus graceEndsAt scheduledTier
  scheduledTierEffectiveAt meters { eventType used included remaining exceeded overageQuantity
  overageCost { amount currency } } } }"""
UPCOMING = """{ upcomingInvoice { amountDue { amount currency } periodStart periodEnd
  lines { description quantity amount { amount currency } } } }"""
HISTORY = "{ usageHistory(months: 12) { month meters { eventType used } } }"
INVALID = "This link has expired or is not valid — ask for a new one"
# Where `make screenshots` asks the demo test to save its pictures (docs/); a temporary
# directory otherwise.
SCREENSHOTS = os.environ.get("PORTAL_SCREENSHOTS")


@dataclass
class Site:
    """The app served over HTTP at `url`; `api` sets data up through the same app (ASGI)."""

    url: str
    api: Api


@pytest.fixture
async def site(database_url: str, clock: Clock) -> AsyncIterator[Site]:
    settings = portal_settings(database_url, public_base_url="http://127.0.0.1")
    app = create_app(settings, clock=clock, manage_database=False)
    async with serve_app(app) as url, client_for(app) as client:
        yield Site(url=url, api=Api(client=client, clock=clock, settings=settings))


async def open_portal(
    new_page: NewPage, site: Site, api: Api, *, width: int = 1280, token: str | None = None
) -> BrowserPage:
    """The company's portal through a fresh link, loaded (its events too)."""
    token = token or await new_link(api)
    view = await new_page(site.url, width=width, height=900, locale="en-GB")
    await view.goto(f"/portal#token={token}")
    await view.page.wait_for_selector("[data-testid=meters]")
    # The events come after the first render: the page marks when they are shown.
    await view.page.wait_for_function(
        "() => performance.getEntriesByName('meterline:events').length > 0"
    )
    return view


async def record(api: Api, event_type: str, quantity: int, **extra: Any) -> None:
    body = await api.data(
        """mutation($input: RecordUsageInput!) { recordUsage(input: $input) { __typename } }""",
        {"input": {"eventType": event_type, "quantity": quantity, **extra}},
    )
    assert body["recordUsage"]["__typename"] == "UsageRecorded", body


async def attr(view: BrowserPage, selector: str, name: str) -> str | None:
    value: str | None = await view.page.get_attribute(selector, name)
    return value


async def shows_the_apis_meters(view: BrowserPage, api: Api) -> dict[str, Any]:
    """Every card holds the API's figures; the banners are those the figures call for."""
    limits = (await api.data(LIMITS))["usageLimits"]
    for meter in limits["meters"]:
        card = f"[data-testid=meter-{meter['eventType']}]"
        assert await attr(view, card, "data-used") == str(meter["used"])
        included = "unlimited" if meter["included"] is None else str(meter["included"])
        assert await attr(view, card, "data-included") == included
        assert await attr(view, card, "data-overage-units") == str(meter["overageQuantity"])
        assert await attr(view, card, "data-overage-cost") == meter["overageCost"]["amount"]
        assert await attr(view, card, "data-currency") == meter["overageCost"]["currency"]
        bar = view.page.locator(f"{card} [role=progressbar]")
        assert await bar.count() == 1
        if meter["included"] is None:
            assert await bar.get_attribute("aria-valuenow") is None
            assert "unlimited" in (await bar.get_attribute("aria-valuetext") or "")
        else:
            assert await bar.get_attribute("aria-valuemax") == "100"
            assert f"{meter['used']:,}" in (await bar.get_attribute("aria-valuetext") or "")
        reached = limits["hardCap"] and meter["included"] and meter["used"] >= meter["included"]
        badge = view.page.locator(f"{card} [data-testid=over-limit-badge]")
        assert await badge.count() == (1 if meter["exceeded"] or reached else 0), meter
    overage = any(m["overageQuantity"] for m in limits["meters"]) and not limits["hardCap"]
    banners = {
        "banner-overage": overage,
        "banner-past-due": limits["billingStatus"] == "PAST_DUE",
        "banner-restricted": limits["billingStatus"] == "RESTRICTED",
        "banner-cap": limits["hardCap"]
        and any(m["included"] and m["used"] >= m["included"] for m in limits["meters"]),
    }
    for testid, expected in banners.items():
        assert await view.page.locator(f"[data-testid={testid}]").count() == int(expected), testid
    assert await attr(view, "[data-testid=tier]", "data-tier") == limits["tier"]
    limits_data: dict[str, Any] = limits
    return limits_data


async def fits(view: BrowserPage) -> None:
    assert await horizontal_overflow(view) <= 0


# ------------------------------------------------------------------------------ states


async def test_over_limit_starter_company(site: Site, new_page: NewPage) -> None:
    api = site.api.new_company()
    await put_on_tier(api.company_id, Tier.STARTER, now=api.clock(), billed=True)
    await record(api, "SMS_SENT", 1_207)
    await record(api, "EMAIL_SENT", 40)
    for width in WIDTHS:
        view = await open_portal(new_page, site, api, width=width)
        limits = await shows_the_apis_meters(view, api)
        sms = next(m for m in limits["meters"] if m["eventType"] == "SMS_SENT")
        assert sms["overageQuantity"] == 207 and sms["overageCost"]["amount"] == "10.35"
        banner = view.page.locator("[data-testid=banner-overage]")
        assert await banner.get_attribute("data-overage-cost") == "10.35"
        assert "billed at the unit price" in await banner.inner_text()
        await fits(view)
        await view.assert_clean()
        # The token left the address bar at once, and lives in this tab's session storage.
        assert "#" not in view.page.url and "token" not in view.page.url
        stored = await view.page.evaluate("Object.values(sessionStorage)")
        assert any(s.count(".") == 2 for s in stored)
        assert await view.page.evaluate("localStorage.length") == 0


async def test_past_due_then_restricted(site: Site, new_page: NewPage) -> None:
    api = site.api.new_company()
    now = datetime.now(UTC)
    await put_on_tier(api.company_id, Tier.PROFESSIONAL, now=now, billed=True)
    grace_end = (now + timedelta(days=5)).replace(microsecond=0)
    await companies.set_dunning(api.company_id, Dunning(now - timedelta(days=9), grace_end, False))
    view = await open_portal(new_page, site, api)
    limits = await shows_the_apis_meters(view, api)
    assert limits["billingStatus"] == "PAST_DUE"
    banner = view.page.locator("[data-testid=banner-past-due]")
    assert datetime.fromisoformat(await banner.get_attribute("data-grace-ends-at") or "") == (
        grace_end
    )
    assert grace_end.strftime("%B") in await banner.inner_text()  # the month, named
    await view.assert_clean()

    await companies.set_dunning(api.company_id, Dunning(now - timedelta(days=20), now, True))
    await view.page.reload()
    await view.page.wait_for_selector("[data-testid=banner-restricted]")
    assert (await shows_the_apis_meters(view, api))["billingStatus"] == "RESTRICTED"
    text = await view.page.locator("[data-testid=banner-restricted]").inner_text()
    assert "refused until the invoice is paid" in text
    await fits(view)
    await view.assert_clean()


async def test_enterprise_meters_are_unlimited(site: Site, new_page: NewPage) -> None:
    api = site.api.new_company()
    await put_on_tier(api.company_id, Tier.ENTERPRISE, now=api.clock(), billed=True)
    await record(api, "GUEST_INVITATION", 25_000)
    view = await open_portal(new_page, site, api, width=375)
    limits = await shows_the_apis_meters(view, api)
    unlimited = [m for m in limits["meters"] if m["included"] is None]
    assert unlimited, "the enterprise tier has unlimited meters"
    for meter in unlimited:
        card = view.page.locator(f"[data-testid=meter-{meter['eventType']}]")
        assert "∞" in await card.locator("[data-testid=included]").inner_text()
    await fits(view)
    await view.assert_clean()


async def test_free_company_at_its_hard_cap(site: Site, new_page: NewPage) -> None:
    api = site.api.new_company()
    free = (await api.data(LIMITS))["usageLimits"]
    guests = next(m for m in free["meters"] if m["eventType"] == "GUEST_INVITATION")
    await record(api, "GUEST_INVITATION", guests["included"])
    view = await open_portal(new_page, site, api)
    limits = await shows_the_apis_meters(view, api)
    assert limits["hardCap"] is True
    cap = view.page.locator("[data-testid=banner-cap]")
    assert (await cap.get_attribute("data-event-types") or "").split() == ["GUEST_INVITATION"]
    await view.assert_clean()


async def test_a_scheduled_change_is_named_with_its_date(site: Site, new_page: NewPage) -> None:
    api = site.api.new_company()
    now = datetime.now(UTC)
    next_first = (now.replace(day=1) + timedelta(days=32)).replace(
        day=1, hour=0, minute=0, second=0, microsecond=0
    )
    await put_on_tier(api.company_id, Tier.STARTER, now=now, billed=True)
    await put_on_tier(api.company_id, Tier.PROFESSIONAL, now=now, since=next_first, billed=True)
    view = await open_portal(new_page, site, api)
    change = view.page.locator("[data-testid=scheduled-change]")
    assert await change.get_attribute("data-scheduled-tier") == "PROFESSIONAL"
    text = await change.inner_text()
    assert f"Professional from 1 {next_first:%B %Y}" in text, text  # en-GB


async def test_the_percent_shown_is_the_apis(site: Site, new_page: NewPage) -> None:
    """995 of 1,000 SMS: the API says percentUsed 99.5; the card (and the progress bar's
    aria-valuenow) say 99 (Math.floor). The page's figures must be the API's."""
    api = site.api.new_company()
    await put_on_tier(api.company_id, Tier.STARTER, now=api.clock(), billed=True)
    await record(api, "SMS_SENT", 995)
    limits = (await api.data("{ usageLimits { meters { eventType percentUsed } } }"))["usageLimits"]
    sms = next(m for m in limits["meters"] if m["eventType"] == "SMS_SENT")
    assert sms["percentUsed"] == 99.5
    view = await open_portal(new_page, site, api, width=1280)
    card = "[data-testid=meter-SMS_SENT]"
    assert await view.page.get_attribute(card, "data-percent") == "99.5"
    shown = await view.page.inner_text(f"{card} [data-testid=percent]")
    assert shown.replace("\u202f", "").replace(" ", "") in ("99.5%", "99,5%"), shown


# ----------------------------------------------------------------- history and bills


async def test_history_chart_and_table_hold_the_apis_twelve_months(
    site: Site, new_page: NewPage
) -> None:
    api = site.api.new_company()
    await put_on_tier(api.company_id, Tier.STARTER, now=api.clock(), billed=True)
    await record(api, "AI_QUERY", 7)
    view = await open_portal(new_page, site, api)
    history = (await api.data(HISTORY))["usageHistory"]
    months = view.page.locator("[data-testid=history-table] tbody tr")
    assert await months.count() == 12  # the company is new: earlier months show as zeros
    shown = {
        (await row.get_attribute("data-month"), await cell.get_attribute("data-event-type")): (
            await cell.get_attribute("data-value")
        )
        for row in await months.all()
        for cell in await row.locator("[data-event-type]").all()
    }
    assert len(shown) == 12 * 5
    for summary in history:
        for meter in summary["meters"]:
            assert shown[(summary["month"], meter["eventType"])] == str(meter["used"])
    assert sum(int(v or 0) for v in shown.values()) == 7
    charts = view.page.locator("[data-testid=history-chart] svg")
    assert await charts.count() == 5
    assert await view.page.locator("[data-testid=history-chart] svg [data-value]").count() == 60
    await view.assert_clean()


async def test_payment_history_links_to_stripes_invoice_without_a_referrer(
    site: Site, new_page: NewPage
) -> None:
    api = site.api.new_company()
    await put_on_tier(api.company_id, Tier.STARTER, now=api.clock(), billed=True)
    await upsert(invoice(api.company_id, api.clock()))
    view = await open_portal(new_page, site, api)
    rows = view.page.locator("[data-testid=payment-row]")
    assert await rows.count() == 1
    assert await rows.first.get_attribute("data-amount-due") == "49.00"
    assert await rows.first.get_attribute("data-status") == "paid"
    links = rows.first.locator("a")
    hrefs = {await a.get_attribute("href") for a in await links.all()}
    assert hrefs == {"https://invoice.stripe.com/i/test", "https://pay.stripe.com/invoice/test/pdf"}
    for link in await links.all():
        assert "noreferrer" in (await link.get_attribute("rel") or "")
    await view.assert_clean()  # a link is not a request: nothing went to Stripe's hosts


async def test_events_load_newest_first_with_load_more(site: Site, new_page: NewPage) -> None:
    api = site.api.new_company()
    await put_on_tier(api.company_id, Tier.STARTER, now=api.clock(), billed=True)
    start = datetime.now(UTC) - timedelta(hours=2)
    events = [
        {
            "eventType": "EMAIL_SENT",
            "quantity": i + 1,
            "idempotencyKey": f"mail-{i}",
            "occurredAt": (start + timedelta(seconds=i)).isoformat(),
        }
        for i in range(45)
    ]
    body = await api.data(
        "mutation($e: [RecordUsageInput!]!) { recordUsageBatch(events: $e) { __typename } }",
        {"e": events},
    )
    assert body["recordUsageBatch"]["__typename"] == "UsageBatchRecorded"
    view = await open_portal(new_page, site, api, width=375)
    rows = view.page.locator("[data-testid=event-row]")
    assert await rows.count() == 20
    more = view.page.locator("[data-testid=load-more]")
    await more.focus()
    await view.page.keyboard.press("Enter")  # keyboard usable
    await expect(rows).to_have_count(40)
    await more.click()
    await expect(rows).to_have_count(45)
    assert await more.count() == 0 or not await more.is_visible()
    quantities = [int(await r.get_attribute("data-quantity") or 0) for r in await rows.all()]
    assert quantities == list(range(45, 0, -1))
    await fits(view)
    await view.assert_clean()


async def test_the_upcoming_invoice_when_stripe_is_configured(
    database_url: str, double: StripeDouble, new_page: NewPage
) -> None:
    """Stripe's preview of the company's next invoice: amount, period and lines, as the API
    gives them (the Stripe double computes them from its meter totals)."""
    clock = Clock(fixed=NOV_20)
    double.now = lambda: int(clock().timestamp())
    settings = portal_settings(
        database_url,
        public_base_url="http://127.0.0.1",
        stripe_secret_key=double.api_key,
        stripe_api_base=double.url,
    )
    app = create_app(settings, clock=clock, manage_database=False)
    async with serve_app(app) as url, client_for(app) as client:
        site = Site(url=url, api=Api(client=client, clock=clock, settings=settings))
        api = site.api.new_company()
        client_sdk = sdk(api)
        prices = Prices(
            base=(
                await client_sdk.v1.prices.create_async(
                    {
                        "currency": "usd",
                        "unit_amount": 2900,
                        "recurring": {"interval": "month"},
                        "product_data": {"name": "Starter"},
                    }
                )
            ).id,
            sms=await metered_price(
                client_sdk, double.add_meter("sms_sent"), "SMS", 1000, Decimal(5)
            ),
            ai=await metered_price(
                client_sdk, double.add_meter("ai_query"), "AI queries", 50, Decimal(20)
            ),
        )
        await subscribed_company(api, double, prices)
        preview = (await api.data(UPCOMING))["upcomingInvoice"]
        view = await open_portal(new_page, site, api)
        box = "[data-testid=upcoming-invoice]"
        assert await attr(view, box, "data-state") == "ok"
        amount = "[data-testid=upcoming-amount]"
        assert await attr(view, amount, "data-amount") == preview["amountDue"]["amount"] == "29.95"
        period = "[data-testid=upcoming-period]"
        assert await attr(view, period, "data-period-start") == preview["periodStart"]
        assert "November 2026" in await view.page.locator(period).inner_text()
        lines = view.page.locator("[data-testid=upcoming-line]")
        assert [
            (await line.get_attribute("data-quantity"), await line.get_attribute("data-amount"))
            for line in await lines.all()
        ] == [(str(li["quantity"]), li["amount"]["amount"]) for li in preview["lines"]]
        await view.assert_clean()


# ---------------------------------------------------------------------- bad links


async def assert_invalid(view: BrowserPage) -> None:
    message = view.page.locator("[data-testid=invalid-link]")
    await message.wait_for()
    assert INVALID in await message.inner_text()
    assert await view.page.locator("[data-testid=meters]").count() == 0
    assert await view.page.locator("[data-testid=payments]").count() == 0
    assert await view.page.evaluate("sessionStorage.length") == 0


def portal_token(company_id: uuid.UUID, **overrides: Any) -> str:
    now = datetime.now(UTC)
    claims = {
        "sub": f"portal:{company_id}",
        "metadata": {"company_id": str(company_id), "role": "portal"},
        "aud": PORTAL_AUDIENCE,
        "gen": 0,
        "iat": now - timedelta(hours=2),
        "nbf": now - timedelta(hours=2),
        "exp": now - timedelta(hours=1),
        **overrides,
    }
    return jwt.encode(claims, PORTAL_SECRET, algorithm="HS256")


@pytest.mark.parametrize("kind", ["expired", "forged", "missing"])
async def test_an_expired_forged_or_missing_link_shows_no_data(
    site: Site, new_page: NewPage, kind: str
) -> None:
    api = site.api.new_company()
    await record(api, "EMAIL_SENT", 3)
    view = await new_page(site.url, width=375, locale="en-GB")
    if kind == "missing":
        await view.goto("/portal")
    else:
        token = portal_token(api.company_id)
        if kind == "forged":
            valid = await new_link(api)
            header, payload, _ = valid.split(".")
            token = f"{header}.{payload}.{'A' * 43}"
        await view.goto(f"/portal#token={token}")
    await assert_invalid(view)
    assert "token" not in view.page.url
    assert not view.page_errors and not view.csp_violations
    view.assert_only_app_requests()
    await fits(view)


async def test_a_revoked_link_stops_at_the_next_load(site: Site, new_page: NewPage) -> None:
    api = site.api.new_company()
    await record(api, "EMAIL_SENT", 3)
    view = await open_portal(new_page, site, api)
    await view.page.reload()  # within its validity, a reload works from sessionStorage
    await view.page.wait_for_selector("[data-testid=meters]")
    assert await attr(view, "[data-testid=meter-EMAIL_SENT]", "data-used") == "3"
    assert (await api.data("mutation { revokePortalLinks }"))["revokePortalLinks"] is True
    await view.page.reload()
    await assert_invalid(view)
    fresh = await open_portal(new_page, site, api)  # a link given after it works
    assert await attr(fresh, "[data-testid=meter-EMAIL_SENT]", "data-used") == "3"


async def test_from_the_page_a_portal_token_changes_nothing_and_sees_one_company(
    site: Site, new_page: NewPage
) -> None:
    api, other = site.api.new_company(), site.api.new_company()
    await put_on_tier(api.company_id, Tier.STARTER, now=api.clock(), billed=True)
    await record(other, "EMAIL_SENT", 77)
    view = await open_portal(new_page, site, api)
    documents = [document for _, document in every_mutation()]
    answers = await view.page.evaluate(
        """async (documents) => {
            const token = Object.values(sessionStorage)[0];
            const endpoint = document.querySelector('meta[name=meterline-graphql]').content;
            const out = [];
            for (const query of documents) {
                const r = await fetch(endpoint, {method: 'POST', body: JSON.stringify({query}),
                    headers: {'Content-Type': 'application/json',
                              'Authorization': 'Bearer ' + token}});
                const body = await r.json();
                out.push((body.errors || []).map((e) => e.extensions.code).join(','));
            }
            const mine = await fetch(endpoint, {method: 'POST',
                body: JSON.stringify({query: '{ currentUsage { eventType used } }'}),
                headers: {'Content-Type': 'application/json', 'Authorization': 'Bearer ' + token}});
            out.push(JSON.stringify((await mine.json()).data));
            return out;
        }""",
        documents,
    )
    *refusals, usage = answers
    assert refusals == ["FORBIDDEN"] * len(documents)
    assert '"used":77' not in usage and '"used":0' in usage
    assert await attr(view, "[data-testid=meter-EMAIL_SENT]", "data-used") == "0"


async def test_the_first_render_is_one_request_and_the_events_come_after(
    site: Site, new_page: NewPage
) -> None:
    api = site.api.new_company()
    await record(api, "EMAIL_SENT", 4)
    view = await new_page(site.url, locale="en-GB")
    documents: list[str] = []
    view.page.on(
        "request",
        lambda r: documents.append(r.post_data or "") if r.url.endswith("/graphql") else None,
    )
    await view.goto(f"/portal#token={await new_link(api)}")
    await view.page.wait_for_selector("[data-testid=event-row]")
    assert len(documents) == 2, documents
    first, second = documents
    for field in ("usageLimits", "monthlySummary", "usageHistory", "upcomingInvoice"):
        assert field in first
    assert "paymentHistory" in first and "usageEvents" not in first
    assert "usageEvents" in second and "usageLimits" not in second
    await view.assert_clean()


@pytest.mark.parametrize("failure", ["http_500", "graphql_error"])
async def test_a_failure_shows_the_request_id_and_nothing_internal(
    site: Site, new_page: NewPage, failure: str
) -> None:
    """The page only says what failed and the request id to quote; it shows no data, no
    stack, and not the server's message."""
    api = site.api.new_company()
    view = await new_page(site.url, locale="en-GB")
    secret = "Traceback (most recent call last): asyncpg.exceptions.InternalError"

    async def fail(route: Any) -> None:
        if failure == "http_500":
            body, status = '{"status_code": 500, "detail": "Internal server error"}', 500
        else:
            error = {
                "message": secret,
                "path": ["usageLimits"],
                "extensions": {"code": "INTERNAL_SERVER_ERROR", "requestId": "req-7f3a"},
            }
            body, status = json.dumps({"data": None, "errors": [error]}), 200
        await route.fulfill(
            status=status,
            body=body,
            headers={"content-type": "application/json", "x-request-id": "req-7f3a"},
        )

    await view.page.route("**/graphql", fail)
    await view.goto(f"/portal#token={await new_link(api)}")
    message = view.page.locator("[data-testid=load-error]")
    await message.wait_for()
    text = await message.inner_text()
    assert "req-7f3a" in text
    assert secret not in await view.page.content() and "Traceback" not in text
    assert await view.page.locator("[data-testid=meters]").count() == 0


async def test_text_has_enough_contrast(site: Site, new_page: NewPage) -> None:
    """WCAG AA: every piece of visible text against the background it sits on, at least 4.5:1
    (3:1 for large text), in the states that colour text (over limit, past due)."""
    api = site.api.new_company()
    now = datetime.now(UTC)
    await put_on_tier(api.company_id, Tier.STARTER, now=now, billed=True)
    await record(api, "SMS_SENT", 1_500)
    await companies.set_dunning(
        api.company_id, Dunning(now - timedelta(days=1), now + timedelta(days=3), False)
    )
    view = await open_portal(new_page, site, api)
    await view.page.wait_for_selector("[data-testid=event-row]")
    failures = await view.page.evaluate(CONTRAST)
    assert not failures, failures
    # The check sees text: grey on white is caught.
    await view.page.evaluate(
        """() => { const p = document.createElement('p'); p.textContent = 'faint';
                   p.classList.add('notice'); document.querySelector('main').append(p);
                   p.style.color = '#b0b0b0'; p.style.background = '#ffffff'; }"""
    )
    assert await view.page.evaluate(CONTRAST) == ["faint: 2.17"]


CONTRAST = """() => {
  const rgba = (text) => (text.match(/[\\d.]+/g) || []).map(Number);
  const luminance = ([r, g, b]) => {
    const c = [r, g, b].map((v) => {
      v /= 255;
      return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4;
    });
    return 0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2];
  };
  const background = (el) => {
    for (let node = el; node; node = node.parentElement) {
      const [r, g, b, a = 1] = rgba(getComputedStyle(node).backgroundColor);
      if (a > 0.5) return [r, g, b];
    }
    return [255, 255, 255];
  };
  const failures = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const el = node.parentElement;
    if (!node.textContent.trim() || !el.checkVisibility() || el.closest('.visually-hidden')) {
      continue;
    }
    const style = getComputedStyle(el);
    const [l1, l2] = [luminance(rgba(style.color)), luminance(background(el))];
    const ratio = (Math.max(l1, l2) + 0.05) / (Math.min(l1, l2) + 0.05);
    const size = parseFloat(style.fontSize);
    const large = size >= 24 || (size >= 18.66 && Number(style.fontWeight) >= 700);
    if (ratio < (large ? 3 : 4.5)) {
      failures.push(`${node.textContent.trim().slice(0, 40)}: ${ratio.toFixed(2)}`);
    }
  }
  return failures;
}"""


# ------------------------------------------------------------------------- the policy


async def test_the_content_security_policy_is_enforced(site: Site, new_page: NewPage) -> None:
    api = site.api.new_company()
    view = await open_portal(new_page, site, api)
    await view.assert_clean()
    # An injected inline script does not run, an image from elsewhere is not fetched, and a
    # connection to another host is refused: the browser applies the policy, and says so.
    ran = await view.page.evaluate(
        """async () => {
            window.__ran = false;
            const s = document.createElement('script');
            s.textContent = 'window.__ran = true';
            document.body.append(s);
            const img = document.createElement('img');
            img.src = 'https://cdn.example.com/pixel.png';
            document.body.append(img);
            let fetched = true;
            try { await fetch('https://api.example.com/'); } catch (e) { fetched = false; }
            await new Promise((r) => setTimeout(r, 0));
            return {ran: window.__ran, fetched};
        }"""
    )
    assert ran == {"ran": False, "fetched": False}
    await view.settle()
    directives = {v["directive"] for v in view.csp_violations}
    assert {"script-src-elem", "img-src", "connect-src"} <= directives, view.csp_violations
    # Chromium reports the image as a request that failed with `csp`: it never left the browser.
    failures = {f.url: f.failure for f in view.failed_requests}
    assert all(failures.get(url) == "csp" for url in view.foreign_requests), failures


async def test_the_page_is_accessible_by_structure(site: Site, new_page: NewPage) -> None:
    api = site.api.new_company()
    await record(api, "EMAIL_SENT", 2)
    view = await open_portal(new_page, site, api)
    page = view.page
    assert await page.get_attribute("html", "lang") == "en"
    assert await page.locator("main").count() == 1
    levels = await page.evaluate(
        "[...document.querySelectorAll('h1,h2,h3')].map((h) => Number(h.tagName[1]))"
    )
    assert levels[0] == 1 and levels.count(1) == 1
    assert all(b - a <= 1 for a, b in itertools.pairwise(levels)), levels
    for bar in await page.locator("[role=progressbar]").all():
        assert await bar.get_attribute("aria-label") or await bar.get_attribute("aria-labelledby")
        assert await bar.get_attribute("aria-valuetext")
    tables = page.locator("table")
    for table in await tables.all():
        assert await table.locator("caption").count() == 1
        assert await table.locator("th[scope]").count() >= 1
    # Keyboard: the history table opens from its summary with the keyboard.
    summary = page.locator("[data-testid=history-chart] ~ details summary, details summary")
    await summary.first.focus()
    await page.keyboard.press("Enter")
    assert await page.locator("[data-testid=history-table]").is_visible()


# ---------------------------------------------------------- the newcomer's path: make run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
async def demo_database(server_url: str) -> AsyncIterator[str]:
    async with empty_database(server_url, "meterline_portal_demo") as url:
        yield url


async def test_the_demo_link_printed_by_serve_opens_the_demo_page(
    demo_database: str, new_page: NewPage, tmp_path: Path
) -> None:
    """What a newcomer does: `make run` (serve --demo in development), then open the printed
    portal link. The page shows the demo company's month as the API gives it to the printed
    token, at both widths (the screenshots in docs/ come from here: `make screenshots`)."""
    port = free_port()
    env = child_env(
        {
            "METERLINE_ENV": "development",
            "DATABASE_URL": demo_database,
            "METERLINE_DATA_DIR": str(tmp_path / ".meterline" / "pgdata"),
        }
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "meterline", "serve", "--demo", "--port", str(port)),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        printed = await asyncio.wait_for(read_until_listening(process, port), 90)
        link = re.search(rf"http://127\.0\.0\.1:{port}/portal#token=\S+", printed)
        token = re.search(r"export TOKEN=(\S+)", printed)
        assert link and token, printed
        base = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=base) as client:
            answer = await client.post(
                "/graphql",
                json={"query": LIMITS},
                headers={"Authorization": f"Bearer {token.group(1)}"},
            )
            limits = answer.json()["data"]["usageLimits"]
        pictures = Path(SCREENSHOTS) if SCREENSHOTS else tmp_path
        for width in WIDTHS:
            view = await new_page(base, width=width, height=900, locale="en-GB")
            await view.page.goto(link.group(0))
            await view.page.wait_for_selector("[data-testid=event-row]")
            for meter in limits["meters"]:
                card = f"[data-testid=meter-{meter['eventType']}]"
                assert await attr(view, card, "data-used") == str(meter["used"])
                assert (
                    await attr(view, card, "data-overage-cost") == (meter["overageCost"]["amount"])
                )
            assert await attr(view, "[data-testid=tier]", "data-tier") == "STARTER"
            assert await view.page.locator("[data-testid=banner-overage]").count() == 1
            state = await attr(view, "[data-testid=upcoming-invoice]", "data-state")
            assert state == "not-configured"  # the demo has no Stripe: a plain sentence
            await fits(view)
            await view.assert_clean()
            await view.page.screenshot(path=str(pictures / f"portal-{width}.png"), full_page=True)
        assert token_of(link.group(0))
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 30)


async def read_until_listening(process: asyncio.subprocess.Process, port: int) -> str:
    """What `serve` printed up to "serving on", once its port accepts connections."""
    assert process.stdout is not None
    lines = []
    while not lines or "serving on" not in lines[-1]:
        line = (await process.stdout.readline()).decode()
        if not line:
            raise AssertionError(f"serve exited with {await process.wait()}:\n{''.join(lines)}")
        lines.append(line)
    # uvicorn binds a moment after the line: wait for the port itself, not a fixed time.
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if process.returncode is not None:
                raise AssertionError(f"serve exited:\n{''.join(lines)}") from None
            await asyncio.sleep(0.05)
            continue
        writer.close()
        await writer.wait_closed()
        return "".join(lines)
