"""portal_link_generations: the usage portal's link revocation (docs/design.md, "The usage
portal"). A portal token carries its company's generation at minting and is valid while that is
still the company's generation; `revokePortalLinks` moves it on. A company without a row is at
generation 0. No foreign key: a company may revoke before Meterline has a row for it."""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager

from meterline.db.raw_migration import sql_migration

ID = "2026-12-09T12:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "portal_link_generations: revocable portal links"

STATEMENTS = [
    """
    CREATE TABLE portal_link_generations (
        company_id uuid PRIMARY KEY,
        generation bigint NOT NULL,
        revoked_at timestamptz NOT NULL,
        CONSTRAINT portal_link_generations_positive CHECK (generation > 0)
    )
    """,
]


async def forwards() -> MigrationManager:
    return sql_migration(ID, DESCRIPTION, STATEMENTS)
