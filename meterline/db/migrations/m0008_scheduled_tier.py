from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.columns.column_types import Varchar
from piccolo.columns.indexes import IndexMethod

ID = "2026-11-25T23:24:47:396621"
VERSION = "1.38.0"
DESCRIPTION = "companies.scheduled_tier"


async def forwards():
    manager = MigrationManager(migration_id=ID, app_name="meterline", description=DESCRIPTION)

    manager.add_column(
        table_class_name="CompanyRow",
        tablename="companies",
        column_name="scheduled_tier",
        db_column_name="scheduled_tier",
        column_class_name="Varchar",
        column_class=Varchar,
        params={
            "length": 32,
            "default": None,
            "null": True,
            "primary_key": False,
            "unique": False,
            "index": False,
            "index_method": IndexMethod.btree,
            "choices": None,
            "db_column_name": None,
            "secret": False,
        },
        schema=None,
    )

    return manager
