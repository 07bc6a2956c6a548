"""`meterline migrate`: apply Piccolo migrations, then seed reference data. Idempotent and safe
to run from several processes at once (an advisory lock serialises them)."""

from __future__ import annotations

import logging
import os

from meterline.billing.catalog import DEFAULT_PLANS
from meterline.db import tiers
from meterline.db.engine import DB

logger = logging.getLogger(__name__)

_MIGRATION_LOCK = 0x6D65746572  # "meter": any constant shared by every Meterline process


async def migrate() -> None:
    os.environ.setdefault("PICCOLO_CONF", "meterline.db.piccolo_conf")
    from piccolo.apps.migrations.commands.forwards import run_forwards

    lock_connection = await DB.get_new_connection()
    try:
        await lock_connection.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
        result = await run_forwards(app_name="meterline")
        if not result.success:
            raise RuntimeError(f"migration failed: {result.message}")
        await tiers.seed_reference_data(DEFAULT_PLANS)
    finally:
        await lock_connection.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
        await lock_connection.close()
    logger.info("database migrated")
