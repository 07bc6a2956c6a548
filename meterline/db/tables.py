"""Piccolo tables. Constraints live in the database, not only in Python.

Every per-company table carries `company_id` (the Citus distribution column); `event_types`,
`tiers` and `tier_allowances` are reference data. A known event type is a foreign key to
`event_types`, so adding one is a data change, not a schema change.
"""

from __future__ import annotations

import uuid

from piccolo.columns import (
    JSONB,
    UUID,
    BigInt,
    Boolean,
    Date,
    ForeignKey,
    Integer,
    Numeric,
    OnDelete,
    Timestamptz,
    Varchar,
)
from piccolo.columns.defaults.timestamptz import TimestamptzNow
from piccolo.constraints import Check, Unique
from piccolo.table import Table

from meterline.billing.catalog import MAX_QUANTITY
from meterline.db.engine import DB


class EventTypeRow(Table, tablename="event_types", db=DB):
    name = Varchar(length=64, primary_key=True)


class TierRow(Table, tablename="tiers", db=DB):
    name = Varchar(length=32, primary_key=True)
    position = Integer(default=0)  # display order, cheapest first
    grace_days = Integer(default=14)
    hard_cap = Boolean(default=False)  # usage beyond the allowance is refused, not billed

    tiers_grace_days_non_negative = Check("grace_days >= 0")


class TierAllowanceRow(Table, tablename="tier_allowances", db=DB):
    tier = ForeignKey(TierRow, on_delete=OnDelete.cascade, null=False)
    event_type = ForeignKey(EventTypeRow, on_delete=OnDelete.restrict, null=False)
    included = BigInt(null=True, default=None)  # NULL = unlimited
    unit_price = Numeric(digits=(12, 6))  # USD per unit beyond `included`

    tier_allowances_unique = Unique(["tier", "event_type"])
    tier_allowances_included_non_negative = Check("included IS NULL OR included >= 0")
    tier_allowances_price_non_negative = Check("unit_price >= 0")


class CompanyRow(Table, tablename="companies", db=DB):
    id = UUID(primary_key=True)
    tier = ForeignKey(TierRow, on_delete=OnDelete.restrict, null=False, default="free")
    stripe_customer_id = Varchar(length=255, null=True, default=None, unique=True)
    stripe_subscription_id = Varchar(length=255, null=True, default=None)
    # Dunning: NULL = OK. See billing.dunning for how these give PAST_DUE / RESTRICTED.
    past_due_since = Timestamptz(null=True, default=None)
    grace_ends_at = Timestamptz(null=True, default=None)
    restricted = Boolean(default=False)  # forced (e.g. invoice marked uncollectible)
    # Failures and uncollectible invoices before this instant no longer count (clear-dunning).
    dunning_cleared_at = Timestamptz(null=True, default=None)
    # The current subscription's Stripe status (active, past_due, paused, canceled, ...).
    subscription_status = Varchar(length=32, null=True, default=None)
    # Free -> paid: that month's earlier events are sent stamped at this instant, the start of
    # the paid subscription, so Stripe bills them on its metered prices (the design, plan changes).
    usage_stamped_from = Timestamptz(null=True, default=None)
    # A tier change Meterline scheduled in Stripe for the next 1st (a subscription schedule).
    scheduled_tier = Varchar(length=32, null=True, default=None)
    created_at = Timestamptz(default=TimestamptzNow())


class UsageEventRow(Table, tablename="usage_events", db=DB):
    id = UUID(primary_key=True, default=uuid.uuid4)
    company_id = ForeignKey(CompanyRow, on_delete=OnDelete.restrict, null=False)
    event_type = ForeignKey(EventTypeRow, on_delete=OnDelete.restrict, null=False)
    quantity = Integer()
    occurred_at = Timestamptz()
    month = Date()  # UTC month of occurred_at floored to seconds, computed in billing/
    recorded_at = Timestamptz(default=TimestamptzNow())
    idempotency_key = Varchar(length=255, null=True, default=None)
    metadata = JSONB(null=True, default=None)
    sync_state = Varchar(length=16, default="local_only")
    batch_id = UUID(null=True, default=None)  # the usage batch that carries it to Stripe

    usage_events_quantity_range = Check(f"quantity BETWEEN 1 AND {MAX_QUANTITY}")
    usage_events_month_of_occurred_at = Check(
        "month = date_trunc('month', occurred_at AT TIME ZONE 'UTC')::date"
    )
    usage_events_sync_state_known = Check(
        "sync_state IN ('local_only', 'pending', 'sending', 'sent', 'failed', 'unknown')"
    )
    usage_events_metadata_object = Check("metadata IS NULL OR jsonb_typeof(metadata) = 'object'")


class IdempotencyKeyRow(Table, tablename="idempotency_keys", db=DB):
    """Kept apart from usage_events (and without a foreign key to it) so that table can be
    partitioned by month later; both rows are written in one transaction."""

    company_id = ForeignKey(CompanyRow, on_delete=OnDelete.restrict, null=False)
    key = Varchar(length=255)
    event_id = UUID()
    # What a retry is compared with (docs/design.md): sha256 of event type, quantity and metadata,
    # and occurredAt exactly as the caller gave it (NULL when it did not).
    fingerprint = Varchar(length=64)
    occurred_at_given = Timestamptz(null=True, default=None)
    created_at = Timestamptz(default=TimestamptzNow())

    idempotency_keys_unique = Unique(["company_id", "key"])
    idempotency_keys_not_empty = Check("length(key) > 0")


class UsageRollupRow(Table, tablename="usage_rollups", db=DB):
    """One row per (company, month, event type): always the sum of that month's events.

    The allowance that prices the month is copied in when the row is created, so a later tier
    change or price edit never re-prices a month that has been billed.
    """

    company_id = ForeignKey(CompanyRow, on_delete=OnDelete.restrict, null=False)
    month = Date()
    event_type = ForeignKey(EventTypeRow, on_delete=OnDelete.restrict, null=False)
    used = BigInt(default=0)
    tier = Varchar(length=32)
    included = BigInt(null=True, default=None)  # NULL = unlimited
    unit_price = Numeric(digits=(12, 6))
    cap = BigInt(null=True, default=None)  # hard cap of the month (free tier); NULL = none

    usage_rollups_unique = Unique(["company_id", "month", "event_type"])
    usage_rollups_used_non_negative = Check("used >= 0")
    usage_rollups_within_cap = Check("cap IS NULL OR used <= cap")


class UsageBatchRow(Table, tablename="usage_batches", db=DB):
    """What is sent to Stripe as one meter event: the pending events of one (company, event
    type, month), stored before the call so a re-send is the same request (same identifier)."""

    id = UUID(primary_key=True, default=uuid.uuid4)  # also the meter event identifier
    company_id = ForeignKey(CompanyRow, on_delete=OnDelete.restrict, null=False)
    stripe_customer_id = Varchar(length=255)
    event_type = ForeignKey(EventTypeRow, on_delete=OnDelete.restrict, null=False)
    event_name = Varchar(length=100)
    month = Date()
    value = BigInt()
    timestamp = Timestamptz()  # the latest member's occurred_at, floored to seconds
    state = Varchar(length=16, default="sending")
    attempts = Integer(default=0)
    lease_until = Timestamptz()  # due (again) when this passes: a crash, or the next retry
    created_at = Timestamptz(default=TimestamptzNow())
    sent_at = Timestamptz(null=True, default=None)
    last_error = Varchar(length=1000, null=True, default=None)
    redriven_at = Timestamptz(null=True, default=None)

    usage_batches_state_known = Check("state IN ('sending', 'sent', 'failed', 'unknown')")
    usage_batches_value_positive = Check("value > 0")


class SubscriptionRow(Table, tablename="subscriptions", db=DB):
    """The mirror of a Stripe subscription, as last re-read from Stripe."""

    id = Varchar(length=255, primary_key=True)
    company_id = ForeignKey(CompanyRow, on_delete=OnDelete.restrict, null=False)
    customer_id = Varchar(length=255)
    status = Varchar(length=32)
    tier = Varchar(length=32, null=True, default=None)  # from the base price; NULL = not ours
    complete = Boolean(default=False)  # the base price and every metered price of its tier
    cancel_at_period_end = Boolean(default=False)
    current_period_start = Timestamptz(null=True, default=None)
    current_period_end = Timestamptz(null=True, default=None)
    start_date = Timestamptz()
    created = Timestamptz()  # Stripe's
    read_seq = BigInt()  # see db/stripe_reads.py: a later re-read never loses to an earlier one
    updated_at = Timestamptz(default=TimestamptzNow())


class InvoiceRow(Table, tablename="invoices", db=DB):
    """The mirror of a Stripe invoice. Amounts in the currency's minor units, as Stripe has
    them."""

    id = Varchar(length=255, primary_key=True)
    company_id = ForeignKey(CompanyRow, on_delete=OnDelete.restrict, null=False)
    subscription_id = Varchar(length=255, null=True, default=None)
    number = Varchar(length=255, null=True, default=None)
    status = Varchar(length=32)
    billing_reason = Varchar(length=64, null=True, default=None)
    currency = Varchar(length=3)
    amount_due = BigInt()
    amount_paid = BigInt()
    amount_remaining = BigInt()
    period_start = Timestamptz(null=True, default=None)
    period_end = Timestamptz(null=True, default=None)
    usage_month = Date(null=True, default=None)  # the month its metered lines bill
    paid_at = Timestamptz(null=True, default=None)
    hosted_invoice_url = Varchar(length=2048, null=True, default=None)
    invoice_pdf = Varchar(length=2048, null=True, default=None)
    created = Timestamptz()  # Stripe's
    first_failed_at = Timestamptz(null=True, default=None)  # earliest failed payment seen
    marked_uncollectible_at = Timestamptz(null=True, default=None)
    read_seq = BigInt()
    updated_at = Timestamptz(default=TimestamptzNow())

    invoices_amounts_non_negative = Check("amount_due >= 0 AND amount_paid >= 0")


class WebhookEventRow(Table, tablename="webhook_events", db=DB):
    """Every Stripe event received, once by its id: what came, and what applying it did."""

    id = Varchar(length=255, primary_key=True)  # Stripe's event id
    source = Varchar(length=16)  # snapshot | thin
    type = Varchar(length=128)
    object_id = Varchar(length=255, null=True, default=None)
    created = Timestamptz()  # Stripe's
    payload = JSONB()
    status = Varchar(length=16, default="received")
    attempts = Integer(default=0)  # times applying was tried
    applied_count = Integer(default=0)  # times it was applied (replays included)
    last_error = Varchar(length=2000, null=True, default=None)
    received_at = Timestamptz(default=TimestamptzNow())
    applied_at = Timestamptz(null=True, default=None)

    webhook_events_source_known = Check("source IN ('snapshot', 'thin')")
    webhook_events_status_known = Check("status IN ('received', 'applied', 'ignored', 'failed')")


class StripeFlagRow(Table, tablename="stripe_flags", db=DB):
    """Something Stripe reported that Meterline refused or cannot reconcile alone: for the
    operator (`meterline company show`, `/metrics`). One open flag per (kind, object)."""

    id = UUID(primary_key=True, default=uuid.uuid4)
    company_id = UUID(null=True, default=None)  # no foreign key: the company may not exist
    kind = Varchar(length=64)
    object_id = Varchar(length=255)
    message = Varchar(length=2000)
    created_at = Timestamptz(default=TimestamptzNow())
    last_seen_at = Timestamptz(default=TimestamptzNow())
    resolved_at = Timestamptz(null=True, default=None)


class MeterErrorReportRow(Table, tablename="meter_error_reports", db=DB):
    """Stripe's asynchronous meter event validation errors (thin events), with the sample
    errors matched to our batches by identifier where possible."""

    id = Varchar(length=255, primary_key=True)  # the thin event's id
    type = Varchar(length=128)
    meter_id = Varchar(length=255, null=True, default=None)
    summary = Varchar(length=2000, null=True, default=None)
    error_count = Integer(default=0)
    validation_start = Timestamptz(null=True, default=None)
    validation_end = Timestamptz(null=True, default=None)
    samples = JSONB()  # [{code, message, identifier, batch_id}]
    created_at = Timestamptz(default=TimestamptzNow())


ALL_TABLES: list[type[Table]] = [
    EventTypeRow,
    TierRow,
    TierAllowanceRow,
    CompanyRow,
    UsageEventRow,
    IdempotencyKeyRow,
    UsageRollupRow,
    UsageBatchRow,
    SubscriptionRow,
    InvoiceRow,
    WebhookEventRow,
    StripeFlagRow,
    MeterErrorReportRow,
]


class CheckoutSessionRow(Table, tablename="checkout_sessions", db=DB):
    """A Stripe Checkout Session Meterline created: one `open` per company (a partial unique
    index, migration m0011); SQL in db/checkouts.py."""

    id = Varchar(length=255, primary_key=True)  # Stripe's session id
    company_id = ForeignKey(CompanyRow, on_delete=OnDelete.restrict, null=False)
    tier = Varchar(length=32)
    url = Varchar(length=5000)
    expires_at = Timestamptz()
    status = Varchar(length=16, default="open")  # open | expired | complete
    created_at = Timestamptz()
    closed_at = Timestamptz(null=True, default=None)

    checkout_sessions_status_known = Check("status IN ('open', 'expired', 'complete')")


ALL_TABLES.append(CheckoutSessionRow)


class PortalLinkGenerationRow(Table, tablename="portal_link_generations", db=DB):
    """A company's current portal link generation (migration m0012); SQL in
    db/portal_links.py. No row: generation 0."""

    company_id = UUID(primary_key=True)
    generation = BigInt()
    revoked_at = Timestamptz()


ALL_TABLES.append(PortalLinkGenerationRow)
