"""Who may do what: DESIGN's role table as data. Change it here, not in resolvers."""

from __future__ import annotations

from enum import StrEnum


class Permission(StrEnum):
    READ_USAGE = "read_usage"
    RECORD_USAGE = "record_usage"
    READ_BILLING = "read_billing"
    MANAGE_SUBSCRIPTION = "manage_subscription"


ROLE_PERMISSIONS: dict[str, frozenset[Permission]] = {
    "service": frozenset({Permission.READ_USAGE, Permission.RECORD_USAGE}),
    "super_admin": frozenset(Permission),
    "company_admin": frozenset(Permission),
    "staff": frozenset({Permission.READ_USAGE}),
}


def allows(role: str | None, permission: Permission) -> bool:
    return role is not None and permission in ROLE_PERMISSIONS.get(role, frozenset())
