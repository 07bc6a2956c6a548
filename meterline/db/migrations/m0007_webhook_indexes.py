"""Indexes and the re-read sequence of the webhook tables (hand-written: Piccolo runs raw steps
before the columns of the same migration)."""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager

from meterline.db.raw_migration import sql_migration

ID = "2026-11-25T22:21:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "webhook indexes and the Stripe re-read sequence"


async def forwards() -> MigrationManager:
    return sql_migration(
        ID,
        DESCRIPTION,
        [
            # Orders re-reads of Stripe objects: a read started later wins (db/stripe_reads.py).
            "CREATE SEQUENCE IF NOT EXISTS stripe_read_seq",
            "CREATE INDEX IF NOT EXISTS subscriptions_company ON subscriptions (company_id)",
            "CREATE INDEX IF NOT EXISTS invoices_company_created ON invoices "
            "(company_id, created DESC)",
            "CREATE INDEX IF NOT EXISTS invoices_company_month ON invoices "
            "(company_id, usage_month) WHERE usage_month IS NOT NULL",
            "CREATE INDEX IF NOT EXISTS invoices_open_failed ON invoices (company_id) "
            "WHERE status = 'open' AND first_failed_at IS NOT NULL",
            "CREATE INDEX IF NOT EXISTS webhook_events_unsettled ON webhook_events (created) "
            "WHERE status IN ('failed', 'received')",
            "CREATE UNIQUE INDEX IF NOT EXISTS stripe_flags_one_open ON stripe_flags "
            "(kind, object_id) WHERE resolved_at IS NULL",
            "CREATE INDEX IF NOT EXISTS stripe_flags_company ON stripe_flags (company_id) "
            "WHERE resolved_at IS NULL",
            "CREATE INDEX IF NOT EXISTS meter_error_reports_created ON meter_error_reports "
            "(created_at DESC)",
        ],
    )
