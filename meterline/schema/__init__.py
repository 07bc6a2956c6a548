"""The Strawberry schema: the design's GraphQL contract."""

from __future__ import annotations

from typing import Any

import strawberry
from graphql import GraphQLError
from graphql.validation import NoSchemaIntrospectionCustomRule
from strawberry.extensions import (
    AddValidationRules,
    MaxAliasesLimiter,
    MaxTokensLimiter,
    ParserCache,
    ValidationCache,
)
from strawberry.types import ExecutionContext, ExecutionResult

from meterline.resolvers import billing, lifecycle, portal, usage
from meterline.schema.errors import log_errors, with_codes
from meterline.schema.lifecycle import (
    BillingPortalResult,
    CancelSubscriptionResult,
    ChangeTierResult,
    ResumeSubscriptionResult,
    StartCheckoutResult,
)
from meterline.schema.limits import OneRecordingFieldRule, max_depth_rule
from meterline.schema.portal_link import PortalLink
from meterline.schema.types import (
    Invoice,
    MeterUsage,
    MonthlySummary,
    RecordUsageBatchResult,
    RecordUsageResult,
    UpcomingInvoice,
    UsageEventConnection,
    UsageLimits,
)

MAX_DEPTH = 8
MAX_TOKENS = 2_000
MAX_ALIASES = 30


@strawberry.type
class Query:
    current_usage: list[MeterUsage] = strawberry.field(
        resolver=usage.current_usage,
        description="Every event type for the current UTC month, zeros included.",
    )
    usage_limits: UsageLimits = strawberry.field(resolver=usage.usage_limits)
    monthly_summary: MonthlySummary | None = strawberry.field(
        resolver=usage.monthly_summary, description='"YYYY-MM"; the current month by default.'
    )
    usage_history: list[MonthlySummary] = strawberry.field(
        resolver=usage.usage_history,
        description="Newest first; 1..24 months from the company's first month, zeros included.",
    )
    usage_events: UsageEventConnection = strawberry.field(
        resolver=usage.usage_events, description="The audit trail, newest first."
    )
    upcoming_invoice: UpcomingInvoice | None = strawberry.field(
        resolver=billing.upcoming_invoice,
        description="From Stripe's invoice preview; null without a Stripe subscription.",
    )
    payment_history: list[Invoice] = strawberry.field(
        resolver=billing.payment_history,
        description="Issued invoices from the local mirror, newest first; limit 1..100.",
    )


@strawberry.type
class Mutation:
    record_usage: RecordUsageResult = strawberry.mutation(resolver=usage.record_usage)
    record_usage_batch: RecordUsageBatchResult = strawberry.mutation(
        resolver=usage.record_usage_batch,
        description="1 to 1,000 events in one transaction: each recorded or reported as a "
        "duplicate of its idempotency key; a hard cap refuses the whole batch.",
    )
    start_checkout: StartCheckoutResult = strawberry.mutation(
        resolver=lifecycle.start_checkout,
        description="A Stripe Checkout for a free company: the tier's base and metered prices, "
        "billing anchored to the next 1st (the first period prorated).",
    )
    change_tier: ChangeTierResult = strawberry.mutation(
        resolver=lifecycle.change_tier,
        description="Takes effect on the next 1st; the current tier again withdraws a pending "
        "change; FREE cancels at the period's end.",
    )
    cancel_subscription: CancelSubscriptionResult = strawberry.mutation(
        resolver=lifecycle.cancel_subscription,
        description="At the period's end (the 1st): this month's usage is still invoiced.",
    )
    resume_subscription: ResumeSubscriptionResult = strawberry.mutation(
        resolver=lifecycle.resume_subscription,
        description="Withdraws a pending cancellation.",
    )
    billing_portal_url: BillingPortalResult = strawberry.mutation(
        resolver=lifecycle.billing_portal_url,
        description="A Stripe customer portal session (payment methods, invoices).",
    )
    create_portal_link: PortalLink = strawberry.mutation(
        resolver=portal.create_portal_link,
        description="A link to the company's usage portal (read-only), valid ttlMinutes "
        "(5..1440) or until revokePortalLinks.",
    )
    revoke_portal_links: bool = strawberry.mutation(
        resolver=portal.revoke_portal_links,
        description="Every portal link given to the company so far stops working at once.",
    )


class MeterlineSchema(strawberry.Schema):
    # In production the schema is not for strangers: no introspection, and no "Did you mean
    # 'usageLimits'?" in errors, which would hand it out a field at a time.
    hide_suggestions = False

    async def execute(self, *args: Any, **kwargs: Any) -> ExecutionResult:
        """Every error leaves with an `extensions.code`, and unexpected ones masked. Done on
        the final result: parse errors end the operation before any extension hook sees them."""
        result = await super().execute(*args, **kwargs)
        if result.errors:
            context = kwargs.get("context_value", args[2] if len(args) > 2 else None)
            result.errors = with_codes(
                result.errors,
                getattr(context, "request_id", None),
                hide_suggestions=self.hide_suggestions,
            )
        return result

    def process_errors(
        self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None
    ) -> None:
        context: Any = execution_context.context if execution_context else None
        log_errors(errors, getattr(context, "request_id", None))


def build_schema(*, introspection: bool) -> strawberry.Schema:
    # Validation rules are built once: ValidationCache keys on the rule classes, so a rule class
    # made per request (what MaxAliasesLimiter does) would make every request miss the cache.
    rules: list[Any] = [
        max_depth_rule(MAX_DEPTH),
        OneRecordingFieldRule,
        *MaxAliasesLimiter(max_alias_count=MAX_ALIASES).validation_rules,
    ]
    if not introspection:
        rules.append(NoSchemaIntrospectionCustomRule)
    extensions: list[Any] = [
        ParserCache,
        ValidationCache,
        lambda: MaxTokensLimiter(max_token_count=MAX_TOKENS),
        lambda: AddValidationRules(rules),
    ]
    schema = MeterlineSchema(query=Query, mutation=Mutation, extensions=extensions)
    schema.hide_suggestions = not introspection
    # Batches run on graphql-core's coerced inputs (see record_usage_batch_fast); the tests of
    # recordUsageBatch go through this path.
    mutations = schema._schema.mutation_type
    assert mutations is not None
    mutations.fields["recordUsageBatch"].resolve = usage.record_usage_batch_fast
    return schema
