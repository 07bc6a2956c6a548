"""Bearer-token authentication: Clerk user tokens, service tokens, development tokens.

Three kinds of token are accepted, each bound to exactly one key and one algorithm:

* Clerk session tokens (users): RS256, verified with ``CLERK_JWT_KEY`` (PEM public key,
  networkless; preferred when both are set) or the keys served at ``CLERK_JWKS_URL``.
* Service tokens: HS256 signed with ``SERVICE_JWT_SECRET``; ``metadata.role`` is ``service``.
* Development user tokens: HS256 signed with ``JWT_SECRET``; refused in production.
* Portal tokens (the usage portal's links): HS256 signed with ``PORTAL_TOKEN_SECRET``, audience
  ``meterline:portal``, role ``portal``, and the company's link generation (``gen``) at minting;
  whether that generation is still current (links not revoked) is checked by the caller.

The algorithm a token names in its header only selects which of our keys may check it; it is
never trusted on its own: every ``jwt.decode`` call passes one fixed algorithm. An HS256 token
is routed by its claimed role: ``service`` is checked with the service secret only, ``portal``
with the portal secret only, any other role with the development secret only, so the kinds never
turn into each other even when secrets are equal. No database access happens here.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final, Literal

import jwt
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from meterline.config import ConfigError, Settings

__all__ = [
    "AuthenticationError",
    "AuthenticationUnavailableError",
    "Principal",
    "TokenVerifier",
    "bearer_token",
    "mint_development_token",
    "mint_portal_token",
    "mint_service_token",
]

logger = logging.getLogger(__name__)

SERVICE_ROLE: Final = "service"
PORTAL_ROLE: Final = "portal"
PORTAL_AUDIENCE: Final = "meterline:portal"
# Roles only Meterline's own kinds of token carry: never a user's (Clerk's or development).
_RESERVED_ROLES: Final = (SERVICE_ROLE, PORTAL_ROLE)
JWKS_LIFESPAN_SECONDS: Final = 300
JWKS_TIMEOUT_SECONDS: Final = 10
JWKS_MIN_REFRESH_SECONDS: Final = 30
# Clerk session tokens are well under 4 KB; anything far larger is refused before parsing.
MAX_TOKEN_LENGTH: Final = 16_384
_REQUIRED_CLAIMS: Final = ["exp", "sub"]
# Verified tokens remembered, so a client sending the same token again (a service's token
# lives for days, a Clerk session token for a minute) is not verified again on every request:
# verification is a tenth of a request's CPU. Only tokens that passed enter; the time claims
# are checked again on every use.
VERIFIED_TOKENS_KEPT: Final = 4_096


@dataclass(frozen=True)
class Principal:
    user_id: str  # `sub`
    company_id: uuid.UUID | None  # metadata.company_id; None when absent
    role: str | None  # metadata.role ("service" for service tokens, "portal" for portal links)
    kind: Literal["user", "service", "portal"]
    # When the token may be used, in epoch seconds (from nbf/iat and exp), leeway aside; not
    # part of who the principal is.
    valid_from: float = field(default=float("-inf"), compare=False)
    valid_until: float = field(default=float("inf"), compare=False)
    # A portal token's link generation: valid while it is the company's current one.
    link_generation: int | None = None


class AuthenticationError(Exception):
    """Token missing or invalid -> HTTP 401. str(exc) is a short reason safe to show the client."""


class AuthenticationUnavailableError(AuthenticationError):
    """The signing keys could not be fetched (JWKS endpoint down): a server-side problem.

    Still an AuthenticationError (the request is not authenticated); the HTTP layer may answer
    503 instead of 401 for it.
    """


def bearer_token(authorization: str | None) -> str:
    """The token of an ``Authorization: Bearer <jwt>`` header (scheme case-insensitive)."""
    if authorization is None or not authorization.strip():
        raise AuthenticationError("missing bearer token")
    parts = authorization.split()
    if len(parts) != 2 or parts[0].lower() != "bearer":
        raise AuthenticationError("malformed authorization header")
    return parts[1]


# --------------------------------------------------------------------------- verification


def _reason(exc: jwt.PyJWTError) -> str:
    """A short, client-safe reason for a PyJWT failure."""
    if isinstance(exc, jwt.ExpiredSignatureError):
        return "token expired"
    if isinstance(exc, jwt.ImmatureSignatureError):
        return "token not yet valid"
    if isinstance(exc, jwt.InvalidSignatureError):
        return "invalid signature"
    if isinstance(exc, jwt.InvalidIssuerError):
        return "invalid issuer"
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"missing claim: {exc.claim}"
    if isinstance(exc, jwt.DecodeError):
        return "malformed token"
    return "invalid token"


def _unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims, NOT verified: only used to pick which key checks the token."""
    if len(token) > MAX_TOKEN_LENGTH:
        raise AuthenticationError("token too large")
    try:
        header = jwt.get_unverified_header(token)
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        raise AuthenticationError("malformed token") from exc
    if not isinstance(claims, dict):
        raise AuthenticationError("malformed token")
    return header, claims


def _metadata(claims: Mapping[str, Any]) -> Mapping[str, Any]:
    metadata = claims.get("metadata")
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise AuthenticationError("invalid metadata claim")
    return metadata


def _role(claims: Mapping[str, Any]) -> str | None:
    role = _metadata(claims).get("role")
    if role is not None and not isinstance(role, str):
        raise AuthenticationError("invalid role claim")
    return role


def _principal(claims: Mapping[str, Any], kind: Literal["user", "service", "portal"]) -> Principal:
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise AuthenticationError("missing claim: sub")
    raw_company = _metadata(claims).get("company_id")
    company_id: uuid.UUID | None = None
    if raw_company is not None:
        if not isinstance(raw_company, str):
            raise AuthenticationError("invalid company_id claim")
        try:
            company_id = uuid.UUID(raw_company)
        except ValueError as exc:
            raise AuthenticationError("invalid company_id claim") from exc
    # jwt.decode has checked these are numbers and that the token is within them now.
    try:
        starts = [float(claims[c]) for c in ("nbf", "iat") if claims.get(c) is not None]
        valid_until = float(claims["exp"])
    except OverflowError as exc:  # an integer beyond any date
        raise AuthenticationError("invalid time claim") from exc
    return Principal(
        user_id=sub,
        company_id=company_id,
        role=_role(claims),
        kind=kind,
        valid_from=max(starts, default=float("-inf")),
        valid_until=valid_until,
    )


def _load_clerk_pem(pem: str) -> RSAPublicKey:
    # Environment variables often carry the PEM with literal "\n" sequences.
    text = pem.replace("\\n", "\n").strip()
    try:
        key = load_pem_public_key(text.encode())
    except ValueError as exc:
        raise ConfigError("CLERK_JWT_KEY is not a PEM public key") from exc
    if not isinstance(key, RSAPublicKey):
        raise ConfigError("CLERK_JWT_KEY must be an RSA public key (Clerk signs with RS256)")
    return key


class TokenVerifier:
    """Verifies bearer tokens into Principals. One instance per application."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._leeway = settings.jwt_leeway_seconds
        self._clerk_key: RSAPublicKey | None = None
        self._jwks: jwt.PyJWKClient | None = None
        # kid -> (RSA key, monotonic expiry): lets cached keys be used on the event loop
        # without a thread hop; any miss goes through PyJWKClient in a thread.
        self._jwks_keys: dict[str, tuple[RSAPublicKey, float]] = {}
        self._refresh_lock = asyncio.Lock()
        self._verified: dict[bytes, Principal] = {}  # sha256(token) -> principal, oldest first
        self._last_refresh: float = -JWKS_MIN_REFRESH_SECONDS  # monotonic time of last fetch
        if settings.clerk_jwt_key:
            self._clerk_key = _load_clerk_pem(settings.clerk_jwt_key)
            if settings.clerk_jwks_url:
                logger.info("CLERK_JWT_KEY is set: CLERK_JWKS_URL is not used")
        elif settings.clerk_jwks_url:
            self._jwks = jwt.PyJWKClient(
                settings.clerk_jwks_url,
                lifespan=JWKS_LIFESPAN_SECONDS,
                timeout=JWKS_TIMEOUT_SECONDS,
            )

    async def warm(self) -> None:
        """Fetch the JWKS ahead of the first request (off the event loop). Never raises."""
        if self._jwks is None:
            return
        try:
            await asyncio.to_thread(self._fetch_all_keys)
        except Exception:
            logger.exception("could not pre-fetch the Clerk JWKS from %s", self._jwks.uri)

    async def verify(self, token: str) -> Principal:
        # Remembered by digest: a token may be up to 16 KB, its digest is 32 bytes.
        digest = hashlib.sha256(token.encode()).digest()
        known = self._verified.get(digest)
        if known is not None:
            now = time.time()
            if known.valid_from - self._leeway <= now < known.valid_until + self._after(known):
                return known
            del self._verified[digest]  # out of its window: verified again, which says why
        principal = await self._verify(token)
        if len(self._verified) >= VERIFIED_TOKENS_KEPT:
            del self._verified[next(iter(self._verified))]  # the oldest
        self._verified[digest] = principal
        return principal

    def _after(self, principal: Principal) -> int:
        """Leeway past `exp`: Clerk's clocks are not ours; a portal link is minted and checked
        on Meterline's own clock, so it stops at its `expiresAt`, whatever JWT_LEEWAY_SECONDS."""
        return 0 if principal.kind == "portal" else self._leeway

    async def _verify(self, token: str) -> Principal:
        header, claims = _unverified(token)
        alg = header.get("alg")
        if alg == "RS256":
            return await self._verify_clerk(token, header)
        if alg == "HS256":
            role = _role(claims)
            if role == SERVICE_ROLE:
                return self._verify_service(token)
            if role == PORTAL_ROLE:
                return self._verify_portal(token)
            return self._verify_development(token)
        raise AuthenticationError("unsupported token algorithm")

    # -- Clerk (RS256) ------------------------------------------------------------------

    async def _verify_clerk(self, token: str, header: Mapping[str, Any]) -> Principal:
        key = self._clerk_key or await self._jwks_key(header.get("kid"))
        s = self._settings
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=["RS256"],
                issuer=s.clerk_issuer,
                leeway=self._leeway,
                options={"require": [*_REQUIRED_CLAIMS], "verify_aud": False},
            )
        except jwt.PyJWTError as exc:
            raise AuthenticationError(_reason(exc)) from exc
        azp = claims.get("azp")
        if s.clerk_authorized_parties and azp is not None and azp not in s.clerk_authorized_parties:
            raise AuthenticationError("unauthorized party")
        if claims.get("sts") == "pending":
            raise AuthenticationError("session pending")
        principal = _principal(claims, "user")
        if principal.role in _RESERVED_ROLES:
            raise AuthenticationError(f"user tokens may not claim the {principal.role} role")
        return principal

    async def _jwks_key(self, kid: object) -> RSAPublicKey:
        if self._jwks is None:
            raise AuthenticationError("user tokens are not accepted")
        if not isinstance(kid, str) or not kid:
            raise AuthenticationError("token has no key id")
        cached = self._jwks_keys.get(kid)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        # A miss refetches the key set, but at most once per JWKS_MIN_REFRESH_SECONDS and one
        # fetch at a time: tokens with made-up key ids must not become one request each to
        # Clerk (nor fill the thread pool).
        async with self._refresh_lock:
            cached = self._jwks_keys.get(kid)
            if cached is not None and cached[1] > time.monotonic():
                return cached[0]  # fetched while this request waited
            if time.monotonic() - self._last_refresh >= JWKS_MIN_REFRESH_SECONDS:
                self._last_refresh = time.monotonic()
                try:
                    await asyncio.to_thread(self._fetch_all_keys, True)
                except jwt.PyJWKClientConnectionError as exc:
                    logger.error("Clerk JWKS unavailable: %s", exc)
                    raise AuthenticationUnavailableError("signing keys unavailable") from exc
                except jwt.PyJWTError as exc:
                    raise AuthenticationError("unknown signing key") from exc
            cached = self._jwks_keys.get(kid)
        if cached is None:
            raise AuthenticationError("unknown signing key")
        return cached[0]  # possibly past its lifespan: still Clerk's latest word on that kid

    def _fetch_all_keys(self, refresh: bool = False) -> None:
        """Blocking (network I/O): runs in a worker thread."""
        assert self._jwks is not None
        for jwk in self._jwks.get_signing_keys(refresh=refresh):
            if jwk.key_id:
                try:
                    self._remember(jwk.key_id, jwk)
                except jwt.PyJWTError:
                    logger.warning("ignoring JWKS key %s: not an RS256 key", jwk.key_id)

    def _remember(self, kid: str, jwk: jwt.PyJWK) -> RSAPublicKey:
        key = jwk.key
        if not isinstance(key, RSAPublicKey) or jwk.algorithm_name != "RS256":
            raise jwt.PyJWKError("signing key is not an RS256 key")
        self._jwks_keys[kid] = (key, time.monotonic() + JWKS_LIFESPAN_SECONDS)
        return key

    # -- HS256: service and development tokens ------------------------------------------

    def _verify_hs256(
        self, token: str, secret: str, *, audience: str | None = None
    ) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                secret,
                algorithms=["HS256"],
                leeway=self._leeway,
                audience=audience,
                options={
                    "require": [*_REQUIRED_CLAIMS, *(["aud"] if audience else [])],
                    "verify_aud": audience is not None,
                },
            )
        except jwt.PyJWTError as exc:
            raise AuthenticationError(_reason(exc)) from exc
        return claims

    def _verify_service(self, token: str) -> Principal:
        secret = self._settings.service_jwt_secret
        if not secret:
            raise AuthenticationError("service tokens are not accepted")
        principal = _principal(self._verify_hs256(token, secret), "service")
        if principal.role != SERVICE_ROLE:  # routing guarantees it; checked on verified claims
            raise AuthenticationError("service tokens must have the service role")
        return principal

    def _verify_development(self, token: str) -> Principal:
        s = self._settings
        if not s.is_development:
            raise AuthenticationError("development tokens are not accepted in production")
        if not s.jwt_secret:
            raise AuthenticationError("development tokens are not accepted")
        principal = _principal(self._verify_hs256(token, s.jwt_secret), "user")
        if principal.role in _RESERVED_ROLES:
            raise AuthenticationError(f"development tokens may not claim the {principal.role} role")
        return principal

    def _verify_portal(self, token: str) -> Principal:
        secret = self._settings.portal_token_secret
        if not secret:
            raise AuthenticationError("portal links are not accepted")
        claims = self._verify_hs256(token, secret, audience=PORTAL_AUDIENCE)
        now = time.time()
        if now >= claims["exp"]:  # within JWT_LEEWAY_SECONDS: still expired (see _after)
            raise AuthenticationError("token expired")
        generation = claims.get("gen")
        if type(generation) is not int or generation < 0:
            raise AuthenticationError("invalid portal link")
        principal = _principal(claims, "portal")
        if principal.role != PORTAL_ROLE or principal.company_id is None:
            raise AuthenticationError("invalid portal link")
        return replace(principal, link_generation=generation)


# --------------------------------------------------------------------------------- minting


def _mint(
    secret: str,
    *,
    sub: str,
    company_id: uuid.UUID,
    role: str,
    ttl: datetime.timedelta,
    extra: Mapping[str, Any] | None = None,
) -> tuple[str, datetime.datetime]:
    """The token and when it expires: whole seconds (NumericDate), on the machine's clock."""
    if ttl <= datetime.timedelta(0):
        raise ValueError("ttl must be positive")
    now = datetime.datetime.now(datetime.UTC)
    now = now.replace(microsecond=0)
    claims = {
        "sub": sub,
        "metadata": {"company_id": str(company_id), "role": role},
        "iat": now,
        "nbf": now,
        "exp": now + ttl,
        **(extra or {}),
    }
    return jwt.encode(claims, secret, algorithm="HS256"), now + ttl


def mint_development_token(
    settings: Settings,
    *,
    company_id: uuid.UUID,
    user_id: str = "dev_user",
    role: str = "company_admin",
    ttl: datetime.timedelta = datetime.timedelta(hours=12),
) -> str:
    """An HS256 user token signed with JWT_SECRET. Development only."""
    if not settings.is_development:
        raise ConfigError("development tokens cannot be minted in production")
    if not settings.jwt_secret:
        raise ConfigError("JWT_SECRET is not set")
    if role in _RESERVED_ROLES:
        raise ValueError(f"development tokens may not carry the {role} role")
    if not user_id:
        raise ValueError("user_id must not be empty")
    return _mint(settings.jwt_secret, sub=user_id, company_id=company_id, role=role, ttl=ttl)[0]


def mint_service_token(
    settings: Settings,
    *,
    company_id: uuid.UUID,
    service: str = "backend",
    ttl: datetime.timedelta = datetime.timedelta(days=30),
) -> str:
    """An HS256 service token for one company, signed with SERVICE_JWT_SECRET."""
    if not settings.service_jwt_secret:
        raise ConfigError("SERVICE_JWT_SECRET is not set")
    if not service:
        raise ValueError("service must not be empty")
    return _mint(
        settings.service_jwt_secret,
        sub=f"service:{service}",
        company_id=company_id,
        role=SERVICE_ROLE,
        ttl=ttl,
    )[0]


def mint_portal_token(
    settings: Settings,
    *,
    company_id: uuid.UUID,
    generation: int,
    ttl: datetime.timedelta,
) -> tuple[str, datetime.datetime]:
    """A portal link's token (read-only role `portal`) and when it expires.

    Minted on the machine's clock, like every token: PyJWT checks `exp` against it."""
    if not settings.portal_token_secret:
        raise ConfigError("PORTAL_TOKEN_SECRET is not set")
    return _mint(
        settings.portal_token_secret,
        sub=f"portal:{company_id}",
        company_id=company_id,
        role=PORTAL_ROLE,
        ttl=ttl,
        extra={"aud": PORTAL_AUDIENCE, "gen": generation},
    )
