"""The usage portal's links (docs/design.md, "The usage portal").

A link is `<PUBLIC_BASE_URL>/portal#token=<portal token>`: the token names the company, the
read-only role `portal`, the company's link generation, and expires with the link. Revoking
moves the generation on, so every link given before stops at once. The token sits in the
fragment, which browsers never send to a server (nor in a Referer), so it stays out of access
logs and proxies."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from meterline.auth import Principal, mint_portal_token
from meterline.config import Settings
from meterline.db import companies, portal_links
from meterline.services.errors import BadUserInput, PortalNotConfigured

MIN_TTL_MINUTES: Final = 5
MAX_TTL_MINUTES: Final = 24 * 60
DEFAULT_TTL_MINUTES: Final = 60
PORTAL_PATH: Final = "/portal"


@dataclass(frozen=True)
class PortalLink:
    url: str
    expires_at: datetime


def _check_ttl(ttl_minutes: int) -> None:
    if not MIN_TTL_MINUTES <= ttl_minutes <= MAX_TTL_MINUTES:
        raise BadUserInput(
            f"ttlMinutes must be between {MIN_TTL_MINUTES} and {MAX_TTL_MINUTES}",
            extensions={"field": "ttlMinutes"},
        )


async def create_link(
    settings: Settings,
    company_id: uuid.UUID,
    ttl_minutes: int = DEFAULT_TTL_MINUTES,
    *,
    create_company_at: datetime | None = None,
) -> PortalLink:
    """A new link to the company's portal, valid `ttl_minutes` (5..1440) from now on the
    machine's clock (tokens are checked on it), until the company revokes its links.

    The link's reads create nothing, so its company must exist: an admin's request creates it
    as any of its requests would (`create_company_at`, the app's now); an operator naming a
    company Meterline does not know gets BAD_USER_INPUT (a typo must not mint a link)."""
    _check_ttl(ttl_minutes)
    if settings.public_base_url is None or settings.portal_token_secret is None:
        raise PortalNotConfigured(
            "The usage portal is not configured: PUBLIC_BASE_URL and PORTAL_TOKEN_SECRET "
            "must be set."
        )
    if create_company_at is not None:
        await companies.get_or_create(company_id, now=create_company_at)
    elif await companies.get(company_id) is None:
        raise BadUserInput(f"No company {company_id} in Meterline.")
    token, expires_at = mint_portal_token(
        settings,
        company_id=company_id,
        generation=await portal_links.generation(company_id),
        ttl=timedelta(minutes=ttl_minutes),
    )
    return PortalLink(f"{settings.public_base_url}{PORTAL_PATH}#token={token}", expires_at)


async def revoke_links(company_id: uuid.UUID, now: datetime) -> None:
    """Every link the company was given so far stops working; links given after work."""
    await portal_links.revoke(company_id, now)


async def link_is_current(principal: Principal) -> bool:
    """Whether a portal principal's link was given after the company's last revocation."""
    assert principal.company_id is not None and principal.link_generation is not None
    return principal.link_generation == await portal_links.generation(principal.company_id)
