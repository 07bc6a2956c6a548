"""GraphQL type of the usage portal's links: the service's outcome is the type."""

from __future__ import annotations

import strawberry

from meterline.services.portal import PortalLink

strawberry.type(
    PortalLink,
    description="Open `url` in a browser: the company's usage portal, read-only, until "
    "`expiresAt`.",
)

__all__ = ["PortalLink"]
