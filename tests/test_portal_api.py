"""The usage portal's API contract, through the real app: portal links (createPortalLink,
revokePortalLinks), the read-only `portal` role, the page's routes and their headers, and the
settings. The page itself is driven in a real browser in tests/test_portal_page.py."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jwt
import pytest
from graphql import (
    GraphQLEnumType,
    GraphQLInputObjectType,
    GraphQLList,
    GraphQLNonNull,
    GraphQLScalarType,
)

from meterline.app import create_app
from meterline.auth import PORTAL_AUDIENCE, TokenVerifier
from meterline.billing.catalog import Tier
from meterline.config import ConfigError, Settings
from meterline.db import sql
from meterline.db.invoices import InvoiceMirror, upsert
from meterline.schema import build_schema
from tests.commands import meterline
from tests.conftest import JWT_SECRET, SERVICE_SECRET, Api, Clock, base_settings, client_for
from tests.plans import put_on_tier

PORTAL_SECRET = "test-portal-secret-0123456789abcdef0123456789"
PUBLIC = "https://usage.weddingflow.test"
LINK = "mutation($ttl: Int) { createPortalLink(ttlMinutes: $ttl) { url expiresAt } }"
REVOKE = "mutation { revokePortalLinks }"
# Everything a company admin reads, as the page asks for it.
READS = """{
  currentUsage { eventType used included }
  usageLimits { tier scheduledTier scheduledTierEffectiveAt hardCap billingStatus graceEndsAt
                meters { eventType used overageCost { amount currency } } }
  monthlySummary { month totalOverageCost { amount currency } unbilledUnits
                   invoice { id number status } }
  usageHistory(months: 3) { month meters { eventType used } }
  usageEvents(first: 5) { edges { node { id eventType quantity } } pageInfo { hasNextPage } }
  paymentHistory { id number status amountDue { amount currency } }
}"""
RECORD = """mutation { recordUsage(input: {eventType: SMS_SENT, quantity: 3}) {
  __typename } }"""


def portal_settings(database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"public_base_url": PUBLIC, "portal_token_secret": PORTAL_SECRET}
    return base_settings(database_url=database_url, **{**values, **overrides})


@pytest.fixture
async def portal_api(database_url: str, clock: Clock) -> AsyncIterator[Api]:
    settings = portal_settings(database_url)
    app = create_app(settings, clock=clock, manage_database=False)
    async with client_for(app) as client:
        yield Api(client=client, clock=clock, settings=settings)


def token_of(url: str) -> str:
    parts = urlsplit(url)
    assert parts.fragment.startswith("token="), url
    return parts.fragment.removeprefix("token=")


async def new_link(api: Api, ttl: int | None = None, role: str = "company_admin") -> str:
    data = await api.data(LINK, {"ttl": ttl} if ttl else {}, role=role)
    return token_of(data["createPortalLink"]["url"])


def codes(body: dict[str, Any]) -> list[str]:
    return [e["extensions"]["code"] for e in body.get("errors", [])]


# ------------------------------------------------------------------------------ the links


@pytest.mark.parametrize("role", ["company_admin", "super_admin"])
async def test_admins_get_a_link_to_the_public_url_that_expires_with_its_ttl(
    portal_api: Api, role: str
) -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    data = await portal_api.data(LINK, {"ttl": 90}, role=role)
    after = datetime.now(UTC)
    link = data["createPortalLink"]
    assert link["url"].startswith(f"{PUBLIC}/portal#token=")
    expires = datetime.fromisoformat(link["expiresAt"])
    # Tokens live on the machine's clock: PyJWT checks `exp` against it.
    assert before + timedelta(minutes=90) <= expires <= after + timedelta(minutes=90)
    claims = jwt.decode(
        token_of(link["url"]), PORTAL_SECRET, algorithms=["HS256"], audience=PORTAL_AUDIENCE
    )
    assert claims["exp"] == int(expires.timestamp())
    assert claims["metadata"] == {"company_id": str(portal_api.company_id), "role": "portal"}
    assert claims["gen"] == 0


async def test_the_default_ttl_is_an_hour(portal_api: Api) -> None:
    link = (await portal_api.data("mutation { createPortalLink { expiresAt } }"))[
        "createPortalLink"
    ]
    left = datetime.fromisoformat(link["expiresAt"]) - datetime.now(UTC)
    assert timedelta(minutes=59) < left <= timedelta(minutes=60)


@pytest.mark.parametrize("ttl", [-1, 0, 4, 1441, 100_000])
async def test_ttl_out_of_range_is_bad_user_input(portal_api: Api, ttl: int) -> None:
    body = await portal_api.gql(LINK, {"ttl": ttl})
    assert codes(body) == ["BAD_USER_INPUT"]
    assert body["data"] is None


@pytest.mark.parametrize("ttl", [5, 1440])
async def test_ttl_bounds_are_accepted(portal_api: Api, ttl: int) -> None:
    assert await new_link(portal_api, ttl)


@pytest.mark.parametrize("role", ["staff", "service", "portal_link"])
async def test_other_roles_may_not_make_or_revoke_links(portal_api: Api, role: str) -> None:
    token = await new_link(portal_api) if role == "portal_link" else portal_api.token(role)
    for document in (LINK, REVOKE):
        body = await portal_api.gql(document, token=token)
        assert codes(body) == ["FORBIDDEN"], (role, document, body)


async def test_unconfigured_portal_answers_portal_not_configured(
    database_url: str, clock: Clock
) -> None:
    for missing in ({"public_base_url": None}, {"portal_token_secret": None}):
        # Production starts without them: the page answers 503.
        production = portal_settings(database_url, env="production", **missing)
        async with client_for(create_app(production, clock=clock, manage_database=False)) as c:
            assert (await c.get("/healthz")).status_code == 200
            page = await c.get("/portal")
            assert page.status_code == 503
            assert page.json()["detail"].startswith("The usage portal is not configured")
            assert (await c.get("/portal/assets/portal.js")).status_code == 503
        # The mutation says why (a development app left without them: no admin token can be
        # made for a production one here).
        dev = portal_settings(database_url, **missing)
        async with client_for(create_app(dev, clock=clock, manage_database=False)) as client:
            api = Api(client=client, clock=clock, settings=dev)
            body = await api.gql(LINK)
            assert codes(body) == ["PORTAL_NOT_CONFIGURED"], body
            assert body["data"] is None


# ----------------------------------------------------------------------- the portal role


async def test_a_portal_link_reads_what_a_company_admin_reads(portal_api: Api) -> None:
    api = portal_api
    await put_on_tier(api.company_id, Tier.STARTER, now=api.clock())
    for quantity in (7, 1_200):
        assert (await api.data(RECORD.replace("3", str(quantity))))["recordUsage"]
    await upsert(invoice(api.company_id, api.clock()))
    token = await new_link(api)
    as_admin = await api.data(READS)
    as_portal = await api.data(READS, token=token)
    assert as_portal == as_admin
    assert as_portal["paymentHistory"][0]["number"] == "WF-0001"
    used = {m["eventType"]: m["used"] for m in as_portal["currentUsage"]}
    assert used["SMS_SENT"] == 1_207


async def test_upcoming_invoice_is_answered_to_a_portal_link_not_forbidden(
    portal_api: Api,
) -> None:
    """Without Stripe the field says STRIPE_UNAVAILABLE, as it does to an admin: the role may
    read it."""
    await put_on_tier(portal_api.company_id, Tier.STARTER, now=portal_api.clock())
    token = await new_link(portal_api)
    body = await portal_api.gql("{ upcomingInvoice { periodStart } }", token=token)
    admin = await portal_api.gql("{ upcomingInvoice { periodStart } }")
    assert codes(body) == codes(admin)
    assert "FORBIDDEN" not in codes(body)


def sample_value(kind: Any) -> str:
    """A GraphQL literal of `kind` that validates (the role check must be what refuses)."""
    if isinstance(kind, GraphQLNonNull):
        return sample_value(kind.of_type)
    if isinstance(kind, GraphQLList):
        return f"[{sample_value(kind.of_type)}]"
    if isinstance(kind, GraphQLEnumType):
        return next(iter(kind.values))
    if isinstance(kind, GraphQLInputObjectType):
        fields = [
            f"{name}: {sample_value(field.type)}"
            for name, field in kind.fields.items()
            if (isinstance(field.type, GraphQLNonNull) and field.default_value is not None)
            or isinstance(field.type, GraphQLNonNull)
        ]
        return "{" + ", ".join(fields) + "}"
    assert isinstance(kind, GraphQLScalarType)
    return {"Int": "5", "String": '"https://app.weddingflow.test/billing"', "Boolean": "true"}[
        kind.name
    ]


def every_mutation() -> list[tuple[str, str]]:
    """(name, document) of every mutation in the schema, with its required arguments."""
    mutations = build_schema(introspection=True)._schema.mutation_type
    assert mutations is not None
    documents = []
    for name, field in mutations.fields.items():
        args = [
            f"{arg}: {sample_value(spec.type)}"
            for arg, spec in field.args.items()
            if isinstance(spec.type, GraphQLNonNull)
        ]
        call = f"{name}({', '.join(args)})" if args else name
        result = field.type.of_type if isinstance(field.type, GraphQLNonNull) else field.type
        selection = "" if isinstance(result, GraphQLScalarType) else " { __typename }"
        documents.append((name, f"mutation {{ {call}{selection} }}"))
    return documents


def test_every_mutation_is_listed() -> None:
    names = {name for name, _ in every_mutation()}
    assert {"recordUsage", "createPortalLink", "revokePortalLinks", "changeTier"} <= names
    assert len(names) >= 9


async def test_a_portal_link_is_refused_by_every_mutation_and_writes_nothing(
    portal_api: Api,
) -> None:
    api = portal_api
    await put_on_tier(api.company_id, Tier.STARTER, now=api.clock())
    token = await new_link(api)
    for name, document in every_mutation():
        body = await api.gql(document, token=token)
        assert codes(body) == ["FORBIDDEN"], (name, body)
    stored = await sql.fetchrow(
        "SELECT count(*) AS n FROM usage_events WHERE company_id = $1", api.company_id
    )
    assert stored is not None and stored["n"] == 0
    # The link still works: nothing it tried revoked it.
    assert (await api.data(READS, token=token))["usageLimits"]["tier"] == "STARTER"


async def test_a_portal_link_reads_only_its_own_company(portal_api: Api) -> None:
    mine, other = portal_api, portal_api.new_company()
    await put_on_tier(other.company_id, Tier.STARTER, now=other.clock())
    await other.data(RECORD)
    token = await new_link(mine)
    used = (await mine.data("{ currentUsage { eventType used } }", token=token))["currentUsage"]
    assert all(m["used"] == 0 for m in used)
    # The company comes from the signed token: changing it breaks the signature.
    header, _, signature = token.split(".")
    claims = jwt.decode(token, options={"verify_signature": False})
    claims["metadata"]["company_id"] = str(other.company_id)
    forged_payload = jwt.encode(claims, "x", algorithm="HS256").split(".")[1]
    response = await mine.post(
        "{ currentUsage { used } }", token=f"{header}.{forged_payload}.{signature}"
    )
    assert response.status_code == 401


def portal_claims(company_id: uuid.UUID, **overrides: Any) -> dict[str, Any]:
    now = datetime.now(UTC)
    claims: dict[str, Any] = {
        "sub": f"portal:{company_id}",
        "metadata": {"company_id": str(company_id), "role": "portal"},
        "aud": PORTAL_AUDIENCE,
        "gen": 0,
        "iat": now,
        "nbf": now,
        "exp": now + timedelta(minutes=10),
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


@pytest.mark.parametrize(
    ("secret", "overrides", "reason"),
    [
        (JWT_SECRET, {}, "invalid signature"),  # the development secret cannot make a link
        (SERVICE_SECRET, {}, "invalid signature"),
        (PORTAL_SECRET, {"aud": None}, "missing claim: aud"),
        (PORTAL_SECRET, {"aud": "meterline"}, "invalid token"),
        (PORTAL_SECRET, {"gen": None}, "invalid portal link"),
        (PORTAL_SECRET, {"gen": "0"}, "invalid portal link"),
        (PORTAL_SECRET, {"exp": datetime.now(UTC) - timedelta(minutes=1)}, "token expired"),
        (PORTAL_SECRET, {"metadata": {"role": "portal"}}, "invalid portal link"),
    ],
)
async def test_portal_tokens_are_checked(
    portal_api: Api, secret: str, overrides: dict[str, Any], reason: str
) -> None:
    token = jwt.encode(portal_claims(portal_api.company_id, **overrides), secret, "HS256")
    response = await portal_api.post("{ currentUsage { used } }", token=token)
    assert response.status_code == 401
    assert response.json()["detail"] == reason


async def test_no_other_token_may_claim_the_portal_role(portal_api: Api) -> None:
    """A development token with role `portal` is routed to the portal secret; signed with the
    portal secret but another role, to the development secret: neither verifies."""
    for token in (
        jwt.encode(portal_claims(portal_api.company_id, aud=None, gen=None), JWT_SECRET, "HS256"),
        jwt.encode(
            portal_claims(
                portal_api.company_id,
                metadata={"company_id": str(portal_api.company_id), "role": "company_admin"},
            ),
            PORTAL_SECRET,
            "HS256",
        ),
    ):
        response = await portal_api.post("{ currentUsage { used } }", token=token)
        assert response.status_code == 401, response.text


async def test_portal_links_are_refused_where_the_secret_is_unset(
    database_url: str, portal_api: Api, clock: Clock
) -> None:
    token = await new_link(portal_api)
    settings = portal_settings(database_url, portal_token_secret=None)
    async with client_for(create_app(settings, clock=clock, manage_database=False)) as client:
        api = Api(client=client, clock=clock, settings=settings, company_id=portal_api.company_id)
        response = await api.post("{ currentUsage { used } }", token=token)
        assert response.status_code == 401
        assert response.json()["detail"] == "portal links are not accepted"


# ------------------------------------------------------------------------------ revocation


async def test_revoking_stops_every_earlier_link_at_once_and_later_ones_work(
    portal_api: Api,
) -> None:
    api = portal_api
    first, second = await new_link(api), await new_link(api)
    for token in (first, second):
        assert (await api.post(READS, token=token)).status_code == 200
    assert (await api.data(REVOKE))["revokePortalLinks"] is True
    for token in (first, second):
        response = await api.post(READS, token=token)
        assert response.status_code == 401
        assert response.json()["detail"] == "portal link revoked"
    third = await new_link(api, role="super_admin")
    assert (await api.post(READS, token=third)).status_code == 200
    await api.data(REVOKE, role="super_admin")
    assert (await api.post(READS, token=third)).status_code == 401
    assert (await api.post(READS, token=first)).status_code == 401


async def test_revoking_touches_only_the_company(portal_api: Api) -> None:
    mine, other = portal_api, portal_api.new_company()
    theirs = await new_link(other)
    await mine.data(REVOKE)
    assert (await other.post(READS, token=theirs)).status_code == 200


async def test_concurrent_revocations_each_count(portal_api: Api) -> None:
    token = await new_link(portal_api)
    results = await asyncio.gather(*(portal_api.data(REVOKE) for _ in range(8)))
    assert all(r["revokePortalLinks"] for r in results)
    row = await sql.fetchrow(
        "SELECT generation FROM portal_link_generations WHERE company_id = $1",
        portal_api.company_id,
    )
    assert row is not None and row["generation"] == 8
    assert (await portal_api.post(READS, token=token)).status_code == 401
    fresh = await new_link(portal_api)
    claims = jwt.decode(fresh, PORTAL_SECRET, algorithms=["HS256"], audience=PORTAL_AUDIENCE)
    assert claims["gen"] == 8
    assert (await portal_api.post(READS, token=fresh)).status_code == 200


# ---------------------------------------------------------------- limits: the page's facts


async def test_usage_limits_say_when_a_scheduled_change_starts_and_whether_usage_is_capped(
    portal_api: Api,
) -> None:
    api = portal_api
    query = "{ usageLimits { tier scheduledTier scheduledTierEffectiveAt hardCap } }"
    free = (await api.data(query))["usageLimits"]
    assert free == {
        "tier": "FREE",
        "scheduledTier": None,
        "scheduledTierEffectiveAt": None,
        "hardCap": True,
    }
    now = datetime.now(UTC)
    first = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0) + timedelta(days=32)
    next_month = first.replace(day=1)
    await put_on_tier(api.company_id, Tier.STARTER, now=now, billed=True)
    await put_on_tier(api.company_id, Tier.PROFESSIONAL, now=now, since=next_month, billed=True)
    limits = (await api.data(query))["usageLimits"]
    assert limits["tier"] == "STARTER" and limits["hardCap"] is False
    assert limits["scheduledTier"] == "PROFESSIONAL"
    assert datetime.fromisoformat(limits["scheduledTierEffectiveAt"]) == next_month


# ------------------------------------------------------------------- the page's routes


class Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


async def test_the_page_has_no_inline_script_or_style_and_names_only_its_own_assets(
    portal_api: Api,
) -> None:
    response = await portal_api.client.get("/portal")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert "__BASE__" not in response.text and "__VERSION__" not in response.text
    parser = Tags()
    parser.feed(response.text)
    scripts = [attrs for tag, attrs in parser.tags if tag == "script"]
    assert scripts and all(attrs.get("src") for attrs in scripts)
    for tag, attrs in parser.tags:
        assert not any(name.startswith("on") for name in attrs), (tag, attrs)
        assert "style" not in attrs, (tag, attrs)
        for name in ("src", "href"):
            value = attrs.get(name)
            if value and tag in ("script", "link", "img"):
                # Its own assets, or an inline empty icon (no request for /favicon.ico)
                assert value.startswith(("/portal/assets/", "data:")), value
    assert not re.search(r"<style", response.text)
    for tag, attrs in parser.tags:
        source = attrs.get("src") or attrs.get("href") or ""
        if tag in ("script", "link") and source.startswith("/"):
            asset = await portal_api.client.get(source)
            assert asset.status_code == 200, attrs


def security_of(response: Any, frame_ancestors: str = "'none'") -> None:
    csp = response.headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["default-src"] == "'self'"
    assert directives["script-src"] == "'self'"
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert directives["connect-src"] == "'self'"
    assert directives["frame-ancestors"] == frame_ancestors
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["x-content-type-options"] == "nosniff"


async def test_page_and_assets_carry_the_security_and_caching_headers(portal_api: Api) -> None:
    client = portal_api.client
    page = await client.get("/portal")
    security_of(page)
    assert page.headers["cache-control"] == "no-cache"
    assert page.headers["x-frame-options"] == "DENY"
    again = await client.get("/portal", headers={"If-None-Match": page.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    script = re.search(r'src="(/portal/assets/[^"]+)"', page.text)
    assert script is not None
    versioned = await client.get(script.group(1))
    security_of(versioned)
    assert versioned.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert versioned.headers["content-type"] == "text/javascript; charset=utf-8"
    bare = await client.get(script.group(1).split("?")[0])
    assert bare.headers["cache-control"] == "no-cache"
    assert bare.content == versioned.content
    stale = await client.get(script.group(1).split("?")[0] + "?v=0000")
    assert stale.headers["cache-control"] == "no-cache"
    missing = await client.get("/portal/assets/nothing.js")
    assert missing.status_code == 404
    security_of(missing)
    for escape in ("/portal/assets/..%2f..%2fapp.py", "/portal/assets/%2e%2e"):
        assert (await client.get(escape)).status_code == 404
    # The data the page shows is never kept.
    token = await new_link(portal_api)
    answer = await portal_api.post("{ usageLimits { tier } }", token=token)
    assert answer.headers["cache-control"] == "no-store"


async def test_frame_ancestors_come_from_the_setting(database_url: str, clock: Clock) -> None:
    settings = portal_settings(
        database_url, portal_frame_ancestors="'self' https://app.weddingflow.test"
    )
    async with client_for(create_app(settings, clock=clock, manage_database=False)) as client:
        page = await client.get("/portal")
        security_of(page, "'self' https://app.weddingflow.test")
        assert "x-frame-options" not in page.headers


async def test_the_page_is_served_under_the_public_urls_path(
    database_url: str, clock: Clock
) -> None:
    """Behind a proxy that serves Meterline under a path, the page names its assets and the
    GraphQL endpoint under that path."""
    settings = portal_settings(database_url, public_base_url="https://app.weddingflow.test/meter")
    async with client_for(create_app(settings, clock=clock, manage_database=False)) as client:
        page = (await client.get("/portal")).text
        assert 'content="/meter/graphql"' in page
        assert "/meter/portal/assets/portal.js?v=" in page


# ------------------------------------------------------------------------------ settings


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PUBLIC_BASE_URL": "ftp://x.test"}, "http(s) URL"),
        ({"PUBLIC_BASE_URL": "usage.weddingflow.test"}, "http(s) URL"),
        ({"PUBLIC_BASE_URL": "https://x.test/?a=1"}, "query"),
        ({"PUBLIC_BASE_URL": "https://u:p@x.test"}, "credentials"),
        ({"PUBLIC_BASE_URL": "http://usage.weddingflow.test"}, "https in production"),
        ({"PORTAL_TOKEN_SECRET": "short"}, "at least 32"),
        ({"PORTAL_FRAME_ANCESTORS": "'self'; script-src *"}, "PORTAL_FRAME_ANCESTORS"),
        ({"PORTAL_FRAME_ANCESTORS": "'none' https://a.test"}, "PORTAL_FRAME_ANCESTORS"),
        ({"PORTAL_FRAME_ANCESTORS": "javascript:"}, "PORTAL_FRAME_ANCESTORS"),
        ({"ROLE_ALIASES": "portal=company_admin"}, "may not rename"),
        ({"ROLE_ALIASES": "service=staff"}, "may not rename"),
    ],
)
def test_bad_portal_settings_stop_the_process(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        Settings.from_env(env)


def test_portal_settings_are_read() -> None:
    settings = Settings.from_env(
        {
            "PUBLIC_BASE_URL": "https://usage.weddingflow.test/",
            "PORTAL_TOKEN_SECRET": PORTAL_SECRET,
            "PORTAL_FRAME_ANCESTORS": "https://app.weddingflow.test   https://*.weddingflow.test",
        }
    )
    assert settings.public_base_url == "https://usage.weddingflow.test"
    assert settings.portal_configured
    assert settings.portal_frame_ancestors == (
        "https://app.weddingflow.test https://*.weddingflow.test"
    )
    assert Settings.from_env({}).portal_frame_ancestors == "'none'"
    assert not Settings.from_env({}).portal_configured
    local = Settings.from_env({"PUBLIC_BASE_URL": "http://localhost:8000"})
    assert local.public_base_url == "http://localhost:8000"


async def test_a_verifier_without_the_portal_secret_refuses_links() -> None:
    verifier = TokenVerifier(Settings())
    token = jwt.encode(portal_claims(uuid.uuid4()), PORTAL_SECRET, "HS256")
    with pytest.raises(Exception, match="portal links are not accepted"):
        await verifier.verify(token)


# ---------------------------------------------------------------------------------- CLI


def cli_env(database_url: str, **extra: str) -> dict[str, str]:
    return {
        "DATABASE_URL": database_url,
        "METERLINE_ENV": "production",
        "PUBLIC_BASE_URL": PUBLIC,
        "PORTAL_TOKEN_SECRET": PORTAL_SECRET,
        **extra,
    }


async def test_cli_prints_a_link_that_works(portal_api: Api, database_url: str) -> None:
    await put_on_tier(portal_api.company_id, Tier.STARTER, now=portal_api.clock())
    company = str(portal_api.company_id)
    result = await asyncio.to_thread(
        meterline, "portal-link", company, "--ttl-minutes", "30", env=cli_env(database_url)
    )
    assert result.returncode == 0, result.stderr
    url = result.stdout.strip()
    assert url.startswith(f"{PUBLIC}/portal#token=") and "\n" not in url
    assert "expires at" in result.stderr
    token = token_of(url)
    claims = jwt.decode(token, PORTAL_SECRET, algorithms=["HS256"], audience=PORTAL_AUDIENCE)
    assert claims["exp"] - claims["iat"] == 30 * 60
    assert (await portal_api.post(READS, token=token)).status_code == 200
    await portal_api.data(REVOKE)
    assert (await portal_api.post(READS, token=token)).status_code == 401


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--ttl-minutes", "2000"], {}, "ttlMinutes must be between 5 and 1440"),
        ([], {"PORTAL_TOKEN_SECRET": ""}, "The usage portal is not configured"),
        ([], {"PUBLIC_BASE_URL": ""}, "The usage portal is not configured"),
        ([], {}, "No company"),  # a company Meterline does not know: a typo mints nothing
    ],
)
async def test_cli_refusals(
    database_url: str, args: list[str], env: dict[str, str], message: str
) -> None:
    result = await asyncio.to_thread(
        meterline, "portal-link", str(uuid.uuid4()), *args, env=cli_env(database_url, **env)
    )
    assert result.returncode == 1
    assert message in result.stderr
    assert result.stdout == ""


# ------------------------------------------------------- found in review (each failed first)


@pytest.mark.parametrize(
    "value",
    [
        "https://usage.weddingflow.test#",  # link: https://usage...test#/portal#token=...
        "https://usage.weddingflow.test?",  # link: https://usage...test?/portal#token=...
        'https://usage.weddingflow.test/m"><meta http-equiv="refresh" content="0;url=https://evil.test/">',
        "https://usage.weddingflow.test/a b",
        "https://usage.weddingflow.test:notaport",
        "https://:443",
    ],
)
def test_public_base_url_refuses_values_that_break_the_link_or_the_page(value: str) -> None:
    """PUBLIC_BASE_URL is pasted into every link and, unescaped, into the page's HTML
    (`__BASE__`). An empty query/fragment marker makes the link open the host's ROOT page with
    the token in its fragment (`https://host#/portal#token=...`); quotes/angle brackets inject
    markup into /portal (a <meta http-equiv=refresh> is not stopped by the CSP)."""
    with pytest.raises(ConfigError):
        Settings.from_env({"PUBLIC_BASE_URL": value, "METERLINE_ENV": "production"})


def test_role_aliases_may_not_shadow_a_built_in_user_role() -> None:
    """Pre-existing, but the new RESERVED_ROLES rule stops one step short: an alias named after
    a built-in role silently re-grants it (every `staff` becomes `super_admin`). The docs say
    ROLE_ALIASES maps *other* role names onto the user roles."""
    with pytest.raises(ConfigError):
        Settings.from_env({"ROLE_ALIASES": "staff=super_admin"})


# ------------------------------------------------------------------------ 2. the contract


def test_create_portal_link_ttl_is_a_nullable_int_as_the_contract_says() -> None:
    """Issue 13 and design.md: `createPortalLink(ttlMinutes: Int = 60)`; schema.graphql says
    `Int! = 60` (the resolver's `ttl_minutes: int`)."""
    mutation = build_schema(introspection=True)._schema.mutation_type
    assert mutation is not None
    arg = mutation.fields["createPortalLink"].args["ttlMinutes"]
    assert not isinstance(arg.type, GraphQLNonNull), str(arg.type)


async def test_explicit_null_ttl_is_not_a_validation_failure(portal_api: Api) -> None:
    body = await portal_api.gql("mutation { createPortalLink(ttlMinutes: null) { url } }")
    codes = [e["extensions"]["code"] for e in body.get("errors", [])]
    assert "GRAPHQL_VALIDATION_FAILED" not in codes, body


# ------------------------------------------------------------------- 3. expiry is exact


async def test_a_portal_link_stops_at_its_expires_at(portal_api: Api) -> None:
    """JWT_LEEWAY_SECONDS (for Clerk's clock skew) also stretches portal links, which Meterline
    mints and checks on its own clock: a link answers data after `expiresAt`. (Default 5 s; an
    operator raising it for Clerk extends every portal link by as much.)"""
    now = datetime.now(UTC)
    token = jwt.encode(
        portal_claims(
            portal_api.company_id,
            iat=now - timedelta(minutes=10),
            nbf=now - timedelta(minutes=10),
            exp=now - timedelta(seconds=2),
        ),
        PORTAL_SECRET,
        "HS256",
    )
    response = await portal_api.post("{ usageLimits { tier } }", token=token)
    assert response.status_code == 401, response.text


# ---------------------------------------- 4. one document, one moment (the page's banner)


class SteppingClock(Clock):
    """`before` for the first `calls` reads, `after` from then on: a request that straddles
    00:00 UTC on the 1st."""

    def __init__(self, before: datetime, after: datetime, calls: int) -> None:
        super().__init__(fixed=None)
        self.before, self.after, self.left = before, after, calls

    def __call__(self) -> datetime:
        self.left -= 1
        return self.before if self.left >= 0 else self.after


async def test_limits_and_summary_of_one_request_describe_the_same_month(
    database_url: str,
) -> None:
    """Context.now() reads the clock anew at each call, so the fields of the page's single
    first-render document (usageLimits, monthlySummary, usageHistory) may price different
    months; the page's overage banner then shows monthlySummary.totalOverageCost beside the
    cards of usageLimits."""
    before = datetime(2026, 11, 30, 23, 59, 59, 999_000, tzinfo=UTC)
    after = datetime(2026, 12, 1, 0, 0, 0, 1_000, tzinfo=UTC)
    setup_clock = Clock(fixed=before)
    settings = portal_settings(database_url)
    app = create_app(settings, clock=setup_clock, manage_database=False)
    company = uuid.uuid4()
    async with client_for(app) as client:
        api = Api(client=client, clock=setup_clock, settings=settings, company_id=company)
        await put_on_tier(company, Tier.STARTER, now=before)
        await api.data(
            "mutation { recordUsage(input: {eventType: SMS_SENT, quantity: 1207}) { __typename } }"
        )
    mismatches = 0
    for calls in range(1, 6):
        clock = SteppingClock(before, after, calls)
        app = create_app(settings, clock=clock, manage_database=False)
        async with client_for(app) as client:
            api = Api(client=client, clock=setup_clock, settings=settings, company_id=company)
            data = await api.data(
                "{ usageLimits { meters { overageCost { amount } } } "
                "monthlySummary { month totalOverageCost { amount } } }"
            )
        cards = sum(Decimal(m["overageCost"]["amount"]) for m in data["usageLimits"]["meters"])
        total = Decimal(data["monthlySummary"]["totalOverageCost"]["amount"])
        mismatches += cards != total
    assert mismatches == 0


# ------------------------------------------------------- 5. secrets shared between kinds

SHARED = "shared-secret-0123456789abcdef0123456789abcdef"


def test_the_portal_secret_may_not_be_the_service_secret() -> None:
    """Routing by role keeps an issued token from changing kind, but a shared secret lets every
    holder of SERVICE_JWT_SECRET (WeddingFlow's backend, or whoever stole it) mint a portal
    token, and `portal` has read_billing, which `service` does not (payment history, upcoming
    invoice). See test_a_service_secret_holder_reads_billing_through_a_portal_token."""
    with pytest.raises(ConfigError):
        Settings.from_env({"SERVICE_JWT_SECRET": SHARED, "PORTAL_TOKEN_SECRET": SHARED})


async def test_a_service_secret_holder_reads_billing_through_a_portal_token(
    database_url: str, clock: Clock
) -> None:
    settings = portal_settings(database_url, service_jwt_secret=SHARED, portal_token_secret=SHARED)
    app = create_app(settings, clock=clock, manage_database=False)
    company = uuid.uuid4()
    async with client_for(app) as client:
        api = Api(client=client, clock=clock, settings=settings, company_id=company)
        service = jwt.encode(
            {
                **portal_claims(company, aud=None, gen=None),
                "sub": "service:backend",
                "metadata": {"company_id": str(company), "role": "service"},
            },
            SHARED,
            "HS256",
        )
        body = await api.gql("{ paymentHistory { id } }", token=service)
        assert body["errors"][0]["extensions"]["code"] == "FORBIDDEN"
        forged = jwt.encode(portal_claims(company), SHARED, "HS256")  # by the service holder
        body = await api.gql("{ paymentHistory { id } }", token=forged)
        assert "errors" in body, "a service-secret holder read billing via a portal token"


# ------------------------------------------------ 6. a read-only link writes a company


async def test_a_portal_link_for_an_unknown_company_creates_nothing(
    portal_api: Api,
) -> None:
    """An operator's typo mints no link; a link whose company does not exist (signed by hand
    here) reads nothing and creates nothing: the role is read-only."""
    from meterline.services.errors import BadUserInput
    from meterline.services.portal import create_link

    ghost = uuid.uuid4()
    with pytest.raises(BadUserInput, match="No company"):
        await create_link(portal_api.settings, ghost, 30)
    token = jwt.encode(portal_claims(ghost), PORTAL_SECRET, "HS256")
    body = await portal_api.gql("{ usageLimits { tier } }", token=token)
    assert codes(body) == ["FORBIDDEN"]
    row = await sql.fetchrow("SELECT count(*) AS n FROM companies WHERE id = $1", ghost)
    assert row is not None and row["n"] == 0
    # An admin's request creates its company, as any of its requests would: its link works.
    admin_made = await new_link(portal_api)
    assert (await portal_api.post(READS, token=admin_made)).status_code == 200


# -------------------------------------------------------------------------------- helpers


def invoice(company_id: uuid.UUID, now: datetime) -> InvoiceMirror:
    start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return InvoiceMirror(
        id=f"in_{uuid.uuid4().hex[:14]}",
        company_id=company_id,
        subscription_id=None,
        number="WF-0001",
        status="paid",
        billing_reason="subscription_cycle",
        currency="usd",
        amount_due=4_900,
        amount_paid=4_900,
        amount_remaining=0,
        period_start=start - timedelta(days=31),
        period_end=start,
        usage_month=None,
        paid_at=start + timedelta(hours=2),
        hosted_invoice_url="https://invoice.stripe.com/i/test",
        invoice_pdf="https://pay.stripe.com/invoice/test/pdf",
        created=start,
        first_failed_at=None,
        marked_uncollectible_at=None,
        read_seq=1,
    )


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("127.0.0.1", "http://127.0.0.1:8000"),
        ("0.0.0.0", "http://127.0.0.1:8000"),  # listening everywhere: this machine's browser
        ("::", "http://[::1]:8000"),
        ("::1", "http://[::1]:8000"),
        ("meterline.local", "http://meterline.local:8000"),
    ],
)
def test_development_links_point_where_serve_listens(host: str, url: str, tmp_path: Path) -> None:
    from meterline.cli import listening_url, with_dev_defaults

    assert listening_url(host, 8000) == url
    data_dir = str(tmp_path / "pgdata")
    settings = with_dev_defaults(
        Settings(env="development", host=host, port=8000, embedded_data_dir=data_dir)
    )
    assert settings.public_base_url == url
    # Generated beside the data directory, like the other development secrets.
    assert settings.portal_token_secret == (tmp_path / "portal_token_secret").read_text()
    assert with_dev_defaults(Settings(host=host)).public_base_url is None  # never in production
