"""An index for pruning settled webhook events by age (WEBHOOK_EVENT_RETENTION_DAYS) and for
listing the latest ones."""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager

from meterline.db.raw_migration import sql_migration

ID = "2026-12-07T22:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "webhook_events by received_at"


async def forwards() -> MigrationManager:
    return sql_migration(
        ID,
        DESCRIPTION,
        ["CREATE INDEX IF NOT EXISTS webhook_events_received ON webhook_events (received_at)"],
    )
