"""Settings, read once from the environment into one frozen object."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit

Environment = Literal["production", "development"]
# Roles a user token may carry (or alias to). "service" belongs to service tokens only.
USER_ROLES = ("super_admin", "company_admin", "staff")
# Built-in roles no alias may be named after: they are given by Meterline's own tokens.
RESERVED_ROLES = ("service", "portal")
# A portal link's token is an HS256 key: short secrets can be guessed offline from one link.
MIN_PORTAL_SECRET_LENGTH = 32
# CSP frame-ancestors sources: 'none', 'self', a scheme (`https:`), or an origin whose host may
# start with `*.` (https://*.example.com, https://app.example.com:8443).
_FRAME_SOURCE = re.compile(
    r"^('self'|https?:|(https?://)?(\*\.)?[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*(:(\d{1,5}|\*))?)$"
)
_URL_PATH = re.compile(r"[A-Za-z0-9._~/-]*")
# Stripe lists and re-sends events of the last 30 days: a stored event must outlive that.
MIN_WEBHOOK_EVENT_RETENTION_DAYS = 30


class ConfigError(ValueError):
    """A setting has a value Meterline cannot run with."""


def _opt(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name, "").strip()
    return value or None


def _int(env: Mapping[str, str], name: str, default: int, *, minimum: int = 0) -> int:
    raw = _opt(env, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from exc
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    return value


def _public_base_url(value: str | None, env: str) -> str | None:
    """PUBLIC_BASE_URL: where browsers reach this server (scheme, host, optional path prefix)."""
    if value is None:
        return None
    parts = urlsplit(value)
    try:
        parts.port  # noqa: B018  (raises on a port that is not a number)
    except ValueError:
        raise ConfigError(f"PUBLIC_BASE_URL has an invalid port: {value!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"PUBLIC_BASE_URL must be an http(s) URL with a host, got {value!r}")
    # Links append "/portal#token=..." to it, and the page names its assets under its path: a
    # "?" or "#" would move the token elsewhere, other characters would need escaping.
    if "?" in value or "#" in value or "@" in parts.netloc:
        raise ConfigError("PUBLIC_BASE_URL must not carry a query, a fragment or credentials")
    if not _URL_PATH.fullmatch(parts.path):
        raise ConfigError(
            "PUBLIC_BASE_URL's path may hold only letters, digits, '-', '.', '_', '~' and '/'"
        )
    local = parts.hostname in ("localhost", "127.0.0.1", "::1")
    if env == "production" and parts.scheme != "https" and not local:
        raise ConfigError("PUBLIC_BASE_URL must be https in production: portal links carry a token")
    return value.rstrip("/")


def _frame_ancestors(value: str | None) -> str:
    """PORTAL_FRAME_ANCESTORS: the CSP frame-ancestors sources of the portal page."""
    if value is None:
        return "'none'"
    sources = value.split()
    if sources == ["'none'"]:
        return "'none'"
    for source in sources:
        if not _FRAME_SOURCE.match(source):
            raise ConfigError(
                f"PORTAL_FRAME_ANCESTORS: {source!r} is not 'none', 'self', a scheme or an origin"
            )
    return " ".join(sources)


def _secrets(value: str | None) -> tuple[str, ...]:
    return tuple(part.strip() for part in (value or "").split(",") if part.strip())


@dataclass(frozen=True)
class Settings:
    env: Environment = "production"
    database_url: str | None = None
    # Auth
    clerk_jwks_url: str | None = None
    clerk_jwt_key: str | None = None  # PEM public key, networkless verification
    clerk_issuer: str | None = None
    clerk_authorized_parties: tuple[str, ...] = ()
    service_jwt_secret: str | None = None
    jwt_secret: str | None = None  # development user tokens only
    jwt_leeway_seconds: int = 5
    role_aliases: Mapping[str, str] = field(default_factory=dict)  # token role -> built-in role
    # Stripe (used by later issues; recording never calls Stripe)
    stripe_secret_key: str | None = None
    stripe_api_base: str | None = None
    stripe_webhook_secret: str | None = None
    stripe_thin_webhook_secret: str | None = None
    cron_secret: str | None = None
    # Where Stripe Checkout sends the customer back (the frontend's billing page).
    checkout_success_url: str | None = None
    checkout_cancel_url: str | None = None
    # Origins a billing portal's `returnUrl` may point to (no open redirect through Stripe).
    billing_return_origins: tuple[str, ...] = ()
    # A portal configuration that allows payment methods and invoices only (no plan changes).
    stripe_portal_configuration: str | None = None
    sync_budget_seconds: int = 25  # how long one /cron/sync-usage call may work
    # Settled Stripe events are kept this long (at least Stripe's 30 days of event history,
    # so a re-sent event is still recognised as a duplicate), then pruned.
    webhook_event_retention_days: int = 90
    # Operations
    metrics_token: str | None = None
    late_usage_grace_hours: int = 1
    # Last month's events are accepted until this long before Stripe's grace ends, so the sync
    # can still deliver them before the invoice is finalised.
    late_usage_margin_minutes: int = 15
    host: str = "127.0.0.1"
    port: int = 8000
    db_pool_min_size: int = 1
    db_pool_max_size: int = 20
    statement_timeout_ms: int = 10_000
    embedded_data_dir: str = ".meterline/pgdata"
    # The usage portal (docs/design.md, "The usage portal"): where browsers reach this server,
    # the secret its links' tokens are signed with, and who may frame the page.
    public_base_url: str | None = None
    portal_token_secret: str | None = None
    portal_frame_ancestors: str = "'none'"

    @property
    def is_development(self) -> bool:
        return self.env == "development"

    @property
    def portal_configured(self) -> bool:
        return self.public_base_url is not None and self.portal_token_secret is not None

    @property
    def webhook_secrets(self) -> tuple[str, ...]:
        """STRIPE_WEBHOOK_SECRET: several, comma-separated, while a secret is being rolled."""
        return _secrets(self.stripe_webhook_secret)

    @property
    def thin_webhook_secrets(self) -> tuple[str, ...]:
        return _secrets(self.stripe_thin_webhook_secret)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        raw_env = (_opt(env, "METERLINE_ENV") or "production").lower()
        if raw_env not in ("production", "development"):
            raise ConfigError(f"METERLINE_ENV must be production or development, got {raw_env!r}")
        parties = tuple(
            p.strip() for p in (_opt(env, "CLERK_AUTHORIZED_PARTIES") or "").split(",") if p.strip()
        )
        aliases = {}
        for pair in (_opt(env, "ROLE_ALIASES") or "").split(","):
            if not pair.strip():
                continue
            alias, sep, role = (p.strip() for p in pair.partition("="))
            if not sep or not alias or not role:
                raise ConfigError(f"ROLE_ALIASES entries are alias=role, got {pair!r}")
            if alias in RESERVED_ROLES or alias in USER_ROLES:
                # An alias named after a built-in role would re-grant it (staff=super_admin).
                raise ConfigError(f"ROLE_ALIASES may not rename the built-in {alias!r} role")
            if role not in USER_ROLES:
                raise ConfigError(
                    f"ROLE_ALIASES maps {alias!r} to {role!r}: not one of {USER_ROLES}"
                )
            aliases[alias] = role
        pool_min = _int(env, "DB_POOL_MIN_SIZE", 1, minimum=1)
        pool_max = _int(env, "DB_POOL_MAX_SIZE", 20, minimum=1)
        if pool_min > pool_max:
            raise ConfigError("DB_POOL_MIN_SIZE must not exceed DB_POOL_MAX_SIZE")
        grace_hours = _int(env, "LATE_USAGE_GRACE_HOURS", 1)
        margin = _int(env, "LATE_USAGE_MARGIN_MINUTES", 15)
        if grace_hours and margin >= grace_hours * 60:
            raise ConfigError(
                "LATE_USAGE_MARGIN_MINUTES must be shorter than LATE_USAGE_GRACE_HOURS"
            )
        portal_secret = _opt(env, "PORTAL_TOKEN_SECRET")
        if portal_secret is not None:
            if len(portal_secret) < MIN_PORTAL_SECRET_LENGTH:
                raise ConfigError(
                    f"PORTAL_TOKEN_SECRET must be at least {MIN_PORTAL_SECRET_LENGTH} characters"
                )
            # Whoever holds the other secret could mint portal links, and read billing.
            if portal_secret in (_opt(env, "SERVICE_JWT_SECRET"), _opt(env, "JWT_SECRET")):
                raise ConfigError(
                    "PORTAL_TOKEN_SECRET must differ from SERVICE_JWT_SECRET and JWT_SECRET"
                )
        return cls(
            env=raw_env,  # type: ignore[arg-type]
            database_url=_opt(env, "DATABASE_URL"),
            clerk_jwks_url=_opt(env, "CLERK_JWKS_URL"),
            clerk_jwt_key=_opt(env, "CLERK_JWT_KEY"),
            clerk_issuer=_opt(env, "CLERK_ISSUER"),
            clerk_authorized_parties=parties,
            service_jwt_secret=_opt(env, "SERVICE_JWT_SECRET"),
            jwt_secret=_opt(env, "JWT_SECRET"),
            jwt_leeway_seconds=_int(env, "JWT_LEEWAY_SECONDS", 5),
            role_aliases=aliases,
            stripe_secret_key=_opt(env, "STRIPE_SECRET_KEY"),
            stripe_api_base=_opt(env, "STRIPE_API_BASE"),
            stripe_webhook_secret=_opt(env, "STRIPE_WEBHOOK_SECRET"),
            stripe_thin_webhook_secret=_opt(env, "STRIPE_THIN_WEBHOOK_SECRET"),
            cron_secret=_opt(env, "CRON_SECRET"),
            checkout_success_url=_opt(env, "CHECKOUT_SUCCESS_URL"),
            checkout_cancel_url=_opt(env, "CHECKOUT_CANCEL_URL"),
            stripe_portal_configuration=_opt(env, "STRIPE_PORTAL_CONFIGURATION"),
            billing_return_origins=tuple(
                o.strip().rstrip("/")
                for o in (_opt(env, "BILLING_RETURN_ORIGINS") or "").split(",")
                if o.strip()
            ),
            sync_budget_seconds=_int(env, "SYNC_BUDGET_SECONDS", 25, minimum=1),
            webhook_event_retention_days=_int(
                env, "WEBHOOK_EVENT_RETENTION_DAYS", 90, minimum=MIN_WEBHOOK_EVENT_RETENTION_DAYS
            ),
            metrics_token=_opt(env, "METRICS_TOKEN"),
            late_usage_grace_hours=grace_hours,
            late_usage_margin_minutes=margin,
            host=_opt(env, "HOST") or "127.0.0.1",
            port=_int(env, "PORT", 8000, minimum=1),
            db_pool_min_size=pool_min,
            db_pool_max_size=pool_max,
            statement_timeout_ms=_int(env, "DB_STATEMENT_TIMEOUT_MS", 10_000),
            embedded_data_dir=_opt(env, "METERLINE_DATA_DIR") or ".meterline/pgdata",
            public_base_url=_public_base_url(_opt(env, "PUBLIC_BASE_URL"), raw_env),
            portal_token_secret=portal_secret,
            portal_frame_ancestors=_frame_ancestors(_opt(env, "PORTAL_FRAME_ANCESTORS")),
        )
