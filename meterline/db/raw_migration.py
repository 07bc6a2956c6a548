"""Hand-written migrations that run SQL statements (indexes and the like, which Piccolo's
auto-migrations do not emit)."""

from __future__ import annotations

from collections.abc import Sequence

from piccolo.apps.migrations.auto.migration_manager import MigrationManager

from meterline.db.engine import DB


def sql_migration(
    migration_id: str, description: str, statements: Sequence[str]
) -> MigrationManager:
    manager = MigrationManager(
        migration_id=migration_id, app_name="meterline", description=description
    )

    async def run() -> None:
        for statement in statements:
            await DB.run_ddl(statement)

    manager.add_raw(run)
    return manager
