"""Hand-written migrations that run SQL statements (indexes and the like, which Piccolo's
auto-migrations do not emit)."""

from __future__ import annotations

from collections.abc import Sequence

from piccolo.apps.migrations.auto.migration_manager import MigrationManager

from meterline.db.engine import DB


def sql_migration(
    migration_id: str,
    description: str,
    statements: Sequence[str],
    *,
    in_transaction: bool = True,
) -> MigrationManager:
    """`in_transaction=False` runs each statement on its own (CREATE INDEX CONCURRENTLY must)."""
    manager = MigrationManager(
        migration_id=migration_id,
        app_name="meterline",
        description=description,
        wrap_in_transaction=in_transaction,
    )

    async def run() -> None:
        for statement in statements:
            await DB.run_ddl(statement)

    manager.add_raw(run)
    return manager
