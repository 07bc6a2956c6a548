"""Test harness: a real PostgreSQL (DATABASE_URL, or the embedded one), one fresh database per
run, and the real Litestar app over ASGI on the test's event loop.

Tests never share rows: each makes its own companies (random UUIDs from the token).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import jwt
import pytest

from meterline.app import create_app
from meterline.config import Settings
from meterline.db import engine
from meterline.db.migrate import migrate
from tests.stripe_double import StripeDouble

# The webhook tests' fixtures, and the page tests' (one browser for the whole run).
pytest_plugins = ["tests.webhook_support", "tests.browser_support"]

JWT_SECRET = "test-dev-secret-0123456789abcdef0123456789"
SERVICE_SECRET = "test-service-secret-0123456789abcdef012345"


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


@pytest.fixture(scope="session")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    configured = os.environ.get("DATABASE_URL")
    if configured:
        yield configured
        return
    from meterline.db.embedded import start_embedded, stop_embedded

    data_dir = tmp_path_factory.mktemp("pg") / "data"
    uri = start_embedded(data_dir)
    yield uri
    stop_embedded(data_dir)


async def _admin(server_url: str, statement: str) -> None:
    admin = await asyncpg.connect(server_url, timeout=10)
    try:
        await admin.execute(statement)
    finally:
        await admin.close()


@asynccontextmanager
async def empty_database(server_url: str, prefix: str) -> AsyncIterator[str]:
    """A new empty database `<prefix>_<hex>` on the run's server (for a process under test to
    migrate and use); dropped at the end."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    await _admin(server_url, f'CREATE DATABASE "{name}"')
    try:
        yield _with_database(server_url, name)
    finally:
        await _admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
async def database_url(server_url: str) -> AsyncIterator[str]:
    """A database of this run's own, migrated, dropped at the end."""
    name = f"meterline_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = _with_database(server_url, name)
    engine.configure(url)
    await migrate()
    await engine.open_pool(url, min_size=2, max_size=60)
    try:
        yield url
    finally:
        await engine.close_pool()
        admin = await asyncpg.connect(server_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


_CLOCKS: list[Clock] = []  # the clocks the running test made (see fixed_clocks)


@dataclass
class Clock:
    """The app's clock, moved by tests. None = real time."""

    fixed: datetime | None = None

    def __post_init__(self) -> None:
        _CLOCKS.append(self)

    def __call__(self) -> datetime:
        return self.fixed or datetime.now(UTC)

    def set(self, moment: datetime) -> None:
        self.fixed = moment


def fixed_clocks() -> list[Clock]:
    """The running test's clocks that are fixed: while there is one, nothing it starts may read
    the machine's clock instead (tests/commands.py checks the commands it runs)."""
    return [c for c in _CLOCKS if c.fixed is not None]


@pytest.fixture(autouse=True)
def _forget_clocks() -> Iterator[None]:
    _CLOCKS.clear()
    yield
    _CLOCKS.clear()


def base_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "env": "development",
        "jwt_secret": JWT_SECRET,
        "service_jwt_secret": SERVICE_SECRET,
        "late_usage_grace_hours": 1,
    }
    values.update(overrides)
    return Settings(**values)


def make_token(
    company_id: uuid.UUID | None,
    role: str | None = "company_admin",
    *,
    secret: str = JWT_SECRET,
    sub: str = "user_test",
    extra: dict[str, Any] | None = None,
) -> str:
    now = datetime.now(UTC)
    metadata: dict[str, Any] = {}
    if company_id is not None:
        metadata["company_id"] = str(company_id)
    if role is not None:
        metadata["role"] = role
    claims: dict[str, Any] = {
        "sub": sub,
        "iat": now,
        "nbf": now - timedelta(seconds=1),
        "exp": now + timedelta(hours=1),
        "metadata": metadata,
    }
    claims.update(extra or {})
    return jwt.encode(claims, secret, algorithm="HS256")


def service_token(company_id: uuid.UUID) -> str:
    return make_token(company_id, "service", secret=SERVICE_SECRET, sub="service:test")


@dataclass
class Api:
    """GraphQL over real HTTP semantics (ASGI) against the real app."""

    client: httpx.AsyncClient
    clock: Clock
    settings: Settings
    company_id: uuid.UUID = field(default_factory=uuid.uuid4)

    def token(self, role: str = "company_admin") -> str:
        if role == "service":
            return service_token(self.company_id)
        return make_token(self.company_id, role)

    async def post(
        self,
        query: str,
        variables: dict[str, Any] | None = None,
        *,
        token: str | None = None,
        role: str = "company_admin",
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token or self.token(role)}"}
        return await self.client.post(
            "/graphql", json={"query": query, "variables": variables or {}}, headers=headers
        )

    async def gql(
        self, query: str, variables: dict[str, Any] | None = None, **kw: Any
    ) -> dict[str, Any]:
        response = await self.post(query, variables, **kw)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def data(
        self, query: str, variables: dict[str, Any] | None = None, **kw: Any
    ) -> dict[str, Any]:
        body = await self.gql(query, variables, **kw)
        assert "errors" not in body, body
        result: dict[str, Any] = body["data"]
        return result

    def new_company(self) -> Api:
        return replace(self, company_id=uuid.uuid4())


def client_for(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://meterline.test"
    )


@pytest.fixture
def double() -> Iterator[StripeDouble]:
    """A fresh Stripe double (a real HTTP server on 127.0.0.1) per test."""
    with StripeDouble() as server:
        yield server


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def api(database_url: str, clock: Clock) -> AsyncIterator[Api]:
    settings = base_settings(database_url=database_url)
    app = create_app(settings, clock=clock, manage_database=False)
    async with client_for(app) as client:
        yield Api(client=client, clock=clock, settings=settings)


@pytest.fixture
async def production_api(database_url: str, clock: Clock) -> AsyncIterator[Api]:
    settings = base_settings(database_url=database_url, env="production")
    app = create_app(settings, clock=clock, manage_database=False)
    async with client_for(app) as client:
        yield Api(client=client, clock=clock, settings=settings)


async def rollup_matches_events(company_id: uuid.UUID) -> bool:
    """The invariant: every rollup row equals the sum of its events, and no event is unrolled."""
    from meterline.db import sql

    rows = await sql.fetch(
        """
        SELECT count(*) AS mismatches FROM (
            SELECT company_id, month, event_type, sum(quantity) AS total
            FROM usage_events WHERE company_id = $1 GROUP BY 1, 2, 3
        ) e FULL JOIN (SELECT * FROM usage_rollups WHERE company_id = $1) r
          USING (company_id, month, event_type)
        WHERE e.total IS DISTINCT FROM r.used AND NOT (e.total IS NULL AND r.used = 0)
        """,
        company_id,
    )
    return bool(rows[0]["mismatches"] == 0)
