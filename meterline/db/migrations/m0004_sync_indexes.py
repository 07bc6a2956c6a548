"""Indexes of the sync job (hand-written: Piccolo runs raw steps before the columns they need)."""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager

from meterline.db.raw_migration import sql_migration

ID = "2026-11-25T20:30:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "indexes of the usage sync"


INDEXES = [
    # the sync job's two questions: which groups have pending events, which batches are due
    "CREATE INDEX IF NOT EXISTS usage_events_pending ON usage_events "
    "(company_id, event_type, month, occurred_at) WHERE sync_state = 'pending'",
    "CREATE INDEX IF NOT EXISTS usage_events_batch ON usage_events (batch_id) "
    "WHERE batch_id IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS usage_batches_due ON usage_batches (lease_until) "
    "WHERE state = 'sending'",
    "CREATE INDEX IF NOT EXISTS usage_batches_in_flight ON usage_batches "
    "(company_id, event_type) WHERE state = 'sending'",
]


async def forwards() -> MigrationManager:
    return sql_migration(ID, DESCRIPTION, INDEXES)
