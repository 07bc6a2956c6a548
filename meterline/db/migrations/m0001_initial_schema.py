from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.columns.base import OnDelete
from piccolo.columns.base import OnUpdate
from piccolo.columns.column_types import BigInt
from piccolo.columns.column_types import Boolean
from piccolo.columns.column_types import Date
from piccolo.columns.column_types import ForeignKey
from piccolo.columns.column_types import Integer
from piccolo.columns.column_types import JSONB
from piccolo.columns.column_types import Numeric
from piccolo.columns.column_types import Timestamptz
from piccolo.columns.column_types import UUID
from piccolo.columns.column_types import Varchar
from piccolo.columns.defaults.date import DateNow
from piccolo.columns.defaults.timestamptz import TimestamptzNow
from piccolo.columns.defaults.uuid import UUID4
from piccolo.columns.indexes import IndexMethod
from piccolo.constraints import Check
from piccolo.constraints import Unique
from piccolo.table import Table
import decimal


class CompanyRow(Table, tablename="companies", schema=None):
    id = UUID(
        default=UUID4(),
        null=False,
        primary_key=True,
        unique=False,
        index=False,
        index_method=IndexMethod.btree,
        choices=None,
        db_column_name=None,
        secret=False,
    )


class EventTypeRow(Table, tablename="event_types", schema=None):
    name = Varchar(
        length=64,
        default="",
        null=False,
        primary_key=True,
        unique=False,
        index=False,
        index_method=IndexMethod.btree,
        choices=None,
        db_column_name=None,
        secret=False,
    )


class TierRow(Table, tablename="tiers", schema=None):
    name = Varchar(
        length=32,
        default="",
        null=False,
        primary_key=True,
        unique=False,
        index=False,
        index_method=IndexMethod.btree,
        choices=None,
        db_column_name=None,
        secret=False,
    )


ID = "2026-11-25T19:26:23:125339"
VERSION = "1.38.0"
DESCRIPTION = "initial schema"


async def forwards():
    manager = MigrationManager(
        migration_id=ID, app_name="meterline", description=DESCRIPTION
    )

    manager.add_table(
        class_name="TierAllowanceRow",
        tablename="tier_allowances",
        schema=None,
        columns=None,
    )

    manager.add_table(
        class_name="CompanyRow", tablename="companies", schema=None, columns=None
    )

    manager.add_table(
        class_name="EventTypeRow",
        tablename="event_types",
        schema=None,
        columns=None,
    )

    manager.add_table(
        class_name="IdempotencyKeyRow",
        tablename="idempotency_keys",
        schema=None,
        columns=None,
    )

    manager.add_table(
        class_name="TierRow", tablename="tiers", schema=None, columns=None
    )

    manager.add_table(
        class_name="UsageRollupRow",
        tablename="usage_rollups",
        schema=None,
        columns=None,
    )

    manager.add_table(
        class_name="UsageEventRow",
        tablename="usage_events",
        schema=None,
        columns=None,
    )

    manager.add_column(
        table_class_name="TierAllowanceRow",
        tablename="tier_allowances",
        column_name="tier",
        db_column_name="tier",
        column_class_name="ForeignKey",
        column_class=ForeignKey,
        params={
            "references": TierRow,
            "on_delete": OnDelete.cascade,
            "on_update": OnUpdate.cascade,
            "target_column": None,
            "null": False,
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

    manager.add_column(
        table_class_name="TierAllowanceRow",
        tablename="tier_allowances",
        column_name="event_type",
        db_column_name="event_type",
        column_class_name="ForeignKey",
        column_class=ForeignKey,
        params={
            "references": EventTypeRow,
            "on_delete": OnDelete.restrict,
            "on_update": OnUpdate.cascade,
            "target_column": None,
            "null": False,
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

    manager.add_column(
        table_class_name="TierAllowanceRow",
        tablename="tier_allowances",
        column_name="included",
        db_column_name="included",
        column_class_name="BigInt",
        column_class=BigInt,
        params={
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

    manager.add_column(
        table_class_name="TierAllowanceRow",
        tablename="tier_allowances",
        column_name="unit_price",
        db_column_name="unit_price",
        column_class_name="Numeric",
        column_class=Numeric,
        params={
            "default": decimal.Decimal("0"),
            "digits": (12, 6),
            "null": False,
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

    manager.add_column(
        table_class_name="CompanyRow",
        tablename="companies",
        column_name="id",
        db_column_name="id",
        column_class_name="UUID",
        column_class=UUID,
        params={
            "default": UUID4(),
            "null": False,
            "primary_key": True,
            "unique": False,
            "index": False,
            "index_method": IndexMethod.btree,
            "choices": None,
            "db_column_name": None,
            "secret": False,
        },
        schema=None,
    )

    manager.add_column(
        table_class_name="CompanyRow",
        tablename="companies",
        column_name="tier",
        db_column_name="tier",
        column_class_name="ForeignKey",
        column_class=ForeignKey,
        params={
            "references": TierRow,
            "on_delete": OnDelete.restrict,
            "on_update": OnUpdate.cascade,
            "target_column": None,
            "null": False,
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

    manager.add_column(
        table_class_name="CompanyRow",
        tablename="companies",
        column_name="stripe_customer_id",
        db_column_name="stripe_customer_id",
        column_class_name="Varchar",
        column_class=Varchar,
        params={
            "length": 255,
            "default": None,
            "null": True,
            "primary_key": False,
            "unique": True,
            "index": False,
            "index_method": IndexMethod.btree,
            "choices": None,
            "db_column_name": None,
            "secret": False,
        },
        schema=None,
    )

    manager.add_column(
        table_class_name="CompanyRow",
        tablename="companies",
        column_name="stripe_subscription_id",
        db_column_name="stripe_subscription_id",
        column_class_name="Varchar",
        column_class=Varchar,
        params={
            "length": 255,
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

    manager.add_column(
        table_class_name="CompanyRow",
        tablename="companies",
        column_name="past_due_since",
        db_column_name="past_due_since",
        column_class_name="Timestamptz",
        column_class=Timestamptz,
        params={
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

    manager.add_column(
        table_class_name="CompanyRow",
        tablename="companies",
        column_name="grace_ends_at",
        db_column_name="grace_ends_at",
        column_class_name="Timestamptz",
        column_class=Timestamptz,
        params={
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

    manager.add_column(
        table_class_name="CompanyRow",
        tablename="companies",
        column_name="restricted",
        db_column_name="restricted",
        column_class_name="Boolean",
        column_class=Boolean,
        params={
            "default": False,
            "null": False,
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

    manager.add_column(
        table_class_name="CompanyRow",
        tablename="companies",
        column_name="created_at",
        db_column_name="created_at",
        column_class_name="Timestamptz",
        column_class=Timestamptz,
        params={
            "default": TimestamptzNow(),
            "null": False,
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

    manager.add_column(
        table_class_name="EventTypeRow",
        tablename="event_types",
        column_name="name",
        db_column_name="name",
        column_class_name="Varchar",
        column_class=Varchar,
        params={
            "length": 64,
            "default": "",
            "null": False,
            "primary_key": True,
            "unique": False,
            "index": False,
            "index_method": IndexMethod.btree,
            "choices": None,
            "db_column_name": None,
            "secret": False,
        },
        schema=None,
    )

    manager.add_column(
        table_class_name="IdempotencyKeyRow",
        tablename="idempotency_keys",
        column_name="company_id",
        db_column_name="company_id",
        column_class_name="ForeignKey",
        column_class=ForeignKey,
        params={
            "references": CompanyRow,
            "on_delete": OnDelete.restrict,
            "on_update": OnUpdate.cascade,
            "target_column": None,
            "null": False,
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

    manager.add_column(
        table_class_name="IdempotencyKeyRow",
        tablename="idempotency_keys",
        column_name="key",
        db_column_name="key",
        column_class_name="Varchar",
        column_class=Varchar,
        params={
            "length": 255,
            "default": "",
            "null": False,
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

    manager.add_column(
        table_class_name="IdempotencyKeyRow",
        tablename="idempotency_keys",
        column_name="event_id",
        db_column_name="event_id",
        column_class_name="UUID",
        column_class=UUID,
        params={
            "default": UUID4(),
            "null": False,
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

    manager.add_column(
        table_class_name="IdempotencyKeyRow",
        tablename="idempotency_keys",
        column_name="fingerprint",
        db_column_name="fingerprint",
        column_class_name="Varchar",
        column_class=Varchar,
        params={
            "length": 64,
            "default": "",
            "null": False,
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

    manager.add_column(
        table_class_name="IdempotencyKeyRow",
        tablename="idempotency_keys",
        column_name="occurred_at_given",
        db_column_name="occurred_at_given",
        column_class_name="Timestamptz",
        column_class=Timestamptz,
        params={
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

    manager.add_column(
        table_class_name="IdempotencyKeyRow",
        tablename="idempotency_keys",
        column_name="created_at",
        db_column_name="created_at",
        column_class_name="Timestamptz",
        column_class=Timestamptz,
        params={
            "default": TimestamptzNow(),
            "null": False,
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

    manager.add_column(
        table_class_name="TierRow",
        tablename="tiers",
        column_name="name",
        db_column_name="name",
        column_class_name="Varchar",
        column_class=Varchar,
        params={
            "length": 32,
            "default": "",
            "null": False,
            "primary_key": True,
            "unique": False,
            "index": False,
            "index_method": IndexMethod.btree,
            "choices": None,
            "db_column_name": None,
            "secret": False,
        },
        schema=None,
    )

    manager.add_column(
        table_class_name="TierRow",
        tablename="tiers",
        column_name="position",
        db_column_name="position",
        column_class_name="Integer",
        column_class=Integer,
        params={
            "default": 0,
            "null": False,
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

    manager.add_column(
        table_class_name="TierRow",
        tablename="tiers",
        column_name="grace_days",
        db_column_name="grace_days",
        column_class_name="Integer",
        column_class=Integer,
        params={
            "default": 14,
            "null": False,
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

    manager.add_column(
        table_class_name="TierRow",
        tablename="tiers",
        column_name="hard_cap",
        db_column_name="hard_cap",
        column_class_name="Boolean",
        column_class=Boolean,
        params={
            "default": False,
            "null": False,
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

    manager.add_column(
        table_class_name="UsageRollupRow",
        tablename="usage_rollups",
        column_name="company_id",
        db_column_name="company_id",
        column_class_name="ForeignKey",
        column_class=ForeignKey,
        params={
            "references": CompanyRow,
            "on_delete": OnDelete.restrict,
            "on_update": OnUpdate.cascade,
            "target_column": None,
            "null": False,
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

    manager.add_column(
        table_class_name="UsageRollupRow",
        tablename="usage_rollups",
        column_name="month",
        db_column_name="month",
        column_class_name="Date",
        column_class=Date,
        params={
            "default": DateNow(),
            "null": False,
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

    manager.add_column(
        table_class_name="UsageRollupRow",
        tablename="usage_rollups",
        column_name="event_type",
        db_column_name="event_type",
        column_class_name="ForeignKey",
        column_class=ForeignKey,
        params={
            "references": EventTypeRow,
            "on_delete": OnDelete.restrict,
            "on_update": OnUpdate.cascade,
            "target_column": None,
            "null": False,
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

    manager.add_column(
        table_class_name="UsageRollupRow",
        tablename="usage_rollups",
        column_name="used",
        db_column_name="used",
        column_class_name="BigInt",
        column_class=BigInt,
        params={
            "default": 0,
            "null": False,
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

    manager.add_column(
        table_class_name="UsageRollupRow",
        tablename="usage_rollups",
        column_name="tier",
        db_column_name="tier",
        column_class_name="Varchar",
        column_class=Varchar,
        params={
            "length": 32,
            "default": "",
            "null": False,
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

    manager.add_column(
        table_class_name="UsageRollupRow",
        tablename="usage_rollups",
        column_name="included",
        db_column_name="included",
        column_class_name="BigInt",
        column_class=BigInt,
        params={
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

    manager.add_column(
        table_class_name="UsageRollupRow",
        tablename="usage_rollups",
        column_name="unit_price",
        db_column_name="unit_price",
        column_class_name="Numeric",
        column_class=Numeric,
        params={
            "default": decimal.Decimal("0"),
            "digits": (12, 6),
            "null": False,
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

    manager.add_column(
        table_class_name="UsageRollupRow",
        tablename="usage_rollups",
        column_name="cap",
        db_column_name="cap",
        column_class_name="BigInt",
        column_class=BigInt,
        params={
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

    manager.add_column(
        table_class_name="UsageEventRow",
        tablename="usage_events",
        column_name="id",
        db_column_name="id",
        column_class_name="UUID",
        column_class=UUID,
        params={
            "default": UUID4(),
            "null": False,
            "primary_key": True,
            "unique": False,
            "index": False,
            "index_method": IndexMethod.btree,
            "choices": None,
            "db_column_name": None,
            "secret": False,
        },
        schema=None,
    )

    manager.add_column(
        table_class_name="UsageEventRow",
        tablename="usage_events",
        column_name="company_id",
        db_column_name="company_id",
        column_class_name="ForeignKey",
        column_class=ForeignKey,
        params={
            "references": CompanyRow,
            "on_delete": OnDelete.restrict,
            "on_update": OnUpdate.cascade,
            "target_column": None,
            "null": False,
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

    manager.add_column(
        table_class_name="UsageEventRow",
        tablename="usage_events",
        column_name="event_type",
        db_column_name="event_type",
        column_class_name="ForeignKey",
        column_class=ForeignKey,
        params={
            "references": EventTypeRow,
            "on_delete": OnDelete.restrict,
            "on_update": OnUpdate.cascade,
            "target_column": None,
            "null": False,
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

    manager.add_column(
        table_class_name="UsageEventRow",
        tablename="usage_events",
        column_name="quantity",
        db_column_name="quantity",
        column_class_name="Integer",
        column_class=Integer,
        params={
            "default": 0,
            "null": False,
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

    manager.add_column(
        table_class_name="UsageEventRow",
        tablename="usage_events",
        column_name="occurred_at",
        db_column_name="occurred_at",
        column_class_name="Timestamptz",
        column_class=Timestamptz,
        params={
            "default": TimestamptzNow(),
            "null": False,
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

    manager.add_column(
        table_class_name="UsageEventRow",
        tablename="usage_events",
        column_name="month",
        db_column_name="month",
        column_class_name="Date",
        column_class=Date,
        params={
            "default": DateNow(),
            "null": False,
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

    manager.add_column(
        table_class_name="UsageEventRow",
        tablename="usage_events",
        column_name="recorded_at",
        db_column_name="recorded_at",
        column_class_name="Timestamptz",
        column_class=Timestamptz,
        params={
            "default": TimestamptzNow(),
            "null": False,
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

    manager.add_column(
        table_class_name="UsageEventRow",
        tablename="usage_events",
        column_name="idempotency_key",
        db_column_name="idempotency_key",
        column_class_name="Varchar",
        column_class=Varchar,
        params={
            "length": 255,
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

    manager.add_column(
        table_class_name="UsageEventRow",
        tablename="usage_events",
        column_name="metadata",
        db_column_name="metadata",
        column_class_name="JSONB",
        column_class=JSONB,
        params={
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

    manager.add_column(
        table_class_name="UsageEventRow",
        tablename="usage_events",
        column_name="sync_state",
        db_column_name="sync_state",
        column_class_name="Varchar",
        column_class=Varchar,
        params={
            "length": 16,
            "default": "local_only",
            "null": False,
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

    manager.add_constraint(
        table_class_name="TierAllowanceRow",
        tablename="tier_allowances",
        constraint_name="tier_allowances_unique",
        constraint_class=Unique,
        params={"columns": ["tier", "event_type"], "nulls_distinct": True},
        schema=None,
    )

    manager.add_constraint(
        table_class_name="TierAllowanceRow",
        tablename="tier_allowances",
        constraint_name="tier_allowances_included_non_negative",
        constraint_class=Check,
        params={"condition": "included IS NULL OR included >= 0"},
        schema=None,
    )

    manager.add_constraint(
        table_class_name="TierAllowanceRow",
        tablename="tier_allowances",
        constraint_name="tier_allowances_price_non_negative",
        constraint_class=Check,
        params={"condition": "unit_price >= 0"},
        schema=None,
    )

    manager.add_constraint(
        table_class_name="IdempotencyKeyRow",
        tablename="idempotency_keys",
        constraint_name="idempotency_keys_unique",
        constraint_class=Unique,
        params={"columns": ["company_id", "key"], "nulls_distinct": True},
        schema=None,
    )

    manager.add_constraint(
        table_class_name="IdempotencyKeyRow",
        tablename="idempotency_keys",
        constraint_name="idempotency_keys_not_empty",
        constraint_class=Check,
        params={"condition": "length(key) > 0"},
        schema=None,
    )

    manager.add_constraint(
        table_class_name="TierRow",
        tablename="tiers",
        constraint_name="tiers_grace_days_non_negative",
        constraint_class=Check,
        params={"condition": "grace_days >= 0"},
        schema=None,
    )

    manager.add_constraint(
        table_class_name="UsageRollupRow",
        tablename="usage_rollups",
        constraint_name="usage_rollups_unique",
        constraint_class=Unique,
        params={
            "columns": ["company_id", "month", "event_type"],
            "nulls_distinct": True,
        },
        schema=None,
    )

    manager.add_constraint(
        table_class_name="UsageRollupRow",
        tablename="usage_rollups",
        constraint_name="usage_rollups_used_non_negative",
        constraint_class=Check,
        params={"condition": "used >= 0"},
        schema=None,
    )

    manager.add_constraint(
        table_class_name="UsageRollupRow",
        tablename="usage_rollups",
        constraint_name="usage_rollups_within_cap",
        constraint_class=Check,
        params={"condition": "cap IS NULL OR used <= cap"},
        schema=None,
    )

    manager.add_constraint(
        table_class_name="UsageEventRow",
        tablename="usage_events",
        constraint_name="usage_events_quantity_range",
        constraint_class=Check,
        params={"condition": "quantity BETWEEN 1 AND 100000"},
        schema=None,
    )

    manager.add_constraint(
        table_class_name="UsageEventRow",
        tablename="usage_events",
        constraint_name="usage_events_month_of_occurred_at",
        constraint_class=Check,
        params={
            "condition": "month = date_trunc('month', occurred_at AT TIME ZONE 'UTC')::date"
        },
        schema=None,
    )

    manager.add_constraint(
        table_class_name="UsageEventRow",
        tablename="usage_events",
        constraint_name="usage_events_sync_state_known",
        constraint_class=Check,
        params={
            "condition": "sync_state IN ('local_only', 'pending', 'sending', 'sent', 'failed', 'unknown')"
        },
        schema=None,
    )

    manager.add_constraint(
        table_class_name="UsageEventRow",
        tablename="usage_events",
        constraint_name="usage_events_metadata_object",
        constraint_class=Check,
        params={
            "condition": "metadata IS NULL OR jsonb_typeof(metadata) = 'object'"
        },
        schema=None,
    )

    return manager
