"""Security of the HTTP surface, end to end through the real ASGI app and a real PostgreSQL.

Token attacks (HTTP 401, nothing written), the role table, tenant isolation, query limits,
introspection and GraphiQL, error masking with request ids, and the operational routes.
Every test uses companies of its own (random UUIDs carried by the tokens).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from litestar.exceptions import WebSocketDisconnect
from litestar.testing import TestClient

from meterline.app import MAX_BODY_BYTES, create_app
from tests.conftest import (
    JWT_SECRET,
    SERVICE_SECRET,
    Api,
    Clock,
    base_settings,
    client_for,
    make_token,
    service_token,
)
from tests.tokens import Keys, b64url, handmade, make_keys, unb64url

pytestmark = pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")

ISSUER = "https://clerk.weddingflow.test"
PARTY = "https://app.weddingflow.test"
EVENT_TYPES = {"GUEST_INVITATION", "SMS_SENT", "AI_QUERY", "WHATSAPP_MESSAGE", "EMAIL_SENT"}

RECORD = """mutation($input: RecordUsageInput!) { recordUsage(input: $input) {
  __typename
  ... on UsageRecorded {
    duplicate
    event { id eventType quantity idempotencyKey }
    usage { eventType used }
  }
} }"""
CURRENT = "{ currentUsage { eventType used } }"
EVENTS = """query($after: String) { usageEvents(first: 100, after: $after) {
  edges { cursor node { id eventType quantity idempotencyKey } }
  pageInfo { hasNextPage endCursor }
} }"""
DEEP_OF_TYPE = (
    "{ __schema { types { fields { type { ofType { ofType { ofType { ofType { ofType { ofType"
    " { ofType { name } } } } } } } } } } } }"
)


def record_input(quantity: int = 1, key: str | None = None) -> dict[str, Any]:
    value: dict[str, Any] = {"eventType": "GUEST_INVITATION", "quantity": quantity}
    if key is not None:
        value["idempotencyKey"] = key
    return {"input": value}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def current_months() -> set[str]:
    """The month the app answered with, read on the real clock just after it answered: this
    month, or the last one when the request ran just before midnight of a 1st."""
    now = datetime.now(UTC)
    return {
        (now - ago).date().replace(day=1).isoformat()
        for ago in (timedelta(minutes=1), timedelta(0))
    }


# ------------------------------------------------------------------------------ token helpers


@pytest.fixture(scope="module")
def keys() -> Keys:
    return make_keys()


def with_payload(token: str, **changes: Any) -> str:
    """The same header and signature over a modified payload."""
    header, payload, signature = token.split(".")
    claims = json.loads(unb64url(payload))
    claims.update(changes)
    return f"{header}.{b64url(json.dumps(claims).encode())}.{signature}"


def clerk_claims(
    company_id: uuid.UUID | None, role: str | None = "company_admin", **overrides: Any
) -> dict[str, Any]:
    """A Clerk session token (v2) as the session-token template produces it."""
    now = int(datetime.now(UTC).timestamp())
    metadata: dict[str, Any] = {}
    if company_id is not None:
        metadata["company_id"] = str(company_id)
    if role is not None:
        metadata["role"] = role
    claims: dict[str, Any] = {
        "sub": "user_2xClerkUser",
        "sid": "sess_2xSession",
        "iss": ISSUER,
        "azp": PARTY,
        "iat": now - 5,
        "nbf": now - 5,
        "exp": now + 60,
        "v": 2,
        "fva": [0, -1],
        "metadata": metadata,
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def rs256(
    private: rsa.RSAPrivateKey, claims: dict[str, Any], headers: dict[str, Any] | None = None
) -> str:
    return jwt.encode(
        claims, private, algorithm="RS256", headers={"kid": "ins_test", **(headers or {})}
    )


def dev_claims(
    company_id: uuid.UUID, role: str = "company_admin", **overrides: Any
) -> dict[str, Any]:
    now = datetime.now(UTC)
    claims: dict[str, Any] = {
        "sub": "user_test",
        "iat": int(now.timestamp()),
        "nbf": int(now.timestamp()) - 1,
        "exp": int((now + timedelta(hours=1)).timestamp()),
        "metadata": {"company_id": str(company_id), "role": role},
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


# --------------------------------------------------------------------------- shared assertions


def assert_unauthorized(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["status_code"] == 401
    assert isinstance(body["detail"], str) and body["detail"]
    assert "data" not in body and "errors" not in body
    assert response.headers["x-request-id"]


async def used_by(api: Api, company_id: uuid.UUID) -> dict[str, int]:
    data = await api.data(CURRENT, token=make_token(company_id))
    return {m["eventType"]: m["used"] for m in data["currentUsage"]}


async def events_of(
    api: Api, company_id: uuid.UUID, after: str | None = None
) -> list[dict[str, Any]]:
    data = await api.data(EVENTS, {"after": after}, token=make_token(company_id))
    return [edge["node"] for edge in data["usageEvents"]["edges"]]


async def assert_untouched(api: Api, company_id: uuid.UUID) -> None:
    """Checked with a valid token of that company: no usage and no event exist for it."""
    assert await used_by(api, company_id) == dict.fromkeys(EVENT_TYPES, 0)
    assert await events_of(api, company_id) == []


def assert_forbidden(body: dict[str, Any], field: str, *, nullable: bool = False) -> None:
    errors = body["errors"]
    assert [e["path"] for e in errors] == [[field]], body
    assert errors[0]["extensions"]["code"] == "FORBIDDEN", body
    if nullable:
        assert body["data"] == {field: None}, body
    else:
        assert body["data"] is None, body


@pytest.fixture
async def clerk(database_url: str, clock: Clock, keys: Keys) -> AsyncIterator[httpx.AsyncClient]:
    """An app that verifies Clerk tokens with a PEM key and checks iss and azp."""
    settings = base_settings(
        database_url=database_url,
        clerk_jwt_key=keys.public_pem,
        clerk_issuer=ISSUER,
        clerk_authorized_parties=(PARTY, "https://admin.weddingflow.test"),
    )
    app = create_app(settings, clock=clock, manage_database=False)
    async with client_for(app) as client:
        yield client


# ================================================================== 1. token attacks -> 401

Headers = Callable[[uuid.UUID, Keys], dict[str, str]]


def _now() -> datetime:
    return datetime.now(UTC)


def _tampered_dev(company: uuid.UUID, _: Keys) -> dict[str, str]:
    # A genuine staff token of another company, rewritten to name the target as super_admin.
    genuine = make_token(uuid.uuid4(), "staff")
    forged = with_payload(genuine, metadata={"company_id": str(company), "role": "super_admin"})
    return bearer(forged)


def _tampered_clerk(company: uuid.UUID, k: Keys) -> dict[str, str]:
    genuine = rs256(k.private, clerk_claims(uuid.uuid4(), "staff"))
    forged = with_payload(genuine, metadata={"company_id": str(company), "role": "super_admin"})
    return bearer(forged)


def _tampered_header_alg(company: uuid.UUID, k: Keys) -> dict[str, str]:
    # A genuine RS256 token whose header is switched to HS256 (signature left as is).
    genuine = rs256(k.private, clerk_claims(company))
    _, payload, signature = genuine.split(".")
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    return bearer(f"{header}.{payload}.{signature}")


def _embedded_jwk(company: uuid.UUID, k: Keys) -> dict[str, str]:
    # The attacker signs with its own key and ships that key in the header (CVE-2018-0114 style).
    public = k.other_private.public_key()
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(public))
    token = rs256(k.other_private, clerk_claims(company, "super_admin"), headers={"jwk": jwk})
    return bearer(token)


# (id, which app receives the request, how the Authorization header is made)
ATTACKS: list[tuple[str, str, Headers]] = [
    ("no-authorization-header", "dev", lambda c, k: {}),
    ("empty-header", "dev", lambda c, k: {"Authorization": ""}),
    ("bearer-without-token", "dev", lambda c, k: {"Authorization": "Bearer "}),
    ("garbage", "dev", lambda c, k: {"Authorization": "garbage"}),
    ("bearer-garbage", "dev", lambda c, k: bearer("garbage")),
    ("bearer-three-garbage-parts", "dev", lambda c, k: bearer("a.b.c")),
    ("token-without-scheme", "dev", lambda c, k: {"Authorization": make_token(c)}),
    ("basic-auth", "dev", lambda c, k: {"Authorization": "Basic dXNlcjpwYXNzd29yZA=="}),
    ("basic-scheme-valid-jwt", "dev", lambda c, k: {"Authorization": f"Basic {make_token(c)}"}),
    ("bearer-extra-part", "dev", lambda c, k: {"Authorization": f"Bearer {make_token(c)} x"}),
    ("oversized-token", "dev", lambda c, k: bearer("e" + "A" * 20_000)),
    (
        "alg-none",
        "dev",
        lambda c, k: bearer(handmade({"alg": "none", "typ": "JWT"}, dev_claims(c), None)),
    ),
    (
        "alg-None-mixed-case",
        "dev",
        lambda c, k: bearer(handmade({"alg": "None", "typ": "JWT"}, dev_claims(c), None)),
    ),
    (
        "alg-none-service-role",
        "dev",
        lambda c, k: bearer(handmade({"alg": "none"}, dev_claims(c, "service"), None)),
    ),
    (
        "alg-none-with-valid-hs256-signature",
        "dev",
        lambda c, k: bearer(handmade({"alg": "none"}, dev_claims(c), JWT_SECRET.encode())),
    ),
    (
        "alg-missing",
        "dev",
        lambda c, k: bearer(handmade({"typ": "JWT"}, dev_claims(c), JWT_SECRET.encode())),
    ),
    (
        "hs512-with-dev-secret",
        "dev",
        lambda c, k: bearer(jwt.encode(dev_claims(c), JWT_SECRET, algorithm="HS512")),
    ),
    (
        "user-role-signed-with-service-secret",
        "dev",
        lambda c, k: bearer(make_token(c, "company_admin", secret=SERVICE_SECRET)),
    ),
    (
        "super-admin-signed-with-service-secret",
        "dev",
        lambda c, k: bearer(make_token(c, "super_admin", secret=SERVICE_SECRET)),
    ),
    (
        "service-role-signed-with-dev-secret",
        "dev",
        lambda c, k: bearer(make_token(c, "service", secret=JWT_SECRET)),
    ),
    ("wrong-secret", "dev", lambda c, k: bearer(make_token(c, secret="wrong-" + "x" * 40))),
    (
        "service-wrong-secret",
        "dev",
        lambda c, k: bearer(make_token(c, "service", secret="wrong-" + "x" * 40)),
    ),
    (
        "expired",
        "dev",
        lambda c, k: bearer(make_token(c, extra={"exp": _now() - timedelta(minutes=1)})),
    ),
    (
        "expired-service",
        "dev",
        lambda c, k: bearer(
            make_token(
                c, "service", secret=SERVICE_SECRET, extra={"exp": _now() - timedelta(minutes=1)}
            )
        ),
    ),
    (
        "nbf-in-future",
        "dev",
        lambda c, k: bearer(make_token(c, extra={"nbf": _now() + timedelta(minutes=1)})),
    ),
    (
        "missing-exp",
        "dev",
        lambda c, k: bearer(jwt.encode(dev_claims(c, exp=None), JWT_SECRET, algorithm="HS256")),
    ),
    (
        "missing-sub",
        "dev",
        lambda c, k: bearer(jwt.encode(dev_claims(c, sub=None), JWT_SECRET, algorithm="HS256")),
    ),
    ("tampered-hs256-payload", "dev", _tampered_dev),
    (
        "rs256-when-no-clerk-key-configured",
        "dev",
        lambda c, k: bearer(rs256(k.private, clerk_claims(c))),
    ),
    # The app below verifies RS256 Clerk tokens with a PEM public key.
    (
        "hs256-forged-secret-on-rs256-app",
        "clerk",
        lambda c, k: bearer(
            jwt.encode(dev_claims(c, "super_admin"), "attacker", algorithm="HS256")
        ),
    ),
    (
        "key-confusion-public-pem-as-hmac-secret",
        "clerk",
        lambda c, k: bearer(
            handmade({"alg": "HS256", "typ": "JWT"}, clerk_claims(c), k.public_pem.encode())
        ),
    ),
    (
        "key-confusion-service-role",
        "clerk",
        lambda c, k: bearer(
            handmade({"alg": "HS256"}, clerk_claims(c, "service"), k.public_pem.encode())
        ),
    ),
    ("rs256-header-switched-to-hs256", "clerk", _tampered_header_alg),
    (
        "user-token-signed-with-service-secret-on-rs256-app",
        "clerk",
        lambda c, k: bearer(jwt.encode(clerk_claims(c), SERVICE_SECRET, algorithm="HS256")),
    ),
    ("rs256-wrong-key", "clerk", lambda c, k: bearer(rs256(k.other_private, clerk_claims(c)))),
    ("rs256-embedded-attacker-jwk", "clerk", _embedded_jwk),
    (
        "rs256-expired",
        "clerk",
        lambda c, k: bearer(
            rs256(k.private, clerk_claims(c, exp=int(_now().timestamp()) - 60, iat=None, nbf=None))
        ),
    ),
    (
        "rs256-nbf-in-future",
        "clerk",
        lambda c, k: bearer(rs256(k.private, clerk_claims(c, nbf=int(_now().timestamp()) + 60))),
    ),
    (
        "rs256-missing-exp",
        "clerk",
        lambda c, k: bearer(rs256(k.private, clerk_claims(c, exp=None))),
    ),
    (
        "rs256-wrong-issuer",
        "clerk",
        lambda c, k: bearer(rs256(k.private, clerk_claims(c, iss="https://evil.clerk.test"))),
    ),
    (
        "rs256-missing-issuer",
        "clerk",
        lambda c, k: bearer(rs256(k.private, clerk_claims(c, iss=None))),
    ),
    (
        "rs256-wrong-azp",
        "clerk",
        lambda c, k: bearer(rs256(k.private, clerk_claims(c, azp="https://evil.test"))),
    ),
    ("tampered-rs256-payload", "clerk", _tampered_clerk),
    (
        "rs256-session-pending",
        "clerk",
        lambda c, k: bearer(rs256(k.private, clerk_claims(c, sts="pending"))),
    ),
    (
        "rs256-user-claiming-service-role",
        "clerk",
        lambda c, k: bearer(rs256(k.private, clerk_claims(c, "service"))),
    ),
    # METERLINE_ENV=production: development tokens are refused.
    ("development-token-in-production", "prod", lambda c, k: bearer(make_token(c))),
    (
        "development-super-admin-in-production",
        "prod",
        lambda c, k: bearer(make_token(c, "super_admin")),
    ),
    (
        "user-role-signed-with-service-secret-in-production",
        "prod",
        lambda c, k: bearer(make_token(c, "company_admin", secret=SERVICE_SECRET)),
    ),
]


@pytest.mark.parametrize(
    ("target", "headers"), [a[1:] for a in ATTACKS], ids=[a[0] for a in ATTACKS]
)
async def test_bad_token_is_401_and_records_nothing(
    api: Api,
    production_api: Api,
    clerk: httpx.AsyncClient,
    keys: Keys,
    target: str,
    headers: Headers,
) -> None:
    company = uuid.uuid4()
    client = {"dev": api.client, "prod": production_api.client, "clerk": clerk}[target]
    body = {"query": RECORD, "variables": record_input(quantity=2, key="attack")}
    response = await client.post("/graphql", json=body, headers=headers(company, keys))
    assert_unauthorized(response)
    # A read is refused the same way.
    response = await client.post(
        "/graphql", json={"query": CURRENT}, headers=headers(company, keys)
    )
    assert_unauthorized(response)
    await assert_untouched(api, company)


async def test_unreachable_jwks_is_not_a_success(api: Api, database_url: str, keys: Keys) -> None:
    """The signing keys cannot be fetched: refused (503, the server's fault), nothing written."""
    settings = base_settings(database_url=database_url, clerk_jwks_url="http://127.0.0.1:9/jwks")
    company = uuid.uuid4()
    token = rs256(keys.private, clerk_claims(company, "super_admin"))
    async with client_for(create_app(settings, manage_database=False)) as client:
        body = {"query": RECORD, "variables": record_input()}
        response = await client.post("/graphql", json=body, headers=bearer(token))
        assert response.status_code == 503, response.text
        assert response.json()["status_code"] == 503
        # A token without a key id never reaches the network: plain 401.
        no_kid = jwt.encode(clerk_claims(company), keys.private, algorithm="RS256")
        response = await client.post("/graphql", json=body, headers=bearer(no_kid))
        assert_unauthorized(response)
    await assert_untouched(api, company)


def test_websocket_cannot_run_operations_without_a_token() -> None:
    """graphql-transport-ws would run queries too: without a token none may be answered."""
    app = create_app(base_settings(), manage_database=False)
    messages: list[dict[str, Any]] = []
    with TestClient(app) as client:
        try:
            with client.websocket_connect("/graphql", subprotocols=["graphql-transport-ws"]) as ws:
                ws.send_json({"type": "connection_init"})
                messages.append(ws.receive_json())
                subscribe = {"query": "{ __typename currentUsage { used } }"}
                ws.send_json({"type": "subscribe", "id": "1", "payload": subscribe})
                messages.append(ws.receive_json())
        except WebSocketDisconnect:
            pass
    assert not [m for m in messages if m.get("type") == "next"], messages


async def test_untouched_check_detects_a_write(api: Api) -> None:
    """Control for the test above: the same mutation with a valid token does write."""
    company = api.new_company()
    result = await company.data(RECORD, record_input(quantity=2, key="attack"))
    assert result["recordUsage"]["__typename"] == "UsageRecorded"
    with pytest.raises(AssertionError):
        await assert_untouched(api, company.company_id)


async def test_valid_clerk_token_is_accepted(
    api: Api, clerk: httpx.AsyncClient, keys: Keys
) -> None:
    company = uuid.uuid4()
    token = rs256(keys.private, clerk_claims(company, "company_admin"))
    response = await clerk.post(
        "/graphql",
        json={"query": RECORD, "variables": record_input(quantity=4)},
        headers=bearer(token),
    )
    assert response.status_code == 200, response.text
    recorded = response.json()["data"]["recordUsage"]
    assert recorded["__typename"] == "UsageRecorded"
    assert recorded["usage"] == {"eventType": "GUEST_INVITATION", "used": 4}
    # The company is the token's metadata.company_id: another app on the same data agrees.
    assert (await used_by(api, company))["GUEST_INVITATION"] == 4
    # The other configured authorized party, and a staff reader, are accepted too.
    staff = rs256(
        keys.private, clerk_claims(company, "staff", azp="https://admin.weddingflow.test")
    )
    response = await clerk.post("/graphql", json={"query": CURRENT}, headers=bearer(staff))
    assert response.status_code == 200, response.text
    used = {m["eventType"]: m["used"] for m in response.json()["data"]["currentUsage"]}
    assert used["GUEST_INVITATION"] == 4


async def test_clerk_token_without_azp_is_accepted(clerk: httpx.AsyncClient, keys: Keys) -> None:
    """azp is checked when present (Clerk's own rule): tokens from the backend API lack it."""
    token = rs256(keys.private, clerk_claims(uuid.uuid4(), azp=None))
    response = await clerk.post("/graphql", json={"query": CURRENT}, headers=bearer(token))
    assert response.status_code == 200, response.text
    assert len(response.json()["data"]["currentUsage"]) == 5


async def test_service_token_is_accepted_in_production(api: Api, production_api: Api) -> None:
    company = uuid.uuid4()
    token = service_token(company)
    data = await production_api.data(RECORD, record_input(quantity=3), token=token)
    assert data["recordUsage"]["usage"] == {"eventType": "GUEST_INVITATION", "used": 3}
    data = await production_api.data(CURRENT, token=token)
    assert {m["eventType"]: m["used"] for m in data["currentUsage"]}["GUEST_INVITATION"] == 3
    assert (await used_by(api, company))["GUEST_INVITATION"] == 3


async def test_bearer_scheme_is_case_insensitive(api: Api) -> None:
    response = await api.client.post(
        "/graphql", json={"query": CURRENT}, headers={"Authorization": f"bearer {api.token()}"}
    )
    assert response.status_code == 200, response.text
    assert "errors" not in response.json()


# ======================================================================== 2. the role table

READS: dict[str, str] = {
    "currentUsage": "{ currentUsage { eventType used } }",
    "usageLimits": "{ usageLimits { tier exceeded meters { used } } }",
    "monthlySummary": "{ monthlySummary { month meters { used } totalOverageCost { amount } } }",
    "usageHistory": "{ usageHistory(months: 1) { month meters { used } } }",
    "usageEvents": "{ usageEvents(first: 10) { edges { node { id } } pageInfo { hasNextPage } } }",
}
NULLABLE = {"monthlySummary"}
READERS = ["service", "super_admin", "company_admin", "staff"]
RECORDERS = ["service", "super_admin", "company_admin"]
# Roles outside the table, including near-misses of real roles and no role at all.
OUTSIDERS: list[str | None] = ["guest", None, "", "admin", "COMPANY_ADMIN", "Staff", "billing"]


def token_for(company_id: uuid.UUID | None, role: str | None) -> str:
    if role == "service":
        return make_token(company_id, "service", secret=SERVICE_SECRET, sub="service:test")
    return make_token(company_id, role)


def assert_read_answered(field: str, data: dict[str, Any]) -> None:
    value = data[field]
    if field == "currentUsage":
        assert {m["eventType"] for m in value} == EVENT_TYPES
        assert all(m["used"] == 0 for m in value)
    elif field == "usageLimits":
        assert value["tier"] == "FREE" and value["exceeded"] is False
        assert [m["used"] for m in value["meters"]] == [0] * 5
    elif field == "monthlySummary":
        assert value["month"] in current_months()
        assert value["totalOverageCost"] == {"amount": "0.00"}
    elif field == "usageHistory":
        assert len(value) == 1 and value[0]["month"] in current_months()
    else:
        assert value == {"edges": [], "pageInfo": {"hasNextPage": False}}


@pytest.mark.parametrize("role", READERS)
@pytest.mark.parametrize("field", list(READS))
async def test_readers_may_read(api: Api, field: str, role: str) -> None:
    data = await api.data(READS[field], token=token_for(uuid.uuid4(), role))
    assert list(data) == [field]
    assert_read_answered(field, data)


@pytest.mark.parametrize("role", OUTSIDERS, ids=lambda r: repr(r))
@pytest.mark.parametrize("field", list(READS))
async def test_other_roles_may_not_read(api: Api, field: str, role: str | None) -> None:
    body = await api.gql(READS[field], token=token_for(uuid.uuid4(), role))
    assert_forbidden(body, field, nullable=field in NULLABLE)


@pytest.mark.parametrize("role", RECORDERS)
async def test_recorders_may_record(api: Api, role: str) -> None:
    company = uuid.uuid4()
    data = await api.data(RECORD, record_input(quantity=2), token=token_for(company, role))
    assert data["recordUsage"]["__typename"] == "UsageRecorded"
    assert data["recordUsage"]["usage"] == {"eventType": "GUEST_INVITATION", "used": 2}
    assert (await used_by(api, company))["GUEST_INVITATION"] == 2


@pytest.mark.parametrize("role", ["staff", *OUTSIDERS], ids=lambda r: repr(r))
async def test_other_roles_may_not_record(api: Api, role: str | None) -> None:
    company = uuid.uuid4()
    body = await api.gql(RECORD, record_input(quantity=2, key="k"), token=token_for(company, role))
    assert_forbidden(body, "recordUsage")
    await assert_untouched(api, company)


@pytest.mark.parametrize("role", READERS)
@pytest.mark.parametrize("field", [*READS, "recordUsage"])
async def test_token_without_company_is_forbidden(api: Api, field: str, role: str) -> None:
    token = token_for(None, role)
    if field == "recordUsage":
        body = await api.gql(RECORD, record_input(), token=token)
    else:
        body = await api.gql(READS[field], token=token)
    assert_forbidden(body, field, nullable=field in NULLABLE)


async def test_forbidden_nullable_field_is_null_and_the_rest_answered(api: Api) -> None:
    body = await api.gql("{ monthlySummary { month } __typename }", role="guest")
    assert body["data"] == {"monthlySummary": None, "__typename": "Query"}
    assert [(e["path"], e["extensions"]["code"]) for e in body["errors"]] == [
        (["monthlySummary"], "FORBIDDEN")
    ]


async def test_staff_reads_monthly_summary_alongside_other_fields(api: Api) -> None:
    data = await api.new_company().data(
        "{ monthlySummary { month } currentUsage { used } __typename }", role="staff"
    )
    assert data["monthlySummary"]["month"] in current_months()
    assert [m["used"] for m in data["currentUsage"]] == [0] * 5
    assert data["__typename"] == "Query"


async def test_clerk_roles_follow_the_table(clerk: httpx.AsyncClient, keys: Keys) -> None:
    company = uuid.uuid4()
    staff = rs256(keys.private, clerk_claims(company, "staff"))
    body = {"query": RECORD, "variables": record_input()}
    response = await clerk.post("/graphql", json=body, headers=bearer(staff))
    assert response.status_code == 200
    assert_forbidden(response.json(), "recordUsage")
    guest = rs256(keys.private, clerk_claims(company, "guest"))
    response = await clerk.post("/graphql", json={"query": CURRENT}, headers=bearer(guest))
    assert_forbidden(response.json(), "currentUsage")
    admin = rs256(keys.private, clerk_claims(company, "super_admin"))
    response = await clerk.post("/graphql", json=body, headers=bearer(admin))
    assert response.json()["data"]["recordUsage"]["__typename"] == "UsageRecorded"


# ===================================================================== 3. tenant isolation


async def test_tenants_see_only_their_own_usage(api: Api) -> None:
    a, b = api.new_company(), api.new_company()
    key = f"invite-{uuid.uuid4()}"
    first = (await a.data(RECORD, record_input(quantity=3, key=key)))["recordUsage"]
    assert first["__typename"] == "UsageRecorded" and first["duplicate"] is False
    a_event = first["event"]["id"]
    a_events = (await a.data(EVENTS))["usageEvents"]
    assert [e["node"]["id"] for e in a_events["edges"]] == [a_event]
    a_cursor = a_events["edges"][0]["cursor"]

    # B sees nothing of A anywhere.
    assert await used_by(api, b.company_id) == dict.fromkeys(EVENT_TYPES, 0)
    limits = (await b.data("{ usageLimits { exceeded meters { eventType used } } }"))["usageLimits"]
    assert limits["exceeded"] is False
    assert {m["used"] for m in limits["meters"]} == {0}
    summary = (
        await b.data("{ monthlySummary { month meters { used } totalOverageCost { amount } } }")
    )["monthlySummary"]
    assert summary["month"] in current_months()
    assert {m["used"] for m in summary["meters"]} == {0}
    history = (await b.data("{ usageHistory(months: 24) { meters { used } } }"))["usageHistory"]
    assert history and all(m["used"] == 0 for month in history for m in month["meters"])
    assert await events_of(api, b.company_id) == []
    # A's cursor does not open A's events to B.
    assert await events_of(api, b.company_id, after=a_cursor) == []
    filtered = await b.data(
        "query($month: String) { usageEvents(eventType: GUEST_INVITATION, month: $month)"
        " { edges { node { id } } } }",
        {"month": summary["month"][:7]},
    )
    assert filtered["usageEvents"]["edges"] == []

    # Idempotency keys are per company: B reusing A's key records B's own event.
    second = (await b.data(RECORD, record_input(quantity=3, key=key)))["recordUsage"]
    assert second["__typename"] == "UsageRecorded"
    assert second["duplicate"] is False
    assert second["event"]["id"] != a_event
    assert second["usage"]["used"] == 3
    # ... even with a different payload (no IDEMPOTENCY_KEY_REUSED across tenants).
    c = api.new_company()
    third = (await c.data(RECORD, record_input(quantity=7, key=key)))["recordUsage"]
    assert third["duplicate"] is False and third["usage"]["used"] == 7

    # A is unchanged, and its own replay is still a duplicate of its own event.
    assert (await used_by(api, a.company_id))["GUEST_INVITATION"] == 3
    assert [e["id"] for e in await events_of(api, a.company_id)] == [a_event]
    replay = (await a.data(RECORD, record_input(quantity=3, key=key)))["recordUsage"]
    assert replay["duplicate"] is True and replay["event"]["id"] == a_event
    assert [e["id"] for e in await events_of(api, b.company_id)] == [second["event"]["id"]]


async def test_service_token_of_one_company_cannot_read_another(api: Api) -> None:
    a = api.new_company()
    await a.data(RECORD, record_input(quantity=5), role="service")
    other = await api.data(CURRENT, token=service_token(uuid.uuid4()))
    assert {m["used"] for m in other["currentUsage"]} == {0}


async def test_no_argument_or_input_field_names_a_company(api: Api) -> None:
    data = await api.data(
        "{ __schema { types { name fields { name args { name } } inputFields { name } } } }"
    )
    names: list[str] = []
    for t in data["__schema"]["types"]:
        if t["name"].startswith("__"):
            continue
        for f in t["fields"] or []:
            names.extend(f"{t['name']}.{f['name']}({a['name']})" for a in f["args"])
        names.extend(f"{t['name']}.{f['name']}" for f in t["inputFields"] or [])
    assert "Query.usageEvents(after)" in names  # the walk does see arguments
    suspicious = [n for n in names if re.search(r"compan|tenant|organi[sz]ation|org_?id", n, re.I)]
    assert suspicious == []
    input_fields = {n.split(".", 1)[1] for n in names if n.startswith("RecordUsageInput.")}
    assert input_fields == {"eventType", "quantity", "idempotencyKey", "occurredAt", "metadata"}


async def test_company_id_smuggled_in_input_is_refused(api: Api) -> None:
    victim, attacker = uuid.uuid4(), api.new_company()
    variables = {"input": {"eventType": "GUEST_INVITATION", "companyId": str(victim)}}
    body = await attacker.gql(RECORD, variables)
    assert body["data"] is None
    assert [e["extensions"]["code"] for e in body["errors"]] == ["BAD_USER_INPUT"]
    await assert_untouched(api, victim)
    await assert_untouched(api, attacker.company_id)


# ================================================================================ 4. limits


async def count_current_usage_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    from meterline.services import usage as service

    calls: list[int] = []
    real = service.current_usage

    async def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return await real(*args, **kwargs)

    monkeypatch.setattr(service, "current_usage", counting)
    return calls


async def test_deep_query_refused_in_production(production_api: Api) -> None:
    response = await production_api.post(DEEP_OF_TYPE, token=service_token(uuid.uuid4()))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["data"] is None
    assert body["errors"]
    assert {e["extensions"]["code"] for e in body["errors"]} == {"GRAPHQL_VALIDATION_FAILED"}


async def test_deep_query_refused_in_development(api: Api) -> None:
    response = await api.post(DEEP_OF_TYPE)
    assert response.status_code in (200, 400)
    body = response.json()
    assert body["data"] is None
    assert any("depth" in e["message"] for e in body["errors"]), body


async def test_nested_introspection_refused_in_development(api: Api) -> None:
    query = (
        "{ __schema { types { fields { type { fields { type { fields { type { fields { name }"
        " } } } } } } } } }"
    )
    response = await api.post(query)
    assert response.status_code == 200
    body = response.json()
    assert body["data"] is None
    messages = [e["message"] for e in body["errors"]]
    assert "Maximum introspection depth exceeded" in messages
    assert {e["extensions"]["code"] for e in body["errors"]} == {"GRAPHQL_VALIDATION_FAILED"}


async def test_alias_flood_refused(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = await count_current_usage_calls(monkeypatch)
    query = "{ " + " ".join(f"a{i}: currentUsage {{ used }}" for i in range(100)) + " }"
    response = await api.new_company().post(query)
    assert response.status_code == 200
    body = response.json()
    assert body["data"] is None
    assert [e["message"] for e in body["errors"]] == ["100 aliases found. Allowed: 30"]
    assert body["errors"][0]["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
    assert calls == []


async def test_alias_limit_boundary(api: Api) -> None:
    allowed = "{ " + " ".join(f"a{i}: __typename" for i in range(30)) + " }"
    assert len(await api.data(allowed)) == 30
    refused = "{ " + " ".join(f"a{i}: __typename" for i in range(31)) + " }"
    body = await api.gql(refused)
    assert body["data"] is None
    assert [e["message"] for e in body["errors"]] == ["31 aliases found. Allowed: 30"]


# Every way a document can hold more than one recording field (aliases, fragments, both kinds):
# each would be its own transaction, and 30 batch aliases would record 30,000 events.
_EVENTS = "$e: [RecordUsageInput!]!"
_BATCH = "recordUsageBatch(events: $e) { __typename }"
_ONE = "recordUsage(input: {eventType: GUEST_INVITATION}) { __typename }"
SEVERAL_RECORDINGS = {
    "batch aliases": f"mutation({_EVENTS}) {{ a: {_BATCH} b: {_BATCH} }}",
    "30 batch aliases": f"mutation({_EVENTS}) {{ "
    + " ".join(f"a{i}: {_BATCH}" for i in range(30))
    + " }",
    "two recordUsage": f"mutation {{ a: {_ONE} b: {_ONE} }}",
    "one of each": f"mutation({_EVENTS}) {{ {_ONE} {_BATCH} }}",
    "fragments at the root": f"mutation({_EVENTS}) {{ ...A ...B }} "
    f"fragment A on Mutation {{ a: {_BATCH} }} fragment B on Mutation {{ b: {_BATCH} }}",
    "inline fragments": f"mutation({_EVENTS}) {{ ... on Mutation {{ a: {_BATCH} }} b: {_BATCH} }}",
}


@pytest.mark.parametrize("query", SEVERAL_RECORDINGS.values(), ids=SEVERAL_RECORDINGS.keys())
async def test_one_request_records_through_one_field_only(api: Api, query: str) -> None:
    company = api.new_company()
    events = [{"eventType": "GUEST_INVITATION", "idempotencyKey": f"k{i}"} for i in range(1_000)]
    body = await company.gql(query, {"e": events} if "$e" in query else {}, role="service")
    assert body["data"] is None, body
    [error] = body["errors"]
    assert error["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
    assert error["message"].startswith("A request records through one field")
    await assert_untouched(api, company.company_id)


async def test_a_repeated_field_with_one_response_key_runs_once(api: Api) -> None:
    """GraphQL merges fields that share a response key and arguments: they run once, so they
    count once."""
    company = api.new_company()
    data = await company.data(f"mutation {{ a: {_ONE} a: {_ONE} }}")
    assert data == {"a": {"__typename": "UsageRecorded"}}
    assert (await used_by(api, company.company_id))["GUEST_INVITATION"] == 1


async def test_a_recording_stands_alone_but_for_typename(api: Api) -> None:
    """A recording beside another mutation is not all or nothing either: a retry of the whole
    document after the other field failed would record again."""
    company = api.new_company()
    data = await company.data(f"mutation {{ {_ONE} __typename }}")
    assert data == {"recordUsage": {"__typename": "UsageRecorded"}, "__typename": "Mutation"}
    beside = await company.gql(
        f"mutation {{ {_ONE} cancelSubscription {{ __typename }} }}", role="company_admin"
    )
    assert beside["data"] is None
    [error] = beside["errors"]
    assert error["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
    assert error["message"].startswith("A recording stands alone in its request")
    assert (await used_by(api, company.company_id))["GUEST_INVITATION"] == 1


# A mistake in each place graphql-core would suggest a name: fields, arguments, input fields,
# enum values, types; in the document and in the variables.
SUGGESTING = {
    "field": ("{ usageLimit { tier } }", {}),
    "argument": ("{ usageHistory(month: 3) { month } }", {}),
    "input field": (
        "mutation($i: RecordUsageInput!) { recordUsage(input: $i) { __typename } }",
        {"i": {"eventType": "SMS_SENT", "idempotencyKy": "x"}},
    ),
    "enum value": (
        "mutation($i: RecordUsageInput!) { recordUsage(input: $i) { __typename } }",
        {"i": {"eventType": "SMS_SEND"}},
    ),
    "type": (
        "mutation($i: RecordUsageInputs!) { recordUsage(input: $i) { __typename } }",
        {"i": {}},
    ),
}


@pytest.mark.parametrize(("query", "variables"), SUGGESTING.values(), ids=SUGGESTING.keys())
async def test_no_suggestions_in_production(
    api: Api, production_api: Api, query: str, variables: dict[str, Any]
) -> None:
    token = service_token(uuid.uuid4())
    development = await api.gql(query, variables, token=token)
    assert any("Did you mean" in e["message"] for e in development["errors"]), development
    production = await production_api.gql(query, variables, token=token)
    assert production["errors"], production
    assert [e["extensions"]["code"] for e in production["errors"]] == [
        e["extensions"]["code"] for e in development["errors"]
    ]
    for error in production["errors"]:
        assert "Did you mean" not in error["message"], error
        assert error["message"]  # still says what is wrong
    # The development answer is unchanged after production answered from the shared cache.
    assert await api.gql(query, variables, token=token) == development


async def test_oversized_body_refused_without_500(api: Api) -> None:
    company = api.new_company()
    variables = record_input(quantity=1)
    variables["input"]["metadata"] = {"pad": "a" * (MAX_BODY_BYTES + 1)}
    response = await api.client.post(
        "/graphql",
        json={"query": RECORD, "variables": variables},
        headers=bearer(company.token()),
    )
    assert response.status_code == 413, response.text[:200]
    assert response.headers["x-request-id"]
    await assert_untouched(api, company.company_id)


def metadata_mutation(ones: int) -> str:
    """A recordUsage document of `ones` + 24 tokens (metadata {"a": [1, 1, ...]}, < 4 KB)."""
    return (
        "mutation { recordUsage(input: { eventType: GUEST_INVITATION metadata: { a: ["
        + "1 " * ones
        + "] } }) { __typename } }"
    )


async def test_document_over_token_limit_refused(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = await count_current_usage_calls(monkeypatch)
    query = "{ currentUsage { " + "used " * 2_500 + "} }"
    response = await api.new_company().post(query)
    assert response.status_code == 200
    body = response.json()
    assert body["data"] is None
    assert len(body["errors"]) == 1
    assert "more than 2000 tokens" in body["errors"][0]["message"]
    assert calls == []


async def test_mutation_over_token_limit_records_nothing(api: Api) -> None:
    company = api.new_company()
    response = await company.post(metadata_mutation(2_000))
    assert response.status_code == 200
    body = response.json()
    assert body["data"] is None
    assert ["more than 2000 tokens" in e["message"] for e in body["errors"]] == [True]
    await assert_untouched(api, company.company_id)


async def test_mutation_under_token_limit_is_recorded(api: Api) -> None:
    company = api.new_company()
    data = await company.data(metadata_mutation(1_950))
    assert data == {"recordUsage": {"__typename": "UsageRecorded"}}
    assert (await used_by(api, company.company_id))["GUEST_INVITATION"] == 1


@pytest.mark.parametrize(
    "query", ["{", "{ currentUsage { " + "used " * 2_500 + "} }"], ids=["syntax", "tokens"]
)
async def test_parse_errors_carry_a_code(api: Api, query: str) -> None:
    body = await api.gql(query)
    assert body["data"] is None
    assert [e["extensions"]["code"] for e in body["errors"]] == ["GRAPHQL_PARSE_FAILED"], body


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b"not json{", "application/json"),
        (b"[]", "application/json"),
        (b'[{"query": "{ __typename }"}]', "application/json"),
        (b'{"query": 42}', "application/json"),
        (b'{"variables": {}}', "application/json"),
        (b'{"query": "{ __typename }"}', "text/plain"),
        (b"\x00\x00\x00{", "application/json"),
    ],
    ids=["not-json", "empty-batch", "batch", "query-not-string", "no-query", "text-plain", "nul"],
)
async def test_malformed_requests_are_4xx_not_500(
    api: Api, content: bytes, content_type: str
) -> None:
    response = await api.client.post(
        "/graphql", content=content, headers={**bearer(api.token()), "content-type": content_type}
    )
    assert 400 <= response.status_code < 500, (response.status_code, response.text)


@pytest.mark.parametrize(
    "content", [b"\xff\xfe\x00", b'{"query": "{ __typename }\xff"}'], ids=["bom", "latin1"]
)
async def test_body_that_is_not_utf8_is_400(api: Api, content: bytes) -> None:
    response = await api.client.post(
        "/graphql",
        content=content,
        headers={**bearer(api.token()), "content-type": "application/json"},
    )
    assert response.status_code == 400, (response.status_code, response.text)


async def test_get_cannot_run_operations(api: Api) -> None:
    company = api.new_company()
    mutation = "mutation { recordUsage(input: {eventType: GUEST_INVITATION}) { __typename } }"
    for query in [CURRENT, mutation]:
        response = await api.client.get(
            "/graphql",
            params={"query": query},
            headers={**bearer(company.token()), "accept": "application/json"},
        )
        assert response.status_code == 400, response.text
    await assert_untouched(api, company.company_id)


async def test_introspection_allowed_in_development(api: Api) -> None:
    data = await api.data('{ __schema { queryType { name } } __type(name: "Query") { name } }')
    assert data == {"__schema": {"queryType": {"name": "Query"}}, "__type": {"name": "Query"}}


@pytest.mark.parametrize(
    "query", ["{ __schema { queryType { name } } }", '{ __type(name: "Query") { name } }']
)
async def test_introspection_refused_in_production(production_api: Api, query: str) -> None:
    body = await production_api.gql(query, token=service_token(uuid.uuid4()))
    assert body["data"] is None
    assert body["errors"]
    for error in body["errors"]:
        assert "introspection has been disabled" in error["message"]
        assert error["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"


async def test_typename_still_answered_in_production(production_api: Api) -> None:
    data = await production_api.data("{ __typename }", token=service_token(uuid.uuid4()))
    assert data == {"__typename": "Query"}


async def test_graphiql_served_in_development(api: Api) -> None:
    response = await api.client.get(
        "/graphql", headers={"Accept": "text/html", **bearer(api.token())}
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "graphiql" in response.text.lower()


async def test_graphiql_page_needs_no_token_in_development(api: Api) -> None:
    response = await api.client.get("/graphql", headers={"Accept": "text/html"})
    assert response.status_code == 200, response.text
    assert "graphiql" in response.text.lower()


async def test_graphiql_not_served_in_production(production_api: Api) -> None:
    for headers in [{}, bearer(service_token(uuid.uuid4()))]:
        response = await production_api.client.get(
            "/graphql", headers={"Accept": "text/html", **headers}
        )
        assert response.status_code == 404, response.status_code
        assert "graphiql" not in response.text.lower()


# ================================================================================ 5. errors


def explode(*_: Any, **__: Any) -> Any:
    raise RuntimeError("secret detail: password=hunter2 at /srv/meterline/db.py")


def assert_masked(response: httpx.Response, path: list[str]) -> str:
    assert response.status_code == 200
    request_id = response.headers["x-request-id"]
    body = response.json()
    assert len(body["errors"]) == 1
    error = body["errors"][0]
    assert set(error) <= {"message", "locations", "path", "extensions"}
    assert error["message"] == "Internal server error."
    assert error["path"] == path
    assert error["extensions"] == {"code": "INTERNAL_SERVER_ERROR", "requestId": request_id}
    for leak in ["secret detail", "hunter2", "RuntimeError", "Traceback", "/srv/", "db.py"]:
        assert leak not in response.text
    return request_id


async def test_unexpected_error_is_masked_with_a_request_id(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("meterline.services.usage.current_usage", explode)
    response = await api.new_company().post(CURRENT)
    request_id = assert_masked(response, ["currentUsage"])
    assert re.fullmatch(r"[0-9a-f]{32}", request_id)
    assert response.json()["data"] is None


async def test_caller_request_id_is_echoed(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("meterline.services.usage.current_usage", explode)
    response = await api.client.post(
        "/graphql",
        json={"query": CURRENT},
        headers={**bearer(api.token()), "X-Request-ID": "req-7f3a-caller"},
    )
    assert response.headers["x-request-id"] == "req-7f3a-caller"
    assert assert_masked(response, ["currentUsage"]) == "req-7f3a-caller"


async def test_masked_error_in_a_nullable_field_keeps_the_rest(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("meterline.services.usage.monthly_summary", explode)
    response = await api.new_company().post("{ monthlySummary { month } __typename }")
    assert_masked(response, ["monthlySummary"])
    assert response.json()["data"] == {"monthlySummary": None, "__typename": "Query"}


async def test_domain_errors_are_not_masked(api: Api) -> None:
    body = await api.new_company().gql('{ monthlySummary(month: "nope") { month } }')
    assert body["data"] == {"monthlySummary": None}
    assert body["errors"][0]["extensions"] == {"code": "BAD_USER_INPUT"}
    assert "YYYY-MM" in body["errors"][0]["message"]


async def test_every_response_has_a_request_id(api: Api) -> None:
    ok = await api.post(CURRENT)
    assert re.fullmatch(r"[0-9a-f]{32}", ok.headers["x-request-id"])
    other = await api.post(CURRENT)
    assert other.headers["x-request-id"] != ok.headers["x-request-id"]
    refused = await api.client.post(
        "/graphql", json={"query": CURRENT}, headers={"X-Request-ID": "req-401"}
    )
    assert_unauthorized(refused)
    assert refused.headers["x-request-id"] == "req-401"
    health = await api.client.get("/healthz", headers={"X-Request-ID": "req-health"})
    assert health.headers["x-request-id"] == "req-health"


async def test_unreasonable_request_id_is_replaced(api: Api) -> None:
    response = await api.client.post(
        "/graphql",
        json={"query": CURRENT},
        headers={**bearer(api.token()), "X-Request-ID": "a" * 200},
    )
    assert response.status_code == 200
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"])


# ================================================================================ 6. routes


async def test_healthz(api: Api, production_api: Api) -> None:
    for client in (api.client, production_api.client):
        response = await client.get("/healthz")
        assert response.status_code == 200
        assert response.json() == {"status": "ok"}


async def test_readyz_with_the_pool_open(api: Api, production_api: Api) -> None:
    for client in (api.client, production_api.client):
        response = await client.get("/readyz")
        assert response.status_code == 200
        assert response.json() == {"status": "ready"}


async def test_readyz_reports_an_unreachable_database(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def down() -> bool:
        return False

    monkeypatch.setattr("meterline.db.engine.ping", down)
    response = await api.client.get("/readyz")
    assert response.status_code == 503
    assert response.json() == {"status": "database unreachable"}
    assert (await api.client.get("/healthz")).status_code == 200  # liveness is unaffected


async def test_metrics_hidden_in_production_without_token(production_api: Api) -> None:
    for headers in [{}, bearer("anything"), bearer(service_token(uuid.uuid4()))]:
        response = await production_api.client.get("/metrics", headers=headers)
        assert response.status_code == 404
        assert "meterline_" not in response.text


@pytest.mark.parametrize("env", ["development", "production"])
async def test_metrics_require_the_metrics_token(database_url: str, env: str) -> None:
    settings = base_settings(database_url=database_url, metrics_token="m", env=env)
    async with client_for(create_app(settings, manage_database=False)) as client:
        assert (await client.get("/readyz")).status_code == 200  # some traffic to count
        for headers in [
            {},
            {"Authorization": "m"},
            bearer("wrong"),
            bearer("mm"),
            bearer(service_token(uuid.uuid4())),
            {"Authorization": "Basic bTpt"},
        ]:
            response = await client.get("/metrics", headers=headers)
            assert_unauthorized(response)
            assert "meterline_" not in response.text
        response = await client.get("/metrics", headers=bearer("m"))
        assert response.status_code == 200
        assert "meterline_" in response.text
        assert "meterline_requests_total" in response.text


async def test_metrics_open_in_development_without_token(api: Api) -> None:
    await api.client.get("/readyz")
    response = await api.client.get("/metrics")
    assert response.status_code == 200
    assert "meterline_" in response.text


async def test_role_aliases_from_settings(database_url: str) -> None:
    from meterline.app import create_app
    from tests.conftest import Clock, base_settings, client_for, make_token

    settings = base_settings(database_url=database_url, role_aliases={"owner": "company_admin"})
    app = create_app(settings, clock=Clock(), manage_database=False)
    company = uuid.uuid4()
    mutation = "mutation { recordUsage(input: {eventType: GUEST_INVITATION}) { __typename } }"
    async with client_for(app) as client:
        response = await client.post(
            "/graphql",
            json={"query": mutation},
            headers={"Authorization": f"Bearer {make_token(company, 'owner')}"},
        )
    assert response.json() == {"data": {"recordUsage": {"__typename": "UsageRecorded"}}}


@pytest.mark.parametrize("path", ["/schema", "/schema/openapi.json", "/schema/swagger"])
async def test_no_openapi_pages_list_the_routes(production_api: Api, path: str) -> None:
    response = await production_api.client.get(path)
    assert response.status_code == 404
