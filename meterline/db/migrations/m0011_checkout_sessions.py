"""The Checkout Sessions Meterline created, so a company has one open checkout at a time
(docs/design.md, "Subscription lifecycle"): a second click for the same tier gets the open
session back, another tier expires it in Stripe first. `status` is what Meterline knows:
`open` until it expired the session, saw it expired or lapse, or saw it paid and linked. At
most one `open` row per company (a partial unique index). Needs only `companies`."""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager

from meterline.db.raw_migration import sql_migration

ID = "2026-12-08T12:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "checkout_sessions: one open checkout per company"

STATEMENTS = [
    """
    CREATE TABLE checkout_sessions (
        id varchar(255) PRIMARY KEY,
        company_id uuid NOT NULL REFERENCES companies (id) ON DELETE RESTRICT,
        tier varchar(32) NOT NULL,
        url varchar(5000) NOT NULL,
        expires_at timestamptz NOT NULL,
        status varchar(16) NOT NULL DEFAULT 'open',
        created_at timestamptz NOT NULL,
        closed_at timestamptz,
        CONSTRAINT checkout_sessions_status_known
            CHECK (status IN ('open', 'expired', 'complete')),
        CONSTRAINT checkout_sessions_closed_when_not_open
            CHECK ((status = 'open') = (closed_at IS NULL))
    )
    """,
    "CREATE UNIQUE INDEX checkout_sessions_one_open ON checkout_sessions (company_id) "
    "WHERE status = 'open'",
    "CREATE INDEX checkout_sessions_company_latest "
    "ON checkout_sessions (company_id, created_at DESC, id DESC)",
]


async def forwards() -> MigrationManager:
    return sql_migration(ID, DESCRIPTION, STATEMENTS)
