"""Shared by the webhook tests (fixtures registered in conftest.py): the app wired to the Stripe
double, Meterline's Stripe catalog made in the double by `setup-stripe`'s own code, and signed
deliveries through real HTTP (ASGI).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from meterline.app import create_app
from meterline.billing.catalog import EventType, Tier
from meterline.db import companies, sql
from meterline.db.tiers import load_plans
from meterline.jobs.sync import SyncJob
from meterline.services.stripe_setup import (
    base_price_lookup_key,
    metered_price_lookup_key,
    setup_stripe,
)
from meterline.stripe_gateway.catalog import StripeCatalog
from meterline.stripe_gateway.client import close_client, make_client
from tests.conftest import Api, Clock, base_settings, client_for
from tests.stripe_double import StripeDouble, sign_payload

SNAPSHOT_SECRET = "whsec_test_snapshot_0123456789"
THIN_SECRET = "whsec_test_thin_0123456789abcdef"
NOV_20 = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
APP_ORIGIN = "https://app.weddingflow.test"


@dataclass
class StripeWorld:
    """The app (as `Api`), the double, and the prices `setup-stripe` made in it."""

    api: Api
    double: StripeDouble
    clock: Clock
    prices: dict[str, str] = field(default_factory=dict)  # lookup key -> price id

    @property
    def client(self) -> httpx.AsyncClient:
        return self.api.client

    def tier_prices(self, tier: Tier) -> list[str]:
        """The base price and the five metered prices of a paid tier: a complete subscription."""
        keys = [base_price_lookup_key(tier)] + [
            metered_price_lookup_key(tier, e) for e in EventType
        ]
        return [self.prices[k] for k in keys]

    def subscribe(
        self,
        company_id: uuid.UUID | None,
        tier: Tier = Tier.STARTER,
        *,
        customer: str | None = None,
        start: datetime | None = None,
        prices: list[str] | None = None,
        status: str = "active",
    ) -> tuple[str, str]:
        """A subscription in the double (as Meterline's checkout makes it): (customer, id)."""
        customer = customer or self.double.add_customer()
        metadata = {"company_id": str(company_id)} if company_id else {}
        subscription = self.double.add_subscription(
            customer,
            prices if prices is not None else self.tier_prices(tier),
            metadata=metadata,
            start=int(start.timestamp()) if start else None,
            status=status,
        )
        return customer, subscription

    async def deliver(
        self,
        event: dict[str, Any],
        *,
        secret: str = SNAPSHOT_SECRET,
        thin: bool = False,
        timestamp: int | None = None,
        header: str | None = None,
        body: bytes | None = None,
    ) -> httpx.Response:
        payload = body if body is not None else json.dumps(event).encode()
        signature = (
            header if header is not None else sign_payload(payload, secret, timestamp=timestamp)
        )
        headers = {"Content-Type": "application/json"}
        if signature:
            headers["Stripe-Signature"] = signature
        path = "/webhooks/stripe/thin" if thin else "/webhooks/stripe"
        return await self.client.post(path, content=payload, headers=headers)

    async def send(self, event_type: str, object_id: str, **kw: Any) -> httpx.Response:
        """A snapshot event of the object as the double holds it now, delivered and answered."""
        event = self.double.snapshot_event(event_type, object_id, **kw)
        response = await self.deliver(event)
        assert response.status_code == 200, response.text
        return response

    def cli_env(self) -> dict[str, str]:
        """The environment of a `meterline` command run against this world."""
        settings = self.api.settings
        assert settings.database_url is not None
        return {
            "DATABASE_URL": settings.database_url,
            "STRIPE_SECRET_KEY": self.double.api_key,
            "STRIPE_API_BASE": self.double.url,
        }

    async def sync(self, company_id: uuid.UUID) -> None:
        """One run of the usage sync for this company; everything must settle."""
        client = make_client(self.api.settings, timeout=5.0)
        try:
            report = await SyncJob(client=client, clock=self.clock, company_ids=[company_id]).run()
        finally:
            await close_client(client)
        assert report.failed == 0 and report.pending == 0, report

    async def reach(self, moment: datetime) -> None:
        """Time passes to `moment`: what Stripe does by then (schedules, cancellations at
        period end, renewals) happens, and its events are delivered."""
        self.clock.set(moment)
        self.double.advance_to(int(moment.timestamp()))
        events = self.double.apply_schedules()
        self.double.now = lambda: int(self.clock().timestamp())
        for event in events:
            assert (await self.deliver(event)).status_code == 200

    async def send_thin(self, event_id: str) -> httpx.Response:
        return await self.deliver(
            self.double.thin_notification(event_id), secret=THIN_SECRET, thin=True
        )


async def make_world(database_url: str, clock: Clock, double: StripeDouble) -> StripeWorld:
    settings = base_settings(
        database_url=database_url,
        stripe_secret_key=double.api_key,
        stripe_api_base=double.url,
        stripe_webhook_secret=SNAPSHOT_SECRET,
        stripe_thin_webhook_secret=THIN_SECRET,
        checkout_success_url=f"{APP_ORIGIN}/billing?checkout=success",
        checkout_cancel_url=f"{APP_ORIGIN}/billing?checkout=canceled",
        billing_return_origins=(APP_ORIGIN,),
    )
    client = make_client(settings, timeout=5.0)
    try:
        result = await setup_stripe(StripeCatalog(client), await load_plans())
    finally:
        await close_client(client)
    prices = {line.key: line.id for line in result.lines if line.kind == "price"}
    app = create_app(settings, clock=clock, manage_database=False)
    return StripeWorld(
        api=Api(client=client_for(app), clock=clock, settings=settings),
        double=double,
        clock=clock,
        prices=prices,
    )


@pytest.fixture
def world_clock(double: StripeDouble) -> Clock:
    """The app's clock and the double's: both on 20 November 2026, moved together."""
    moment = Clock(fixed=NOV_20)
    double.now = lambda: int(moment().timestamp())
    return moment


@pytest.fixture
async def world(
    database_url: str, world_clock: Clock, double: StripeDouble
) -> AsyncIterator[StripeWorld]:
    made = await make_world(database_url, world_clock, double)
    async with made.api.client:
        yield made


async def company_row(company_id: uuid.UUID) -> companies.Company:
    company = await companies.get(company_id)
    assert company is not None
    return company


async def event_row(event_id: str) -> dict[str, Any]:
    row = await sql.fetchrow("SELECT * FROM webhook_events WHERE id = $1", event_id)
    assert row is not None
    return dict(row)
