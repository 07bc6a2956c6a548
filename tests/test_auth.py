"""Unit tests of meterline.auth: no database, no network beyond a local JWKS server."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from meterline.auth import (
    AuthenticationError,
    AuthenticationUnavailableError,
    Principal,
    TokenVerifier,
    bearer_token,
    mint_development_token,
    mint_service_token,
)
from meterline.config import Settings
from tests.tokens import Keys, b64url, handmade, make_keys

SERVICE_SECRET = "service-secret-" + "s" * 40
DEV_SECRET = "development-secret-" + "d" * 40
ISSUER = "https://clerk.example.test"
COMPANY = uuid.UUID("8f4e2c1a-3b5d-4e6f-9a7b-1c2d3e4f5a6b")


@pytest.fixture(scope="module")
def keys() -> Keys:
    return make_keys()


def settings(keys: Keys | None = None, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"env": "production"}
    if keys is not None:
        values["clerk_jwt_key"] = keys.public_pem
    values.update(overrides)
    return Settings(**values)


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "sub": "user_2abc",
        "sid": "sess_123",
        "iss": ISSUER,
        "iat": now - 10,
        "nbf": now - 10,
        "exp": now + 60,
        "v": 2,
        "metadata": {"company_id": str(COMPANY), "role": "company_admin"},
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def rs256(private: rsa.RSAPrivateKey, payload: dict[str, Any], kid: str | None = None) -> str:
    headers = {"kid": kid} if kid else None
    return jwt.encode(payload, private, algorithm="RS256", headers=headers)


async def refused(verifier: TokenVerifier, token: str, reason: str | None = None) -> str:
    with pytest.raises(AuthenticationError) as info:
        await verifier.verify(token)
    if reason is not None:
        assert reason in str(info.value)
    return str(info.value)


# ------------------------------------------------------------------------------ bearer_token


@pytest.mark.parametrize(
    ("header", "expected"),
    [("Bearer abc.def.ghi", "abc.def.ghi"), ("bearer x.y.z", "x.y.z"), (" BEARER  t ", "t")],
)
def test_bearer_token_parses(header: str, expected: str) -> None:
    assert bearer_token(header) == expected


@pytest.mark.parametrize("header", [None, "", "   ", "Bearer", "Bearer ", "Basic x", "Bearer a b"])
def test_bearer_token_refuses(header: str | None) -> None:
    with pytest.raises(AuthenticationError):
        bearer_token(header)


async def test_garbage_token_refused(keys: Keys) -> None:
    verifier = TokenVerifier(settings(keys, service_jwt_secret=SERVICE_SECRET))
    for token in ["garbage", "a.b.c", "", "x" * 20_000]:
        await refused(verifier, token)


# ------------------------------------------------------------------------- Clerk (RS256, PEM)


async def test_clerk_token_accepted(keys: Keys) -> None:
    verifier = TokenVerifier(settings(keys, clerk_issuer=ISSUER))
    principal = await verifier.verify(rs256(keys.private, claims()))
    assert principal == Principal(
        user_id="user_2abc", company_id=COMPANY, role="company_admin", kind="user"
    )


async def test_clerk_pem_with_escaped_newlines(keys: Keys) -> None:
    escaped = keys.public_pem.replace("\n", "\\n")
    verifier = TokenVerifier(settings(clerk_jwt_key=escaped))
    assert (await verifier.verify(rs256(keys.private, claims()))).user_id == "user_2abc"


async def test_clerk_token_with_aud_accepted(keys: Keys) -> None:
    verifier = TokenVerifier(settings(keys))
    principal = await verifier.verify(rs256(keys.private, claims(aud="some-audience")))
    assert principal.company_id == COMPANY


async def test_alg_none_refused(keys: Keys) -> None:
    verifier = TokenVerifier(
        settings(keys, env="development", service_jwt_secret=SERVICE_SECRET, jwt_secret=DEV_SECRET)
    )
    token = handmade({"alg": "none", "typ": "JWT"}, claims(), None)
    assert token.endswith(".")
    await refused(verifier, token, "unsupported token algorithm")
    for alg in ["None", "NONE"]:
        await refused(verifier, handmade({"alg": alg}, claims(), None))


async def test_other_algorithms_and_missing_alg_refused(keys: Keys) -> None:
    verifier = TokenVerifier(settings(keys, service_jwt_secret=SERVICE_SECRET))
    payload = claims(metadata={"company_id": str(COMPANY), "role": "service"})
    hs512 = jwt.encode(payload, SERVICE_SECRET + "x" * 30, algorithm="HS512")
    await refused(verifier, hs512, "unsupported token algorithm")
    await refused(verifier, handmade({"typ": "JWT"}, payload, SERVICE_SECRET.encode()))
    rs512 = jwt.encode(claims(), keys.private, algorithm="RS512")
    await refused(verifier, rs512, "unsupported token algorithm")


async def test_hs256_refused_when_only_rs256_configured(keys: Keys) -> None:
    verifier = TokenVerifier(settings(keys))
    await refused(verifier, jwt.encode(claims(), DEV_SECRET, algorithm="HS256"))
    service_claims = claims(metadata={"company_id": str(COMPANY), "role": "service"})
    await refused(verifier, jwt.encode(service_claims, SERVICE_SECRET, algorithm="HS256"))


async def test_key_confusion_refused(keys: Keys) -> None:
    """HS256 signed with the RSA public key PEM as HMAC secret must never verify."""
    pem = keys.public_pem.encode()
    user = handmade({"alg": "HS256", "typ": "JWT"}, claims(), pem)
    service = handmade(
        {"alg": "HS256", "typ": "JWT"},
        claims(metadata={"company_id": str(COMPANY), "role": "service"}),
        pem,
    )
    only_rs256 = TokenVerifier(settings(keys))
    everything = TokenVerifier(
        settings(keys, env="development", service_jwt_secret=SERVICE_SECRET, jwt_secret=DEV_SECRET)
    )
    for verifier in (only_rs256, everything):
        await refused(verifier, user)
        await refused(verifier, service)
    await refused(everything, service, "invalid signature")


async def test_wrong_rsa_key_refused(keys: Keys) -> None:
    verifier = TokenVerifier(settings(keys))
    await refused(verifier, rs256(keys.other_private, claims()), "invalid signature")


async def test_expired_beyond_leeway_refused(keys: Keys) -> None:
    verifier = TokenVerifier(settings(keys, jwt_leeway_seconds=5))
    now = int(time.time())
    await refused(verifier, rs256(keys.private, claims(exp=now - 60)), "token expired")


async def test_expired_within_leeway_accepted(keys: Keys) -> None:
    verifier = TokenVerifier(settings(keys, jwt_leeway_seconds=30))
    now = int(time.time())
    principal = await verifier.verify(rs256(keys.private, claims(exp=now - 5)))
    assert principal.user_id == "user_2abc"


async def test_missing_exp_refused(keys: Keys) -> None:
    verifier = TokenVerifier(settings(keys))
    payload = claims()
    del payload["exp"]
    await refused(verifier, rs256(keys.private, payload), "missing claim: exp")


async def test_nbf_in_future_refused(keys: Keys) -> None:
    verifier = TokenVerifier(settings(keys))
    now = int(time.time())
    token = rs256(keys.private, claims(nbf=now + 120, iat=now, exp=now + 600))
    await refused(verifier, token, "not yet valid")


async def test_issuer(keys: Keys) -> None:
    verifier = TokenVerifier(settings(keys, clerk_issuer=ISSUER))
    await refused(verifier, rs256(keys.private, claims(iss="https://evil.test")), "invalid issuer")
    payload = claims()
    del payload["iss"]
    await refused(verifier, rs256(keys.private, payload), "missing claim: iss")


async def test_azp(keys: Keys) -> None:
    verifier = TokenVerifier(settings(keys, clerk_authorized_parties=("https://app.example.test",)))
    await refused(
        verifier, rs256(keys.private, claims(azp="https://evil.test")), "unauthorized party"
    )
    ok = await verifier.verify(rs256(keys.private, claims(azp="https://app.example.test")))
    assert ok.kind == "user"
    no_azp = await verifier.verify(rs256(keys.private, claims()))
    assert no_azp.user_id == "user_2abc"


async def test_sts_pending_refused(keys: Keys) -> None:
    verifier = TokenVerifier(settings(keys))
    await refused(verifier, rs256(keys.private, claims(sts="pending")), "session pending")
    active = await verifier.verify(rs256(keys.private, claims(sts="active")))
    assert active.user_id == "user_2abc"


async def test_tampered_payload_refused(keys: Keys) -> None:
    verifier = TokenVerifier(settings(keys))
    header, _, signature = rs256(keys.private, claims()).split(".")
    forged = claims(metadata={"company_id": str(uuid.uuid4()), "role": "super_admin"})
    token = f"{header}.{b64url(json.dumps(forged).encode())}.{signature}"
    await refused(verifier, token, "invalid signature")


async def test_clerk_token_claiming_service_role_refused(keys: Keys) -> None:
    verifier = TokenVerifier(settings(keys, service_jwt_secret=SERVICE_SECRET))
    token = rs256(keys.private, claims(metadata={"company_id": str(COMPANY), "role": "service"}))
    await refused(verifier, token, "service role")


async def test_malformed_company_id_refused(keys: Keys) -> None:
    verifier = TokenVerifier(settings(keys))
    for bad in ["not-a-uuid", 42, ["x"]]:
        token = rs256(keys.private, claims(metadata={"company_id": bad, "role": "staff"}))
        await refused(verifier, token, "company_id")


async def test_missing_company_gives_none(keys: Keys) -> None:
    verifier = TokenVerifier(settings(keys))
    principal = await verifier.verify(rs256(keys.private, claims(metadata={"role": "staff"})))
    assert principal == Principal(user_id="user_2abc", company_id=None, role="staff", kind="user")
    bare = await verifier.verify(rs256(keys.private, claims(metadata=None)))
    assert bare == Principal(user_id="user_2abc", company_id=None, role=None, kind="user")


async def test_metadata_not_object_refused(keys: Keys) -> None:
    verifier = TokenVerifier(settings(keys))
    for bad in ["company", ["a"], 3]:
        await refused(verifier, rs256(keys.private, claims(metadata=bad)), "metadata")


async def test_missing_or_empty_sub_refused(keys: Keys) -> None:
    verifier = TokenVerifier(settings(keys))
    payload = claims()
    del payload["sub"]
    await refused(verifier, rs256(keys.private, payload), "sub")
    await refused(verifier, rs256(keys.private, claims(sub="")), "sub")


async def test_bad_pem_is_a_config_error() -> None:
    with pytest.raises(ValueError):
        TokenVerifier(settings(clerk_jwt_key="not a pem"))


# --------------------------------------------------------------------- service and dev tokens


def hs256(secret: str, role: str, **overrides: Any) -> str:
    payload = claims(metadata={"company_id": str(COMPANY), "role": role}, **overrides)
    return jwt.encode(payload, secret, algorithm="HS256")


async def test_service_token_accepted_in_production(keys: Keys) -> None:
    verifier = TokenVerifier(settings(keys, service_jwt_secret=SERVICE_SECRET))
    principal = await verifier.verify(hs256(SERVICE_SECRET, "service", sub="service:backend"))
    assert principal == Principal(
        user_id="service:backend", company_id=COMPANY, role="service", kind="service"
    )


async def test_user_token_signed_with_service_secret_refused(keys: Keys) -> None:
    token = hs256(SERVICE_SECRET, "company_admin")
    prod = TokenVerifier(settings(keys, service_jwt_secret=SERVICE_SECRET))
    await refused(prod, token)
    dev = TokenVerifier(
        settings(keys, env="development", service_jwt_secret=SERVICE_SECRET, jwt_secret=DEV_SECRET)
    )
    await refused(dev, token, "invalid signature")


async def test_service_token_with_wrong_secret_refused(keys: Keys) -> None:
    verifier = TokenVerifier(settings(keys, service_jwt_secret=SERVICE_SECRET))
    await refused(verifier, hs256(SERVICE_SECRET + "x", "service"), "invalid signature")


async def test_service_token_expired_refused() -> None:
    verifier = TokenVerifier(settings(service_jwt_secret=SERVICE_SECRET))
    now = int(time.time())
    await refused(verifier, hs256(SERVICE_SECRET, "service", exp=now - 60), "token expired")


async def test_dev_token_refused_in_production() -> None:
    verifier = TokenVerifier(settings(jwt_secret=DEV_SECRET, service_jwt_secret=SERVICE_SECRET))
    await refused(verifier, hs256(DEV_SECRET, "company_admin"), "production")


async def test_dev_token_accepted_in_development() -> None:
    verifier = TokenVerifier(settings(env="development", jwt_secret=DEV_SECRET))
    principal = await verifier.verify(hs256(DEV_SECRET, "company_admin"))
    assert principal == Principal(
        user_id="user_2abc", company_id=COMPANY, role="company_admin", kind="user"
    )


async def test_dev_token_claiming_service_role_refused() -> None:
    verifier = TokenVerifier(
        settings(env="development", jwt_secret=DEV_SECRET, service_jwt_secret=SERVICE_SECRET)
    )
    await refused(verifier, hs256(DEV_SECRET, "service"), "invalid signature")
    no_service_secret = TokenVerifier(settings(env="development", jwt_secret=DEV_SECRET))
    await refused(no_service_secret, hs256(DEV_SECRET, "service"))


async def test_equal_secrets_keep_kinds_apart() -> None:
    shared = SERVICE_SECRET
    dev = TokenVerifier(settings(env="development", jwt_secret=shared, service_jwt_secret=shared))
    user = await dev.verify(hs256(shared, "company_admin"))
    assert (user.kind, user.role) == ("user", "company_admin")
    service = await dev.verify(hs256(shared, "service"))
    assert (service.kind, service.role) == ("service", "service")
    prod = TokenVerifier(settings(jwt_secret=shared, service_jwt_secret=shared))
    await refused(prod, hs256(shared, "company_admin"), "production")
    assert (await prod.verify(hs256(shared, "service"))).kind == "service"


# ----------------------------------------------------------------------------------- minting


async def test_mint_development_token_round_trip() -> None:
    s = settings(env="development", jwt_secret=DEV_SECRET)
    token = mint_development_token(s, company_id=COMPANY, user_id="u1", role="staff")
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    principal = await TokenVerifier(s).verify(token)
    assert principal == Principal(user_id="u1", company_id=COMPANY, role="staff", kind="user")


def test_mint_development_token_refused_in_production_or_without_secret() -> None:
    with pytest.raises((AuthenticationError, ValueError)):
        mint_development_token(settings(jwt_secret=DEV_SECRET), company_id=COMPANY)
    with pytest.raises((AuthenticationError, ValueError)):
        mint_development_token(settings(env="development"), company_id=COMPANY)


async def test_mint_service_token_round_trip() -> None:
    s = settings(service_jwt_secret=SERVICE_SECRET)
    token = mint_service_token(s, company_id=COMPANY, service="weddingflow")
    payload = jwt.decode(token, SERVICE_SECRET, algorithms=["HS256"])
    assert payload["sub"] == "service:weddingflow"
    assert payload["metadata"] == {"company_id": str(COMPANY), "role": "service"}
    assert {"iat", "nbf", "exp"} <= payload.keys()
    assert payload["exp"] - payload["iat"] == int(timedelta(days=30).total_seconds())
    principal = await TokenVerifier(s).verify(token)
    assert principal == Principal(
        user_id="service:weddingflow", company_id=COMPANY, role="service", kind="service"
    )


def test_mint_refuses_non_positive_ttl() -> None:
    s = settings(service_jwt_secret=SERVICE_SECRET)
    with pytest.raises(ValueError):
        mint_service_token(s, company_id=COMPANY, ttl=timedelta(0))


def test_mint_service_token_needs_secret() -> None:
    with pytest.raises((AuthenticationError, ValueError)):
        mint_service_token(settings(), company_id=COMPANY)


# ------------------------------------------------------------------------------------- JWKS


@dataclass
class JwksServer:
    url: str
    body: dict[str, Any]
    requests: list[str] = field(default_factory=list)


@pytest.fixture
def jwks_server(keys: Keys) -> Iterator[JwksServer]:
    jwk = jwt.algorithms.RSAAlgorithm.to_jwk(keys.private.public_key(), as_dict=True)
    jwk.update({"kid": "ins_key_1", "use": "sig", "alg": "RS256"})
    state = JwksServer(url="", body={"keys": [jwk]})

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.requests.append(self.path)
            data = json.dumps(state.body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/.well-known/jwks.json"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


async def test_jwks_verify_and_cache(keys: Keys, jwks_server: JwksServer) -> None:
    verifier = TokenVerifier(settings(clerk_jwks_url=jwks_server.url, clerk_issuer=ISSUER))
    token = rs256(keys.private, claims(), kid="ins_key_1")
    first = await verifier.verify(token)
    assert first == Principal(
        user_id="user_2abc", company_id=COMPANY, role="company_admin", kind="user"
    )
    assert jwks_server.requests == ["/.well-known/jwks.json"]
    second = await verifier.verify(rs256(keys.private, claims(sub="user_other"), kid="ins_key_1"))
    assert second.user_id == "user_other"
    assert len(jwks_server.requests) == 1
    # Still RS256-only and still signature-checked through JWKS.
    await refused(verifier, rs256(keys.other_private, claims(), kid="ins_key_1"), "signature")
    assert len(jwks_server.requests) == 1


async def test_jwks_fetch_runs_off_the_event_loop(
    keys: Keys, jwks_server: JwksServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[threading.Thread] = []
    original = jwt.PyJWKClient.fetch_data

    def recording_fetch(self: jwt.PyJWKClient) -> Any:
        threads.append(threading.current_thread())
        return original(self)

    monkeypatch.setattr(jwt.PyJWKClient, "fetch_data", recording_fetch)
    verifier = TokenVerifier(settings(clerk_jwks_url=jwks_server.url))
    await verifier.verify(rs256(keys.private, claims(), kid="ins_key_1"))
    assert len(threads) == 1
    assert threads[0] is not threading.current_thread()


async def test_jwks_warm_prefetches(keys: Keys, jwks_server: JwksServer) -> None:
    verifier = TokenVerifier(settings(clerk_jwks_url=jwks_server.url))
    await verifier.warm()
    assert len(jwks_server.requests) == 1
    assert (await verifier.verify(rs256(keys.private, claims(), kid="ins_key_1"))).user_id
    assert len(jwks_server.requests) == 1


async def test_jwks_unknown_or_missing_kid_refused(keys: Keys, jwks_server: JwksServer) -> None:
    verifier = TokenVerifier(settings(clerk_jwks_url=jwks_server.url))
    await refused(verifier, rs256(keys.private, claims(), kid="ins_unknown"), "signing key")
    await refused(verifier, rs256(keys.private, claims()), "key id")


async def test_jwks_unreachable(keys: Keys, jwks_server: JwksServer) -> None:
    # A port that was just free: nothing listens there.
    probe = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    dead_url = f"http://127.0.0.1:{probe.server_address[1]}/jwks.json"
    probe.server_close()
    verifier = TokenVerifier(settings(clerk_jwks_url=dead_url))
    await verifier.warm()  # logged, not raised
    with pytest.raises(AuthenticationUnavailableError):
        await verifier.verify(rs256(keys.private, claims(), kid="ins_key_1"))


async def test_jwks_made_up_key_ids_do_not_each_cost_a_fetch(
    keys: Keys, jwks_server: JwksServer
) -> None:
    """Unknown kids refetch at most once per JWKS_MIN_REFRESH_SECONDS, one fetch at a time."""
    verifier = TokenVerifier(settings(clerk_jwks_url=jwks_server.url))
    forged = [rs256(keys.private, claims(), kid=f"ins_forged_{i}") for i in range(50)]
    results = await asyncio.gather(*[verifier.verify(t) for t in forged], return_exceptions=True)
    assert all(isinstance(r, AuthenticationError) for r in results)
    assert len(jwks_server.requests) == 1
    # the real key still verifies, from the one fetch
    good = await verifier.verify(rs256(keys.private, claims(), kid="ins_key_1"))
    assert good.user_id == "user_2abc"
    assert len(jwks_server.requests) == 1


# ------------------------------------------------------------------- verified tokens remembered


def move_clocks(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """Both clocks that judge a token (the verifier's memory and pyjwt's) `seconds` ahead."""
    import datetime as real

    import jwt.api_jwt

    ahead = time.time() + seconds

    class Ahead(real.datetime):
        @classmethod
        def now(cls, tz: real.tzinfo | None = None) -> Ahead:
            return cls.fromtimestamp(ahead, tz)

    monkeypatch.setattr(jwt.api_jwt, "datetime", Ahead)
    monkeypatch.setattr("meterline.auth.time.time", lambda: ahead)


async def test_a_verified_token_is_not_verified_again(
    keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    verifier = TokenVerifier(settings(keys, service_jwt_secret=SERVICE_SECRET))
    user, service = rs256(keys.private, claims()), hs256(SERVICE_SECRET, "service")
    first = [await verifier.verify(user), await verifier.verify(service)]

    def no_decoding(*_: Any, **__: Any) -> None:
        raise AssertionError("verified again")

    monkeypatch.setattr(jwt, "decode", no_decoding)
    assert [await verifier.verify(user), await verifier.verify(service)] == first


async def test_a_remembered_token_is_refused_once_it_expires(
    keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    verifier = TokenVerifier(settings(keys, jwt_leeway_seconds=5))
    token = rs256(keys.private, claims())  # expires in 60 s
    await verifier.verify(token)
    move_clocks(monkeypatch, 64)  # inside the leeway: still good
    assert (await verifier.verify(token)).user_id == "user_2abc"
    move_clocks(monkeypatch, 66)
    await refused(verifier, token, "token expired")


async def test_only_tokens_that_passed_are_remembered(keys: Keys) -> None:
    verifier = TokenVerifier(settings(keys, clerk_issuer=ISSUER))
    forged = rs256(make_keys().private, claims())
    for _ in range(2):
        await refused(verifier, forged, "invalid signature")
    wrong_issuer = rs256(keys.private, claims(iss="https://evil.example"))
    for _ in range(2):
        await refused(verifier, wrong_issuer, "invalid issuer")


async def test_memory_of_verified_tokens_is_bounded(
    keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("meterline.auth.VERIFIED_TOKENS_KEPT", 3)
    verifier = TokenVerifier(settings(keys, service_jwt_secret=SERVICE_SECRET))
    tokens = [hs256(SERVICE_SECRET, "service", sub=f"service:{n}") for n in range(5)]
    for token in tokens:
        await verifier.verify(token)
    calls = []
    real_decode = jwt.decode

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(args[0])
        return real_decode(*args, **kwargs)

    monkeypatch.setattr(jwt, "decode", counting)
    for token in (tokens[0], tokens[3], tokens[4]):
        await verifier.verify(token)
    assert set(calls) == {tokens[0]}  # the oldest were forgotten; the newest three kept


async def test_a_time_claim_beyond_any_date_is_refused_not_a_crash(keys: Keys) -> None:
    verifier = TokenVerifier(settings(keys))
    await refused(verifier, rs256(keys.private, claims(exp=10**400)), "invalid time claim")
