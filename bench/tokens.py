"""Token verification rows of the suite: `TokenVerifier.verify` in-process, µs per call.

HS256: service tokens (SERVICE_JWT_SECRET), as backend services send. RS256: Clerk-style
session tokens (sub, sid, iss, azp, iat/nbf/exp, v, metadata) signed by a fresh 2048-bit RSA
key whose public PEM is CLERK_JWT_KEY (networkless, no JWKS).

The verifier remembers tokens it has verified (a service sends the same token for days), so
two figures per algorithm: "first sight", each call a token never seen before (signature and
claims checked; --token-calls distinct tokens, minted beforehand), and "remembered", the same
token again (the time claims re-checked only). Each call is timed on its own
(perf_counter_ns) after a warm-up; median and p99. This is the CPU a request spends on its
token, before any database work.
"""

from __future__ import annotations

import asyncio
import secrets
import statistics
import time
import uuid
from collections.abc import Callable

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from bench.harness import Row
from meterline.auth import TokenVerifier, mint_service_token
from meterline.config import Settings

TARGET_US = 5_000.0  # the seed KPI: claims in under 5 ms
ISSUER = "https://clerk.bench.example"
ORIGIN = "https://app.bench.example"


def clerk_token(private: rsa.RSAPrivateKey, company: uuid.UUID, session: int = 0) -> str:
    now = int(time.time())
    claims = {
        "sub": "user_bench",
        "sid": f"sess_bench_{session}",
        "iss": ISSUER,
        "azp": ORIGIN,
        "iat": now,
        "nbf": now,
        "exp": now + 3600,
        "v": 2,
        "metadata": {"company_id": str(company), "role": "company_admin"},
    }
    return jwt.encode(claims, private, algorithm="RS256", headers={"kid": "bench"})


def public_pem(private: rsa.RSAPrivateKey) -> str:
    return (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


async def _time_calls(verifier: TokenVerifier, tokens: list[str]) -> list[float]:
    """µs per call, sorted: one call per token, in order."""
    durations = []
    for token in tokens:
        started = time.perf_counter_ns()
        await verifier.verify(token)
        durations.append((time.perf_counter_ns() - started) / 1000)
    return sorted(durations)


def _figures(us: list[float]) -> dict[str, float]:
    return {
        "median_us": round(statistics.median(us), 2),
        "p99_us": round(us[min(len(us) - 1, int(len(us) * 0.99))], 2),
        "mean_us": round(statistics.fmean(us), 2),
    }


def token_rows(calls: int) -> list[Row]:
    company = uuid.uuid4()
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    settings = Settings(
        env="production",
        service_jwt_secret=secrets.token_urlsafe(32),
        clerk_jwt_key=public_pem(private),
        clerk_issuer=ISSUER,
        clerk_authorized_parties=(ORIGIN,),
    )
    warmup = max(20, calls // 20)
    minted: dict[str, tuple[str, Callable[[int], str]]] = {
        "HS256": (
            "service tokens",
            lambda n: mint_service_token(settings, company_id=company, service=f"bench{n}"),
        ),
        "RS256": ("Clerk session tokens, PEM key", lambda n: clerk_token(private, company, n)),
    }
    rows = []
    for alg, (kind, mint) in minted.items():
        tokens = [mint(n) for n in range(warmup + calls)]
        verifier = TokenVerifier(settings)  # nothing remembered yet
        principal = asyncio.run(verifier.verify(tokens[0]))
        assert principal.company_id == company, principal
        asyncio.run(_time_calls(verifier, tokens[1:warmup]))
        first = _figures(asyncio.run(_time_calls(verifier, tokens[warmup:])))
        again = _figures(asyncio.run(_time_calls(verifier, [tokens[-1]] * calls)))
        rows.append(
            Row(
                key=f"tokens.{alg.lower()}",
                figure=f"token verification, {alg} ({kind}), in-process",
                result=f"first sight {first['median_us']:,.0f} µs median, "
                f"{first['p99_us']:,.0f} µs p99; remembered {again['median_us']:,.1f} µs",
                target=f"< {TARGET_US / 1000:g} ms (first sight, median)",
                met=first["median_us"] < TARGET_US,
                values={
                    "calls": calls,
                    "first_sight": first,
                    "remembered": again,
                    "token_bytes": len(tokens[0]),
                },
            )
        )
    return rows
