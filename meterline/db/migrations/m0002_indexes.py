"""Indexes the queries need (written by hand: auto-migrations do not emit multi-column ones)."""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager

from meterline.db.raw_migration import sql_migration

ID = "2026-11-25T19:40:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "indexes for the audit trail and the month lookups"


STATEMENTS = [
    # usageEvents pages newest first by (occurred_at, id), per company.
    "CREATE INDEX IF NOT EXISTS usage_events_company_occurred "
    "ON usage_events (company_id, occurred_at DESC, id DESC)",
    "CREATE INDEX IF NOT EXISTS usage_events_company_month_type "
    "ON usage_events (company_id, month, event_type)",
]


async def forwards() -> MigrationManager:
    return sql_migration(ID, DESCRIPTION, STATEMENTS)
