"""An index for pruning settled webhook events by age (WEBHOOK_EVENT_RETENTION_DAYS) and for
listing the latest ones. Built CONCURRENTLY (outside a transaction): webhook_events is the
table that grew large, and Stripe's deliveries must not wait while the index is built. A build
that failed leaves an invalid index behind, which the next run drops and builds again."""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager

from meterline.db.raw_migration import sql_migration

ID = "2026-12-07T22:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "webhook_events by received_at"

DROP_IF_INVALID = """
DO $$ BEGIN
    IF EXISTS (SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
               WHERE c.relname = 'webhook_events_received' AND NOT i.indisvalid) THEN
        DROP INDEX webhook_events_received;
    END IF;
END $$
"""


async def forwards() -> MigrationManager:
    return sql_migration(
        ID,
        DESCRIPTION,
        [
            DROP_IF_INVALID,
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS webhook_events_received "
            "ON webhook_events (received_at)",
        ],
        in_transaction=False,
    )
