"""Who may do what: the design's role table as data. Change it here, not in resolvers.

An organisation whose Clerk roles have other names maps them onto these with ROLE_ALIASES,
e.g. `owner=company_admin,viewer=staff`.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum


class Permission(StrEnum):
    READ_USAGE = "read_usage"
    RECORD_USAGE = "record_usage"
    READ_BILLING = "read_billing"
    MANAGE_SUBSCRIPTION = "manage_subscription"
    MANAGE_PORTAL_LINKS = "manage_portal_links"


ROLE_PERMISSIONS: dict[str, frozenset[Permission]] = {
    "service": frozenset({Permission.READ_USAGE, Permission.RECORD_USAGE}),
    "super_admin": frozenset(Permission),
    "company_admin": frozenset(Permission),
    "staff": frozenset({Permission.READ_USAGE}),
    # The usage portal's links: what a company admin reads, nothing it changes.
    "portal": frozenset({Permission.READ_USAGE, Permission.READ_BILLING}),
}


def allows(
    role: str | None, permission: Permission, aliases: Mapping[str, str] | None = None
) -> bool:
    """Whether `role` (a built-in role, or an alias of one from ROLE_ALIASES) may do it."""
    if role is None:
        return False
    role = (aliases or {}).get(role, role)
    return permission in ROLE_PERMISSIONS.get(role, frozenset())
