"""At most one batch in flight per (company, event type): Stripe allows one concurrent meter
event call per customer and meter, and the database now enforces it, not only the claim."""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager

from meterline.db.raw_migration import sql_migration

ID = "2026-11-25T21:20:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "unique in-flight batch per company and event type"


async def forwards() -> MigrationManager:
    return sql_migration(
        ID,
        DESCRIPTION,
        [
            "DROP INDEX IF EXISTS usage_batches_in_flight",
            "CREATE UNIQUE INDEX IF NOT EXISTS usage_batches_one_in_flight ON usage_batches "
            "(company_id, event_type) WHERE state = 'sending'",
        ],
    )
