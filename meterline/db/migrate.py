"""`meterline migrate`: apply Piccolo migrations, then seed reference data. Idempotent and safe
to run from several processes at once (an advisory lock serialises them)."""

from __future__ import annotations

import contextlib
import io
import logging
import os
from dataclasses import dataclass

from meterline.billing.catalog import DEFAULT_PLANS
from meterline.db import tiers
from meterline.db.engine import DB

logger = logging.getLogger(__name__)

_MIGRATION_LOCK = 0x6D65746572  # "meter": any constant shared by every Meterline process
APP = "meterline"


@dataclass(frozen=True)
class Migrated:
    applied: tuple[str, ...]  # the migrations this run applied, in order
    total: int  # migrations the code has

    def describe(self) -> str:
        if not self.applied:
            return f"database up to date: all {self.total} migrations were applied before"
        already = self.total - len(self.applied)
        return (
            f"applied {len(self.applied)} migration{'s' if len(self.applied) != 1 else ''} "
            f"({', '.join(self.applied)}); {already} applied before, {self.total} in all"
        )


async def migrate() -> Migrated:
    os.environ.setdefault("PICCOLO_CONF", "meterline.db.piccolo_conf")
    from piccolo.apps.migrations.commands.forwards import ForwardsMigrationManager
    from piccolo.apps.migrations.tables import Migration

    lock_connection = await DB.get_new_connection()
    try:
        await lock_connection.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
        manager = ForwardsMigrationManager(app_name=APP)
        await manager.create_migration_table()
        config = manager.get_app_config(app_name=APP)
        known = manager.get_migration_ids(
            manager.get_migration_modules(config.resolved_migrations_folder_path)
        )
        before = set(await Migration.get_migrations_which_ran(app_name=APP))
        # Piccolo prints its own account, which counts every known migration as "already
        # complete" on a new database: Meterline says what happened instead (`describe`).
        with contextlib.redirect_stdout(io.StringIO()):
            result = await manager.run()
        if not result.success:
            raise RuntimeError(f"migration failed: {result.message}")
        after = set(await Migration.get_migrations_which_ran(app_name=APP))
        await tiers.seed_reference_data(DEFAULT_PLANS)
    finally:
        await lock_connection.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
        await lock_connection.close()
    migrated = Migrated(applied=tuple(sorted(after - before)), total=len(known))
    logger.info("database migrated: %s", migrated.describe())
    return migrated
